//! Tests of the `cache` policy plugin.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use crate::harness::{Seen, TestGateway, Upstream, client, one_plugin_route, parse, start_error};

/// An upstream whose answer depends on the path (see the match), each body
/// ending in ` #<n>`, `n` counting the upstream's answers, so a body shows
/// which upstream call produced it.
async fn upstream() -> Upstream {
    let calls = Arc::new(AtomicUsize::new(0));
    Upstream::with(move |seen: Seen| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let lang = seen
                .headers
                .get("accept-language")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let mut b = Response::builder().header("content-type", "text/plain");
            let path = seen.uri.path().to_string();
            let mut body = format!("{path} #{n}");
            match path.as_str() {
                "/lang" => {
                    b = b.header("vary", "Accept-Language");
                    body = format!("lang={lang} #{n}");
                }
                "/vary-other" => b = b.header("vary", "x-other"),
                "/no-store" => b = b.header("cache-control", "no-store"),
                "/private" => b = b.header("cache-control", "private, max-age=60"),
                "/no-cache" => b = b.header("cache-control", "no-cache"),
                "/max0" => b = b.header("cache-control", "max-age=0"),
                "/smax" => b = b.header("cache-control", "max-age=0, s-maxage=60"),
                "/smax0" => b = b.header("cache-control", "max-age=60, s-maxage=0"),
                "/long" => b = b.header("cache-control", "max-age=3600"),
                "/aged" => b = b.header("cache-control", "max-age=60").header("age", "5"),
                "/cookie" => b = b.header("set-cookie", "session=1"),
                "/public" => b = b.header("cache-control", "public"),
                "/missing" => b = b.status(404),
                "/error" => b = b.status(500),
                "/big" => body = "x".repeat(4096),
                _ => {}
            }
            b.header("x-upstream-call", n.to_string())
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        }
    })
    .await
}

fn toml(up: &Upstream, capabilities: &str, config: &str) -> String {
    let def_extra = format!("capabilities = {capabilities}");
    one_plugin_route(&up.addr.to_string(), "cache", &def_extra, config)
}

