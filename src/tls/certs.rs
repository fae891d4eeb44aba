//! PEM files into rustls types, checked the way an operator wants to hear
//! about it at load time rather than at the first handshake: the chain is
//! present and parses, the key matches the leaf, the leaf is within its
//! validity period. Also reads the DNS names a certificate serves.

use std::{
    path::Path,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use rustls::{
    RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};
use sha2::Digest;
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use super::TlsError;
use crate::config::CertKeyFiles;

/// A loaded certificate with its key, and the names it serves.
#[derive(Debug)]
pub struct LoadedCert {
    /// The chain and signing key, ready for rustls.
    pub key: Arc<CertifiedKey>,
    /// DNS names from the leaf's subjectAltName (lower case; `*.` kept), or
    /// its common name when it has none.
    pub names: Vec<String>,
    /// The leaf's `notAfter`, seconds since the epoch.
    pub not_after: i64,
    /// The leaf's issuer distinguished name.
    pub issuer: String,
    /// SHA-256 of the leaf's DER, lower-case hex.
    pub sha256: String,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("malformed PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block".into(),
            e => format!("malformed PEM: {e}"),
        },
    })
}

/// A CA bundle as a root store.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Load, check and index one certificate and key pair.
pub fn load(files: &CertKeyFiles, provider: &CryptoProvider) -> Result<LoadedCert, TlsError> {
    let chain = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let sha256 = hex::encode(sha2::Sha256::digest(chain[0].as_ref()));
    let (names, issuer, not_before, not_after) =
        leaf_facts(&chain[0]).ok_or_else(|| TlsError::Pem {
            path: files.cert.clone(),
            what: "the first certificate is not a valid X.509 certificate".into(),
        })?;
    let now = unix_now();
    if now > not_after {
        return Err(TlsError::Validity {
            path: files.cert.clone(),
            state: format!("expired on {}", utc(not_after)),
        });
    }
    if now < not_before {
        return Err(TlsError::Validity {
            path: files.cert.clone(),
            state: format!("not valid before {}", utc(not_before)),
        });
    }
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Key {
        path: files.key.clone(),
        source,
    })?;
    Ok(LoadedCert {
        key: Arc::new(key),
        names,
        not_after,
        issuer,
        sha256,
    })
}

/// Names served, issuer, `notBefore` and `notAfter` of a leaf certificate.
fn leaf_facts(der: &CertificateDer<'_>) -> Option<(Vec<String>, String, i64, i64)> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty()
        && let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
    {
        names.push(cn.to_ascii_lowercase());
    }
    let validity = cert.validity();
    Some((
        names,
        cert.issuer().to_string(),
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-12-04T10:00:00Z` for seconds since the epoch.
pub(crate) fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_385_600), "2026-12-04T12:00:00Z");
    }
}
