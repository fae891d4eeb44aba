//! A listener's TLS: the certificates chosen by SNI, client certificate
//! verification, ALPN, and a config that a reload swaps for new handshakes
//! while open connections keep the one they started with.
//!
//! Session resumption survives a reload: the ticket keys and the session
//! cache belong to the listener, not to one config, and every config built
//! for the listener shares them (as rpxy does), so a client resuming after
//! a certificate rotation still skips the full handshake.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    server::{
        ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache,
        StoresServerSessions, WebPkiClientVerifier,
    },
    sign::CertifiedKey,
};

use super::{TlsError, certs};
use crate::config::{ClientAuthMode, ListenerTls, UnknownSni};

/// Sessions kept for resumption by ID (TLS 1.2 clients without tickets).
const SESSION_CACHE_SIZE: usize = 4096;

/// The TLS side of one listener.
pub struct ServerTls {
    provider: Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<Prepared>,
}

/// A config ready for handshakes, with what it serves (for the admin API).
pub struct Prepared {
    config: Arc<ServerConfig>,
    certificates: Vec<CertificateSummary>,
}

/// What an operator sees of a served certificate (never key material).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertificateSummary {
    /// The PEM file.
    pub file: String,
    /// DNS names it serves.
    pub names: Vec<String>,
    /// Issuer distinguished name.
    pub issuer: String,
    /// `notAfter`, RFC 3339 UTC.
    pub not_after: String,
    /// `notAfter`, seconds since the epoch (for the expiry gauge).
    #[serde(skip)]
    pub not_after_unix: i64,
    /// SHA-256 of the leaf, hex.
    pub sha256: String,
    /// Whether clients without SNI or with an unknown name get it.
    pub default: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Load the certificates of `settings` and build the first config.
    /// `http2` offers `h2` before `http/1.1` in ALPN.
    pub fn new(settings: &ListenerTls, http2: bool) -> Result<ServerTls, TlsError> {
        let provider = super::provider();
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::Settings)?;
        let sessions: Arc<dyn StoresServerSessions> =
            ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        let alpn = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let prepared = build(settings, &provider, &ticketer, &sessions, &alpn)?;
        Ok(ServerTls {
            provider,
            ticketer,
            sessions,
            alpn,
            current: ArcSwap::from_pointee(prepared),
        })
    }

    /// The config for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load().config.clone()
    }

    /// The certificates served now.
    pub fn certificates(&self) -> Vec<CertificateSummary> {
        self.current.load().certificates.clone()
    }

    /// Build a config from `settings` sharing this listener's session
    /// state, without using it yet (see [`ServerTls::swap`]).
    pub fn prepare(&self, settings: &ListenerTls) -> Result<Prepared, TlsError> {
        build(
            settings,
            &self.provider,
            &self.ticketer,
            &self.sessions,
            &self.alpn,
        )
    }

    /// Use `prepared` (from [`ServerTls::prepare`]) for new handshakes.
    pub fn swap(&self, prepared: Prepared) {
        self.current.store(Arc::new(prepared));
    }
}

fn build(
    settings: &ListenerTls,
    provider: &Arc<CryptoProvider>,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions>,
    alpn: &[Vec<u8>],
) -> Result<Prepared, TlsError> {
    let mut resolver = SniResolver::default();
    let mut certificates = Vec::with_capacity(settings.certificates.len());
    for (i, files) in settings.certificates.iter().enumerate() {
        let loaded = certs::load(files, provider)?;
        tracing::info!(
            cert = %files.cert.display(),
            names = ?loaded.names,
            not_after = %certs::utc(loaded.not_after),
            "TLS certificate loaded"
        );
        if loaded.not_after < certs::unix_now() + super::EXPIRY_WARNING.as_secs() as i64 {
            tracing::warn!(
                cert = %files.cert.display(),
                not_after = %certs::utc(loaded.not_after),
                "TLS certificate expires soon"
            );
        }
        let default = i == 0 && settings.unknown_sni == UnknownSni::Default;
        if default {
            resolver.default = Some(loaded.key.clone());
        }
        certificates.push(CertificateSummary {
            file: files.cert.display().to_string(),
            names: loaded.names.clone(),
            issuer: loaded.issuer.clone(),
            not_after: certs::utc(loaded.not_after),
            not_after_unix: loaded.not_after,
            sha256: loaded.sha256.clone(),
            default,
        });
        for name in loaded.names {
            // The first certificate naming a host serves it.
            match name.strip_prefix("*.") {
                Some(parent) => resolver.wildcard.entry(parent.to_string()),
                None => resolver.exact.entry(name),
            }
            .or_insert_with(|| loaded.key.clone());
        }
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Settings)?;
    let builder = match &settings.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let roots = Arc::new(certs::read_roots(&auth.ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let verifier = match auth.mode {
                ClientAuthMode::Required => verifier,
                ClientAuthMode::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| TlsError::Verifier {
                path: auth.ca.clone(),
                detail: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn.to_vec();
    config.ticketer = ticketer.clone();
    config.session_storage = sessions.clone();
    Ok(Prepared {
        config: Arc::new(config),
        certificates,
    })
}

/// Certificates by server name: exact names first, then a `*.` wildcard
/// for the name's parent (one label, as RFC 6125 allows), then the default.
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(name) => self.lookup(name).or_else(|| self.default.clone()),
            None => self.default.clone(),
        }
    }
}
