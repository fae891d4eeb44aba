//! The TLS families: handshakes by result, connections by version and
//! ALPN, and `pylon_tls_certificate_expiry_seconds`, computed at scrape
//! time from what each listener serves now.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::Counter, family::Family},
    registry::Registry,
};

use super::labels::{ResultLabel, TlsConnectionLabels};
use crate::sync::lock;

/// The TLS families and the certificates the expiry gauge reads.
pub(super) struct TlsFamilies {
    handshakes: Family<ResultLabel, Counter>,
    connections: Family<TlsConnectionLabels, Counter>,
    certificates: Arc<Mutex<TlsCertificates>>,
}

impl TlsFamilies {
    /// Register the handshake and connection families in `registry`.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let handshakes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "pylon_tls_handshakes",
            "TLS handshakes on client connections, by result (success, or why it failed: \
             timeout, closed, protocol_error, incompatible, unknown_sni, no_client_certificate, \
             bad_client_certificate, client_rejected, other)",
            handshakes.clone(),
        );
        let connections = Family::<TlsConnectionLabels, Counter>::default();
        registry.register(
            "pylon_tls_connections",
            "Client TLS connections established, by protocol version and ALPN protocol",
            connections.clone(),
        );
        Self {
            handshakes,
            connections,
            certificates: Arc::new(Mutex::new(TlsCertificates::new())),
        }
    }

    /// Register the certificate expiry collector in `registry`.
    pub(super) fn register_certificates(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(TlsCertificateCollector(self.certificates.clone())));
    }

    /// Count a client TLS handshake that failed (`reason` is its label).
    pub(super) fn handshake_failed(&self, reason: &'static str) {
        self.handshakes
            .get_or_create(&ResultLabel { result: reason })
            .inc();
    }

    /// Count an established client TLS connection.
    pub(super) fn connection(&self, version: &'static str, alpn: &'static str) {
        self.handshakes
            .get_or_create(&ResultLabel { result: "success" })
            .inc();
        self.connections
            .get_or_create(&TlsConnectionLabels { version, alpn })
            .inc();
    }

    /// Replace what `listener` serves.
    pub(super) fn set_certificates(&self, listener: &str, certificates: Vec<CertificateExpiry>) {
        lock(&self.certificates).insert(listener.to_owned(), certificates);
    }
}

/// A certificate a TLS listener serves, as the expiry gauge sees it.
#[derive(Debug, Clone)]
pub struct CertificateExpiry {
    /// The first name it serves (a `*.` wildcard kept).
    pub name: String,
    /// SHA-256 of the leaf, hex (tells two certificates for one name apart).
    pub sha256: String,
    /// `notAfter`, seconds since the epoch.
    pub not_after: i64,
}

/// Served certificates by listener address.
type TlsCertificates = BTreeMap<String, Vec<CertificateExpiry>>;

/// Encodes `pylon_tls_certificate_expiry_seconds` at scrape time, so the
/// value counts down without a timer. Bounded: one series per configured
/// certificate.
struct TlsCertificateCollector(Arc<Mutex<TlsCertificates>>);

impl std::fmt::Debug for TlsCertificateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCertificateCollector")
            .finish_non_exhaustive()
    }
}

impl Collector for TlsCertificateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let served = lock(&self.0).clone();
        let mut family = encoder.encode_descriptor(
            "pylon_tls_certificate_expiry_seconds",
            "Seconds until a served TLS certificate expires (negative: expired), by listener, \
             name and sha256",
            None,
            MetricType::Gauge,
        )?;
        for (listener, certificates) in &served {
            for c in certificates {
                let labels = [
                    ("listener", listener.as_str()),
                    ("name", c.name.as_str()),
                    ("sha256", c.sha256.as_str()),
                ];
                prometheus_client::metrics::gauge::ConstGauge::new(c.not_after.saturating_sub(now))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
