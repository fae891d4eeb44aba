//! Tests of the `cors` policy plugin.

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use crate::harness::{TestGateway, Upstream, client, parse, plugin, start_error};

const APP: &str = "https://app.example.com";

const CONFIG: &str = r#"
allow-origins = ["https://app.example.com", "https://*.example.org"]
allow-methods = ["GET", "PUT"]
allow-headers = ["content-type", "x-trace"]
expose-headers = ["x-total", "x-page"]
allow-credentials = true
max-age = "10m"
"#;

fn toml(up: &Upstream, config: &str) -> String {
    format!(
        r#"
[upstreams.u]
targets = ["{}"]

[plugins.cors]
component = {:?}

[[routes]]
id = "r"
path-prefix = "/"
upstream = "u"

[[routes.plugins]]
plugin = "cors"

[routes.plugins.config]
{config}
"#,
        up.addr,
        plugin("cors")
    )
}

/// An upstream that sets its own (permissive) CORS header and a `Vary`.
async fn upstream() -> Upstream {
    Upstream::with(|_| async {
        Response::builder()
            .header("access-control-allow-origin", "*")
            .header("vary", "Accept-Encoding")
            .body(Full::new(Bytes::from_static(b"data")))
            .unwrap()
    })
    .await
}

async fn gateway(up: &Upstream, config: &str) -> TestGateway {
    TestGateway::start(&toml(up, config)).await
}

