//! Instances and their configured state: pooled instances reused, fresh
//! ones started from the configured snapshot, `configure` run at load only
//! (a plugin that cannot be configured or loops there is refused),
//! snapshots compiled once and cached, and calls that wait to run (for a
//! CPU slot) holding no instance.

use std::time::{Duration, Instant};

use http::HeaderMap;
use pylon::{
    config::ProcessSettings,
    pipeline::{PluginError, RequestAction},
    plugin::{PluginLoadError, PluginLoader},
};

use crate::harness::runtime::{
    body, call, call_ok, chain, def, host, load, loaded, pooled, request, responded, runtime,
    settings, stats,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_instances_are_reused_and_fresh_ones_are_not() {
    let count = |r: Result<RequestAction, PluginError>| body(&responded(r.unwrap()));

    let (rt, fresh) = loaded(&def("memo-fresh", "memo"), "{}").await;
    for _ in 0..3 {
        assert_eq!(count(call(&fresh, &request("/")).await), "1");
    }
    // One instance to validate the config at load, then one per request.
    assert_eq!(stats(&rt, "memo-fresh").instantiations, 4);

    let (rt, pooled_plugin) = loaded(&pooled(def("memo-pooled", "memo"), 2), "{}").await;
    for expected in ["1", "2", "3"] {
        assert_eq!(count(call(&pooled_plugin, &request("/")).await), expected);
    }
    assert_eq!(stats(&rt, "memo-pooled").instantiations, 1);

    // Two sessions at once need two instances (from their first calls);
    // both go back to the pool.
    let mut a = pooled_plugin.start();
    let mut b = pooled_plugin.start();
    let (mut req_a, mut req_b) = (request("/"), request("/"));
    assert_eq!(count(a.on_request(&mut req_a).await), "4");
    assert_eq!(count(b.on_request(&mut req_b).await), "1");
    drop((a, b));
    assert_eq!(stats(&rt, "memo-pooled").instantiations, 2);
    call_ok(&pooled_plugin, &request("/")).await;
    assert_eq!(stats(&rt, "memo-pooled").instantiations, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_start_from_the_configured_snapshot() {
    let count = |r: Result<RequestAction, PluginError>| body(&responded(r.unwrap()));
    let (rt, p) = loaded(&def("memo-snap", "memo"), r#"{"trap-at": 2}"#).await;
    for _ in 0..3 {
        assert_eq!(count(call(&p, &request("/")).await), "1");
    }
    // `configure` ran once, at load (the snapshot's own run is not a call a
    // request paid for); each request then made its one `on-request` call.
    let s = stats(&rt, "memo-snap");
    assert_eq!((s.calls, s.instantiations), (1 + 3, 1 + 3));

    // What configure set up is in the snapshot: trapping at the first
    // request is the configured state of every fresh instance.
    let (rt, p) = loaded(&def("memo-trap", "memo"), r#"{"trap-at": 1}"#).await;
    for _ in 0..2 {
        assert!(matches!(
            call(&p, &request("/")).await,
            Err(PluginError::Trap { .. })
        ));
    }
    assert_eq!(stats(&rt, "memo-trap").traps, 2);

    // Two routes, two configs: each gets its own snapshot.
    let rt = runtime();
    let compiled = {
        let (rt, d) = (rt.clone(), def("memo-two", "memo"));
        tokio::task::spawn_blocking(move || rt.compile(&d))
            .await
            .unwrap()
            .unwrap()
    };
    let a = rt
        .configure(&compiled, "a", r#"{"trap-at": 1}"#, host())
        .await
        .unwrap();
    let b = rt.configure(&compiled, "b", "{}", host()).await.unwrap();
    assert!(call(&a, &request("/")).await.is_err());
    assert_eq!(count(call(&b, &request("/")).await), "1");
}

/// The `x-configures` header an `attacker` `configure-later` request
/// continues with: how many times `configure` ran.
fn configures(action: RequestAction) -> String {
    let RequestAction::Continue(edits) = action else {
        panic!("configure-later continues");
    };
    let mut headers = HeaderMap::new();
    edits
        .headers
        .iter()
        .for_each(|op| op.apply(&mut headers).unwrap());
    headers["x-configures"].to_str().unwrap().to_owned()
}

/// `configure` runs at load only, in every isolation mode: a plugin whose
/// `configure` misbehaves (never returns) once it has run more often than a
/// load makes it run serves every request, new instances included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_never_runs_on_the_request_path() {
    for d in [
        def("later-fresh", "attacker"),
        pooled(def("later-pooled", "attacker"), 1),
    ] {
        let mut d = d;
        d.grants.kv = true;
        let (rt, host) = (runtime(), host());
        let p = load(&rt, &d, "r", r#"{"attack": "configure-later"}"#, host)
            .await
            .unwrap_or_else(|e| panic!("{}: {}", d.name, chain(&e)));
        // Sessions at once, so `pooled` needs instances beyond its idle one.
        let mut sessions = Vec::new();
        for _ in 0..4 {
            sessions.push(p.start());
        }
        let mut seen = Vec::new();
        for s in &mut sessions {
            let action = s.on_request(&mut request("/")).await;
            seen.push(configures(
                action.unwrap_or_else(|e| panic!("{}: {}", d.name, chain(&e))),
            ));
        }
        drop(sessions);
        seen.push(configures(call_ok(&p, &request("/")).await));
        // The count a load left, never more.
        assert!(
            seen.iter().all(|c| c == &seen[0] && c != "0"),
            "{}: {seen:?}",
            d.name
        );
        let s = stats(&rt, &d.name);
        assert_eq!((s.deadline_hits, s.traps), (0, 0), "{}", d.name);
    }
}

/// A plugin whose configured state cannot be captured at load is refused
/// then, with the reason, instead of configuring on the request path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_cannot_be_configured_at_load_is_refused_with_the_reason() {
    for d in [
        def("once-fresh", "attacker"),
        pooled(def("once-pooled", "attacker"), 4),
    ] {
        let mut d = d;
        d.grants.kv = true;
        d.deadline = Duration::from_millis(100);
        // Its `configure` answers once, then never returns.
        let err = load(
            &runtime(),
            &d,
            "users",
            r#"{"attack": "configure-later", "n": 1}"#,
            host(),
        )
        .await
        .err()
        .expect("refused at load");
        let text = chain(&err);
        assert!(
            matches!(&err, PluginLoadError::NotConfigurableAtLoad { route, plugin, .. }
                if route == "users" && plugin == &d.name),
            "{text}"
        );
        // Stopped by its load deadline (the call deadline, at least 1 s):
        // the epoch's interrupt is classified as the deadline too, not as a
        // failed configure.
        assert!(
            text.ends_with(": configure did not finish within 1s"),
            "{text}"
        );
    }
}

/// The snapshot of a component whose `configure` reads WASI random and
/// clocks (the Python interpreter) is reused by the next load of the same
/// component and config: nothing is compiled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_snapshot_is_reused_by_the_next_load() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let rt = PluginLoader::new(&settings(Some(dir.path().into()))).unwrap();
        let p = load(&rt, &def("hello", "hello-python"), "r", "{}", host())
            .await
            .unwrap_or_else(|e| panic!("{}", chain(&e)));
        call_ok(&p, &request("/")).await;
        if round == 1 {
            assert_eq!(rt.cache_stats().compiled, 0, "{:?}", rt.cache_stats());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_compiled_once_and_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cached = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "cwasm")
            })
            .count()
    };
    let load_memo = |config: &'static str| {
        let rt = PluginLoader::new(&settings(Some(dir.path().into()))).unwrap();
        async move {
            let p = load(&rt, &def("memo", "memo"), "r", config, host())
                .await
                .unwrap();
            (rt, p)
        }
    };
    let (rt, p) = load_memo("{}").await;
    assert_eq!(body(&responded(call_ok(&p, &request("/")).await)), "1");
    // The component, its instrumented copy and the snapshot.
    assert_eq!(rt.cache_stats().compiled, 3);
    assert_eq!(cached(), 3);

    // A restart with the same config compiles nothing.
    // (The snapshot is found by its key, so the instrumented copy is not
    // even needed.)
    let (rt, p) = load_memo("{}").await;
    assert_eq!(body(&responded(call_ok(&p, &request("/")).await)), "1");
    assert_eq!(rt.cache_stats().compiled, 0);
    assert_eq!(rt.cache_stats().disk_hits, 2);

    // Another config is another snapshot; the instrumented copy is reused.
    let (rt, _p) = load_memo(r#"{"trap-at": 5}"#).await;
    assert_eq!(rt.cache_stats().compiled, 1);
    assert_eq!(cached(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_that_loops_fails_the_load_within_its_deadline() {
    let rt = runtime();
    let mut d = def("attacker", "attacker");
    d.deadline = Duration::from_millis(100);
    let started = Instant::now();
    let err = load(&rt, &d, "r", r#"{"attack": "configure-loop"}"#, host())
        .await
        .err()
        .expect("a configure that never returns is refused");
    // Load-time calls get at least 1 s; the load fails soon after.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, PluginLoadError::Configure { ref route, .. } if route == "r"),
        "{}",
        chain(&err)
    );
    assert!(chain(&err).contains("deadline"), "{}", chain(&err));
    assert_eq!(stats(&rt, "attacker").deadline_hits, 1);
}

/// Sixteen requests at once, each busy for 50 ms, so each runs through
/// epoch ticks and finishes on the plugin pool two at a time. Taking the
/// instance before the call could run made one per request (16); now they
/// stay within what can hold one at once: a call per CPU slot, a call
/// starting on each thread, and one per thread that started just as the
/// last slot was taken (the load's instance included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_a_cpu_slot_hold_no_instance() {
    // The plugin's CPU slots: one per worker.
    const WORKERS: usize = 2;
    let rt = PluginLoader::new(&ProcessSettings {
        workers: Some(WORKERS),
        ..settings(None)
    })
    .expect("runtime starts");
    let mut d = pooled(def("busy", "attacker"), 64);
    d.grants.clock = true;
    // The plugin pool runs at the lowest priority: on a machine busy with
    // builds, waiting for a slot must not be what fails a call.
    d.deadline = Duration::from_secs(30);
    let p = load(&rt, &d, "r", r#"{"attack": "busy", "n": 50}"#, host())
        .await
        .unwrap_or_else(|e| panic!("busy loads: {}", chain(&e)));
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { call(&p, &request("/")).await })
        })
        .collect();
    for c in calls {
        let action = c.await.expect("call task");
        let action = action.unwrap_or_else(|e| panic!("busy failed: {}", chain(&e)));
        assert!(matches!(action, RequestAction::Continue(_)), "{action:?}");
    }
    let s = stats(&rt, "busy");
    assert_eq!(s.calls, 1 + 16, "configure and the requests");
    let bound = (3 * WORKERS) as u64 + 1;
    assert!(
        s.instantiations <= bound,
        "{} instances made for 16 requests (at most {bound})",
        s.instantiations
    );
}
