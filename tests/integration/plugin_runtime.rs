//! The plugin runtime against real guest components (`build/plugins/*.wasm`,
//! built once per run by `scripts/build-plugins`): deadlines, memory
//! caps, traps, config rejection, compile caches, isolation, capability
//! grants, logging, concurrent outbound HTTP, plugins built against the
//! previous contract (0.3.0), and the refusal of older ones.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use pylon::{
    config::ProcessSettings,
    kv::MemoryKv,
    pipeline::{PluginError, PluginResponse, RequestAction},
    plugin::{CompileOrigin, HostServices, PluginLoadError, PluginLoader},
};

use crate::harness::runtime::{
    Upstreams, body, call, call_ok, chain, def, host, load, loaded, pooled, request, responded,
    runtime, settings, slow_server, stats,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_plugin_declares_its_edits_as_fixed_and_asks_for_no_call() {
    let config = r#"{"request": {"set": {"x-a": "1"}, "remove": ["host"]},
                     "response": {"append": {"x-b": ["2", "3"]}}}"#;
    let (rt, p) = loaded(&def("headers", "headers"), config).await;
    let needs = p.needs();
    assert!(!needs.request_phase && !needs.response_phase, "{needs:?}");
    assert!(!needs.request_body && !needs.response_body);
    let mut headers = request("/").headers;
    assert!(headers.contains_key("host"));
    p.fixed()
        .request
        .iter()
        .for_each(|op| op.apply(&mut headers).unwrap());
    assert_eq!(headers.get("x-a").unwrap(), "1");
    assert!(headers.get("host").is_none());
    let mut headers = HeaderMap::new();
    p.fixed()
        .response
        .iter()
        .for_each(|op| op.apply(&mut headers).unwrap());
    let values: Vec<_> = headers.get_all("x-b").iter().collect();
    assert_eq!(values, ["2", "3"]);
    assert_eq!(stats(&rt, "headers").calls, 1, "only configure ran");
}

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
        let mut session = p.start().await.unwrap();
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
    drop(p.start().await.unwrap());
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

    // Two sessions at once need two instances; both go back to the pool.
    let a = pooled_plugin.start().await.unwrap();
    let b = pooled_plugin.start().await.unwrap();
    drop((a, b));
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
            sessions.push(p.start().await.unwrap());
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
async fn config_rejection_names_route_and_plugin() {
    let rt = runtime();
    let err = load(
        &rt,
        &def("reject", "reject-config"),
        "users",
        r#"{"a":1}"#,
        host(),
    )
    .await
    .err()
    .expect("config is rejected");
    assert!(
        matches!(err, PluginLoadError::ConfigRejected { .. }),
        "{err:?}"
    );
    assert_eq!(
        chain(&err),
        r#"route "users", plugin "reject": config rejected: this plugin rejects every config: got {"a":1}"#
    );

    // A plugin that traps in `configure` fails to load with the cause attached.
    let err = load(
        &rt,
        &def("trap", "trap"),
        "users",
        r#"{"phase": "configure"}"#,
        host(),
    )
    .await
    .err()
    .expect("configure traps");
    assert!(
        matches!(&err, PluginLoadError::Configure { route, plugin, source: PluginError::Trap { .. } }
            if route == "users" && plugin == "trap"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_errors_name_plugin_and_file() {
    let rt = runtime();
    let mut missing = def("headers", "headers");
    missing.component = PathBuf::from("/nonexistent/headers.wasm");
    let err = rt.compile(&missing).unwrap_err();
    assert!(matches!(err, PluginLoadError::Read { .. }));
    assert!(
        chain(&err).starts_with(
            r#"plugin "headers": cannot read component /nonexistent/headers.wasm: No such file or directory"#
        ),
        "{}",
        chain(&err)
    );

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm not really").unwrap();
    let mut bad = def("bad", "headers");
    bad.component = garbage;
    let err = rt.compile(&bad).unwrap_err();
    assert!(matches!(err, PluginLoadError::Compile { .. }), "{err:?}");
    assert!(chain(&err).starts_with(r#"plugin "bad": cannot compile component "#));

    // A valid component that is not a plugin: an empty component.
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let mut not_plugin = def("empty", "headers");
    not_plugin.component = empty;
    let err = rt.compile(&not_plugin).unwrap_err();
    assert!(
        matches!(&err, PluginLoadError::NotAPlugin { .. }),
        "{err:?}"
    );
    assert_eq!(
        chain(&err),
        format!(
            "plugin \"empty\": {} is not a pylon plugin: it exports neither \
             `pylon:plugin/guest@0.4.1` nor `pylon:plugin/guest@0.3.0` \
             (the contract versions this host serves); its exports: none",
            not_plugin.component.display()
        )
    );
}

/// A component that exports `pylon:plugin/guest@<version>` (an empty
/// instance: enough to name the contract it was built against).
fn component_exporting_guest(version: &str) -> Vec<u8> {
    let name = format!("pylon:plugin/guest@{version}");
    let name_len = u8::try_from(name.len()).unwrap();
    assert!(name_len < 128, "single-byte LEB128 sizes only");
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    // Instance section: one instance made of no exports.
    bytes.extend_from_slice(&[0x05, 0x03, 0x01, 0x01, 0x00]);
    // Export section: that instance (sort 0x05, index 0) under `name`.
    let mut export = vec![0x01, 0x00, name_len];
    export.extend_from_slice(name.as_bytes());
    export.extend_from_slice(&[0x05, 0x00, 0x00]);
    bytes.extend_from_slice(&[0x0b, u8::try_from(export.len()).unwrap()]);
    bytes.extend_from_slice(&export);
    bytes
}

/// The support policy: the current contract and the previous one. A
/// plugin built against an older one (0.2.0, dropped) is refused at load,
/// naming the version it was built against and those to rebuild against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_a_dropped_contract_is_refused_naming_the_versions() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.wasm");
    std::fs::write(&old, component_exporting_guest("0.2.0")).unwrap();
    let mut d = def("old", "headers");
    d.component = old.clone();
    let err = rt.compile(&d).unwrap_err();
    assert!(
        matches!(&err, PluginLoadError::UnsupportedContract { found, .. } if found == "0.2.0"),
        "{err:?}"
    );
    assert_eq!(
        chain(&err),
        format!(
            "plugin \"old\": {} was built against pylon:plugin@0.2.0, which this host does \
             not serve: rebuild it against 0.4.1 or 0.3.0",
            d.component.display()
        )
    );
    // A later patch of the current minor may use accessors this host
    // lacks: refused by name too, not by a failed link.
    std::fs::write(&old, component_exporting_guest("0.4.7")).unwrap();
    let err = rt.compile(&d).unwrap_err();
    assert!(
        matches!(&err, PluginLoadError::UnsupportedContract { found, .. } if found == "0.4.7"),
        "{err:?}"
    );
    // A supported version in the same shape (0.4.0 and 0.4.1 alike: an
    // earlier patch is served) is not refused for its version (it lacks the
    // functions, so it is not a plugin).
    for version in ["0.4.0", "0.4.1", "0.3.0"] {
        let current = dir.path().join(format!("current-{version}.wasm"));
        std::fs::write(&current, component_exporting_guest(version)).unwrap();
        d.component = current;
        let err = rt.compile(&d).unwrap_err();
        assert!(
            matches!(&err, PluginLoadError::NotAPlugin { .. }),
            "{version}: {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_components_are_cached_in_memory_and_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = def("headers", "headers");
    let bytes = std::fs::read(&d.component).unwrap();

    let first = PluginLoader::new(&settings(Some(dir.path().into()))).unwrap();
    let a = first.compile(&d).unwrap();
    assert_eq!(a.origin(), CompileOrigin::Compiled);
    let cache_file = first.cache_path_for(&bytes).unwrap();
    assert!(cache_file.is_file(), "{} exists", cache_file.display());
    assert!(
        cache_file
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(a.sha256_hex())
    );
    // Same bytes again (another plugin name, or a reload): from memory.
    let b = first.compile(&def("headers-2", "headers")).unwrap();
    assert_eq!(b.origin(), CompileOrigin::MemoryCache);

    // A new runtime (a restart) loads the precompiled artefact.
    let second = PluginLoader::new(&settings(Some(dir.path().into()))).unwrap();
    let c = second.compile(&d).unwrap();
    assert_eq!(c.origin(), CompileOrigin::DiskCache);
    let cache = second.cache_stats();
    assert_eq!((cache.compiled, cache.disk_hits), (0, 1));
    let p = second
        .configure(&c, "r", "{}", host())
        .await
        .expect("a cached component works");
    call_ok(&p, &request("/")).await;

    // A corrupt entry is ignored and replaced. (Written as a new file: the
    // loaded runtimes map the old one, which must never change in place.)
    std::fs::remove_file(&cache_file).unwrap();
    std::fs::write(&cache_file, b"garbage").unwrap();
    let third = PluginLoader::new(&settings(Some(dir.path().into()))).unwrap();
    assert_eq!(third.compile(&d).unwrap().origin(), CompileOrigin::Compiled);
    let fourth = PluginLoader::new(&settings(Some(dir.path().into()))).unwrap();
    assert_eq!(
        fourth.compile(&d).unwrap().origin(),
        CompileOrigin::DiskCache
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_is_denied_unless_granted_and_namespaced_per_plugin() {
    let rt = runtime();
    let services = host();
    let denied = load(
        &rt,
        &def("counter", "kv-counter"),
        "r",
        "{}",
        services.clone(),
    )
    .await
    .unwrap();
    let resp = responded(call_ok(&denied, &request("/")).await);
    assert_eq!(
        (resp.status, body(&resp).as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "kv error: denied")
    );

    let mut granted = def("counter", "kv-counter");
    granted.grants.kv = true;
    let a = load(&rt, &granted, "r", "{}", services.clone())
        .await
        .unwrap();
    for expected in ["1", "2"] {
        assert_eq!(body(&responded(call_ok(&a, &request("/")).await)), expected);
    }
    // Another plugin name has its own keys in the same store.
    granted.name = "other".into();
    let b = load(&rt, &granted, "r", "{}", services.clone())
        .await
        .unwrap();
    assert_eq!(body(&responded(call_ok(&b, &request("/")).await)), "1");
    assert_eq!(
        services.kv.get("counter:hits").await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
}

/// Held by the tests that capture events with a thread-local subscriber:
/// registering and dropping one recomputes tracing's global level filter,
/// and two tests doing so at once can leave it off for the one still running.
static TRACING_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Make `subscriber` this thread's default. With a single subscriber
/// registered, tracing decides whether a callsite is enabled from the
/// default of whichever thread hits it first, and caches that: a guest
/// writing to stderr in another test, with no subscriber, would turn the
/// callsite off for this one. A global no-op subscriber keeps two
/// registered, so the decision covers every subscriber.
fn capture_on_this_thread(
    subscriber: impl tracing::Subscriber + Send + Sync + 'static,
) -> tracing::subscriber::DefaultGuard {
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        let _ = tracing::dispatcher::set_global_default(tracing::Dispatch::new(
            tracing::subscriber::NoSubscriber::default(),
        ));
    });
    let guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    guard
}

/// Collects `tracing` events: target, message and string fields.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<HashMap<String, String>>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Visit<'a>(&'a mut HashMap<String, String>);
        impl tracing::field::Visit for Visit<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().into(), format!("{value:?}"));
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0.insert(field.name().into(), value.into());
            }
        }
        let mut fields = HashMap::new();
        fields.insert("target".into(), event.metadata().target().into());
        fields.insert("level".into(), event.metadata().level().to_string());
        event.record(&mut Visit(&mut fields));
        self.0.lock().unwrap().push(fields);
    }
}

// Current-thread runtime: the guest runs on this thread, where the
// capturing subscriber is the default.
#[tokio::test]
async fn log_goes_to_tracing_with_route_and_plugin() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let _serial = TRACING_TESTS.lock().await;
    let _guard = capture_on_this_thread(subscriber);

    let rt = runtime();
    let mut d = def("logger", "logger");
    d.grants.log = true;
    d.grants.clock = true;
    let p = load(&rt, &d, "users", "{}", host()).await.unwrap();
    let RequestAction::Continue(edits) = call_ok(&p, &request("/hello")).await else {
        panic!("logger continues");
    };
    assert_eq!(edits.headers.len(), 2, "both clocks were read");

    let events = captured.0.lock().unwrap().clone();
    let guest: Vec<_> = events
        .iter()
        .filter(|e| e["target"] == "pylon::plugin::guest")
        .collect();
    assert_eq!(guest.len(), 5, "{events:?}");
    for (event, level) in guest
        .iter()
        .zip(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"])
    {
        assert_eq!(event["level"], level);
        assert_eq!(event["route"], "users");
        assert_eq!(event["plugin"], "logger");
        assert_eq!(
            event["message"],
            format!("logger: {} GET /hello", level.to_lowercase())
        );
    }

    // Without the grant, log lines are dropped and the request goes on;
    // without `clock`, the first clock call traps, naming the capability.
    captured.0.lock().unwrap().clear();
    d.grants.log = false;
    let p = load(&rt, &d, "users", "{}", host()).await.unwrap();
    let action = call_ok(&p, &request("/")).await;
    assert!(matches!(action, RequestAction::Continue(_)));
    let events = captured.0.lock().unwrap().clone();
    assert!(
        !events.iter().any(|e| e["target"] == "pylon::plugin::guest"),
        "ungranted log lines must not reach the log: {events:?}"
    );
    d.grants.clock = false;
    let p = load(&rt, &d, "users", "{}", host()).await.unwrap();
    let err = call(&p, &request("/")).await.unwrap_err();
    assert!(matches!(err, PluginError::Trap { .. }), "{err:?}");
    let text = chain(&err);
    assert!(text.contains("pylon:plugin/clock"), "{text}");
}

// Current-thread runtime, as above.
#[tokio::test]
async fn guest_stderr_goes_to_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let _serial = TRACING_TESTS.lock().await;
    let _guard = capture_on_this_thread(subscriber);

    let rt = runtime();
    let p = load(&rt, &def("trap", "trap"), "users", "{}", host())
        .await
        .unwrap();
    let err = call(&p, &request("/")).await.unwrap_err();
    assert!(matches!(err, PluginError::Trap { .. }), "{err:?}");
    drop(p);

    let events = captured.0.lock().unwrap().clone();
    let stderr: Vec<_> = events
        .iter()
        .filter(|e| e["target"] == "pylon::plugin::stdio")
        .collect();
    assert!(
        stderr.iter().any(|e| e["stream"] == "stderr"
            && e["plugin"] == "trap"
            && e["route"] == "users"
            && e["message"].contains("trap guest: deliberate panic in on-request")),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_all_runs_requests_concurrently() {
    let delay = Duration::from_millis(200);
    let upstreams = Upstreams {
        targets: HashMap::from([
            ("a".to_owned(), slow_server("from a", delay).await),
            ("b".to_owned(), slow_server("from b", delay).await),
        ]),
    };
    let services = HostServices {
        kv: Arc::new(MemoryKv::new()),
        http: Arc::new(upstreams),
        clock: Default::default(),
    };
    let rt = runtime();
    let mut d = def("fanout", "fanout");
    d.grants.http_upstreams = vec!["a".into(), "b".into()];
    let config = r#"{"upstreams": ["a", "b", "c"], "path": "/x"}"#;
    let p = load(&rt, &d, "r", config, services).await.unwrap();

    let started = Instant::now();
    let resp = responded(call_ok(&p, &request("/")).await);
    let elapsed = started.elapsed();
    let json: serde_json::Value = serde_json::from_str(&body(&resp)).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            ["a", 200, "from a"],
            ["b", 200, "from b"],
            ["c", null, "denied: c"]
        ])
    );
    assert!(elapsed < Duration::from_millis(350), "took {elapsed:?}");
    assert!(elapsed >= delay);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspector_sees_the_request_without_loss() {
    let config = r#"{"want-body": true}"#;
    let (_rt, p) = loaded(&def("inspector", "inspector"), config).await;
    assert!(p.needs().request_body);
    let mut req = request("/a%20b");
    req.method = Method::POST;
    req.query = Some("x=1&x=2".into());
    req.headers.append("x-multi", HeaderValue::from_static("1"));
    req.headers.append("x-multi", HeaderValue::from_static("2"));
    req.headers
        .append("x-bytes", HeaderValue::from_bytes(b"caf\xe9").unwrap());
    req.params = vec![("id".into(), "7".into())];
    req.body = Some(Bytes::from_static(b"hello"));
    let resp = responded(call_ok(&p, &req).await);
    let json: serde_json::Value = serde_json::from_str(&body(&resp)).unwrap();
    assert_eq!(json["method"], "POST");
    assert_eq!(json["path"], "/a%20b");
    assert_eq!(json["query"], "x=1&x=2");
    assert_eq!(json["client_addr"], "127.0.0.1:40000");
    assert_eq!(json["params"], serde_json::json!([["id", "7"]]));
    assert_eq!(json["body"], "hello");
    let headers = json["headers"].as_array().unwrap();
    let multi: Vec<_> = headers.iter().filter(|h| h[0] == "x-multi").collect();
    assert_eq!(multi.len(), 2);
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "x-bytes" && h[1]["base64"] == "Y2Fm6Q==")
    );

    // Without `want-body` the body is not handed over.
    let (_rt, p) = loaded(&def("inspector", "inspector"), "{}").await;
    let json: serde_json::Value =
        serde_json::from_str(&body(&responded(call_ok(&p, &req).await))).unwrap();
    assert_eq!(json["body_len"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_component_loads_with_wasi_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let rt = PluginLoader::new(&settings(Some(dir.path().into()))).unwrap();
    let d = pooled(def("hello", "hello-python"), 2);
    let compiled = {
        let (rt, d) = (rt.clone(), d.clone());
        tokio::task::spawn_blocking(move || rt.compile(&d))
            .await
            .unwrap()
            .unwrap()
    };
    assert!(compiled.uses_wasi());
    let p = rt
        .configure(&compiled, "r", r#"{"greeting": "hi"}"#, host())
        .await
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    for _ in 0..2 {
        let RequestAction::Continue(edits) = call_ok(&p, &request("/")).await else {
            panic!("hello continues");
        };
        let mut headers = HeaderMap::new();
        edits
            .headers
            .iter()
            .for_each(|op| op.apply(&mut headers).unwrap());
        assert_eq!(headers.get("x-hello").unwrap(), "hi");
    }
    let err = rt
        .configure(&compiled, "r", r#"{"nope": 1}"#, host())
        .await
        .err()
        .expect("unknown keys are rejected");
    assert!(
        matches!(err, PluginLoadError::ConfigRejected { .. }),
        "{err:?}"
    );

    // Fresh isolation works too (instantiating the large component per
    // request), from a snapshot taken at load even with the default 100 ms
    // deadline: reading ~20 MiB of Python state back is load work, not a
    // call, so each request then makes its one `on-request` call and never
    // a `configure`.
    let mut d = def("hello-fresh", "hello-python");
    d.deadline = std::time::Duration::from_millis(100);
    let compiled = tokio::task::spawn_blocking({
        let rt = rt.clone();
        move || rt.compile(&d)
    })
    .await
    .unwrap()
    .unwrap();
    let fresh = rt.configure(&compiled, "r", "{}", host()).await.unwrap();
    let before = stats(&rt, "hello-fresh").calls;
    for _ in 0..2 {
        call_ok(&fresh, &request("/")).await;
    }
    assert_eq!(stats(&rt, "hello-fresh").calls - before, 2);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_values_over_the_cap_are_refused_as_a_kv_error() {
    let rt = runtime();
    let mut d = pooled(def("flood", "attacker"), 1);
    d.grants.kv = true;
    d.kv.max_value_bytes = 1024;
    let p = load(&rt, &d, "r", r#"{"attack": "kv-flood", "n": 3}"#, host())
        .await
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    match call_ok(&p, &request("/")).await {
        RequestAction::Continue(edits) => {
            let refused = edits
                .headers
                .iter()
                .find_map(|op| match op {
                    pylon::pipeline::HeaderOp::Set(n, v) if n == "x-kv-refused" => Some(v.clone()),
                    _ => None,
                })
                .expect("x-kv-refused");
            assert_eq!(refused, "3");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stats(&rt, "flood").kv_refusals, 3);
}
