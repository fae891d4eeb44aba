//! TLS toward upstream targets: which CAs are trusted (the system's and the
//! webpki roots, plus a configured bundle), the name verified, and a client
//! certificate for upstreams that require one. Verification is on unless an
//! upstream says `insecure-skip-verify = true` (the caller logs a warning
//! for it at every load).

use std::sync::{Arc, OnceLock};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};

use super::{TlsError, certs};
use crate::config::UpstreamTls;

/// The system's trust store, read once per process (it is a directory of
/// files; an upstream pool per worker must not read it again).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for err in &loaded.errors {
            tracing::debug!(error = %err, "system CA certificates: skipped");
        }
        loaded.certs
    })
}

/// A client config for one upstream, offering `alpn` (empty: no ALPN).
pub fn client_config(
    settings: &UpstreamTls,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Some system stores hold certificates webpki cannot use; they are
    // skipped, as every rustls client does.
    let _ = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(ca) = &settings.ca {
        for cert in certs::read_certs(ca)? {
            roots.add(cert).map_err(|e| TlsError::Pem {
                path: ca.clone(),
                what: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    let provider = super::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Settings)?;
    let builder = if settings.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider.clone())))
    } else {
        builder.with_root_certificates(roots)
    };
    let mut config = match &settings.client_cert {
        None => builder.with_no_client_auth(),
        Some(files) => {
            // Checked as a listener's certificate is (validity, key
            // match), so an expired client certificate fails the load
            // rather than every handshake with the upstream.
            let loaded = certs::load(files, &provider)?;
            if loaded.not_after < certs::unix_now() + super::EXPIRY_WARNING.as_secs() as i64 {
                tracing::warn!(
                    cert = %files.cert.display(),
                    not_after = %certs::utc(loaded.not_after),
                    "upstream TLS client certificate expires soon"
                );
            }
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                loaded.key,
            )))
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name to send as SNI and verify: the configured `server-name`, or
/// the target's host (a DNS name or an IP address).
pub fn server_name(settings: &UpstreamTls, host: &str) -> Result<ServerName<'static>, TlsError> {
    let name = settings.server_name.as_deref().unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.to_string()))
}

/// `insecure-skip-verify`: any certificate is accepted, but the handshake
/// signatures are still checked (the peer holds the key of what it sent).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
