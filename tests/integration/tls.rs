//! TLS at the edge: listeners that terminate TLS (SNI, ALPN, HTTP/2,
//! certificate reload with resumption kept, client certificates) and
//! upstreams reached over TLS, against real rustls peers and a real test
//! PKI made per test with rcgen.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use crate::harness::{Upstream, cache_dir, plugin, start_error, status_of};

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

/// Wait (up to 10 s) until a series reaches `at_least`: the server counts
/// a failed handshake just after the client has seen it fail.
async fn wait_metric(gw: &pylon::Gateway, series: &str, at_least: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = metric(gw, series);
        if v >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} is {v}, expected at least {at_least}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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

#[tokio::test]
async fn tls_listener_picks_the_certificate_by_sni_and_speaks_h2_and_http1() {
    let up = Upstream::with(|seen| async move {
        let proto = seen.headers["x-forwarded-proto"]
            .to_str()
            .unwrap()
            .to_owned();
        http::Response::new(Full::new(Bytes::from(proto)))
    })
    .await;
    let pki = Pki::new("edge");
    let api = pki.issue("api", "api", &["api.test"], false);
    let wild = pki.issue("wild", "wild", &["*.apps.test"], false);
    let (gw, addr, _) = gateway(&certs_toml(&[&api, &wild]), up.addr).await;

    for (sni, expect) in [
        ("api.test", "api.test"),
        ("shop.apps.test", "*.apps.test"),
        ("SHOP.Apps.Test", "*.apps.test"),
    ] {
        let h2 = connect(addr, sni, client_config(&pki, &[b"h2", b"http/1.1"], None))
            .await
            .unwrap();
        assert_eq!(served_names(&h2), [expect], "{sni}");
        assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (status, body) = get(h2, sni, "/x").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"https"[..]));
    }
    let h1 = connect(addr, "api.test", client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = get(h1, "api.test", "/x").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"https"[..]));
    // An unknown name gets the first certificate (which this client then
    // refuses, as it should: the name is not on it).
    let err = connect(addr, "other.test", client_config(&pki, &[], None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // A wildcard covers one label only.
    let err = connect(addr, "a.b.apps.test", client_config(&pki, &[], None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unknown_sni_can_be_refused() {
    let up = Upstream::named("up").await;
    let pki = Pki::new("edge");
    let api = pki.issue("api", "api", &["api.test"], false);
    let tls = format!("{}\nunknown-sni = \"refuse\"", certs_toml(&[&api]));
    let (gw, addr, _) = gateway(&tls, up.addr).await;
    let ok = connect(addr, "api.test", client_config(&pki, &[], None)).await;
    assert!(ok.is_ok());
    let err = connect(addr, "other.test", client_config(&pki, &[], None))
        .await
        .unwrap_err();
    // rustls answers a ClientHello it has no certificate for with an
    // access_denied alert.
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    wait_metric(
        &gw,
        "pylon_tls_handshakes_total{result=\"unknown_sni\"}",
        1.0,
    )
    .await;
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_bad_certificate_is_refused_at_start_naming_file_and_listener() {
    let pki = Pki::new("edge");
    let good = pki.issue("good", "good", &["api.test"], false);
    let other = pki.issue("other", "other", &["api.test"], false);
    let expired = pki.issue_valid("old", "old", &["api.test"], false, Some((2001, 2002)));
    let missing = Issued {
        cert: pki.dir.path().join("nope.pem"),
        key: good.key.clone(),
    };
    let mismatched = Issued {
        cert: good.cert.clone(),
        key: other.key.clone(),
    };
    for (bad, expect) in [
        (&expired, "expired on 2002-01-01"),
        (&missing, "nope.pem"),
        (&mismatched, "other.key"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pylon.toml");
        std::fs::write(
            &file,
            format!(
                "[runtime]\ncache-dir = {:?}\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\n{}\n",
                cache_dir().display().to_string(),
                certs_toml(&[bad])
            ),
        )
        .unwrap();
        let config = pylon::config::load(&file).unwrap();
        let err = start_error(config)
            .await
            .unwrap_or_else(|| panic!("started with a bad certificate ({expect})"));
        assert!(err.contains(expect), "{err}");
        assert!(err.contains("127.0.0.1:0"), "names the listener: {err}");
    }
}

#[tokio::test]
async fn certificates_reload_for_new_handshakes_keep_the_last_good_and_resume_sessions() {
    let up = Upstream::named("up").await;
    let pki = Pki::new("edge");
    let first = pki.issue("first", "first", &["api.test", "first.test"], false);
    let (gw, addr, file) = gateway(&certs_toml(&[&first]), up.addr).await;
    let client = client_config(&pki, &[b"http/1.1"], None);

    let before = connect(addr, "api.test", client.clone()).await.unwrap();
    assert_eq!(served_names(&before), ["api.test", "first.test"]);
    // TLS 1.3 session tickets reach the client on its first read.
    let warm = connect(addr, "api.test", client.clone()).await.unwrap();
    assert_eq!(get(warm, "api.test", "/").await.0, StatusCode::OK);

    // Rotate: same files, a new certificate.
    let second = pki.issue("second", "second", &["api.test", "second.test"], false);
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    gw.reload().await.unwrap_or_else(|e| panic!("{e}"));

    let after = connect(addr, "api.test", client.clone()).await.unwrap();
    // The client resumed: no certificate was sent this time, and the
    // session from before the reload was accepted.
    assert_eq!(
        after.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let fresh = connect(addr, "api.test", client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(served_names(&fresh), ["api.test", "second.test"]);
    // The connection opened before the reload still works.
    let (status, _) = get(before, "api.test", "/").await;
    assert_eq!(status, StatusCode::OK);

    // A broken rotation (key of another certificate) is refused and the
    // last good certificate keeps serving.
    let third = pki.issue("third", "third", &["api.test"], false);
    std::fs::copy(&third.cert, &first.cert).unwrap();
    let err = gw.reload().await.unwrap_err().to_string();
    assert!(
        err.contains("first.key") && err.contains("127.0.0.1"),
        "{err}"
    );
    let still = connect(addr, "api.test", client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(served_names(&still), ["api.test", "second.test"]);
    drop(file);
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn client_certificates_required_or_optional() {
    let up = Upstream::named("up").await;
    let pki = Pki::new("edge");
    let clients = Pki::new("clients");
    let server = pki.issue("api", "api", &["api.test"], false);
    let alice = clients.issue(
        "alice",
        "alice",
        &["alice.test", "uri:spiffe://acme/alice"],
        true,
    );
    let strangers = Pki::new("strangers");
    let stranger = strangers.issue("eve", "eve", &["eve.test"], true);

    for mode in ["required", "optional"] {
        let tls = format!(
            "{}\nclient-auth = \"{mode}\"\nclient-ca = {:?}",
            certs_toml(&[&server]),
            clients.ca
        );
        let (gw, addr, _) = gateway(&tls, up.addr).await;
        let with = connect(addr, "api.test", client_config(&pki, &[], Some(&alice)))
            .await
            .unwrap();
        let (status, _) = get(with, "api.test", "/").await;
        assert_eq!(status, StatusCode::OK, "{mode}: trusted certificate");

        // TLS 1.3: the client learns of a refused certificate on its first read.
        let refused = async |cert: Option<&Issued>| match connect(
            addr,
            "api.test",
            client_config(&pki, &[b"http/1.1"], cert),
        )
        .await
        {
            Err(_) => true,
            Ok(stream) => {
                let io = TokioIo::new(stream);
                match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io).await {
                    Err(_) => true,
                    Ok((mut send, conn)) => {
                        tokio::spawn(conn);
                        let req = Request::get("/")
                            .header("host", "api.test")
                            .body(Empty::new())
                            .unwrap();
                        send.send_request(req).await.is_err()
                    }
                }
            }
        };
        assert!(
            refused(Some(&stranger)).await,
            "{mode}: untrusted certificate refused"
        );
        assert_eq!(
            refused(None).await,
            mode == "required",
            "{mode}: no certificate"
        );
        gw.shutdown(std::time::Duration::from_secs(1)).await;
    }
}

/// A gateway with a TLS listener (`tls_toml`) and a plain one, both routing
/// `/admin` through the inspector test plugin as a gate that lets in only a
/// client certificate naming `alice.test`, and every other path through the
/// inspector, which answers with what it saw (`client_identity` included).
async fn identity_gateway(
    tls_toml: &str,
    up: SocketAddr,
) -> (pylon::Gateway, SocketAddr, SocketAddr) {
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("pylon.toml");
    let text = format!(
        r#"[runtime]
cache-dir = {cache:?}

[[listeners]]
address = "127.0.0.1:0"

[listeners.tls]
{tls_toml}

[[listeners]]
address = "127.0.0.1:0"

[upstreams.u]
targets = ["{up}"]

[plugins.inspector]
component = {inspector:?}

[plugins.gate]
component = {inspector:?}

[[routes]]
id = "admin"
path-prefix = "/admin"
upstream = "u"

[[routes.plugins]]
plugin = "gate"
config = {{ allow-client-dns = ["alice.test"] }}

[[routes]]
id = "r"
path-prefix = "/"
upstream = "u"

[[routes.plugins]]
plugin = "inspector"
"#,
        cache = cache_dir().display().to_string(),
        inspector = plugin("inspector"),
    );
    std::fs::write(&file, text).unwrap();
    let gw = pylon::Gateway::start_from_file(file)
        .await
        .unwrap_or_else(|e| panic!("{}", pylon::error::ErrorChain(&e)));
    let (tls, plain) = (gw.local_addrs()[0], gw.local_addrs()[1]);
    (gw, tls, plain)
}

/// What the inspector answered on `stream` for `path`.
async fn inspected(stream: TlsStream<TcpStream>, path: &str) -> serde_json::Value {
    let (status, body) = get(stream, "api.test", path).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// 18.3: the verified client certificate reaches plugins (`request.client-identity`),
/// exactly, over HTTP/2 and HTTP/1.1, with `client-auth` required or
/// optional; none without a certificate or on a plain listener; and a
/// plugin can decide on it.
#[tokio::test]
async fn plugins_read_the_verified_client_certificate_and_can_refuse_it() {
    let up = Upstream::named("up").await;
    let pki = Pki::new("edge");
    let clients = Pki::new("clients");
    let server = pki.issue("api", "api", &["api.test"], false);
    let alice = clients.issue_valid(
        "alice",
        "alice",
        &["alice.test", "alice.example", "uri:spiffe://acme/alice"],
        true,
        Some((2020, 2040)),
    );
    let bob = clients.issue("bob", "bob", &["bob.test"], true);
    let der = CertificateDer::pem_file_iter(&alice.cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let alice_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der.as_ref()));
    let expected = serde_json::json!({
        "subject": "CN=alice",
        "dns_names": ["alice.test", "alice.example"],
        "uris": ["spiffe://acme/alice"],
        "sha256": alice_sha256,
        "not_after": 2_208_988_800_i64, // 2040-01-01T00:00:00Z
    });

    for mode in ["required", "optional"] {
        let tls = format!(
            "{}\nclient-auth = \"{mode}\"\nclient-ca = {:?}",
            certs_toml(&[&server]),
            clients.ca
        );
        let (gw, addr, plain) = identity_gateway(&tls, up.addr).await;
        for alpn in [&b"h2"[..], b"http/1.1"] {
            let stream = connect(addr, "api.test", client_config(&pki, &[alpn], Some(&alice)))
                .await
                .unwrap();
            let seen = inspected(stream, "/who").await;
            assert_eq!(seen["scheme"], "https", "{mode}");
            assert_eq!(seen["client_identity"], expected, "{mode}, {alpn:?}");
        }

        // The gate: a trusted certificate without an allowed name is refused
        // by the plugin; the allowed one passes (the inspector answers).
        let as_bob = connect(addr, "api.test", client_config(&pki, &[], Some(&bob)))
            .await
            .unwrap();
        let (status, body) = get(as_bob, "api.test", "/admin/x").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{mode}");
        assert_eq!(body, "client certificate not allowed");
        let as_alice = connect(addr, "api.test", client_config(&pki, &[], Some(&alice)))
            .await
            .unwrap();
        assert_eq!(
            get(as_alice, "api.test", "/admin/x").await.0,
            StatusCode::OK
        );

        if mode == "optional" {
            let anonymous = connect(addr, "api.test", client_config(&pki, &[], None))
                .await
                .unwrap();
            let seen = inspected(anonymous, "/who").await;
            assert_eq!(seen["scheme"], "https");
            assert_eq!(seen.get("client_identity"), Some(&serde_json::Value::Null));
            let anonymous = connect(addr, "api.test", client_config(&pki, &[], None))
                .await
                .unwrap();
            let (status, _) = get(anonymous, "api.test", "/admin/x").await;
            assert_eq!(status, StatusCode::FORBIDDEN, "no certificate, no entry");
        }

        // The plain listener of the same gateway: no TLS, no identity.
        let seen: serde_json::Value = crate::harness::client()
            .get(format!("http://{plain}/who"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen["scheme"], "http");
        assert_eq!(seen.get("client_identity"), Some(&serde_json::Value::Null));
        let refused = crate::harness::client()
            .get(format!("http://{plain}/admin/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        gw.shutdown(std::time::Duration::from_secs(1)).await;
    }
}

/// An HTTPS upstream with its own PKI, answering with the SNI it saw.
async fn tls_upstream(pki: &Pki, names: &[&str], client_ca: Option<&Path>) -> SocketAddr {
    let issued = pki.issue("upstream", "upstream", names, false);
    let certs: Vec<_> = CertificateDer::pem_file_iter(&issued.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&issued.key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap(),
            )
        }
    };
    let mut config = builder.with_single_cert(certs, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
                let client = tls.get_ref().1.peer_certificates().is_some();
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body =
                        format!("sni={sni} client-cert={client} version={:?}", req.version());
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

async fn plain_gateway(upstream_toml: &str) -> crate::harness::TestGateway {
    crate::harness::TestGateway::start(&format!(
        "{upstream_toml}\n\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n"
    ))
    .await
}

#[tokio::test]
async fn upstreams_over_tls_verify_the_server_and_can_present_a_client_certificate() {
    let pki = Pki::new("backend");
    let clients = Pki::new("gateways");
    let up = tls_upstream(&pki, &["backend.internal"], Some(&clients.ca)).await;
    let me = clients.issue("gw", "gw", &["gw.internal"], true);
    let gw = plain_gateway(&format!(
        "[upstreams.u]\ntargets = [\"{up}\"]\ntls = {{ ca = {:?}, server-name = \"backend.internal\", client-cert = {:?}, client-key = {:?} }}",
        pki.ca, me.cert, me.key
    ))
    .await;
    let resp = crate::harness::client()
        .get(gw.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        "sni=backend.internal client-cert=true version=HTTP/1.1"
    );

    // An upstream whose certificate no trusted CA signed: 502, nothing sent.
    let untrusted = tls_upstream(&Pki::new("rogue"), &["backend.internal"], None).await;
    let gw = plain_gateway(&format!(
        "[upstreams.u]\ntargets = [\"{untrusted}\"]\ntls = {{ ca = {:?}, server-name = \"backend.internal\" }}",
        pki.ca
    ))
    .await;
    assert_eq!(
        status_of(crate::harness::client().get(gw.url("/"))).await,
        502
    );
    // And a name the certificate does not carry: 502 too.
    let gw = plain_gateway(&format!(
        "[upstreams.u]\ntargets = [\"{up}\"]\ntls = {{ ca = {:?}, server-name = \"other.internal\" }}",
        pki.ca
    ))
    .await;
    assert_eq!(
        status_of(crate::harness::client().get(gw.url("/"))).await,
        502
    );
}

#[tokio::test]
async fn h2_upstreams_over_tls_and_plugin_calls_use_the_upstream_tls() {
    let pki = Pki::new("backend");
    let up = tls_upstream(&pki, &["backend.internal"], None).await;
    // gRPC's transport: HTTP/2 agreed by ALPN.
    let gw = plain_gateway(&format!(
        "[upstreams.u]\ntargets = [\"{up}\"]\nprotocol = \"h2\"\ntls = {{ ca = {:?}, server-name = \"backend.internal\" }}",
        pki.ca
    ))
    .await;
    for _ in 0..3 {
        let resp = crate::harness::client()
            .get(gw.url("/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.text().await.unwrap(),
            "sni=backend.internal client-cert=false version=HTTP/2.0"
        );
    }

    // A plugin's outbound call to the same upstream verifies the same way:
    // `good` trusts the CA, `rogue` does not.
    let gw = crate::harness::TestGateway::start(&format!(
        r#"
[upstreams.good]
targets = ["{up}"]
tls = {{ ca = {ca:?}, server-name = "backend.internal" }}
[upstreams.rogue]
targets = ["{up}"]
tls = {{ server-name = "backend.internal" }}
[plugins.fanout]
component = {comp:?}
capabilities = ["http"]
http-upstreams = ["good", "rogue"]
deadline = "5s"

[[routes]]
id = "agg"
path = "/agg"
[[routes.plugins]]
plugin = "fanout"
config = {{ upstreams = ["good", "rogue"], path = "/x" }}
"#,
        ca = pki.ca,
        comp = crate::harness::plugin("fanout"),
    ))
    .await;
    let resp = crate::harness::client()
        .get(gw.url("/agg"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(
        v[0],
        serde_json::json!([
            "good",
            200,
            "sni=backend.internal client-cert=false version=HTTP/1.1"
        ])
    );
    assert_eq!(v[1][0], "rogue");
    assert!(v[1][1].is_null(), "{v}");
    assert!(v[1][2].as_str().unwrap().starts_with("failed"), "{v}");
}

#[tokio::test]
async fn insecure_skip_verify_is_explicit() {
    let up = tls_upstream(&Pki::new("self-signed"), &["whatever.internal"], None).await;
    let gw = plain_gateway(&format!(
        "[upstreams.u]\ntargets = [\"{up}\"]\ntls = {{ insecure-skip-verify = true }}"
    ))
    .await;
    assert_eq!(
        status_of(crate::harness::client().get(gw.url("/"))).await,
        200
    );
    // Without it the same upstream is refused.
    let gw = plain_gateway(&format!("[upstreams.u]\ntargets = [\"{up}\"]\ntls = true")).await;
    assert_eq!(
        status_of(crate::harness::client().get(gw.url("/"))).await,
        502
    );
}

#[tokio::test]
async fn a_bad_certificate_in_a_reload_keeps_the_old_one_serving_under_load() {
    use std::sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let up = Upstream::named("up").await;
    let pki = Pki::new("edge");
    let first = pki.issue("first", "first", &["api.test", "first.test"], false);
    let (gw, addr, _) = gateway(&certs_toml(&[&first]), up.addr).await;
    // Every request a full handshake, so each sees the certificate in force.
    let mut config = (*client_config(&pki, &[b"h2", b"http/1.1"], None)).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failures, config) =
            (stop.clone(), ok.clone(), failures.clone(), config.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let result = async {
                    let s = connect(addr, "api.test", config.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    let names = served_names(&s);
                    let (status, body) = get(s, "api.test", "/").await;
                    if status != StatusCode::OK
                        || &body[..] != b"up"
                        || names != ["api.test", "first.test"]
                    {
                        return Err(format!("{status} {body:?} {names:?}"));
                    }
                    Ok::<_, String>(())
                }
                .await;
                match result {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    let served_more = async |by: usize| {
        let target = ok.load(Ordering::Relaxed) + by;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while ok.load(Ordering::Relaxed) < target {
            assert!(std::time::Instant::now() < deadline, "load stalled");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    served_more(20).await;

    let original = (
        std::fs::read(&first.cert).unwrap(),
        std::fs::read(&first.key).unwrap(),
    );
    let restore = || {
        std::fs::write(&first.cert, &original.0).unwrap();
        std::fs::write(&first.key, &original.1).unwrap();
    };
    let expired = pki.issue_valid("old", "old", &["api.test"], false, Some((2001, 2002)));
    let other = pki.issue("other", "other", &["api.test"], false);
    let broken: [(&dyn Fn(), &str); 3] = [
        (
            &|| {
                std::fs::copy(&expired.cert, &first.cert).unwrap();
                std::fs::copy(&expired.key, &first.key).unwrap();
            },
            "expired on 2002-01-01",
        ),
        (
            &|| {
                std::fs::copy(&other.cert, &first.cert).unwrap();
            },
            "first.key",
        ),
        (
            &|| {
                std::fs::remove_file(&first.key).unwrap();
            },
            "first.key",
        ),
    ];
    for (breaks, expect) in broken {
        breaks();
        let err = gw.reload().await.unwrap_err().to_string();
        assert!(err.contains(expect) && err.contains("127.0.0.1"), "{err}");
        served_more(20).await;
        restore();
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) >= 80);
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_garbage_handshake_flood_does_not_stop_other_clients() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::named("up").await;
    let pki = Pki::new("edge");
    let api = pki.issue("api", "api", &["api.test"], false);
    let (gw, addr, _) =
        gateway_with("header-timeout = \"2s\"", &certs_toml(&[&api]), up.addr).await;

    // Clients that connect and never send a byte: held only until the
    // handshake timeout (the listener's header-timeout).
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // Clients that send garbage, reconnecting as fast as they can: not TLS
    // at all, and a TLS record header announcing a huge handshake.
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    for i in 0..16 {
        let stop = stop.clone();
        flood.push(tokio::spawn(async move {
            let garbage: Vec<u8> = if i % 2 == 0 {
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64)
            } else {
                let mut g = vec![0x16, 0x03, 0x01, 0xff, 0xff];
                g.extend((0..4096u32).map(|n| (n.wrapping_mul(2_654_435_761) >> 24) as u8));
                g
            };
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    continue;
                };
                let _ = s.write_all(&garbage).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                rounds += 1;
            }
            rounds
        }));
    }
    let client = client_config(&pki, &[b"h2", b"http/1.1"], None);
    for _ in 0..20 {
        let served = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let s = connect(addr, "api.test", client.clone()).await.unwrap();
            get(s, "api.test", "/").await
        })
        .await
        .expect("a real client was not served within 10 s during the flood");
        assert_eq!(served, (StatusCode::OK, Bytes::from_static(b"up")));
    }
    stop.store(true, Ordering::Relaxed);
    let mut rounds = 0;
    for f in flood {
        rounds += f.await.unwrap();
    }
    assert!(rounds >= 16, "the flood made only {rounds} connections");
    for mut s in silent {
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a silent connection outlived the handshake timeout by 8 s");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }
    wait_metric(
        &gw,
        "pylon_tls_handshakes_total{result=\"protocol_error\"}",
        16.0,
    )
    .await;
    wait_metric(&gw, "pylon_tls_handshakes_total{result=\"timeout\"}", 50.0).await;
    wait_metric(&gw, "pylon_tls_handshakes_total{result=\"success\"}", 20.0).await;
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

/// `pylon run` from the binary, reached with curl over HTTP/2 and HTTP/1.1,
/// verifying the certificate (`--cacert`) for a name pinned with `--resolve`.
#[test]
fn curl_reaches_the_real_binary_over_https_h2_and_http1() {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
        time::{Duration, Instant},
    };
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl is not installed: skipping (.ci/run installs it)");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::with(|seen| async move {
        let proto = seen.headers["x-forwarded-proto"]
            .to_str()
            .unwrap()
            .to_owned();
        http::Response::new(Full::new(Bytes::from(proto)))
    }));
    let pki = Pki::new("edge");
    let api = pki.issue("api", "api", &["api.test"], false);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = pki.dir.path().join("pylon.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\ncache-dir = \"\"\n[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[listeners.tls]\n{}\n\
             [upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
            certs_toml(&[&api]),
            up.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pylon"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "pylon never logged \"listening\""
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100))
            && line.contains("listening")
        {
            break;
        }
    }
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--max-time",
                "20",
                flag,
                "--cacert",
            ])
            .arg(&pki.ca)
            .args(["--resolve", &format!("api.test:{port}:127.0.0.1")])
            .args(["--write-out", " %{http_version}"])
            .arg(format!("https://api.test:{port}/x"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("https {version}")
        );
    }
    // openssl's client: the chain verifies for the name, ALPN picks h2.
    if Command::new("openssl").arg("version").output().is_ok() {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "api.test", "-verify_hostname", "api.test"])
            .args(["-alpn", "h2,http/1.1", "-verify_return_error", "-CAfile"])
            .arg(&pki.ca)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Verify return code: 0 (ok)") && text.contains("ALPN protocol: h2"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Send `head` (a request head without the final blank line) with
/// `Connection: close` on a plain TCP connection; the whole response.
async fn raw(addr: SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("answered within 20 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn location(response: &str) -> Option<&str> {
    response
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .map(str::trim_end)
}

#[tokio::test]
async fn redirect_to_https_answers_308_to_the_host_asked_and_never_proxies() {
    let up = Upstream::named("up").await;
    let gw = crate::harness::TestGateway::start(&format!(
        "redirect-to-https = 8443\n\n[upstreams.u]\ntargets = [\"{}\"]\n\n\
         [[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
        up.addr
    ))
    .await;
    // The method and body are the client's to repeat: 308, not 301.
    let resp = raw(
        gw.addr,
        "POST /a/b?x=1&y=%2F HTTP/1.1\r\nHost: api.test:8080\r\nContent-Length: 4\r\n\r\nbody",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 308"), "{resp}");
    assert_eq!(location(&resp), Some("https://api.test:8443/a/b?x=1&y=%2F"));
    let resp = raw(gw.addr, "GET / HTTP/1.1\r\nHost: [::1]").await;
    assert_eq!(location(&resp), Some("https://[::1]:8443/"), "{resp}");
    // HTTP/2 (prior knowledge): the :authority is the host.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = h2.get(gw.url("/h2?q")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(resp.headers()["location"], "https://127.0.0.1:8443/h2?q");

    // Whatever the Host says, Location names that host or there is no
    // Location: no header injection, no redirect to another host.
    for host in [
        "Host: evil.test@api.test",
        "Host: api.test:99999",
        "Host: api.test:0",
        "Host: api.test/evil.test",
        "Host: api.test%2F@evil.test",
        "Host: api.test\r\nHost: evil.test",
        "Host: api.test\r\n Location: https://evil.test",
        "Host: api.test\rLocation: https://evil.test",
        "Host: api.test, evil.test",
        "X-No-Host: 1",
    ] {
        let resp = raw(gw.addr, &format!("GET / HTTP/1.1\r\n{host}")).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{host:?}: {resp}");
        assert_eq!(location(&resp), None, "{host:?}: {resp}");
    }
    assert!(up.seen().is_empty(), "a redirecting listener never proxies");
    gw.gateway.shutdown(std::time::Duration::from_secs(1)).await;

    // `true`: the default HTTPS port, left out of Location.
    let gw = crate::harness::TestGateway::start("redirect-to-https = true\n").await;
    let resp = raw(gw.addr, "GET /x HTTP/1.1\r\nHost: api.test:8080").await;
    assert_eq!(location(&resp), Some("https://api.test/x"), "{resp}");
    gw.gateway.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn hsts_is_sent_on_every_response_of_a_tls_listener() {
    let up = Upstream::named("up").await;
    let pki = Pki::new("edge");
    let api = pki.issue("api", "api", &["api.test"], false);
    let (gw, addr, _) = gateway_with(
        "hsts = \"max-age=31536000; includeSubDomains; preload\"",
        &certs_toml(&[&api]),
        up.addr,
    )
    .await;
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let tls = connect(addr, "api.test", client_config(&pki, &[alpn], None))
            .await
            .unwrap();
        let resp = send(tls, "api.test", "/x").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["strict-transport-security"],
            "max-age=31536000; includeSubDomains; preload"
        );
    }
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[test]
fn redirect_and_hsts_settings_are_checked() {
    for (toml, expect) in [
        (
            "redirect-to-https = 0",
            "redirect-to-https must be true or the HTTPS port",
        ),
        (
            "redirect-to-https = 65536",
            "redirect-to-https must be true or the HTTPS port",
        ),
        (
            "redirect-to-https = \"yes\"",
            "expected true, false or the HTTPS port",
        ),
        ("hsts = \"max-age=60\"", "hsts is for a TLS listener"),
    ] {
        let err = crate::harness::parse(toml).unwrap_err().to_string();
        assert!(err.contains(expect), "{toml}: {err}");
    }
    let pki = Pki::new("edge");
    let api = pki.issue("api", "api", &["api.test"], false);
    let tls = format!("\n[listeners.tls]\n{}\n", certs_toml(&[&api]));
    for (toml, expect) in [
        (
            "redirect-to-https = true",
            "redirect-to-https is for a cleartext listener",
        ),
        (
            "hsts = \"includeSubDomains\"",
            "is not a Strict-Transport-Security value",
        ),
        (
            "hsts = \"max-age=soon\"",
            "is not a Strict-Transport-Security value",
        ),
        (
            "hsts = \"max-age=60\\r\\nx: y\"",
            "is not a Strict-Transport-Security value",
        ),
    ] {
        let err = crate::harness::parse(&format!("{toml}\n{tls}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{toml}: {err}");
    }
    assert!(crate::harness::parse(&format!("hsts = \"max-age=0\"\n{tls}")).is_ok());
}

#[tokio::test]
async fn certificate_expiry_is_a_metric_per_listener_and_follows_reloads() {
    use sha2::Digest;
    let up = Upstream::named("up").await;
    let pki = Pki::new("edge");
    let first = pki.issue_valid("first", "first", &["api.test"], false, Some((2020, 2090)));
    let (gw, addr, _file) = gateway_full(
        "[admin]\naddress = \"127.0.0.1:0\"",
        "",
        &certs_toml(&[&first]),
        up.addr,
    )
    .await;
    let sha = |issued: &Issued| {
        let der = CertificateDer::from_pem_file(&issued.cert).unwrap();
        hex::encode(sha2::Sha256::digest(der.as_ref()))
    };
    let series = |issued: &Issued, name: &str| {
        format!(
            "pylon_tls_certificate_expiry_seconds{{listener=\"{addr}\",name=\"{name}\",sha256=\"{}\"}}",
            sha(issued)
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    // 2090-01-01T00:00:00Z.
    let left = metric(&gw, &series(&first, "api.test"));
    assert!((left - (3_786_912_000.0 - now)).abs() < 600.0, "{left}");
    // The admin API names the bound address, not the configured port 0.
    let (status, body) = crate::harness::admin_get(&gw, "/admin/certificates").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["listeners"][0]["listener"], addr.to_string(), "{body}");
    assert_eq!(json["listeners"][0]["configured"], "127.0.0.1:0", "{body}");
    assert_eq!(
        json["listeners"][0]["certificates"][0]["sha256"],
        sha(&first),
        "{body}"
    );

    // Rotated to a certificate expiring in a week: the gauge follows.
    let soon = pki.issue_valid(
        "soon",
        "soon",
        &["api.test"],
        false,
        Some((2020, 7 * 86_400)),
    );
    std::fs::copy(&soon.cert, &first.cert).unwrap();
    std::fs::copy(&soon.key, &first.key).unwrap();
    gw.reload().await.unwrap_or_else(|e| panic!("{e}"));
    let left = metric(&gw, &series(&soon, "api.test"));
    assert!((left - 7.0 * 86_400.0).abs() < 600.0, "{left}");
    let text = gw.metrics().encode();
    assert_eq!(
        text.matches("pylon_tls_certificate_expiry_seconds{")
            .count(),
        1,
        "the replaced certificate's series is gone: {text}"
    );
    // `pylon check`'s warnings name it.
    let config = pylon::config::load(gw.config_path().unwrap()).unwrap();
    let warnings = pylon::tls::expiry_warnings(&config);
    assert!(
        warnings.iter().any(|w| w.contains("first.pem expires on")),
        "{warnings:?}"
    );
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_upstream_client_certificate_is_checked_at_load_like_a_listener_one() {
    let pki = Pki::new("backend");
    let clients = Pki::new("gateways");
    let expired = clients.issue_valid("old", "gw", &["gw.internal"], true, Some((2001, 2002)));
    let soon = clients.issue_valid("soon", "gw", &["gw.internal"], true, Some((2020, 86_400)));
    let good = clients.issue("good", "gw", &["gw.internal"], true);
    let mismatched = Issued {
        cert: good.cert.clone(),
        key: soon.key.clone(),
    };
    let upstream = |c: &Issued| {
        format!(
            "[upstreams.u]\ntargets = [\"127.0.0.1:9\"]\ntls = {{ ca = {:?}, client-cert = {:?}, client-key = {:?} }}\n",
            pki.ca, c.cert, c.key
        )
    };
    for (bad, expect) in [
        (&expired, "expired on 2002-01-01"),
        (&mismatched, "soon.key"),
    ] {
        let config = crate::harness::parse(&upstream(bad)).unwrap();
        let err = start_error(config)
            .await
            .unwrap_or_else(|| panic!("started with a bad client certificate ({expect})"));
        assert!(err.contains(expect) && err.contains("\"u\""), "{err}");
    }
    let config = crate::harness::parse(&upstream(&soon)).unwrap();
    let warnings = pylon::tls::expiry_warnings(&config);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("upstream \"u\"") && w.contains("soon.pem expires on")),
        "{warnings:?}"
    );
}
