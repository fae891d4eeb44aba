//! Plugins through the running gateway: each decision of the contract,
//! failure policies, the sandbox limits, a non-Rust plugin, and plugins
//! built against the previous contract (0.3.0).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::Value;

use crate::harness::{TestGateway, Upstream, client, plugin, series, status_of};

/// A gateway with one upstream and one route "r" on `/` whose pipeline is
/// the given `[[routes.plugins]]` entries; `defs` are `[plugins.*]` tables.
async fn gateway(up: &Upstream, defs: &str, refs: &str) -> TestGateway {
    TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n\n{defs}\n\n[[routes]]\nid = \"r\"\npath = \"/items/{{id}}\"\nupstream = \"u\"\n\n{refs}",
        up.addr
    ))
    .await
}

fn def(name: &str, component: &str, extra: &str) -> String {
    format!(
        "[plugins.{name}]\ncomponent = {:?}\n{extra}\n",
        plugin(component)
    )
}

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
async fn deadline_interrupts_looping_plugin_while_other_routes_serve() {
    let up = Upstream::named("fine").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{up}"]

{spin}

[[routes]]
id = "loops"
path = "/loop"
upstream = "u"
[[routes.plugins]]
plugin = "spin"

[[routes]]
id = "loops-open"
path = "/loop-open"
upstream = "u"
[[routes.plugins]]
plugin = "spin"
on-error = "fail-open"

[[routes]]
id = "ok"
path = "/ok"
upstream = "u"
"#,
        up = up.addr,
        spin = def(
            "spin",
            "spin",
            "deadline = \"100ms\"\nisolation = \"pooled\""
        ),
    ))
    .await;
    // Idle, the gateway parks its epoch ticker; the looping calls must wake
    // it, or their deadline would never come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = client();
    let started = Instant::now();
    let looping: Vec<_> = (0..4)
        .map(|_| tokio::spawn(http.get(gw.url("/loop")).send()))
        .collect();
    for _ in 0..10 {
        let r = http.get(gw.url("/ok")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "fine");
    }
    for l in looping {
        let r = l.await.unwrap().unwrap();
        assert_eq!(r.status(), 500);
        let body = r.text().await.unwrap();
        assert!(!body.contains("spin"), "error body names internals: {body}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let r = http.get(gw.url("/loop-open")).send().await.unwrap();
    assert_eq!(r.status(), 200, "fail-open skips the looping plugin");
    assert_eq!(r.text().await.unwrap(), "fine");
}

#[tokio::test]
async fn memory_bomb_and_trap_fail_only_their_request() {
    let up = Upstream::named("fine").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{up}"]
{bomb}
{trap}

[[routes]]
id = "bomb"
path = "/bomb"
upstream = "u"
[[routes.plugins]]
plugin = "membomb"

[[routes]]
id = "trap"
path = "/trap"
upstream = "u"
[[routes.plugins]]
plugin = "trap"

[[routes]]
id = "trap-open"
path = "/trap-open"
upstream = "u"
[[routes.plugins]]
plugin = "trap"
on-error = "fail-open"
"#,
        up = up.addr,
        bomb = def(
            "membomb",
            "membomb",
            "memory = \"32MiB\"\ndeadline = \"5s\""
        ),
        trap = def("trap", "trap", "isolation = \"pooled\""),
    ))
    .await;
    let http = client();
    for _ in 0..3 {
        assert_eq!(status_of(http.get(gw.url("/bomb"))).await, 500);
        assert_eq!(status_of(http.get(gw.url("/trap"))).await, 500);
        let r = http.get(gw.url("/trap-open")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "fine");
    }
}

