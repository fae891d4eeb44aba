//! The identity a verified client certificate gives a request: what an
//! authorization plugin decides on. Read once per connection, after the
//! handshake, never per request.

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

/// A client certificate that rustls verified against the listener's CAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject distinguished name, RFC 4514 style (`CN=alice,O=Acme`).
    pub subject: String,
    /// DNS names of the subjectAltName.
    pub dns_names: Vec<String>,
    /// URIs of the subjectAltName (SPIFFE IDs, for example).
    pub uris: Vec<String>,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub sha256: String,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
}

impl ClientIdentity {
    /// The identity of a verified leaf certificate; `None` if it does not
    /// parse (rustls verified it, so that would be a parser disagreement).
    pub fn from_der(cert: &CertificateDer<'_>) -> Option<ClientIdentity> {
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
        let mut dns_names = Vec::new();
        let mut uris = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push((*d).to_string()),
                    GeneralName::URI(u) => uris.push((*u).to_string()),
                    _ => {}
                }
            }
        }
        Some(ClientIdentity {
            subject: parsed.subject().to_string(),
            dns_names,
            uris,
            sha256: hex::encode(Sha256::digest(cert.as_ref())),
            not_after: parsed.validity().not_after.timestamp(),
        })
    }
}
