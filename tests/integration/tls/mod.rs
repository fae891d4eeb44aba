//! TLS at the edge: listeners that terminate TLS (SNI, ALPN, HTTP/2,
//! certificate reload with resumption kept, client certificates) and
//! upstreams reached over TLS, against real rustls peers and a real test
//! PKI made per test with rcgen.
//!
//! This file holds the test PKI and the TLS clients (also used by the gRPC
//! tests) and the gateways the tests below share.

mod certificates;
mod client_certs;
mod listeners;
mod redirect_hsts;
mod upstream;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use crate::harness::cache_dir;

/// A CA and the files of what it issued, in a temp dir.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca: PathBuf,
}

/// A certificate and key written to disk.
#[derive(Clone)]
pub(crate) struct Issued {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// A leaf for `sans` (DNS names, or `uri:` + a URI), valid now.
    pub(crate) fn issue(&self, file: &str, cn: &str, sans: &[&str], client: bool) -> Issued {
        self.issue_valid(file, cn, sans, client, None)
    }

    /// [`Pki::issue`] valid from the first of January of `validity.0` to
    /// the first of January of `validity.1`, or (`validity.1` of 10 000
    /// or more) to that many seconds from now.
    fn issue_valid(
        &self,
        file: &str,
        cn: &str,
        sans: &[&str],
        client: bool,
        validity: Option<(i32, i32)>,
    ) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.strip_prefix("uri:") {
                Some(u) => SanType::URI(u.try_into().unwrap()),
                None => SanType::DnsName((*s).try_into().unwrap()),
            })
            .collect();
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if let Some((from, to)) = validity {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = match to {
                // A year: its first of January.
                0..10_000 => rcgen::date_time_ymd(to, 1, 1),
                // Else seconds from now.
                secs => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap();
                    rcgen::date_time_ymd(1970, 1, 1)
                        + (now + std::time::Duration::from_secs(secs as u64))
                }
            };
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let issued = Issued {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client config trusting `pki`, offering `alpn`, with an optional
/// client certificate.
pub(crate) fn client_config(pki: &Pki, alpn: &[&[u8]], cert: Option<&Issued>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots());
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&c.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&c.key).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub(crate) async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

/// The DNS names of the certificate the server presented.
fn served_names(stream: &TlsStream<TcpStream>) -> Vec<String> {
    let (_, conn) = stream.get_ref();
    let leaf = &conn.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_string()),
            _ => None,
        })
        .collect()
}

/// GET `path` over an established TLS stream, HTTP/2 if ALPN chose it.
async fn get(stream: TlsStream<TcpStream>, host: &str, path: &str) -> (StatusCode, Bytes) {
    let resp = send(stream, host, path).await;
    (resp.status(), resp.into_body())
}

/// [`get`], with the response's headers.
async fn send(stream: TlsStream<TcpStream>, host: &str, path: &str) -> http::Response<Bytes> {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let (parts, body) = resp.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

/// A gateway whose one listener is `tls_toml` (the `[listeners.tls]` table
/// body), proxying every path to `up`.
async fn gateway(tls_toml: &str, up: SocketAddr) -> (pylon::Gateway, SocketAddr, PathBuf) {
    gateway_with("", tls_toml, up).await
}

/// [`gateway`] with more `[[listeners]]` keys.
async fn gateway_with(
    listener: &str,
    tls_toml: &str,
    up: SocketAddr,
) -> (pylon::Gateway, SocketAddr, PathBuf) {
    gateway_full("", listener, tls_toml, up).await
}

/// [`gateway_with`] with more top-level tables (`top`, e.g. `[admin]`).
async fn gateway_full(
    top: &str,
    listener: &str,
    tls_toml: &str,
    up: SocketAddr,
) -> (pylon::Gateway, SocketAddr, PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("pylon.toml");
    let text = format!(
        "[runtime]\ncache-dir = {cache:?}\n\n{top}\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\n{listener}\n\n[listeners.tls]\n{tls_toml}\n\n\
         [upstreams.u]\ntargets = [\"{up}\"]\n\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
        cache = cache_dir().display().to_string(),
    );
    std::fs::write(&file, text).unwrap();
    let gw = pylon::Gateway::start_from_file(file.clone())
        .await
        .unwrap_or_else(|e| panic!("{}", pylon::error::ErrorChain(&e)));
    let addr = gw.local_addrs()[0];
    (gw, addr, file)
}

/// The value of one series in the gateway's metrics, 0 when absent.
fn metric(gw: &pylon::Gateway, series: &str) -> f64 {
    gw.metrics()
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

pub(crate) fn certs_toml(issued: &[&Issued]) -> String {
    let list: Vec<String> = issued
        .iter()
        .map(|i| format!("{{ cert = {:?}, key = {:?} }}", i.cert, i.key))
        .collect();
    format!("certificates = [{}]", list.join(", "))
}
