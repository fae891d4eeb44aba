//! The server side of one TLS handshake: bounded in time, run inside the
//! connection's own task (never in the accept loop, so a client that sends
//! nothing or garbage holds up no one but itself), and classified when it
//! fails so operators can tell a scanner from clients that reject the
//! certificate.
//!
//! Not here: what the connection then serves (`crate::server`).

use std::{sync::Arc, time::Duration};

use rustls::{AlertDescription, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{ClientIdentity, server::ServerTls};

/// The application protocol ALPN chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`.
    H2,
    /// `http/1.1`.
    Http1,
    /// The client offered no ALPN (HTTP/1.1 is served, as nginx does).
    None,
}

impl Alpn {
    /// The `alpn` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Alpn::H2 => "h2",
            Alpn::Http1 => "http/1.1",
            Alpn::None => "none",
        }
    }
}

/// A finished handshake.
pub struct Accepted<IO> {
    /// The encrypted stream.
    pub stream: TlsStream<IO>,
    /// The protocol to serve.
    pub alpn: Alpn,
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The verified client certificate, when the client sent one.
    pub identity: Option<Arc<ClientIdentity>>,
}

/// Why a handshake failed, for `pylon_tls_handshakes_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished within the listener's `header-timeout`.
    Timeout,
    /// The client closed the connection (or it broke) mid-handshake.
    Closed,
    /// Bytes that are not TLS, or TLS out of order (scanners, plain HTTP
    /// sent to a TLS port).
    Protocol,
    /// Nothing in common: versions, cipher suites, groups or ALPN.
    Incompatible,
    /// No certificate for the name the client asked for (`unknown-sni =
    /// "refuse"`).
    UnknownName,
    /// `client-auth = "required"` and the client sent no certificate.
    NoClientCertificate,
    /// The client's certificate did not verify against `client-ca`.
    BadClientCertificate,
    /// The client refused the handshake with an alert, most often because
    /// it does not trust the certificate served.
    ClientRejected,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    /// Every failure, in label order.
    pub const ALL: [HandshakeFailure; 9] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Closed,
        HandshakeFailure::Protocol,
        HandshakeFailure::Incompatible,
        HandshakeFailure::UnknownName,
        HandshakeFailure::NoClientCertificate,
        HandshakeFailure::BadClientCertificate,
        HandshakeFailure::ClientRejected,
        HandshakeFailure::Other,
    ];

    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Protocol => "protocol_error",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::UnknownName => "unknown_sni",
            HandshakeFailure::NoClientCertificate => "no_client_certificate",
            HandshakeFailure::BadClientCertificate => "bad_client_certificate",
            HandshakeFailure::ClientRejected => "client_rejected",
            HandshakeFailure::Other => "other",
        }
    }

    fn of(err: &std::io::Error) -> HandshakeFailure {
        let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return HandshakeFailure::Closed;
        };
        match tls {
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::PeerMisbehaved(_)
            | rustls::Error::DecryptError => HandshakeFailure::Protocol,
            rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
                HandshakeFailure::Incompatible
            }
            rustls::Error::NoCertificatesPresented => HandshakeFailure::NoClientCertificate,
            rustls::Error::InvalidCertificate(_) => HandshakeFailure::BadClientCertificate,
            rustls::Error::AlertReceived(AlertDescription::CloseNotify) => HandshakeFailure::Closed,
            rustls::Error::AlertReceived(_) => HandshakeFailure::ClientRejected,
            // rustls reports an unresolved certificate only as this
            // message (with an access_denied alert); a change in its
            // wording turns these into `other`, nothing worse.
            rustls::Error::General(msg) if msg.contains("no server certificate chain") => {
                HandshakeFailure::UnknownName
            }
            _ => HandshakeFailure::Other,
        }
    }
}

/// Run the server handshake on `io` with the listener's config in force
/// now (a reload swaps it for later handshakes only), giving up after
/// `timeout`.
pub async fn handshake<IO>(
    tls: &ServerTls,
    io: IO,
    timeout: Duration,
) -> Result<Accepted<IO>, HandshakeFailure>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = TlsAcceptor::from(tls.config());
    let stream = match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Err(_) => return Err(HandshakeFailure::Timeout),
        Ok(Err(err)) => return Err(HandshakeFailure::of(&err)),
        Ok(Ok(stream)) => stream,
    };
    let (_, conn) = stream.get_ref();
    let alpn = match conn.alpn_protocol() {
        Some(b"h2") => Alpn::H2,
        Some(_) => Alpn::Http1,
        None => Alpn::None,
    };
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "other",
    };
    let identity = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(ClientIdentity::from_der)
        .map(Arc::new);
    Ok(Accepted {
        stream,
        alpn,
        version,
        identity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_err(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn failures_are_classified_by_their_rustls_error() {
        let cases = [
            (
                io_err(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                HandshakeFailure::Protocol,
            ),
            (
                io_err(rustls::Error::NoCertificatesPresented),
                HandshakeFailure::NoClientCertificate,
            ),
            (
                io_err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                )),
                HandshakeFailure::BadClientCertificate,
            ),
            (
                io_err(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
                HandshakeFailure::ClientRejected,
            ),
            (
                io_err(rustls::Error::General(
                    "no server certificate chain resolved".into(),
                )),
                HandshakeFailure::UnknownName,
            ),
            (
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                HandshakeFailure::Closed,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(HandshakeFailure::of(&err), want, "{err}");
        }
    }
}
