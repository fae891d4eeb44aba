//! What plugins reach through the host: the key-value store (shared by
//! every instance, denied unless granted) and outbound HTTP calls (run
//! concurrently, continuing the request's trace).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use crate::harness::{TestGateway, Upstream, client, plugin, status_of};

use super::{def, gateway};

#[tokio::test]
async fn kv_is_shared_by_every_instance_of_a_plugin() {
    let up = Upstream::named("unused").await;
    let gw = gateway(
        &up,
        &def(
            "counter",
            "kv-counter",
            "capabilities = [\"kv\"]\nisolation = \"fresh\"",
        ),
        "[[routes.plugins]]\nplugin = \"counter\"\n",
    )
    .await;
    for expected in 1..=3 {
        let r = client().get(gw.url("/items/1")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), expected.to_string());
    }
}

#[tokio::test]
async fn ungranted_kv_is_denied() {
    let up = Upstream::named("unused").await;
    let gw = gateway(
        &up,
        &def("counter", "kv-counter", ""),
        "[[routes.plugins]]\nplugin = \"counter\"\n",
    )
    .await;
    let r = client().get(gw.url("/items/1")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.text().await.unwrap(), "kv error: denied");
}

#[tokio::test]
async fn fanout_calls_upstreams_concurrently_through_the_host() {
    let slow = |name: &'static str| {
        Upstream::with(move |_| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Response::new(Full::new(Bytes::from_static(name.as_bytes())))
        })
    };
    let a = slow("alpha").await;
    let b = slow("beta").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.a]
targets = ["{a}"]
[upstreams.b]
targets = ["{b}"]
[plugins.fanout]
component = {comp:?}
capabilities = ["http"]
http-upstreams = ["a", "b"]
deadline = "5s"

[[routes]]
id = "agg"
path = "/agg"
[[routes.plugins]]
plugin = "fanout"
config = {{ upstreams = ["a", "b"], path = "/x" }}
"#,
        a = a.addr,
        b = b.addr,
        comp = plugin("fanout"),
    ))
    .await;
    let started = Instant::now();
    let r = client().get(gw.url("/agg")).send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("alpha") && text.contains("beta"), "{text}");
    assert!(
        elapsed < Duration::from_millis(550),
        "calls were not concurrent: {elapsed:?}"
    );
    assert_eq!(a.last().uri.path(), "/x");
}

#[tokio::test]
async fn plugin_outbound_calls_continue_the_request_trace() {
    let up = Upstream::named("a").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.a]
targets = ["{a}"]
[plugins.fanout]
component = {comp:?}
capabilities = ["http"]
http-upstreams = ["a"]

[[routes]]
id = "agg"
path = "/agg"
[[routes.plugins]]
plugin = "fanout"
config = {{ upstreams = ["a"], path = "/x" }}
"#,
        a = up.addr,
        comp = plugin("fanout"),
    ))
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    assert_eq!(
        status_of(
            client()
                .get(gw.url("/agg"))
                .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        )
        .await,
        200
    );
    let parts = up.last_traceparent();
    assert_eq!(
        parts[1], trace,
        "the plugin's call is part of the request's trace"
    );
    assert_ne!(parts[2], "00f067aa0ba902b7", "its parent is pylon's span");
    assert_eq!(parts[2].len(), 16);
}
