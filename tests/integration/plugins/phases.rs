//! The contract's decisions in the pipeline: a response from the request
//! phase, header edits in pipeline order (called or fixed), phases skipped
//! when not needed, bodies only when asked, the response phase, responses
//! over the plugin limit, and the Host header of HTTP/2 requests.

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::Value;

use crate::harness::{TestGateway, Upstream, client, status_of};

use super::{def, gateway};

#[tokio::test]
async fn respond_in_request_phase_skips_upstream() {
    let up = Upstream::named("upstream").await;
    let gw = gateway(
        &up,
        &def("inspector", "inspector", ""),
        "[[routes.plugins]]\nplugin = \"inspector\"\n",
    )
    .await;
    let r = client()
        .get(gw.url("/items/42?full=1"))
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("x-bin", http::HeaderValue::from_bytes(b"\xff\xfe").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(up.seen().is_empty(), "upstream was called");
    assert_eq!(v["route"], "r");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/items/42");
    assert_eq!(v["query"], "full=1");
    assert_eq!(v["scheme"], "http");
    assert_eq!(
        v.get("client_identity"),
        Some(&Value::Null),
        "a plain-HTTP listener has no client certificate"
    );
    assert_eq!(v["params"], serde_json::json!([["id", "42"]]));
    assert!(v["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(
        v["body_len"],
        Value::Null,
        "body passed without being asked for"
    );
    let headers = v["headers"].as_array().unwrap();
    let multi: Vec<_> = headers
        .iter()
        .filter(|h| h[0] == "x-multi")
        .map(|h| h[1].clone())
        .collect();
    assert_eq!(multi, ["one", "two"], "repeated headers must survive");
    let bin = headers.iter().find(|h| h[0] == "x-bin").unwrap();
    assert_eq!(
        bin[1]["base64"], "//4=",
        "non-UTF-8 header bytes must survive"
    );
}

#[tokio::test]
async fn request_and_response_header_edits_apply_in_pipeline_order() {
    let up = Upstream::with(|_| async {
        Response::builder()
            .header("server", "backend/1.0")
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap()
    })
    .await;
    let gw = gateway(
        &up,
        &(def("h1", "headers", "") + &def("h2", "headers", "")),
        r#"
[[routes.plugins]]
plugin = "h1"
config = { request = { set = { "x-step" = "one" }, remove = ["x-secret"] }, response = { set = { "x-order" = "h1" } } }

[[routes.plugins]]
plugin = "h2"
config = { request = { append = { "x-step" = "two" } }, response = { set = { "x-order" = "h2" }, remove = ["server"] } }
"#,
    )
    .await;
    let r = client()
        .get(gw.url("/items/1"))
        .header("x-secret", "s3cr3t")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Response phase runs in reverse: h2 first, then h1 overwrites x-order.
    assert_eq!(r.headers()["x-order"], "h1");
    assert!(r.headers().get("server").is_none());
    let seen = up.last();
    let steps: Vec<_> = seen.headers.get_all("x-step").iter().collect();
    assert_eq!(steps, ["one", "two"]);
    assert!(seen.headers.get("x-secret").is_none());
}

/// Guest calls made so far by plugin `name` (load-time `configure` included).
fn calls(gw: &TestGateway, name: &str) -> u64 {
    gw.gateway
        .shared()
        .plugins
        .stats()
        .into_iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, s)| s.calls)
}

#[tokio::test]
async fn request_phase_is_skipped_when_not_needed_and_its_response_edits_keep_their_place() {
    let up = Upstream::with(|_| async {
        Response::builder()
            .header("x-layer", "upstream")
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap()
    })
    .await;
    // `resp-only` (headers) edits only responses, the same way every time,
    // so it declares them as fixed edits and no phase at all; `rl`
    // (rate-limit) gives its headers as response edits from the request
    // phase and declares no response phase.
    let gw = gateway(
        &up,
        &(def("resp-only", "headers", "")
            + &def("rl", "rate-limit", "capabilities = [\"kv\", \"clock\"]")),
        r#"
[[routes.plugins]]
plugin = "resp-only"
config = { response = { set = { "x-layer" = "resp-only", "ratelimit-limit" = "overridden" } } }

[[routes.plugins]]
plugin = "rl"
config = { key = "ip", limits = [{ requests = 100, per = "1m" }] }
"#,
    )
    .await;
    let before = (calls(&gw, "resp-only"), calls(&gw, "rl"));
    for _ in 0..3 {
        let r = client().get(gw.url("/items/1")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // Reverse order: rl's request-phase response edits land first, then
        // resp-only's fixed edits override what both set.
        assert_eq!(r.headers()["x-layer"], "resp-only");
        assert_eq!(r.headers()["ratelimit-limit"], "overridden");
        assert!(r.headers().contains_key("ratelimit-remaining"), "{r:?}");
    }
    let after = (calls(&gw, "resp-only"), calls(&gw, "rl"));
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (0, 3),
        "resp-only is never called (the host applies its edits); rl once per request"
    );
}