async fn gateway(up: &Upstream, config: &str) -> TestGateway {
    TestGateway::start(&toml(up, r#"["kv", "clock"]"#, config)).await
}

/// `(X-Cache, body)` of a request.
async fn fetch(req: reqwest::RequestBuilder) -> (String, String) {
    let r = req.send().await.unwrap();
    assert!(
        r.status().is_success() || r.status() == 404 || r.status() == 500,
        "{}",
        r.status()
    );
    let x = r
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (x, r.text().await.unwrap())
}

async fn get(gw: &TestGateway, path: &str) -> (String, String) {
    fetch(client().get(gw.url(path))).await
}

fn calls(up: &Upstream, path: &str) -> usize {
    up.seen().iter().filter(|s| s.uri.path() == path).count()
}

#[tokio::test]
async fn miss_then_hit_calls_the_upstream_once() {
    let up = upstream().await;
    let gw = gateway(&up, "").await;
    assert_eq!(
        get(&gw, "/plain").await,
        ("MISS".into(), "/plain #1".into())
    );
    let r = client().get(gw.url("/plain")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(r.headers()["age"], "0");
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.headers()["x-upstream-call"], "1");
    assert_eq!(r.headers()["content-length"], "9");
    assert_eq!(r.text().await.unwrap(), "/plain #1");
    assert_eq!(calls(&up, "/plain"), 1);
    // The query is part of the key.
    assert_eq!(get(&gw, "/plain?page=2").await.0, "MISS");
    assert_eq!(get(&gw, "/plain?page=2").await.0, "HIT");
    assert_eq!(get(&gw, "/plain?page=3").await.0, "MISS");
    assert_eq!(calls(&up, "/plain"), 3);
}

#[tokio::test]
async fn vary_headers_separate_entries() {
    let up = upstream().await;
    let gw = gateway(&up, "vary = [\"accept-language\"]").await;
    let lang = |l: &'static str| fetch(client().get(gw.url("/lang")).header("accept-language", l));
    assert_eq!(lang("en").await, ("MISS".into(), "lang=en #1".into()));
    assert_eq!(lang("fr").await, ("MISS".into(), "lang=fr #2".into()));
    assert_eq!(lang("en").await, ("HIT".into(), "lang=en #1".into()));
    assert_eq!(lang("fr").await, ("HIT".into(), "lang=fr #2".into()));
    // Absent is its own entry too.
    assert_eq!(get(&gw, "/lang").await, ("MISS".into(), "lang= #3".into()));
    assert_eq!(get(&gw, "/lang").await.0, "HIT");
    // A response varying on a header the key does not include is not stored.
    assert_eq!(get(&gw, "/vary-other").await.0, "BYPASS");
    assert_eq!(get(&gw, "/vary-other").await.0, "BYPASS");
    assert_eq!(up.seen().len(), 5);
}

#[tokio::test]
async fn no_store_private_no_cache_and_max_age_zero_are_not_stored() {
    let up = upstream().await;
    let gw = gateway(&up, "").await;
    for path in [
        "/no-store",
        "/private",
        "/no-cache",
        "/max0",
        "/cookie",
        "/error",
    ] {
        for _ in 0..2 {
            assert_eq!(get(&gw, path).await.0, "BYPASS", "{path}");
        }
        assert_eq!(calls(&up, path), 2, "{path}");
    }
    // 404 is cacheable.
    assert_eq!(get(&gw, "/missing").await.0, "MISS");
    assert_eq!(get(&gw, "/missing").await.0, "HIT");
}

#[tokio::test]
async fn s_maxage_takes_precedence_over_max_age() {
    let up = upstream().await;
    let gw = gateway(&up, "").await;
    assert_eq!(get(&gw, "/smax").await.0, "MISS");
    assert_eq!(get(&gw, "/smax").await, ("HIT".into(), "/smax #1".into()));
    assert_eq!(get(&gw, "/smax0").await.0, "BYPASS");
    assert_eq!(get(&gw, "/smax0").await.0, "BYPASS");
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn entries_expire_after_the_default_ttl_and_max_ttl() {
    let up = upstream().await;
    let gw = gateway(&up, "ttl = \"1s\"\nmax-ttl = \"1s\"").await;
    // `/plain` states no freshness (default ttl); `/long` says an hour
    // (capped by max-ttl).
    for path in ["/plain", "/long"] {
        assert_eq!(get(&gw, path).await.0, "MISS");
        assert_eq!(get(&gw, path).await.0, "HIT");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for path in ["/plain", "/long"] {
        assert_eq!(get(&gw, path).await.0, "MISS", "{path}");
        assert_eq!(calls(&up, path), 2);
    }
}

#[tokio::test]
async fn post_is_not_cached_unless_configured() {
    let up = upstream().await;
    let gw = gateway(&up, "").await;
    for _ in 0..2 {
        assert_eq!(
            fetch(client().post(gw.url("/plain")).body("x")).await.0,
            "BYPASS"
        );
    }
    assert_eq!(calls(&up, "/plain"), 2);
    // A GET entry does not answer a POST either.
    assert_eq!(get(&gw, "/plain").await.0, "MISS");
    assert_eq!(fetch(client().post(gw.url("/plain"))).await.0, "BYPASS");
    assert_eq!(calls(&up, "/plain"), 4);
}

#[tokio::test]
async fn head_is_served_from_the_get_entry_and_never_stored() {
    let up = upstream().await;
    let gw = gateway(&up, "").await;
    assert_eq!(
        get(&gw, "/plain").await,
        ("MISS".into(), "/plain #1".into())
    );
    let r = client().head(gw.url("/plain")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(
        r.headers()["content-length"],
        "9",
        "HEAD tells the GET body's length"
    );
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    assert_eq!(calls(&up, "/plain"), 1);
    // A HEAD miss goes upstream and stores nothing: the GET still misses.
    let r = client().head(gw.url("/long")).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(get(&gw, "/long").await.0, "MISS");
    let seen: Vec<_> = up
        .seen()
        .iter()
        .filter(|s| s.uri.path() == "/long")
        .map(|s| s.method.clone())
        .collect();
    assert_eq!(seen, [http::Method::HEAD, http::Method::GET]);
}

#[tokio::test]
async fn oversized_responses_pass_through_unstored() {
    let up = upstream().await;
    let gw = gateway(&up, "max-entry-size = \"1KiB\"").await;
    for _ in 0..2 {
        let (x, body) = get(&gw, "/big").await;
        assert_eq!(x, "BYPASS");
        assert_eq!(body.len(), 4096);
    }
    assert_eq!(calls(&up, "/big"), 2);
    assert_eq!(get(&gw, "/plain").await.0, "MISS");
    assert_eq!(get(&gw, "/plain").await.0, "HIT");
}

#[tokio::test]
async fn age_counts_the_upstream_age_and_time_in_cache() {
    let up = upstream().await;
    let gw = gateway(&up, "").await;
    let r = client().get(gw.url("/aged")).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(
        r.headers()["age"],
        "5",
        "the upstream's own Age passes through"
    );
    let r = client().get(gw.url("/aged")).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(r.headers()["age"], "5");
    assert_eq!(r.headers().get_all("age").iter().count(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = client().get(gw.url("/aged")).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(r.headers()["age"], "6");
}

#[tokio::test]
async fn request_no_cache_and_no_store_bypass_the_cache() {
    let up = upstream().await;
    let gw = gateway(&up, "").await;
    assert_eq!(get(&gw, "/plain").await.0, "MISS");
    for cc in ["no-cache", "no-store", "max-age=0, no-cache"] {
        let (x, body) = fetch(client().get(gw.url("/plain")).header("cache-control", cc)).await;
        assert_eq!(x, "BYPASS", "{cc}");
        assert!(!body.ends_with("#1"), "{cc} was served from the cache");
    }
    let (x, _) = fetch(client().get(gw.url("/plain")).header("pragma", "no-cache")).await;
    assert_eq!(x, "BYPASS");
    // The stored entry is untouched.
    assert_eq!(get(&gw, "/plain").await, ("HIT".into(), "/plain #1".into()));
}

#[tokio::test]
async fn authorized_requests_are_stored_only_when_the_response_is_public() {
    let up = upstream().await;
    let gw = gateway(&up, "").await;
    let authed = |p: &str| fetch(client().get(gw.url(p)).header("authorization", "Bearer t"));
    assert_eq!(authed("/plain").await.0, "BYPASS");
    assert_eq!(authed("/plain").await.0, "BYPASS");
    assert_eq!(authed("/public").await.0, "MISS");
    assert_eq!(authed("/public").await.0, "HIT");
}

#[tokio::test]
async fn without_kv_every_request_goes_upstream() {
    let up = upstream().await;
    let gw = TestGateway::start(&toml(&up, r#"["clock"]"#, "")).await;
    for n in 1..=2 {
        let (x, body) = get(&gw, "/plain").await;
        assert_eq!(x, "MISS");
        assert_eq!(body, format!("/plain #{n}"));
    }
}

/// The message `Gateway::start` gives for a cache config `config`.
async fn rejection(config: &str) -> String {
    let up = Upstream::named("unused").await;
    let cfg = parse(&toml(&up, r#"["kv", "clock"]"#, config)).unwrap_or_else(|e| panic!("{e}"));
    start_error(cfg)
        .await
        .unwrap_or_else(|| panic!("config accepted: {config}"))
}

#[tokio::test]
async fn invalid_configs_are_rejected_naming_the_key() {
    for (config, needle) in [
        (
            "ttl = \"forever\"",
            "invalid cache config: ttl: \"forever\" is not a duration",
        ),
        (
            "ttl = \"2h\"",
            "ttl: 7200000ms is longer than max-ttl (3600000ms)",
        ),
        (
            "vary = [\"accept language\"]",
            "vary[0]: \"accept language\" is not a valid header name",
        ),
        ("statuses = [200, 206]", "statuses[1]: 206 cannot be cached"),
        (
            "max-entry-size = \"huge\"",
            "max-entry-size: \"huge\" is not a size",
        ),
        ("methods = []", "methods: at least one method is needed"),
        ("ttl-seconds = 5", "unknown field `ttl-seconds`"),
    ] {
        let err = rejection(config).await;
        assert!(err.contains("route \"r\", plugin \"cache\""), "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}
