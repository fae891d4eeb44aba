//! Operations: reload without a failed request, the admin API, metrics,
//! the access log, trace context and OTLP export, graceful shutdown of the
//! real binary.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use prost::Message;
use pylon::{Gateway, telemetry::metrics::ReloadResult};
use serde_json::Value;

use crate::harness::{TestGateway, Upstream, cache_dir, client, parse, plugin};

/// The full text of a config served from a file: test listener, admin
/// listener, one upstream, the `headers` plugin as `hdr` (from `component`)
/// on route `r`, setting `x-config: <version>` on the response.
fn file_config(component: &Path, upstream: SocketAddr, version: &str, extra: &str) -> String {
    format!(
        r#"[runtime]
cache-dir = {cache:?}

[[listeners]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[upstreams.u]
targets = ["{upstream}"]

[plugins.hdr]
component = {component:?}
isolation = "pooled"

[[routes]]
id = "r"
path-prefix = "/"
upstream = "u"

[[routes.plugins]]
plugin = "hdr"
config = {{ response = {{ set = {{ "x-config" = "{version}" }} }} }}
{extra}"#,
        cache = cache_dir().display().to_string(),
        component = component.display().to_string(),
    )
}

/// The `headers` component with a custom section appended: same
/// behaviour, different bytes (and sha256), so it must be compiled anew.
fn headers_variant(tag: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(plugin("headers")).unwrap();
    let name = b"pylon-test";
    let payload = tag.as_bytes();
    let size = 1 + name.len() + payload.len();
    assert!(
        size < 128 && name.len() < 128,
        "single-byte LEB128 sizes only"
    );
    bytes.push(0); // custom section id
    bytes.push(size as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    bytes
}

async fn admin_get(gw: &Gateway, path: &str) -> (u16, String) {
    let r = client()
        .get(format!(
            "http://{}{path}",
            gw.admin_addr().expect("admin listener")
        ))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn admin_reload(gw: &Gateway) -> (u16, Value) {
    let r = client()
        .post(format!("http://{}/admin/reload", gw.admin_addr().unwrap()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The value of one exact series line in `/metrics`.
fn series(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Wait (bounded) until `f` holds; for effects with no signal to await.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_fail_no_request_and_free_old_runtimes() {
    let up = Upstream::named("ok").await;
    let cfg = |version: &str| {
        parse(&format!(
            r#"[upstreams.u]
targets = ["{}"]
[plugins.hdr]
component = {:?}
isolation = "pooled"
[[routes]]
id = "r"
path-prefix = "/"
upstream = "u"
[[routes.plugins]]
plugin = "hdr"
config = {{ request = {{ set = {{ "x-config" = "{version}" }} }}, response = {{ set = {{ "x-config" = "{version}" }} }} }}
"#,
            up.addr,
            plugin("headers")
        ))
        .unwrap()
    };
    let gw = Arc::new(Gateway::start(cfg("a")).await.unwrap());
    let compiled_before = gw.shared().plugins.cache_stats().compiled;
    let url = format!("http://{}/load", gw.local_addrs()[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (url, stop, ok) = (url.clone(), stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let http = client();
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .get(&url)
                    .send()
                    .await
                    .expect("request failed during reload");
                assert_eq!(r.status(), 200, "non-2xx during reload");
                let v = r.headers()["x-config"].to_str().unwrap().to_owned();
                assert_eq!(r.text().await.unwrap(), "ok");
                seen.insert(v);
                ok.fetch_add(1, Ordering::Relaxed);
            }
            seen
        }));
    }
    // Requests are flowing before the first reload.
    eventually("clients get answers", async || {
        ok.load(Ordering::Relaxed) >= 16
    })
    .await;
    for i in 0..20 {
        let report = gw
            .reload_with(cfg(if i % 2 == 0 { "b" } else { "a" }))
            .await
            .unwrap();
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert!(
            report.compiled.is_empty(),
            "unchanged component recompiled: {report:?}"
        );
        let before = ok.load(Ordering::Relaxed);
        eventually("requests go on after a reload", async || {
            ok.load(Ordering::Relaxed) >= before + 4
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut versions = std::collections::BTreeSet::new();
    for c in clients {
        versions.extend(c.await.unwrap());
    }
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(gw.metrics().reloads(ReloadResult::Success), 20);
    // Every old runtime (its plugin pools, upstream clients) is freed once
    // its last request is done.
    eventually("old runtimes are dropped", async || {
        series(&gw.metrics().encode(), "pylon_runtimes_alive") == Some(1.0)
    })
    .await;
    assert_eq!(
        gw.shared().plugins.cache_stats().compiled,
        compiled_before,
        "a reload recompiled"
    );
}

#[tokio::test]
async fn component_change_on_disk_reloads_and_recompiles_only_that_component() {
    let up = Upstream::named("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let comp = dir.path().join("hdr.wasm");
    std::fs::write(&comp, headers_variant(&format!("{:?}", Instant::now()))).unwrap();
    let cfg = dir.path().join("pylon.toml");
    // No disk cache: a replaced component must really be compiled.
    let file_config = |c: &Path, up: SocketAddr, v: &str, e: &str| {
        file_config(c, up, v, e).replace(
            &format!("cache-dir = {:?}", cache_dir().display().to_string()),
            "cache-dir = \"\"",
        )
    };
    std::fs::write(&cfg, file_config(&comp, up.addr, "a", "")).unwrap();
    let gw = Gateway::start_from_file(cfg.clone()).await.unwrap();
    let url = format!("http://{}/", gw.local_addrs()[0]);
    let sha = |text: &str| -> String {
        let v: Value = serde_json::from_str(text).unwrap();
        v["plugins"][0]["sha256"].as_str().unwrap().to_owned()
    };
    let (_, plugins) = admin_get(&gw, "/admin/plugins").await;
    let sha_before = sha(&plugins);

    // Only the plugin config changes: the component is reused.
    std::fs::write(&cfg, file_config(&comp, up.addr, "b", "")).unwrap();
    let (status, report) = admin_reload(&gw).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["compiled"], serde_json::json!([]));
    assert_eq!(report["reused"], serde_json::json!(["hdr"]));
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.headers()["x-config"], "b");

    // The component is replaced (by rename, as deploy tools do): the
    // watcher reloads by itself and the new bytes are compiled.
    let tmp = dir.path().join("hdr.wasm.tmp");
    std::fs::write(&tmp, headers_variant("replaced")).unwrap();
    std::fs::rename(&tmp, &comp).unwrap();
    eventually("the watcher loads the new component", async || {
        sha(&admin_get(&gw, "/admin/plugins").await.1) != sha_before
    })
    .await;
    let (_, plugins) = admin_get(&gw, "/admin/plugins").await;
    let v: Value = serde_json::from_str(&plugins).unwrap();
    assert_eq!(v["plugins"][0]["origin"], "compiled", "{plugins}");
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-config"], "b");

    // Editing the config file itself is picked up too.
    std::fs::write(&cfg, file_config(&comp, up.addr, "c", "")).unwrap();
    eventually("the watcher reloads the config", async || {
        let r = client().get(&url).send().await.unwrap();
        r.headers()["x-config"] == "c"
    })
    .await;
    assert_eq!(gw.metrics().reloads(ReloadResult::Failure), 0);
    gw.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn failed_reloads_keep_the_old_runtime_and_say_why() {
    let up = Upstream::named("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pylon.toml");
    let comp = Path::new(&plugin("headers")).to_path_buf();
    std::fs::write(&cfg, file_config(&comp, up.addr, "a", "")).unwrap();
    let gw = Gateway::start_from_file(cfg.clone()).await.unwrap();
    let url = format!("http://{}/", gw.local_addrs()[0]);
    let cases: [(&str, String); 3] = [
        ("bad TOML", "[[routes]\n".to_owned()),
        (
            "missing component",
            file_config(&dir.path().join("missing.wasm"), up.addr, "b", ""),
        ),
        (
            "plugin rejects its config",
            file_config(&comp, up.addr, "b", "")
                .replace(r#""x-config" = "b""#, r#""bad header" = "b""#),
        ),
    ];
    let mut expected = ["expected", "missing.wasm", "config rejected"].into_iter();
    for (what, text) in cases {
        std::fs::write(&cfg, text).unwrap();
        let (status, body) = admin_reload(&gw).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert_eq!(body["result"], "failure");
        let errors = body["errors"].to_string();
        let needle = expected.next().unwrap();
        assert!(errors.contains(needle), "{what}: {errors} lacks {needle:?}");
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{what}: old runtime stopped serving");
        assert_eq!(r.headers()["x-config"], "a", "{what}");
    }
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    // The watcher may have tried some of the broken files too.
    assert!(
        series(&metrics, r#"pylon_reloads_total{result="failure"}"#).unwrap() >= 3.0,
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, r#"pylon_reloads_total{result="success"}"#),
        Some(0.0),
        "{metrics}"
    );
    gw.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn restart_only_settings_are_reported_as_warnings() {
    let up = Upstream::named("ok").await;
    let toml = |extra: &str| {
        parse(&format!(
            "[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n{extra}",
            up.addr
        ))
        .unwrap()
    };
    let gw = Gateway::start(toml("")).await.unwrap();
    let report = gw
        .reload_with(toml("[[listeners]]\naddress = \"127.0.0.1:0\"\n[tracing]\notlp-endpoint = \"http://127.0.0.1:4318\"\n"))
        .await
        .unwrap();
    let w = report.warnings.join("\n");
    assert!(w.contains("[[listeners]] changed; restart"), "{w}");
    assert!(w.contains("[tracing] changed; restart"), "{w}");
    assert_eq!(report.warnings.len(), 2, "{w}");
    let r = client()
        .get(format!("http://{}/", gw.local_addrs()[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn admin_api_describes_the_gateway_and_serves_metrics() {
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&format!(
        r#"[admin]
address = "127.0.0.1:0"
[upstreams.u]
targets = ["{up}"]
[upstreams.dead]
targets = ["127.0.0.1:1"]
[plugins.hdr]
component = {hdr:?}
[plugins.trap]
component = {trap:?}
[[routes]]
id = "r"
path = "/r"
upstream = "u"
[[routes.plugins]]
plugin = "hdr"
config = {{ request = {{ headers = {{ rename = {{ "x-b" = "x-c" }} }} }} }}
[[routes]]
id = "dead"
path = "/dead"
upstream = "dead"
[[routes]]
id = "trap"
path = "/trap"
upstream = "u"
[[routes.plugins]]
plugin = "trap"
"#,
        up = up.addr,
        // A plugin called on every request (a rename reads the request).
        hdr = plugin("transform"),
        trap = plugin("trap"),
    ))
    .await;
    let gw = &gw.gateway;
    let base = format!("http://{}", gw.local_addrs()[0]);
    let http = client();
    for _ in 0..2 {
        assert_eq!(
            http.get(format!("{base}/r")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(
        http.get(format!("{base}/nowhere"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        http.get(format!("{base}/dead"))
            .send()
            .await
            .unwrap()
            .status(),
        502
    );
    assert_eq!(
        http.get(format!("{base}/trap"))
            .send()
            .await
            .unwrap()
            .status(),
        500
    );

    let (s, body) = admin_get(gw, "/admin/health").await;
    assert_eq!((s, body.contains("ok")), (200, true));
    let (s, body) = admin_get(gw, "/admin/ready").await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = admin_get(gw, "/admin/routes").await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<_> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, ["r", "dead", "trap"]);
    assert_eq!(v["routes"][0]["plugins"][0]["plugin"], "hdr");
    let (_, body) = admin_get(gw, "/admin/upstreams").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["upstreams"][1]["name"], "u");
    assert_eq!(v["upstreams"][1]["targets"][0], up.addr.to_string());
    let (_, body) = admin_get(gw, "/admin/plugins").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let hdr = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "hdr")
        .unwrap();
    assert_eq!(hdr["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(hdr["contract"], "0.4.0");
    assert!(hdr["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert!(hdr["stats"]["calls"].as_u64().unwrap() >= 3, "{hdr}");
    let (s, _) = admin_get(gw, "/admin/nothing").await;
    assert_eq!(s, 404);

    let (s, m) = admin_get(gw, "/metrics").await;
    assert_eq!(s, 200);
    let expect = [
        (r#"pylon_requests_total{route="r",status="200"}"#, 2.0),
        (
            r#"pylon_request_duration_seconds_count{route="r",status="200"}"#,
            2.0,
        ),
        (
            r#"pylon_requests_total{route="unmatched",status="404"}"#,
            1.0,
        ),
        (r#"pylon_requests_total{route="dead",status="502"}"#, 1.0),
        (r#"pylon_requests_total{route="trap",status="500"}"#, 1.0),
        (
            r#"pylon_upstream_request_duration_seconds_count{upstream="u"}"#,
            2.0,
        ),
        (
            r#"pylon_upstream_errors_total{upstream="dead",kind="connect"}"#,
            1.0,
        ),
        (r#"pylon_plugin_traps_total{plugin="trap"}"#, 1.0),
        ("pylon_runtimes_alive", 1.0),
    ];
    for (name, value) in expect {
        assert_eq!(series(&m, name), Some(value), "{name} in\n{m}");
    }
    assert!(
        series(&m, r#"pylon_plugin_calls_total{plugin="hdr"}"#).unwrap() >= 3.0,
        "{m}"
    );
    assert!(
        series(
            &m,
            r#"pylon_plugin_call_duration_seconds_count{plugin="hdr"}"#
        )
        .unwrap()
            >= 3.0,
        "{m}"
    );
    assert!(m.contains("pylon_open_connections "), "{m}");
    assert!(
        m.contains(r#"pylon_plugin_deadline_hits_total{plugin="trap"} 0"#),
        "{m}"
    );
    assert!(
        m.contains(r#"pylon_plugin_memory_hits_total{plugin="trap"} 0"#),
        "{m}"
    );
}

#[tokio::test]
async fn admin_token_is_required_when_configured() {
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"s3cret-token-0123456789\"\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
        up.addr
    ))
    .await;
    let url = format!("http://{}/admin/routes", gw.gateway.admin_addr().unwrap());
    let http = client();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret-token-012345678"),
        Some("s3cret-token-0123456789"),
    ] {
        let mut req = http.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }
    let r = http
        .get(&url)
        .bearer_auth("s3cret-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!(
            "http://{}/metrics",
            gw.gateway.admin_addr().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "metrics are behind the token too");
}

#[tokio::test]
async fn access_log_writes_one_json_line_per_request() {
    let up = Upstream::echo_body().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&format!(
        "[access-log]\npath = {:?}\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"echo\"\npath-prefix = \"/echo\"\nupstream = \"u\"\n",
        log.display().to_string(),
        up.addr
    ))
    .await;
    let http = client();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = http
        .post(gw.url("/echo/x?secret=1"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body("hello world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello world");
    assert_eq!(
        http.get(gw.url("/missing")).send().await.unwrap().status(),
        404
    );
    // Shutdown flushes the log writer.
    gw.gateway.shutdown(Duration::from_secs(5)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let a = &lines[0];
    assert_eq!(a["route"], "echo");
    assert_eq!(a["method"], "POST");
    assert_eq!(a["path"], "/echo/x", "the query is not logged");
    assert_eq!(a["status"], 200);
    assert_eq!(a["bytes_in"], 11);
    assert_eq!(a["bytes_out"], 11);
    assert_eq!(a["upstream"], "u");
    assert!(a["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert!(a["duration_ms"].as_f64().unwrap() >= a["upstream_ms"].as_f64().unwrap());
    assert!(a["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(a["trace_id"], trace);
    let time = a["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
        "{time}"
    );
    let b = &lines[1];
    assert_eq!(b["route"], Value::Null);
    assert_eq!(b["status"], 404);
    assert_eq!(b["upstream"], Value::Null);
    assert_eq!(b["trace_id"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn traceparent_is_continued_to_the_upstream_with_a_new_parent_id() {
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
        up.addr
    ))
    .await;
    let http = client();
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    http.get(gw.url("/"))
        .header("traceparent", incoming)
        .send()
        .await
        .unwrap();
    let parts = up.last_traceparent();
    assert_eq!(parts[0], "00");
    assert_eq!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "trace id kept"
    );
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "parent id must be pylon's span"
    );
    assert!(
        parts[2].len() == 16
            && parts[2]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_ne!(parts[2], "0000000000000000");
    assert_eq!(parts[3], "01", "sampled flag kept");

    // No (or a malformed) traceparent: a new valid trace starts.
    for header in [None, Some("00-zz-bad-01")] {
        let mut req = http.get(gw.url("/"));
        if let Some(h) = header {
            req = req.header("traceparent", h);
        }
        req.send().await.unwrap();
        let parts = up.last_traceparent();
        assert_eq!(parts[1].len(), 32);
        assert_ne!(parts[1], "00000000000000000000000000000000");
        assert_eq!(parts[2].len(), 16);
    }
}

#[tokio::test]
async fn otlp_exporter_sends_request_plugin_and_upstream_spans() {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        trace::v1::{Span, span::SpanKind},
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let collector = Upstream::with(move |seen| {
        let tx = tx.clone();
        async move {
            assert_eq!(seen.method, http::Method::POST);
            assert_eq!(seen.uri.path(), "/v1/traces");
            assert_eq!(seen.headers["content-type"], "application/x-protobuf");
            let _ = tx.send(seen.body);
            Response::new(Full::new(Bytes::new()))
        }
    })
    .await;
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&format!(
        r#"[tracing]
otlp-endpoint = "http://{collector}"
service-name = "pylon-test"
[upstreams.u]
targets = ["{up}"]
[plugins.hdr]
component = {hdr:?}
[[routes]]
id = "r"
path-prefix = "/"
upstream = "u"
[[routes.plugins]]
plugin = "hdr"
config = {{ request = {{ headers = {{ rename = {{ "x-b" = "x-c" }} }} }} }}
"#,
        collector = collector.addr,
        up = up.addr,
        // A plugin called on every request (a rename reads the request).
        hdr = plugin("transform"),
    ))
    .await;
    let trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = client()
        .get(gw.url("/traced"))
        .header("traceparent", format!("00-{trace_hex}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();

    let mut spans: Vec<Span> = Vec::new();
    let mut posts = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while spans.len() < 3 {
        let body = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the collector got fewer than 3 spans")
            .unwrap();
        posts += 1;
        let req = ExportTraceServiceRequest::decode(body).unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .find(|a| a.key == "service.name");
            assert!(format!("{service:?}").contains("pylon-test"), "{service:?}");
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    assert!(posts >= 1);
    let trace = hex::decode(trace_hex).unwrap();
    assert!(
        spans.iter().all(|s| s.trace_id == trace),
        "every span is in the client's trace"
    );
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("server span");
    assert_eq!(server.name, "GET r");
    assert_eq!(
        server.parent_span_id,
        hex::decode("00f067aa0ba902b7").unwrap()
    );
    let plugin_span = spans
        .iter()
        .find(|s| s.name == "plugin hdr on-request")
        .expect("plugin span");
    assert_eq!(plugin_span.parent_span_id, server.span_id);
    let upstream = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("upstream span");
    assert_eq!(upstream.name, "upstream u");
    assert_eq!(upstream.parent_span_id, server.span_id);
    assert_eq!(
        sent,
        format!("00-{trace_hex}-{}-01", hex::encode(&upstream.span_id))
    );
}

/// The real binary: SIGTERM while a slow request (the upstream takes 1s)
/// is in flight. New connections are refused at once, the slow request
/// still completes with 200, and the process exits 0.
#[test]
fn sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_zero() {
    drains_on_signal("TERM");
}

/// The same for SIGINT (Ctrl-C).
#[test]
fn sigint_drains_in_flight_requests_and_exits_zero() {
    drains_on_signal("INT");
}

fn drains_on_signal(signal: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let tx = std::sync::Mutex::new(tx);
    let up = rt.block_on(Upstream::with(move |_| {
        let _ = tx.lock().unwrap().send(());
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Response::new(Full::new(Bytes::from_static(b"slow but done")))
        }
    }));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pylon.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\ncache-dir = \"\"\n[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
            up.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pylon"))
        .env("RUST_LOG", "info")
        .args(["run", "--grace", "10s", "--config"])
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (ltx, lrx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = ltx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = lrx
            .recv_timeout(deadline - Instant::now())
            .expect("pylon never said it was listening");
        if line.contains("listening") {
            break;
        }
    }
    let url = format!("http://127.0.0.1:{port}/slow");
    let slow = rt.spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the slow request never reached the upstream");
    let sent_at = Instant::now();
    let ok = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());

    // The listener closes while the slow request is still in flight.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(
                    sent_at.elapsed() < Duration::from_millis(800),
                    "still accepting after SIG{signal}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    if slow.is_finished() {
        let early = rt.block_on(slow).unwrap();
        let exit = child.wait();
        let log: Vec<String> =
            std::iter::from_fn(|| lrx.recv_timeout(Duration::from_secs(2)).ok()).collect();
        panic!(
            "the slow request ended before the listener closed: {early:?}\nexit: {exit:?}\n{}",
            log.join("\n")
        );
    }

    let status = rt
        .block_on(slow)
        .unwrap()
        .expect("in-flight request failed during shutdown");
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "pylon did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}
