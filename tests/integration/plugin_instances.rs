//! How many instances a plugin makes under concurrent load: a call that
//! waits to run (for a CPU slot) holds no instance, so a pooled plugin's
//! instances follow the calls that run, not the requests in flight.

use std::time::Duration;

use pylon::{config::ProcessSettings, pipeline::RequestAction, plugin::PluginLoader};

use crate::harness::runtime::{call, chain, def, host, load, pooled, request, settings, stats};

/// The plugin's CPU slots: one per worker.
const WORKERS: usize = 2;

/// Sixteen requests at once, each busy for 50 ms, so each runs through
/// epoch ticks and finishes on the plugin pool two at a time. Taking the
/// instance before the call could run made one per request (16); now they
/// stay within what can hold one at once: a call per CPU slot, a call
/// starting on each thread, and one per thread that started just as the
/// last slot was taken (the load's instance included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_a_cpu_slot_hold_no_instance() {
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
