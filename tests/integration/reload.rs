//! Reload: under load without a failed request, on a component change on
//! disk, refused reloads that keep the old runtime, and settings that only
//! a restart applies.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use pylon::{Gateway, telemetry::metrics::ReloadResult};
use serde_json::Value;

use crate::harness::{Upstream, admin_get, cache_dir, client, parse, plugin, series};

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

async fn admin_reload(gw: &Gateway) -> (u16, Value) {
    let r = client()
        .post(format!("http://{}/admin/reload", gw.admin_addr().unwrap()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Wait (bounded) until `f` holds; for effects with no signal to await.
/// Generous: a reload that changes a component compiles it, its
/// instrumented copy and its snapshot, which on a loaded machine takes tens
/// of seconds.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_fail_no_request_and_free_old_runtimes() {
    let up = Upstream::named("ok").await;
    // The configs are new to the shared disk cache (a run-unique tag), so
    // what this test compiles is what the reloads compile.
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
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
config = {{ request = {{ set = {{ "x-config" = "{version}", "x-run" = "{tag}" }} }}, response = {{ set = {{ "x-config" = "{version}" }} }} }}
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
        let stats_before = gw.shared().plugins.cache_stats();
        let report = gw
            .reload_with(cfg(if i % 2 == 0 { "b" } else { "a" }))
            .await
            .unwrap();
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        // The component itself is never compiled again.
        assert!(
            report.compiled.is_empty(),
            "unchanged component recompiled: {report:?}"
        );
        assert_eq!(report.reused, ["hdr"], "{report:?}");
        // Configure runs at load only, so a changed config compiles its
        // snapshot: exactly once, at the first reload to "b"; every later
        // reload (back to "a", again to "b") finds its snapshot cached.
        let stats = gw.shared().plugins.cache_stats();
        let compiles = stats.compiled - stats_before.compiled;
        assert_eq!(
            compiles,
            u64::from(i == 0),
            "reload {i} compiled {compiles} (before {stats_before:?}, after {stats:?})"
        );
        assert!(
            stats.memory_hits + stats.disk_hits > stats_before.memory_hits + stats_before.disk_hits,
            "reload {i} found nothing cached: {stats:?}"
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
        compiled_before + 1,
        "the reloads compiled more than the snapshot of config \"b\""
    );
}

/// The reload answer tells what the reload compiled: a changed plugin
/// config takes (and compiles) a new snapshot of the route plugin, named in
/// `snapshots_taken`; a reload back to a config seen before takes none.
#[tokio::test]
async fn reload_answer_names_the_snapshots_it_took() {
    let up = Upstream::named("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let comp = dir.path().join("hdr.wasm");
    // Bytes of their own: no earlier test's snapshot of them is cached.
    std::fs::write(&comp, headers_variant(&format!("{:?}", Instant::now()))).unwrap();
    let cfg = |version: &str| {
        parse(&format!(
            r#"[upstreams.u]
targets = ["{}"]
[plugins.hdr]
component = {:?}
[[routes]]
id = "r"
path-prefix = "/"
upstream = "u"
[[routes.plugins]]
plugin = "hdr"
config = {{ response = {{ set = {{ "x-config" = "{version}" }} }} }}
"#,
            up.addr, comp
        ))
        .unwrap()
    };
    let gw = Gateway::start(cfg("a")).await.unwrap();

    let report = gw.reload_with(cfg("b")).await.unwrap();
    assert!(report.compiled.is_empty(), "{report:?}");
    assert_eq!(report.snapshots_taken, ["hdr@r"], "{report:?}");

    let report = gw.reload_with(cfg("a")).await.unwrap();
    assert!(report.snapshots_taken.is_empty(), "{report:?}");
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
