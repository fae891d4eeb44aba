//! Balancing under load: targets killed or flapping mid-load cost no failed
//! GET, least-request favours the fast target, hashing keeps a key on its
//! target, and max-requests sheds with a header naming the reason.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use tokio::task::JoinSet;

use crate::harness::{TestGateway, Upstream, client, series, status_of};

use super::{Killable, metrics, route_to_u, two_target_gateway, upstreams_json, with_admin};

/// `clients` clients sending `GET /` in a loop, each request counted as
/// done and, unless answered 200, as failed.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    set: JoinSet<()>,
}

fn load_counting_failures(gw: &TestGateway, clients: usize) -> Load {
    let http = client();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let (http, url) = (http.clone(), gw.url("/"));
        let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
        set.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    Load {
        stop,
        failures,
        done,
        set,
    }
}

impl Load {
    /// Requests done so far.
    fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Wait until `n` requests are done in all.
    async fn until_done(&self, n: usize) {
        while self.done() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stop the clients; the failures counted.
    async fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        while self.set.join_next().await.is_some() {}
        self.failures.load(Ordering::SeqCst)
    }
}

/// `n` sequential `GET /` from `http`: how many were not answered 200.
async fn failed_gets(http: &reqwest::Client, gw: &TestGateway, n: usize) -> usize {
    let mut failed = 0;
    for _ in 0..n {
        if !http
            .get(gw.url("/"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            failed += 1;
        }
    }
    failed
}

#[tokio::test]
async fn a_target_killed_mid_load_costs_no_failed_get() {
    let a = Killable::start("a", Duration::ZERO).await;
    let b = Killable::start("b", Duration::ZERO).await;
    let gw = two_target_gateway(a.addr, b.addr, "").await;
    let load = load_counting_failures(&gw, 4);
    load.until_done(100).await;
    a.kill();
    load.until_done(load.done() + 200).await;
    assert_eq!(load.stop().await, 0);
    assert!(a.hits() > 0 && b.hits() > 0);
}

#[tokio::test]
async fn a_flapping_target_costs_no_failed_get() {
    let flappy = Killable::start("flappy", Duration::ZERO).await;
    let steady = Killable::start("steady", Duration::ZERO).await;
    let gw = two_target_gateway(flappy.addr, steady.addr, "").await;
    let http = client();
    let mut failures = 0;
    for round in 0..6 {
        if round % 2 == 0 {
            flappy.kill();
        } else {
            flappy.restart().await;
        }
        failures += failed_gets(&http, &gw, 30).await;
    }
    assert_eq!(failures, 0);
}

#[tokio::test]
async fn least_request_sends_less_to_a_slow_target() {
    let slow = Killable::start("slow", Duration::from_millis(200)).await;
    let fast = Killable::start("fast", Duration::ZERO).await;
    let gw = two_target_gateway(slow.addr, fast.addr, "balance = \"least-request\"").await;
    let http = client();
    let mut set = JoinSet::new();
    for _ in 0..8 {
        let (http, url) = (http.clone(), gw.url("/"));
        set.spawn(async move {
            for _ in 0..10 {
                assert_eq!(status_of(http.get(&url)).await, 200);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    // Round robin would split 40/40.
    assert!(
        slow.hits() * 3 < fast.hits(),
        "slow {} fast {}",
        slow.hits(),
        fast.hits()
    );
}

#[tokio::test]
async fn hashing_on_a_header_keeps_a_key_on_its_target() {
    let targets: Vec<Upstream> = vec![
        Upstream::named("a").await,
        Upstream::named("b").await,
        Upstream::named("c").await,
    ];
    let list: Vec<String> = targets.iter().map(|t| format!("\"{}\"", t.addr)).collect();
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [{}]\nbalance = \"hash\"\nhash-on = \"header:x-user\"\n{}",
        list.join(", "),
        route_to_u("")
    ))
    .await;
    let http = client();
    let mut seen = std::collections::HashMap::new();
    for round in 0..3 {
        for user in 0..30 {
            let body = http
                .get(gw.url("/"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let first = seen.entry(user).or_insert_with(|| body.clone());
            assert_eq!(*first, body, "user {user} moved in round {round}");
        }
    }
    let distinct: std::collections::HashSet<_> = seen.values().collect();
    assert_eq!(distinct.len(), 3, "30 keys spread over the 3 targets");
}

#[tokio::test]
async fn max_requests_sheds_with_a_header_naming_the_reason() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let slow = Upstream::with(move |_| {
        let g = g.clone();
        async move {
            let _p = g.acquire().await.unwrap();
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await;
    let gw = TestGateway::start(&with_admin(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\nmax-requests = 2\n{}",
        slow.addr,
        route_to_u("")
    )))
    .await;
    let http = client();
    let mut held = JoinSet::new();
    for _ in 0..2 {
        let (http, url) = (http.clone(), gw.url("/"));
        held.spawn(async move { status_of(http.get(url)).await.as_u16() });
    }
    for _ in 0..200 {
        if upstreams_json(&gw).await["upstreams"][0]["active_requests"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = http.get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-pylon-shed"], "max-requests");
    gate.add_permits(10);
    while let Some(s) = held.join_next().await {
        assert_eq!(s.unwrap(), 200);
    }
    let m = metrics(&gw).await;
    assert_eq!(
        series(
            &m,
            "pylon_upstream_shed_total{upstream=\"u\",reason=\"max-requests\"}"
        ),
        Some(1.0)
    );
}