fn preflight(
    gw: &TestGateway,
    origin: &str,
    method: &str,
    headers: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut r = client()
        .request(http::Method::OPTIONS, gw.url("/items"))
        .header("origin", origin)
        .header("access-control-request-method", method);
    if let Some(h) = headers {
        r = r.header("access-control-request-headers", h);
    }
    r
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

fn vary(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("vary")
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap()
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn allowed_preflight_is_answered_204_without_the_upstream() {
    let up = upstream().await;
    let gw = gateway(&up, CONFIG).await;
    let r = preflight(&gw, APP, "PUT", Some("Content-Type, X-Trace"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&r, "access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(
        header(&r, "access-control-allow-headers"),
        Some("content-type, x-trace")
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(&r, "access-control-max-age"), Some("600"));
    assert!(vary(&r).contains(&"origin".to_string()), "{:?}", vary(&r));
    assert!(up.seen().is_empty(), "a preflight reached the upstream");
    // No requested headers is fine too.
    let r = preflight(&gw, APP, "GET", None).send().await.unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn preflight_for_a_disallowed_origin_method_or_header_is_403() {
    let up = upstream().await;
    let gw = gateway(&up, CONFIG).await;
    for (origin, method, headers, why) in [
        (
            "https://evil.example.net",
            "GET",
            None,
            "origin not allowed",
        ),
        ("http://app.example.com", "GET", None, "origin not allowed"),
        (APP, "DELETE", None, "method not allowed"),
        (
            APP,
            "PUT",
            Some("content-type, x-secret"),
            "header not allowed",
        ),
    ] {
        let r = preflight(&gw, origin, method, headers)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{origin} {method} {headers:?}");
        assert!(r.headers().get("access-control-allow-origin").is_none());
        assert!(r.headers().get("access-control-allow-methods").is_none());
        assert_eq!(
            r.text().await.unwrap(),
            format!("CORS preflight refused: {why}\n")
        );
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn actual_request_from_an_allowed_origin_gets_cors_headers() {
    let up = upstream().await;
    let gw = gateway(&up, CONFIG).await;
    let r = client()
        .get(gw.url("/items"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some(APP),
        "the origin is echoed, not the upstream's *"
    );
    assert_eq!(
        r.headers()
            .get_all("access-control-allow-origin")
            .iter()
            .count(),
        1
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        header(&r, "access-control-expose-headers"),
        Some("x-total, x-page")
    );
    assert_eq!(
        vary(&r),
        ["accept-encoding", "origin"],
        "the upstream's Vary is kept"
    );
    assert_eq!(r.text().await.unwrap(), "data");
    assert_eq!(up.seen().len(), 1);
    assert_eq!(
        up.last().headers["origin"],
        APP,
        "the Origin header is forwarded"
    );
}

#[tokio::test]
async fn wildcard_patterns_match_any_subdomain_only() {
    let up = upstream().await;
    let gw = gateway(&up, CONFIG).await;
    for (origin, allowed) in [
        ("https://a.example.org", true),
        ("https://deep.sub.example.org", true),
        ("https://example.org", false),
        ("http://a.example.org", false),
        ("https://a.example.org:8443", false),
        ("https://evilexample.org", false),
        ("https://a.example.org.evil.net", false),
    ] {
        let r = client()
            .get(gw.url("/"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        let acao = header(&r, "access-control-allow-origin").map(str::to_string);
        assert_eq!(acao, allowed.then(|| origin.to_string()), "{origin}");
        let r = preflight(&gw, origin, "GET", None).send().await.unwrap();
        assert_eq!(r.status(), if allowed { 204 } else { 403 }, "{origin}");
    }
}

#[tokio::test]
async fn disallowed_origin_passes_through_without_cors_headers() {
    let up = upstream().await;
    let gw = gateway(&up, CONFIG).await;
    let r = client()
        .get(gw.url("/items"))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for name in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-expose-headers",
    ] {
        assert!(r.headers().get(name).is_none(), "{name}: {:?}", r.headers());
    }
    assert!(vary(&r).contains(&"origin".to_string()));
    assert_eq!(r.text().await.unwrap(), "data");
    // Without an Origin the request is not cross-origin: nothing changes
    // but Vary.
    let r = client().get(gw.url("/items")).send().await.unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    assert_eq!(vary(&r), ["accept-encoding", "origin"]);
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn options_without_a_request_method_is_not_a_preflight() {
    let up = upstream().await;
    let gw = gateway(&up, CONFIG).await;
    let r = client()
        .request(http::Method::OPTIONS, gw.url("/items"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "data");
    assert_eq!(up.last().method, http::Method::OPTIONS);
}

#[tokio::test]
async fn any_origin_answers_star_and_wildcard_lists() {
    let up = upstream().await;
    let gw = gateway(
        &up,
        "allow-origins = [\"*\"]\nallow-methods = [\"*\"]\nallow-headers = [\"*\"]\nmax-age = 30",
    )
    .await;
    let r = preflight(&gw, "https://anyone.test", "PATCH", Some("x-anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&r, "access-control-allow-methods"), Some("*"));
    assert_eq!(header(&r, "access-control-allow-headers"), Some("*"));
    assert_eq!(header(&r, "access-control-max-age"), Some("30"));
    assert!(
        r.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    assert!(r.headers().get("vary").is_none());
    let r = client()
        .get(gw.url("/"))
        .header("origin", "https://anyone.test")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    assert_eq!(vary(&r), ["accept-encoding"]);
}

#[tokio::test]
async fn with_credentials_wildcard_methods_and_headers_are_echoed() {
    let up = upstream().await;
    let gw = gateway(
        &up,
        "allow-origins = [\"https://app.example.com\"]\nallow-methods = [\"*\"]\nallow-headers = [\"*\"]\nallow-credentials = true",
    )
    .await;
    let r = preflight(&gw, APP, "PATCH", Some("x-a, x-b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&r, "access-control-allow-methods"), Some("PATCH"));
    assert_eq!(header(&r, "access-control-allow-headers"), Some("x-a, x-b"));
    assert!(r.headers().get("access-control-max-age").is_none());
}

/// The message `Gateway::start` gives for a cors config `config`.
async fn rejection(config: &str) -> String {
    let up = Upstream::named("unused").await;
    let cfg = parse(&toml(&up, config)).unwrap_or_else(|e| panic!("{e}"));
    start_error(cfg)
        .await
        .unwrap_or_else(|| panic!("config accepted: {config}"))
}

#[tokio::test]
async fn invalid_configs_are_rejected_naming_the_key() {
    for (config, needle) in [
        (
            "allow-origins = [\"*\"]\nallow-credentials = true",
            "invalid cors config: allow-credentials: cannot be true with allow-origins = [\"*\"]",
        ),
        (
            "allow-origins = []",
            "allow-origins: at least one origin is needed",
        ),
        (
            "allow-origins = [\"https://ok.test\", \"app.example.com\"]",
            "allow-origins[1]: \"app.example.com\" is not an origin",
        ),
        (
            "allow-origins = [\"https://app.example.com/\"]",
            "must be scheme://host[:port], without a path",
        ),
        (
            "allow-origins = [\"https://a.*.example.com\"]",
            "may use \"*\" only as its first label",
        ),
        (
            "allow-origins = [\"*\"]\nallow-headers = [\"x y\"]",
            "allow-headers[0]: \"x y\" is not a valid name",
        ),
        (
            "allow-origins = [\"*\"]\nmax-age = \"a while\"",
            "max-age: \"a while\" is not a duration",
        ),
        (
            "allow-origins = [\"*\"]\norigins = []",
            "unknown field `origins`",
        ),
        ("allow-methods = [\"GET\"]", "missing field `allow-origins`"),
    ] {
        let err = rejection(config).await;
        assert!(err.contains("route \"r\", plugin \"cors\""), "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}
