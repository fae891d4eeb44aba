//! Upstreams over TLS: the server verified, a client certificate presented
//! (and checked at load), HTTP/2 upstreams and plugin calls over the
//! upstream's TLS, and the explicit insecure-skip-verify.

use std::{net::SocketAddr, path::Path, sync::Arc};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::harness::{start_error, status_of};

use super::{Issued, Pki, provider};

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
