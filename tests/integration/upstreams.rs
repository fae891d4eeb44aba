//! Upstreams that survive failure (issue 19): retries to another target,
//! what must not be retried, the retry budget, passive ejection, active
//! health checks, balancing and load shedding, against real servers on
//! loopback.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinSet,
};

use crate::harness::{TestGateway, Upstream, admin_get, client, series, status_of};

/// A route `r` on every path to upstream `u`, with `extra` route lines.
fn route_to_u(extra: &str) -> String {
    format!("[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n{extra}\n")
}

/// An address nothing listens on (a port just freed).
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A server answering `name` that can be killed with every connection it
/// has (as a crashed process would), and started again on the same port.
struct Killable {
    addr: SocketAddr,
    name: &'static str,
    hits: Arc<AtomicUsize>,
    delay: Duration,
    conns: Arc<Mutex<Option<JoinSet<()>>>>,
}

impl Killable {
    async fn start(name: &'static str, delay: Duration) -> Killable {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(l, name, delay)
    }

    /// Serve on `l`.
    fn on(l: TcpListener, name: &'static str, delay: Duration) -> Killable {
        let k = Killable {
            addr: l.local_addr().unwrap(),
            name,
            hits: Arc::default(),
            delay,
            conns: Arc::default(),
        };
        k.serve(l);
        k
    }

    fn serve(&self, l: TcpListener) {
        let mut set = JoinSet::new();
        let (hits, name, delay) = (self.hits.clone(), self.name, self.delay);
        let conns = self.conns.clone();
        set.spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    continue;
                };
                let hits = hits.clone();
                let svc = service_fn(move |_req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            name.as_bytes(),
                        ))))
                    }
                });
                if let Some(set) = conns.lock().unwrap().as_mut() {
                    set.spawn(async move {
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            }
        });
        *self.conns.lock().unwrap() = Some(set);
    }

    /// Close the listener and every connection.
    fn kill(&self) {
        if let Some(mut set) = self.conns.lock().unwrap().take() {
            set.abort_all();
            drop(set);
        }
    }

    async fn restart(&self) {
        self.kill();
        let l = TcpListener::bind(self.addr).await.unwrap();
        self.serve(l);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw HTTP/1.1 target that reads a request head and then closes the
/// connection without answering (a crash before the response), counting
/// the connections it took.
async fn resetting_target() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let t = taken.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            t.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                // Some of the body, then the crash.
                let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await;
                drop(s);
            });
        }
    });
    (addr, taken)
}

async fn metrics(gw: &TestGateway) -> String {
    admin_get(&gw.gateway, "/metrics").await.1
}

async fn upstreams_json(gw: &TestGateway) -> serde_json::Value {
    serde_json::from_str(&admin_get(&gw.gateway, "/admin/upstreams").await.1).unwrap()
}

fn with_admin(toml: &str) -> String {
    format!("[admin]\naddress = \"127.0.0.1:0\"\n\n{toml}")
}

/// A gateway (with the admin API) whose upstream `u` has targets `a` and
/// `b` (and the `extra` upstream lines), route `r` on every path to it.
async fn two_target_gateway(
    a: impl std::fmt::Display,
    b: impl std::fmt::Display,
    extra: &str,
) -> TestGateway {
    TestGateway::start(&with_admin(&format!(
        "[upstreams.u]\ntargets = [\"{a}\", \"{b}\"]\n{extra}\n{}",
        route_to_u("")
    )))
    .await
}

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
async fn refused_connect_is_retried_on_the_other_target_and_the_dead_one_ejected() {
    let live = Upstream::named("live").await;
    let dead = dead_addr().await;
    let gw = two_target_gateway(dead, live.addr, "").await;
    let http = client();
    for i in 0..40 {
        let r = http.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.text().await.unwrap(), "live");
    }
    let m = metrics(&gw).await;
    let retries = series(
        &m,
        "pylon_upstream_retries_total{upstream=\"u\",reason=\"connect\"}",
    )
    .unwrap_or(0.0);
    assert!(
        (1.0..=5.0).contains(&retries),
        "retried until ejected (5 failures): {retries}\n{m}"
    );
    assert_eq!(
        series(
            &m,
            "pylon_upstream_target_events_total{upstream=\"u\",event=\"ejected\"}"
        ),
        Some(1.0)
    );
    let v = upstreams_json(&gw).await;
    let states = &v["upstreams"][0]["target_states"];
    assert_eq!(states[0]["target"], dead.to_string());
    assert_eq!(states[0]["ejected"], true, "{v}");
    assert_eq!(states[1]["ejected"], false, "{v}");
}