#[tokio::test]
async fn pooled_instances_keep_state_and_fresh_ones_do_not() {
    let up = Upstream::named("unused").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{up}"]
{pooled}
{fresh}

[[routes]]
id = "pooled"
path = "/pooled"
upstream = "u"
[[routes.plugins]]
plugin = "memo-pooled"
config = {{ trap-at = 3 }}

[[routes]]
id = "fresh"
path = "/fresh"
upstream = "u"
[[routes.plugins]]
plugin = "memo-fresh"
"#,
        up = up.addr,
        pooled = def(
            "memo-pooled",
            "memo",
            "isolation = \"pooled\"\npool-size = 1"
        ),
        fresh = def("memo-fresh", "memo", "isolation = \"fresh\""),
    ))
    .await;
    let http = client();
    let get = |p: &'static str| {
        let http = http.clone();
        let url = gw.url(p);
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for _ in 0..3 {
        assert_eq!(
            get("/fresh").await,
            (200, "1".to_string()),
            "fresh instances share nothing"
        );
    }
    // One pooled instance serves requests in turn and keeps its memory,
    // until it traps on its third request; the trapped instance is thrown
    // away and a new one starts counting from 1.
    assert_eq!(get("/pooled").await, (200, "1".to_string()));
    assert_eq!(get("/pooled").await, (200, "2".to_string()));
    assert_eq!(get("/pooled").await.0, 500);
    assert_eq!(get("/pooled").await, (200, "1".to_string()));
    assert!(up.seen().is_empty());
}

