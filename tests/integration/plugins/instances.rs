//! Sandbox limits and the instance pool through the gateway: a looping
//! plugin interrupted at its deadline, memory bombs and traps failing only
//! their request, pooled instances keeping state and being recycled before
//! they run out of memory.

use std::time::{Duration, Instant};

use crate::harness::{TestGateway, Upstream, client, series, status_of};

use super::{def, plugin_stats};

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