#[tokio::test]
async fn reset_before_the_response_is_retried_for_get_but_not_for_post() {
    let (resetter, taken) = resetting_target().await;
    let good = Upstream::echo_body().await;
    let gw = two_target_gateway(resetter, good.addr, "").await;
    let http = client();
    // Round robin starts at the resetting target: each pair of requests
    // sends one there first.
    let mut ok = 0;
    for _ in 0..4 {
        assert_eq!(status_of(http.get(gw.url("/get"))).await, 200);
        ok += 1;
    }
    assert_eq!(ok, 4);
    assert!(
        taken.load(Ordering::SeqCst) >= 1,
        "the resetting target was tried"
    );

    // POST (not idempotent) with a small, buffered body: never resent.
    let before = good.seen().len();
    let mut failed = 0;
    for _ in 0..4 {
        let r = http
            .post(gw.url("/post"))
            .body("small body")
            .send()
            .await
            .unwrap();
        if r.status() == 502 {
            failed += 1;
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    assert!(
        failed >= 1,
        "a POST that met the reset failed rather than being resent"
    );
    assert_eq!(
        good.seen().len() - before,
        4 - failed,
        "no POST reached the good target twice or after a reset"
    );
}

#[tokio::test]
async fn post_with_a_streamed_body_is_never_retried_after_it_was_sent() {
    let (resetter, taken) = resetting_target().await;
    let good = Upstream::echo_body().await;
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{resetter}\"]\n\n[upstreams.v]\ntargets = [\"{}\"]\n{}",
        good.addr,
        route_to_u("")
    ))
    .await;
    // PUT is idempotent, but its body streams (no length): once bytes went
    // out they cannot be sent again.
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"part one, ")),
        Ok(Bytes::from_static(b"part two")),
    ];
    let r = client()
        .put(gw.url("/stream"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(taken.load(Ordering::SeqCst), 1, "one attempt, no retry");
}

#[tokio::test]
async fn a_retried_status_goes_to_another_target_for_idempotent_methods_only() {
    let busy = Upstream::with(|_| async {
        Response::builder()
            .status(503)
            .body(Full::new(Bytes::from_static(b"busy")))
            .unwrap()
    })
    .await;
    let good = Upstream::named("good").await;
    let gw = two_target_gateway(busy.addr, good.addr, "").await;
    let http = client();
    for _ in 0..4 {
        let r = http.get(gw.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "good");
    }
    let busy_posts_before = busy.seen().iter().filter(|s| s.method == "POST").count();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(status_of(http.post(gw.url("/")).body("x")).await.as_u16());
    }
    let busy_posts = busy.seen().iter().filter(|s| s.method == "POST").count() - busy_posts_before;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        busy_posts,
        "every POST the busy target answered reached the client as is: {statuses:?}"
    );
}

