//! Other guests in the same pipeline as current Rust plugins: a Python
//! plugin, and plugins built against earlier contracts (0.3.0, 0.4.0).

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use crate::harness::{Upstream, client, status_of};

use super::{def, gateway};

#[tokio::test]
async fn python_plugin_runs_in_the_same_pipeline() {
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        &def(
            "hello",
            "hello-python",
            "isolation = \"fresh\"\ndeadline = \"2s\"",
        ),
        "[[routes.plugins]]\nplugin = \"hello\"\nconfig = { greeting = \"hej\" }\n",
    )
    .await;
    assert_eq!(status_of(client().get(gw.url("/items/3"))).await, 200);
    assert_eq!(up.last().headers["x-hello"], "hej");
}

/// A `legacy-*` guest built against contract `contract` beside a current
/// plugin: both phases, its imports (kv, http, log) and a direct answer.
async fn legacy_plugin_runs_in_the_same_pipeline_as_current_ones(guest: &str, contract: &str) {
    let up = Upstream::with(|_| async {
        Response::builder()
            .status(201)
            .body(Full::new(Bytes::from_static(b"made")))
            .unwrap()
    })
    .await;
    let gw = gateway(
        &up,
        &(def(
            "legacy",
            guest,
            "capabilities = [\"kv\", \"http\"]\nhttp-upstreams = [\"u\"]",
        ) + &def("h", "headers", "")),
        r#"
[[routes.plugins]]
plugin = "legacy"
config = { fetch = "u" }

[[routes.plugins]]
plugin = "h"
config = { request = { set = { "x-step" = "current" } }, response = { set = { "x-order" = "h" } } }
"#,
    )
    .await;
    let contracts: Vec<_> = gw
        .gateway
        .generation()
        .components()
        .iter()
        .map(|c| (c.name().to_owned(), c.contract().as_str()))
        .collect();
    assert_eq!(
        contracts,
        [("h".to_owned(), "0.4.1"), ("legacy".to_owned(), contract)]
    );

    for hits in ["1", "2"] {
        let r = client()
            .get(gw.url("/items/42?full=1"))
            .header("user-agent", "legacy-client/1.0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x-order"], "h");
        assert_eq!(r.headers()["x-legacy-status"], "201");
        assert_eq!(r.headers()["x-legacy-saw-path"], "/items/42");
        assert_eq!(r.headers()["x-legacy-early"], "1");
        assert_eq!(
            r.headers()
                .get("x-legacy-fixed")
                .map(|v| v.to_str().unwrap()),
            (contract != "0.3.0").then_some("0.4.0"),
            "0.4.0's fixed response edits"
        );
        assert_eq!(r.text().await.unwrap(), "made");

        let seen = up.last();
        assert_eq!(seen.uri.path(), "/items/42");
        assert_eq!(seen.uri.query(), Some("full=1"));
        assert_eq!(seen.headers["x-legacy-path"], "/items/42");
        assert_eq!(seen.headers["x-legacy-agent"], "legacy-client/1.0");
        assert_eq!(seen.headers["x-legacy-hits"], hits);
        assert_eq!(seen.headers["x-legacy-fetch"], "201");
        assert_eq!(seen.headers["x-step"], "current");
    }
    let fetched = up
        .seen()
        .iter()
        .filter(|s| s.uri.path() == "/legacy-fetch")
        .count();
    assert_eq!(
        fetched, 2,
        "the plugin's outbound calls reached the upstream"
    );

    let before = up.seen().len();
    let r = client()
        .get(gw.url("/items/9"))
        .header("x-legacy-respond", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        format!("{guest} answered /items/9")
    );
    assert_eq!(
        up.seen().len(),
        before,
        "a response from the plugin skips the upstream"
    );
}

#[tokio::test]
async fn legacy_v0_3_plugin_runs_in_the_same_pipeline_as_current_ones() {
    legacy_plugin_runs_in_the_same_pipeline_as_current_ones("legacy-v0-3", "0.3.0").await;
}

/// 0.4.1 only added an accessor: a plugin built against 0.4.0 is served
/// under it as it is, without a conversion (wasmtime matches its `@0.4.0`
/// imports and export to the `@0.4.1` definitions).
#[tokio::test]
async fn a_plugin_built_against_0_4_0_is_served_unchanged_under_0_4_1() {
    legacy_plugin_runs_in_the_same_pipeline_as_current_ones("legacy-v0-4-0", "0.4.1").await;
}