/// A pooled instance whose heap only grows (the `memo` guest keeping 1 MiB
/// per request, as an interpreter's heap does) is retired once it holds 75%
/// of its 16 MiB cap, so no request ever meets the cap; with recycling
/// effectively off (100%) the same plugin fails a request. After
/// `recycle-after-requests` an instance is retired whatever its memory.
/// Both are counted by route, plugin and reason.
#[tokio::test]
async fn pooled_instances_are_recycled_before_they_run_out_of_memory() {
    let up = Upstream::named("unused").await;
    let route = |id: &str, plugin: &str| {
        format!(
            "[[routes]]\nid = \"{id}\"\npath = \"/{id}\"\nupstream = \"u\"\n\
             [[routes.plugins]]\nplugin = \"{plugin}\"\nconfig = {{ leak-kib = 1024 }}\n"
        )
    };
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{up}\"]\n{leaky}\n{at_cap}\n{counted}\n{r1}\n{r2}\n{r3}",
        up = up.addr,
        leaky = def("leaky", "memo", "memory = \"16MiB\"\npool-size = 1"),
        at_cap = def(
            "at-cap",
            "memo",
            "memory = \"16MiB\"\npool-size = 1\nrecycle-memory-percent = 100"
        ),
        counted = def(
            "counted",
            "memo",
            "memory = \"64MiB\"\npool-size = 1\nrecycle-after-requests = 4"
        ),
        r1 = route("leaky", "leaky"),
        r2 = route("at-cap", "at-cap"),
        r3 = route("counted", "counted"),
    ))
    .await;
    let http = client();
    let get = |p: &'static str| {
        let http = http.clone();
        let url = gw.url(p);
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };

    // 60 requests leak 60 MiB in all: several instances' worth.
    let mut counts = Vec::new();
    for _ in 0..60 {
        let (status, body) = get("/leaky").await;
        assert_eq!(status, 200, "{body}");
        counts.push(body.parse::<u64>().unwrap());
    }
    let restarts = counts.windows(2).filter(|w| w[1] <= w[0]).count();
    assert!(restarts >= 3, "instances were replaced: {counts:?}");
    assert!(counts.iter().all(|&n| n < 16), "{counts:?}");

    let mut failed = false;
    for _ in 0..40 {
        if get("/at-cap").await.0 != 200 {
            failed = true;
            break;
        }
    }
    assert!(failed, "without recycling the leak meets the 16 MiB cap");

    let mut counted = Vec::new();
    for _ in 0..9 {
        counted.push(get("/counted").await);
    }
    let ok = |n: &str| (200, n.to_string());
    let expected = ["1", "2", "3", "4", "1", "2", "3", "4", "1"].map(ok);
    assert_eq!(counted, expected);

    let m = gw.gateway.metrics().encode();
    let recycled = |route: &str, plugin: &str, reason: &str| {
        series(
            &m,
            &format!(
                "pylon_plugin_instances_recycled_total{{route=\"{route}\",plugin=\"{plugin}\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(
        recycled("leaky", "leaky", "memory"),
        Some(restarts as f64),
        "{m}"
    );
    assert_eq!(recycled("counted", "counted", "requests"), Some(2.0), "{m}");
    assert_eq!(recycled("at-cap", "at-cap", "memory"), None, "{m}");
    assert_eq!(plugin_stats(&gw, "leaky").memory_hits, 0);
    assert!(plugin_stats(&gw, "at-cap").memory_hits >= 1);
}

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

// ------------------------------------------------- adversarial plugins (16)

/// Counters of plugin `name` (all routes together).
fn plugin_stats(gw: &TestGateway, name: &str) -> pylon::plugin::PluginStatsSnapshot {
    gw.gateway
        .shared()
        .plugins
        .stats()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

/// A gateway with a clean route `/ok` and, per `(name, attack, extra)`, a
/// plugin `name` running the `attacker` guest with `{"attack": ...}` on
/// route `/<name>` (fail-closed) and `/<name>-open` (fail-open).
async fn attack_gateway(up: &Upstream, attacks: &[(&str, &str, &str)]) -> TestGateway {
    let mut toml = format!("[upstreams.u]\ntargets = [\"{}\"]\n\n", up.addr);
    toml.push_str("[[routes]]\nid = \"ok\"\npath = \"/ok\"\nupstream = \"u\"\n\n");
    for (name, attack, extra) in attacks {
        toml.push_str(&format!(
            "[plugins.{name}]\ncomponent = {:?}\n{extra}\n\n",
            plugin("attacker")
        ));
        for (suffix, on_error) in [("", "fail-closed"), ("-open", "fail-open")] {
            toml.push_str(&format!(
                "[[routes]]\nid = \"{name}{suffix}\"\npath = \"/{name}{suffix}\"\nupstream = \"u\"\n\
                 [[routes.plugins]]\nplugin = \"{name}\"\non-error = \"{on_error}\"\n\
                 config = {{ attack = \"{attack}\" }}\n\n"
            ));
        }
    }
    TestGateway::start(&toml).await
}

#[tokio::test]
async fn hostile_output_fails_only_its_own_request_and_is_counted() {
    let up = Upstream::named("fine").await;
    let attacks = [
        // A long deadline: building 100,000 edits takes the guest a while on
        // a busy machine (where its long call gets only the CPU left over by
        // the low-priority plugin pool), and the cap (not the deadline) must
        // stop them.
        (
            "flood",
            "header-flood",
            "isolation = \"pooled\"\ndeadline = \"30s\"",
        ),
        (
            "respondflood",
            "respond-headers",
            "isolation = \"pooled\"\ndeadline = \"30s\"",
        ),
        (
            "respflood",
            "response-header-flood",
            "isolation = \"pooled\"\ndeadline = \"30s\"",
        ),
        (
            "big",
            "big-response",
            "memory = \"128MiB\"\ndeadline = \"30s\"",
        ),
        ("trapresp", "trap-response", "isolation = \"pooled\""),
        ("recurse", "recurse", "deadline = \"30s\""),
        ("bomb", "membomb", "memory = \"32MiB\"\ndeadline = \"30s\""),
    ];
    let gw = attack_gateway(&up, &attacks).await;
    let http = client();
    for (name, attack, _) in attacks {
        for _ in 0..2 {
            let r = http.get(gw.url(&format!("/{name}"))).send().await.unwrap();
            assert_eq!(r.status(), 500, "{attack}: fail-closed answers 500");
            let body = r.text().await.unwrap();
            assert!(
                !body.contains(name),
                "{attack}: error body names internals: {body}"
            );
            let r = http
                .get(gw.url(&format!("/{name}-open")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{attack}: fail-open skips the plugin");
            assert_eq!(r.text().await.unwrap(), "fine");
            let r = http.get(gw.url("/ok")).send().await.unwrap();
            assert_eq!(
                r.text().await.unwrap(),
                "fine",
                "{attack}: the clean route serves"
            );
        }
        let s = plugin_stats(&gw, name);
        assert!(s.failures >= 4, "{attack}: failures counted: {s:?}");
    }
    // The output caps, not a host panic, stopped these.
    for name in ["flood", "respondflood", "respflood", "big"] {
        assert!(plugin_stats(&gw, name).invalid_outputs >= 4, "{name}");
    }
    assert!(plugin_stats(&gw, "trapresp").traps >= 4);
    assert!(plugin_stats(&gw, "bomb").memory_hits >= 4);
    // Nothing leaked through to the upstream from the refused edit lists.
    assert!(
        up.seen()
            .iter()
            .all(|s| s.headers.get("x-flood-0").is_none())
    );
}

#[tokio::test]
async fn cpu_bound_plugin_yields_so_other_routes_keep_serving() {
    let up = Upstream::named("fine").await;
    let gw = attack_gateway(
        &up,
        &[(
            "busy",
            "spin",
            "deadline = \"3s\"\nisolation = \"pooled\"\nmax-concurrency = 64",
        )],
    )
    .await;
    let http = client();
    // More looping calls than there are workers: without yielding, each
    // would hold its worker for the whole 3 s deadline.
    let looping: Vec<_> = (0..8)
        .map(|_| tokio::spawn(http.get(gw.url("/busy")).send()))
        .collect();
    // Let them all start looping.
    let deadline = Instant::now() + Duration::from_secs(10);
    while plugin_stats(&gw, "busy").instantiations < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..10 {
        let started = Instant::now();
        let r = http.get(gw.url("/ok")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "fine");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "the clean route waited {:?} behind looping plugin calls",
            started.elapsed()
        );
    }
    for l in looping {
        assert_eq!(l.await.unwrap().unwrap().status(), 500);
    }
    let s = plugin_stats(&gw, "busy");
    assert_eq!(s.deadline_hits, 8, "{s:?}");
}

#[tokio::test]
async fn calls_past_max_concurrency_wait_then_get_503_and_are_counted() {
    let up = Upstream::named("fine").await;
    let gw = attack_gateway(
        &up,
        &[(
            "one",
            "spin",
            "deadline = \"300ms\"\nisolation = \"pooled\"\nmax-concurrency = 1",
        )],
    )
    .await;
    let http = client();
    // Each call holds the only permit for its whole deadline, and a waiter
    // gives up after one deadline: of six at once, some must be refused.
    let calls: Vec<_> = (0..6)
        .map(|_| tokio::spawn(http.get(gw.url("/one")).send()))
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap().unwrap().status().as_u16());
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 500 || *s == 503),
        "{statuses:?}"
    );
    let s = plugin_stats(&gw, "one");
    assert_eq!(
        s.busy,
        statuses.iter().filter(|s| **s == 503).count() as u64,
        "{s:?}"
    );
    assert_eq!(status_of(http.get(gw.url("/ok"))).await, 200);
}

#[tokio::test]
async fn kv_flood_is_refused_at_the_plugins_quota() {
    let up = Upstream::named("fine").await;
    let gw = attack_gateway(
        &up,
        &[(
            "flood",
            "kv-flood",
            "isolation = \"pooled\"\ncapabilities = [\"kv\"]\nkv-max-bytes = \"4MiB\"\ndeadline = \"5s\"",
        )],
    )
    .await;
    let http = client();
    for _ in 0..4 {
        assert_eq!(status_of(http.get(gw.url("/flood"))).await, 200);
    }
    let refused: Vec<u64> = up
        .seen()
        .iter()
        .filter_map(|s| s.headers.get("x-kv-refused")?.to_str().ok()?.parse().ok())
        .collect();
    // 4 requests x 8 values of 1 MiB against a 4 MiB quota: at most 3 fit.
    assert_eq!(refused.len(), 4);
    assert!(refused.iter().sum::<u64>() >= 29, "{refused:?}");
    let s = plugin_stats(&gw, "flood");
    assert!(s.kv_refusals >= 29, "{s:?}");
    assert!(s.kv_bytes <= 4 << 20, "{s:?}");
    assert!(s.kv_entries <= 4, "{s:?}");
}