#[tokio::test]
async fn the_retry_budget_stops_a_retry_storm() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let failing = Upstream::with(move |_| {
        h.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Response::builder()
                .status(503)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
    })
    .await;
    let gw = TestGateway::start(&with_admin(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n{}",
        failing.addr,
        route_to_u("")
    )))
    .await;
    let http = client();
    // More than the budget's floor lets through (3 in flight plus 10 a
    // second): a storm.
    let clients = 100;
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let (http, url) = (http.clone(), gw.url("/"));
        set.spawn(async move { status_of(http.get(url)).await.as_u16() });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), 503);
    }
    let sent = hits.load(Ordering::SeqCst);
    // Without a budget, 2 retries each: 120 attempts.
    assert!(
        sent < clients * 3 / 2,
        "{sent} attempts for {clients} requests"
    );
    let m = metrics(&gw).await;
    assert!(
        series(
            &m,
            "pylon_upstream_retries_denied_total{upstream=\"u\",reason=\"budget\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "{m}"
    );
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
async fn reset_after_the_response_head_is_not_retried() {
    // Headers and part of the body, then the connection drops.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let t = taken.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            t.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                    .await;
                let _ = s.flush().await;
                drop(s);
            });
        }
    });
    let good = Upstream::named("good").await;
    let gw = two_target_gateway(addr, good.addr, "").await;
    let r = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the head went to the client as it came");
    assert!(
        r.bytes().await.is_err(),
        "the body is cut, not completed elsewhere"
    );
    assert_eq!(taken.load(Ordering::SeqCst), 1);
    assert!(good.seen().is_empty(), "nothing was resent");
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
async fn a_target_failing_its_health_check_gets_no_traffic_until_it_passes() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let sick = Upstream::with(move |seen| {
        let ok = h.load(Ordering::SeqCst);
        async move {
            let status = if seen.uri.path() == "/healthz" && !ok {
                503
            } else {
                200
            };
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from_static(b"sick")))
                .unwrap()
        }
    })
    .await;
    let well = Upstream::named("well").await;
    let gw = TestGateway::start(&with_admin(&format!(
        "[upstreams.u]\ntargets = [\"{}\", \"{}\"]\n\n[upstreams.u.health-check]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy-threshold = 1\nhealthy-threshold = 1\n\n{}",
        sick.addr,
        well.addr,
        route_to_u("")
    )))
    .await;
    // Wait for the check to mark it (readiness from the admin API).
    let wait_for = |want: bool| {
        let gw = &gw;
        async move {
            for _ in 0..200 {
                let v = upstreams_json(gw).await;
                if v["upstreams"][0]["target_states"][0]["healthy"] == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("target never became healthy = {want}");
        }
    };
    wait_for(false).await;
    let http = client();
    for _ in 0..10 {
        assert_eq!(
            http.get(gw.url("/x"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "well"
        );
    }
    assert!(sick.seen().iter().all(|s| s.uri.path() == "/healthz"));
    healthy.store(true, Ordering::SeqCst);
    wait_for(true).await;
    let mut bodies = Vec::new();
    for _ in 0..10 {
        bodies.push(
            http.get(gw.url("/x"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    assert!(bodies.iter().any(|b| b == "sick"), "{bodies:?}");
    let m = metrics(&gw).await;
    assert!(
        series(
            &m,
            "pylon_upstream_target_events_total{upstream=\"u\",event=\"unhealthy\"}"
        ) >= Some(1.0),
        "{m}"
    );
    assert!(
        series(
            &m,
            "pylon_upstream_health_checks_total{upstream=\"u\",result=\"fail\"}"
        ) >= Some(1.0)
    );
}

#[tokio::test]
async fn every_target_unhealthy_spreads_traffic_over_all_rather_than_refusing() {
    let a = Upstream::with(|seen| async move {
        let status = if seen.uri.path() == "/healthz" {
            500
        } else {
            200
        };
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"a")))
            .unwrap()
    })
    .await;
    let gw = TestGateway::start(&with_admin(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n\n[upstreams.u.health-check]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy-threshold = 1\n\n{}",
        a.addr,
        route_to_u("")
    )))
    .await;
    for _ in 0..200 {
        if upstreams_json(&gw).await["upstreams"][0]["target_states"][0]["healthy"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        upstreams_json(&gw).await["upstreams"][0]["target_states"][0]["healthy"],
        false
    );
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200, "panic mode still serves");
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

#[test]
fn resilience_settings_are_checked_at_load() {
    let err = crate::harness::parse(
        "[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\nweights = [1, 2]\nbalance = \"fastest\"\n\n\
         [upstreams.u.health-check]\npath = \"healthz\"\nstatuses = \"2xx\"\n\n\
         [upstreams.u.retry-budget]\nratio = 1.5\n\n\
         [[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n\n[routes.retry]\nretries = 50\nstatuses = [404]\n",
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "weights has 2 entries for 1 targets",
        "unknown balance \"fastest\"",
        "invalid path \"healthz\"",
        "invalid statuses \"2xx\"",
        "ratio must be between 0.0 and 1.0",
        "retries must be between 0 and 10",
        "a retried status must be a 5xx",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[tokio::test]
async fn a_reload_that_keeps_the_targets_keeps_a_dead_one_out() {
    let live = Upstream::named("live").await;
    let dead = dead_addr().await;
    let toml = |timeout: &str| {
        with_admin(&format!(
            "[upstreams.u]\ntargets = [\"{dead}\", \"{}\"]\n{}",
            live.addr,
            route_to_u(&format!("timeout = \"{timeout}\""))
        ))
    };
    let gw = TestGateway::start(&toml("30s")).await;
    let http = client();
    let get_all = async || {
        for i in 0..40 {
            let r = http.get(gw.url("/x")).send().await.unwrap();
            assert_eq!(r.status(), 200, "request {i}");
            assert_eq!(r.text().await.unwrap(), "live");
        }
    };
    get_all().await;
    let connect_errors = async || {
        series(
            &metrics(&gw).await,
            "pylon_upstream_errors_total{upstream=\"u\",kind=\"connect\"}",
        )
        .unwrap_or(0.0)
    };
    let before = connect_errors().await;
    assert!(before >= 1.0, "the dead target was tried");
    assert_eq!(
        upstreams_json(&gw).await["upstreams"][0]["target_states"][0]["ejected"],
        true
    );
    // Same targets, another route timeout: a new configuration.
    gw.gateway
        .reload_with(crate::harness::parse(&toml("20s")).unwrap())
        .await
        .unwrap();
    let v = upstreams_json(&gw).await;
    assert_eq!(
        v["upstreams"][0]["target_states"][0]["ejected"], true,
        "the reload forgot the ejection: {v}"
    );
    get_all().await;
    assert_eq!(
        connect_errors().await,
        before,
        "the dead target got traffic again after the reload"
    );
}

/// Servers on every address `localhost` resolves to (127.0.0.1, and ::1 on
/// most machines), all on one port: the harness's upstream on 127.0.0.1
/// (it records the requests), a `Killable` on each other address.
async fn on_every_localhost_address() -> (Upstream, Vec<Killable>, Vec<SocketAddr>) {
    for _ in 0..20 {
        let v4 = Upstream::named("v4").await;
        let port = v4.addr.port();
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(("localhost", port))
            .await
            .unwrap()
            .collect();
        addrs.sort();
        addrs.dedup();
        assert!(
            addrs.contains(&v4.addr),
            "localhost is not 127.0.0.1: {addrs:?}"
        );
        let mut others = Vec::new();
        for a in addrs.iter().filter(|a| **a != v4.addr) {
            // The port may be taken on that address: then another port.
            match TcpListener::bind(a).await {
                Ok(l) => others.push(Killable::on(l, "other", Duration::ZERO)),
                Err(_) => break,
            }
        }
        if others.len() + 1 == addrs.len() {
            return (v4, others, addrs);
        }
    }
    panic!("no port free on every address of localhost");
}

#[tokio::test]
async fn a_host_name_target_is_resolved_on_a_timer_into_its_addresses() {
    let (v4, others, addrs) = on_every_localhost_address().await;
    let target = format!("localhost:{}", v4.addr.port());
    let gw = TestGateway::start(&with_admin(&format!(
        "[upstreams.u]\ntargets = [\"{target}\"]\ndns-refresh = \"100ms\"\n{}",
        route_to_u("")
    )))
    .await;
    // The first look-up, at load: one endpoint per address.
    let expected: Vec<String> = addrs.iter().map(|a| format!("{target} ({a})")).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = upstreams_json(&gw).await;
        let names: Vec<String> = v["upstreams"][0]["target_states"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["target"].as_str().unwrap().to_string())
            .collect();
        if names == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never resolved into {expected:?}: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Traffic reaches every address.
    let http = client();
    for i in 0..20 {
        let r = http.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
    assert!(!v4.seen().is_empty());
    assert!(
        others.iter().all(|k| k.hits() > 0),
        "an address got nothing"
    );
    // Looked up again on the timer; the set changed once (name → addresses).
    let resolved = |result: &str| {
        format!("pylon_upstream_resolutions_total{{upstream=\"u\",result=\"{result}\"}}")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while series(&metrics(&gw).await, &resolved("ok")).unwrap_or(0.0) < 3.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not looked up again every 100ms"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(series(&metrics(&gw).await, &resolved("changed")), Some(1.0));
    assert_eq!(series(&metrics(&gw).await, &resolved("fail")), None);
}

#[tokio::test]
async fn a_host_name_that_does_not_resolve_fails_its_requests_and_is_counted() {
    let gw = TestGateway::start(&with_admin(&format!(
        "[upstreams.u]\ntargets = [\"no-such-host.invalid:80\"]\ndns-refresh = \"100ms\"\n{}",
        route_to_u("")
    )))
    .await;
    let fail = "pylon_upstream_resolutions_total{upstream=\"u\",result=\"fail\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while series(&metrics(&gw).await, fail).unwrap_or(0.0) < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed look-up counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The name stays the one endpoint, resolved per connection: 502.
    let v = upstreams_json(&gw).await;
    assert_eq!(
        v["upstreams"][0]["target_states"][0]["target"],
        "no-such-host.invalid:80"
    );
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
}
