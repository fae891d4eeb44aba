//! The sandbox's limits: deadlines (a looping guest, a guest waiting on a
//! slow upstream), memory caps (with either slot size) and traps, each
//! failing only its own call, a trapped pooled instance replaced.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use http::StatusCode;
use pylon::{
    config::ProcessSettings,
    kv::MemoryKv,
    pipeline::{PluginError, PluginResponse, RequestAction},
    plugin::{HostServices, PluginLoader},
};

use crate::harness::runtime::{
    Upstreams, body, call, call_ok, chain, def, host, load, loaded, pooled, request, responded,
    runtime, settings, slow_server, stats,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_interrupts_looping_plugin() {
    let rt = runtime();
    let mut spin = def("spin", "spin");
    spin.deadline = Duration::from_millis(50);
    let spin = load(&rt, &spin, "r", "{}", host()).await.unwrap();
    let headers = load(&rt, &def("headers", "headers"), "r", "{}", host())
        .await
        .unwrap();

    let started = Instant::now();
    let looping = tokio::spawn({
        let spin = spin.clone();
        async move { call(&spin, &request("/")).await }
    });
    // While the spinning guest runs, other plugins keep serving.
    for _ in 0..3 {
        call_ok(&headers, &request("/")).await;
    }
    let err = looping.await.unwrap().unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(&err, PluginError::Deadline { plugin, deadline }
            if &**plugin == "spin" && *deadline == Duration::from_millis(50)),
        "{err:?}"
    );
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    // The next request gets a working instance (and is stopped again).
    assert!(matches!(
        call(&spin, &request("/")).await,
        Err(PluginError::Deadline { .. })
    ));
    call_ok(&headers, &request("/")).await;
    assert_eq!(stats(&rt, "spin").deadline_hits, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cap_stops_memory_bomb() {
    let mut d = def("membomb", "membomb");
    d.memory_limit_bytes = 32 << 20;
    // The bomb runs long, so on the low-priority plugin pool: on a busy
    // machine its deadline must not be what stops it first.
    d.deadline = Duration::from_secs(10);
    let (rt, p) = loaded(&d, "{}").await;
    let err = call(&p, &request("/")).await.unwrap_err();
    assert!(
        matches!(&err, PluginError::Memory { plugin, limit_bytes }
            if &**plugin == "membomb" && *limit_bytes == 32 << 20),
        "{err:?}: {}",
        chain(&err)
    );
    assert_eq!(stats(&rt, "membomb").memory_hits, 1);

    // Below the cap the same guest completes.
    let (_rt, p) = loaded(&d, r#"{"mib": 8}"#).await;
    let resp = responded(call_ok(&p, &request("/")).await);
    assert_eq!(body(&resp), "allocated 8 MiB");
}

/// A pool too large for 4 GiB linear memory slots gets slots sized to the
/// memory cap (with explicit bounds checks): the cap holds there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cap_holds_with_slots_sized_to_the_cap() {
    let rt = PluginLoader::new(&ProcessSettings {
        max_instances: 20_000,
        max_memory_bytes: 64 << 20,
        ..settings(None)
    })
    .expect("runtime starts");
    let mut d = def("membomb", "membomb");
    d.memory_limit_bytes = 32 << 20;
    // The bomb runs long, so on the low-priority plugin pool: on a busy
    // machine its deadline must not be what stops it first.
    d.deadline = Duration::from_secs(10);
    let p = load(&rt, &d, "r", "{}", host()).await.expect("loads");
    let err = call(&p, &request("/")).await.unwrap_err();
    assert!(matches!(&err, PluginError::Memory { .. }), "{err:?}");
    let p = load(&rt, &d, "r", r#"{"mib": 8}"#, host())
        .await
        .expect("loads");
    let resp = responded(call_ok(&p, &request("/")).await);
    assert_eq!(body(&resp), "allocated 8 MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_fails_only_its_request_and_pooled_instance_is_discarded() {
    let (rt, p) = loaded(&def("trap", "trap"), r#"{"phase": "request"}"#).await;
    let err = call(&p, &request("/")).await.unwrap_err();
    let PluginError::Trap { plugin, source } = &err else {
        panic!("expected a trap, got {err:?}");
    };
    assert_eq!(&**plugin, "trap");
    assert!(
        source.to_string().contains("wasm") || source.source().is_some(),
        "{}",
        chain(&err)
    );
    assert_eq!(stats(&rt, "trap").traps, 1);

    // Pooled, trapping in the response phase: the instance is not reused.
    let d = pooled(def("trap-pooled", "trap"), 4);
    let (rt, p) = loaded(&d, r#"{"phase": "response", "how": "unreachable"}"#).await;
    let mut req = request("/");
    for _ in 0..2 {
        let mut session = p.start();
        session.on_request(&mut req).await.unwrap();
        let err = session
            .on_response(&mut req, &mut PluginResponse::new(StatusCode::OK))
            .await
            .unwrap_err();
        assert!(matches!(err, PluginError::Trap { .. }), "{err:?}");
    }
    // The first session used the instance configured at load; it was
    // discarded, so the second needed a new one, which was discarded too.
    assert_eq!(stats(&rt, "trap-pooled").instantiations, 2);
    // A session takes its instance at its first call.
    let mut session = p.start();
    assert_eq!(stats(&rt, "trap-pooled").instantiations, 2);
    session.on_request(&mut req).await.unwrap();
    assert_eq!(stats(&rt, "trap-pooled").instantiations, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapped_pooled_instance_is_replaced_by_a_fresh_one() {
    let d = pooled(def("memo", "memo"), 4);
    let (_rt, p) = loaded(&d, r#"{"trap-at": 3}"#).await;
    let count = |r: Result<RequestAction, PluginError>| body(&responded(r.unwrap()));
    assert_eq!(count(call(&p, &request("/")).await), "1");
    assert_eq!(count(call(&p, &request("/")).await), "2");
    assert!(matches!(
        call(&p, &request("/")).await,
        Err(PluginError::Trap { .. })
    ));
    // A new instance: its count starts over.
    assert_eq!(count(call(&p, &request("/")).await), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_bounds_a_plugin_waiting_on_a_slow_upstream() {
    // The epoch cannot interrupt a guest suspended in a host await; the
    // call's own timer (armed only when it first waits) must.
    let upstreams = Upstreams {
        targets: HashMap::from([(
            "slow".to_owned(),
            slow_server("late", Duration::from_secs(3)).await,
        )]),
    };
    let services = HostServices {
        kv: Arc::new(MemoryKv::new()),
        http: Arc::new(upstreams),
        clock: Default::default(),
    };
    let rt = runtime();
    let mut d = pooled(def("fanout", "fanout"), 2);
    d.grants.http_upstreams = vec!["slow".into()];
    d.deadline = Duration::from_millis(200);
    let p = load(&rt, &d, "r", r#"{"upstreams": ["slow"]}"#, services)
        .await
        .unwrap();
    for _ in 0..2 {
        let started = Instant::now();
        let err = call(&p, &request("/")).await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(matches!(err, PluginError::Deadline { .. }), "{err:?}");
        assert!(
            elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(1500),
            "{elapsed:?}"
        );
    }
    assert_eq!(stats(&rt, "fanout").deadline_hits, 2);
}
