//! Plain-HTTP redirects to HTTPS (308 to the host asked, never proxied),
//! HSTS on every response of a TLS listener, and their settings checked.

use std::net::SocketAddr;

use http::StatusCode;
use tokio::net::TcpStream;

use crate::harness::Upstream;

use super::{Pki, certs_toml, client_config, connect, gateway_with, send};

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
