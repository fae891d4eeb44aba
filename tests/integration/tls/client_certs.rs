//! Client certificates at a TLS listener: required or optional, and the
//! verified identity as plugins read it (and may refuse it).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::harness::{Upstream, cache_dir, plugin};

use super::{Issued, Pki, certs_toml, client_config, connect, gateway, get};

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