#[tokio::test]
async fn plugin_gets_bodies_only_when_it_asks() {
    let up = Upstream::with(|s| async move { Response::new(Full::new(s.body)) }).await;
    let gw = gateway(
        &up,
        &(def("body", "inspector", "max-body-size = \"1KiB\"") + &def("upper", "inspector", "")),
        r#"
[[routes.plugins]]
plugin = "upper"
config = { respond = false, uppercase-response-body = true }

[[routes.plugins]]
plugin = "body"
config = { want-body = true }
"#,
    )
    .await;
    // `body` responds with what it saw, and `upper` (earlier in the
    // pipeline) uppercases that response on the way back.
    let r = client()
        .post(gw.url("/items/9"))
        .body("hello body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("\"BODY\":\"HELLO BODY\""), "{text}");
    assert!(text.contains("\"BODY_LEN\":10"), "{text}");

    assert_eq!(
        status_of(client().post(gw.url("/items/9")).body(vec![b'x'; 4096])).await,
        413
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn response_phase_sees_upstream_status_and_rewrites_body() {
    let up = Upstream::with(|_| async {
        Response::builder()
            .status(201)
            .body(Full::new(Bytes::from_static(b"created thing")))
            .unwrap()
    })
    .await;
    let gw = gateway(
        &up,
        &def("upper", "inspector", ""),
        "[[routes.plugins]]\nplugin = \"upper\"\nconfig = { respond = false, uppercase-response-body = true }\n",
    )
    .await;
    let r = client().get(gw.url("/items/5?q=1")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-inspector-saw-status"], "201");
    assert_eq!(r.headers()["x-inspector-saw-path"], "/items/5?q=1");
    assert_eq!(r.headers()["content-length"], "13");
    assert_eq!(r.text().await.unwrap(), "CREATED THING");
}

#[tokio::test]
async fn response_larger_than_the_plugin_limit_streams_through_unaltered() {
    let big = "abc".repeat(2000);
    let body = big.clone();
    let up = Upstream::with(move |_| {
        let body = body.clone();
        async move { Response::new(Full::new(Bytes::from(body))) }
    })
    .await;
    let gw = gateway(
        &up,
        &def("upper", "inspector", "max-body-size = \"1KiB\""),
        "[[routes.plugins]]\nplugin = \"upper\"\nconfig = { respond = false, uppercase-response-body = true }\n",
    )
    .await;
    let r = client().get(gw.url("/items/1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-inspector-saw-status"],
        "200",
        "the plugin still ran"
    );
    assert_eq!(
        r.text().await.unwrap(),
        big,
        "body must arrive byte for byte"
    );

    let r = client().head(gw.url("/items/1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        big.len().to_string().as_str()
    );
}

#[tokio::test]
async fn http2_requests_show_plugins_a_host_header() {
    let up = Upstream::named("unused").await;
    let gw = gateway(
        &up,
        &def("inspector", "inspector", ""),
        "[[routes.plugins]]\nplugin = \"inspector\"\n",
    )
    .await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let v: Value = h2
        .get(gw.url("/items/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let headers = v["headers"].as_array().unwrap();
    let host = headers
        .iter()
        .find(|h| h[0] == "host")
        .expect("host header");
    assert_eq!(host[1], gw.addr.to_string());
}

#[tokio::test]
async fn fixed_header_edits_apply_at_the_plugins_place_without_a_call() {
    let up = Upstream::with(|_| async {
        Response::builder()
            .header("server", "backend/1.0")
            .header("x-layer", "upstream")
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap()
    })
    .await;
    // `fixed` (headers) declares only fixed edits; `shown` (transform, a
    // rename) is called per request and sees the request with them applied.
    let gw = gateway(
        &up,
        &(def("fixed", "headers", "") + &def("shown", "transform", "")),
        r#"
[[routes.plugins]]
plugin = "fixed"
config = { request = { set = { "x-fixed" = "1" }, remove = ["x-secret"] }, response = { set = { "x-layer" = "fixed" }, remove = ["server"] } }

[[routes.plugins]]
plugin = "shown"
config = { request = { headers = { rename = { "x-fixed" = "x-renamed" } } }, response = { headers = { rename = { "x-layer" = "x-was-layer" } } } }
"#,
    )
    .await;
    let before = (calls(&gw, "fixed"), calls(&gw, "shown"));
    for _ in 0..3 {
        let r = client()
            .get(gw.url("/items/1"))
            .header("x-secret", "s3cr3t")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // Way back, in reverse: `shown` renames the upstream's x-layer, then
        // `fixed` sets its own and removes `server`.
        assert_eq!(r.headers()["x-was-layer"], "upstream");
        assert_eq!(r.headers()["x-layer"], "fixed");
        assert!(r.headers().get("server").is_none());
        let seen = up.last();
        assert_eq!(seen.headers["x-renamed"], "1", "applied before `shown` ran");
        assert!(seen.headers.get("x-fixed").is_none());
        assert!(seen.headers.get("x-secret").is_none());
    }
    let after = (calls(&gw, "fixed"), calls(&gw, "shown"));
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (0, 6),
        "`fixed` is never called; `shown` in both phases of each request"
    );

    // A later plugin's own answer passes the earlier plugin's place too.
    let gw = gateway(
        &up,
        &(def("fixed", "headers", "") + &def("inspector", "inspector", "")),
        r#"
[[routes.plugins]]
plugin = "fixed"
config = { request = { set = { "x-fixed" = "1" } }, response = { set = { "x-fixed-resp" = "1" } } }

[[routes.plugins]]
plugin = "inspector"
"#,
    )
    .await;
    let r = client().get(gw.url("/items/2")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-fixed-resp"], "1");
    let v: Value = r.json().await.unwrap();
    assert!(
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-fixed" && h[1] == "1"),
        "{v}"
    );
}
