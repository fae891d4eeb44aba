//! Adversarial plugins (issue 16), each run by the `attacker` guest
//! fail-closed and fail-open: hostile output, CPU-bound loops, calls past
//! the concurrency cap and key-value floods fail only their own requests
//! and are counted.

use std::time::{Duration, Instant};

use crate::harness::{TestGateway, Upstream, client, plugin, status_of};

use super::plugin_stats;

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
