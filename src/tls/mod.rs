//! TLS with rustls, both ways: listeners that terminate TLS ([`server`]),
//! and upstream connections that originate it ([`client`]). Certificates
//! are read from PEM files ([`certs`]); a verified client certificate
//! becomes a [`ClientIdentity`] that plugins can decide on.
//!
//! Not here: where TLS sits in the accept loop (`server`) or the upstream
//! pool (`upstream`); this module only builds and swaps rustls configs.
//!
//! One crypto provider, aws-lc-rs, chosen explicitly rather than by
//! whichever feature happens to be on: it is rustls' default, FIPS-capable,
//! and the provider with the X25519MLKEM768 post-quantum hybrid key
//! exchange, which it offers first (`prefer-post-quantum`). ring has no
//! ML-KEM.

pub mod accept;
pub mod certs;
pub mod client;
pub mod identity;
pub mod server;

use std::{path::PathBuf, sync::Arc};

use rustls::crypto::CryptoProvider;

use crate::config::{Config, ConfigError, Diagnostic, Listener};

pub use identity::ClientIdentity;

/// The crypto provider every TLS config of the process uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Why a TLS configuration could not be built. Every variant names the
/// file it concerns; the caller adds the listener or upstream.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file held nothing of the kind expected, or was malformed.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// A certificate is past its `notAfter` or before its `notBefore`.
    #[error("{path}: certificate {state}")]
    Validity {
        /// The file.
        path: PathBuf,
        /// "expired on …" or "not valid before …".
        state: String,
    },
    /// The key does not belong to the certificate, or rustls refused it.
    #[error("{path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// A CA bundle could not be made into a verifier.
    #[error("{path}: cannot verify client certificates with these CAs: {detail}")]
    Verifier {
        /// The CA bundle.
        path: PathBuf,
        /// What rustls said.
        detail: String,
    },
    /// rustls refused the protocol settings (should not happen with the
    /// provider's defaults).
    #[error("TLS settings refused: {0}")]
    Settings(#[source] rustls::Error),
    /// An upstream `server-name` that is not a DNS name or IP address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

/// A certificate that expires within this is reported by `pylon check`
/// and logged at load.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);

/// The diagnostic for a listener's TLS problem.
pub fn listener_problem(listener: &Listener, err: &TlsError) -> Diagnostic {
    Diagnostic {
        location: None,
        subject: Some(format!("listener \"{}\"", listener.address)),
        message: crate::chain::ErrorChain(err).to_string(),
    }
}

/// The TLS state of every listener of `config` (`None` for cleartext ones),
/// with every certificate problem reported at once, naming the listener.
/// (Upstream TLS settings are checked when the runtime is built.)
pub fn listeners(config: &Config) -> Result<Vec<Option<Arc<server::ServerTls>>>, ConfigError> {
    let mut out = Vec::with_capacity(config.listeners.len());
    let mut problems = Vec::new();
    for l in &config.listeners {
        out.push(match &l.tls {
            None => None,
            Some(settings) => match server::ServerTls::new(settings, l.http2) {
                Ok(tls) => Some(Arc::new(tls)),
                Err(err) => {
                    problems.push(listener_problem(l, &err));
                    None
                }
            },
        });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError {
            diagnostics: problems,
        })
    }
}

/// Certificates of `config`'s listeners that expire within
/// [`EXPIRY_WARNING`], and upstreams' client certificates, as warnings
/// (`pylon check` prints them).
pub fn expiry_warnings(config: &Config) -> Vec<String> {
    let provider = provider();
    let soon = certs::unix_now() + EXPIRY_WARNING.as_secs() as i64;
    let mut out = Vec::new();
    for l in &config.listeners {
        for files in l.tls.iter().flat_map(|t| &t.certificates) {
            if let Ok(c) = certs::load(files, &provider)
                && c.not_after < soon
            {
                out.push(format!(
                    "listener \"{}\": {} expires on {}",
                    l.address,
                    files.cert.display(),
                    certs::utc(c.not_after)
                ));
            }
        }
    }
    for (name, u) in &config.upstreams {
        if let Some(files) = u.tls.as_ref().and_then(|t| t.client_cert.as_ref())
            && let Ok(c) = certs::load(files, &provider)
            && c.not_after < soon
        {
            out.push(format!(
                "upstream \"{name}\": client certificate {} expires on {}",
                files.cert.display(),
                certs::utc(c.not_after)
            ));
        }
    }
    out
}
