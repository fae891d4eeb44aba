//! Host capabilities as guests use them: the key-value store (granted,
//! namespaced, capped), logging and stderr into `tracing`, and concurrent
//! outbound HTTP.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::StatusCode;
use pylon::{
    kv::MemoryKv,
    pipeline::{PluginError, RequestAction},
    plugin::HostServices,
};

use crate::harness::runtime::{
    Upstreams, body, call, call_ok, chain, def, host, load, pooled, request, responded, runtime,
    slow_server, stats,
};

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
