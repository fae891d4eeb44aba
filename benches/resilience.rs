//! Upstream resilience, measured (issue 19 item 11), with pylon, its
//! upstreams and the load generator in one process on loopback.
//!
//! (a) Three targets under load (GETs from 16 concurrent clients); one is
//!     killed (listener and connections gone, as a crashed process) and
//!     restarted later. Printed for "off" (no retries, no outlier
//!     detection, no breaker, no health checks: pylon before issue 19) and
//!     "on" (the defaults, plus a health check every 1 s): client-visible
//!     failures, how long after the kill the dead target stopped being
//!     tried (the last connect error), and how long after the restart it
//!     received traffic again.
//! (b) Two fast targets and one answering 50 ms slower: p50/p99 latency
//!     with `round-robin`, `least-request` and `peak-ewma`, first at a
//!     fixed rate (open loop, `RESILIENCE_RATE` requests/s, default 1000),
//!     then with 32 closed-loop clients, which on a small machine makes it
//!     CPU-bound: every request then waits for a core, the fast targets'
//!     in-flight counts and latencies with it, and the balancers see less
//!     difference between fast and slow.
//!
//! `cargo bench --bench resilience` (`-- a` or `-- b` for one part).
//! `RESILIENCE_SECS` sets each phase's length (default 4 s),
//! `RESILIENCE_MIN_RETRIES_PER_SECOND` (a) "on"'s retry-budget floor
//! (default pylon's, 10),
//! `RESILIENCE_WARMUP` the unmeasured load before each of (b)'s (default
//! 10 s, peak-EWMA's decay time: its estimates start at 30 ms).

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, task::JoinSet};

/// A target that can be killed with all its connections and restarted.
struct Target {
    addr: SocketAddr,
    delay: Duration,
    hits: Arc<AtomicUsize>,
    conns: Arc<Mutex<Option<JoinSet<()>>>>,
}

impl Target {
    async fn start(delay: Duration) -> Target {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let t = Target {
            addr: l.local_addr().unwrap(),
            delay,
            hits: Arc::default(),
            conns: Arc::default(),
        };
        t.serve(l);
        t
    }

    fn serve(&self, l: TcpListener) {
        let mut set = JoinSet::new();
        let (hits, delay, conns) = (self.hits.clone(), self.delay, self.conns.clone());
        set.spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let hits = hits.clone();
                let svc = service_fn(move |_req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::Relaxed);
                    async move {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
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

    fn kill(&self) {
        if let Some(mut set) = self.conns.lock().unwrap().take() {
            set.abort_all();
        }
    }

    async fn restart(&self) {
        self.kill();
        let l = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        self.serve(l);
    }
}

async fn gateway(toml: &str) -> (pylon::server::Gateway, SocketAddr) {
    let text = format!("[[listeners]]\naddress = \"127.0.0.1:0\"\n\n{toml}");
    let cfg = pylon::config::parse(&text, Path::new("bench.toml"), Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    let gw = pylon::server::Gateway::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("{}", pylon::error::ErrorChain(&e)));
    let addr = gw.local_addrs()[0];
    (gw, addr)
}

fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Clients sending GETs until `stop`; failures and (ok) latencies.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    /// When each failure was seen, and what it was (status or error).
    failed: Arc<Mutex<Vec<(Instant, String)>>>,
    set: JoinSet<()>,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let load = Load {
            stop: Arc::default(),
            failures: Arc::default(),
            sent: Arc::default(),
            latencies: Arc::default(),
            failed: Arc::default(),
            set: JoinSet::new(),
        };
        let mut set = JoinSet::new();
        let http = client();
        for _ in 0..clients {
            let (http, url) = (http.clone(), url.clone());
            let (stop, failures, sent, lat, failed) = (
                load.stop.clone(),
                load.failures.clone(),
                load.sent.clone(),
                load.latencies.clone(),
                load.failed.clone(),
            );
            set.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let outcome = match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            r.bytes().await.map(drop).map_err(|e| e.to_string())
                        }
                        Ok(r) => Err(format!(
                            "{} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )),
                        Err(e) => Err(e.to_string()),
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    match outcome {
                        Ok(()) => lat.lock().unwrap().push(t.elapsed()),
                        Err(what) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            failed.lock().unwrap().push((Instant::now(), what));
                        }
                    }
                }
            });
        }
        Load { set, ..load }
    }

    async fn stop(mut self) -> (usize, usize, Vec<Duration>) {
        self.stop.store(true, Ordering::Relaxed);
        while self.set.join_next().await.is_some() {}
        let mut lat = std::mem::take(&mut *self.latencies.lock().unwrap());
        lat.sort();
        (
            self.sent.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            lat,
        )
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

async fn part_a(phase: Duration) {
    println!(
        "(a) three targets, one killed after {phase:?} and restarted {phase:?} later; 16 clients"
    );
    for (label, extra) in [
        (
            "off",
            "[upstreams.u.outlier-detection]\nconsecutive-failures = 0\n[upstreams.u.circuit-breaker]\nconsecutive-failures = 0\n",
        ),
        (
            "on",
            "[upstreams.u.health-check]\npath = \"/healthz\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n",
        ),
    ] {
        // RESILIENCE_MIN_RETRIES_PER_SECOND=0: the retry budget without
        // its floor in retries per second (pylon before it had one).
        let extra = match std::env::var("RESILIENCE_MIN_RETRIES_PER_SECOND") {
            Ok(n) if label == "on" => {
                format!("{extra}[upstreams.u.retry-budget]\nmin-per-second = {n}\n")
            }
            _ => extra.to_string(),
        };
        let retries = if label == "off" { 0 } else { 2 };
        let targets = [
            Target::start(Duration::ZERO).await,
            Target::start(Duration::ZERO).await,
            Target::start(Duration::ZERO).await,
        ];
        let list: Vec<String> = targets.iter().map(|t| format!("\"{}\"", t.addr)).collect();
        let (gw, addr) = gateway(&format!(
            "[admin]\naddress = \"127.0.0.1:0\"\n\n[upstreams.u]\ntargets = [{}]\n{extra}\n\
             [[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n[routes.retry]\nretries = {retries}\n",
            list.join(", ")
        ))
        .await;
        let load = Load::start(format!("http://{addr}/"), 16);
        tokio::time::sleep(phase).await;
        let failures_before = load.failures.load(Ordering::Relaxed);
        let killed_at = Instant::now();
        targets[0].kill();
        // Sample the connect errors to find the last time the dead target
        // was tried.
        let mut last_connect = 0.0;
        let mut last_tried = Duration::ZERO;
        while killed_at.elapsed() < phase {
            let m = gw.metrics().encode();
            let c = series(
                &m,
                "pylon_upstream_errors_total{upstream=\"u\",kind=\"connect\"}",
            ) + series(
                &m,
                "pylon_upstream_errors_total{upstream=\"u\",kind=\"failed\"}",
            );
            if c > last_connect {
                last_connect = c;
                last_tried = killed_at.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let failures_dead = load.failures.load(Ordering::Relaxed) - failures_before;
        let hits_before_restart = targets[0].hits.load(Ordering::Relaxed);
        let restarted_at = Instant::now();
        targets[0].restart().await;
        let mut back = None;
        while restarted_at.elapsed() < phase * 10 {
            if targets[0].hits.load(Ordering::Relaxed) > hits_before_restart + 5 {
                back = Some(restarted_at.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let failed = load.failed.clone();
        let (sent, failures, _) = load.stop().await;
        println!(
            "  {label:>3}: {sent} requests, {failures} failed ({failures_dead} while the target was dead); \
             dead target last tried {:.0} ms after the kill ({} upstream errors); traffic back {}",
            last_tried.as_secs_f64() * 1e3,
            last_connect,
            match back {
                Some(d) => format!("{:.0} ms after the restart", d.as_secs_f64() * 1e3),
                None => format!("not within {:?} (ejected for 30 s)", phase * 10),
            }
        );
        if label == "on" {
            let m = gw.metrics().encode();
            let retries = |reason: &str| {
                series(
                    &m,
                    &format!("pylon_upstream_retries_total{{upstream=\"u\",reason=\"{reason}\"}}"),
                )
            };
            println!(
                "       retries: {} connect, {} reset, {} status; {} denied by the retry budget",
                retries("connect"),
                retries("reset"),
                retries("status"),
                series(
                    &m,
                    "pylon_upstream_retries_denied_total{upstream=\"u\",reason=\"budget\"}"
                )
            );
            for (at, what) in failed.lock().unwrap().iter().take(5) {
                let since = at.saturating_duration_since(killed_at).as_secs_f64() * 1e3;
                println!("       failed {since:.0} ms after the kill: {what}");
            }
        }
        gw.shutdown(Duration::from_secs(1)).await;
    }
}

/// Requests at a fixed rate (open loop: a slow answer does not slow the
/// sending, so the latency is not understated by coordinated omission),
/// each timed from when it was due; failures and sorted latencies.
async fn open_loop(url: String, rate: u32, phase: Duration) -> (usize, usize, Vec<Duration>) {
    let http = client();
    let failures = Arc::new(AtomicUsize::new(0));
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut set = JoinSet::new();
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < phase {
        let due = tick.tick().await.into_std();
        sent += 1;
        let (http, url, failures, lat) = (
            http.clone(),
            url.clone(),
            failures.clone(),
            latencies.clone(),
        );
        set.spawn(async move {
            let ok = match http.get(&url).send().await {
                Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                _ => false,
            };
            if ok {
                lat.lock().unwrap().push(due.elapsed());
            } else {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        });
        while set.try_join_next().is_some() {}
    }
    while set.join_next().await.is_some() {}
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort();
    (sent, failures.load(Ordering::Relaxed), lat)
}

/// How part (b) loads the gateway.
#[derive(Clone, Copy)]
enum Pace {
    /// A fixed request rate (per second).
    Rate(u32),
    /// So many clients, each sending its next request when the last is
    /// answered: on this machine, as fast as the CPU allows.
    Closed(usize),
}

async fn part_b(phase: Duration, warmup: Duration, pace: Pace) {
    match pace {
        Pace::Rate(r) => println!(
            "(b) two fast targets and one 50 ms slower; open loop, {r} requests/s, {phase:?} each after {warmup:?}"
        ),
        Pace::Closed(c) => println!(
            "(b) two fast targets and one 50 ms slower; {c} closed-loop clients (CPU-bound), {phase:?} each after {warmup:?}"
        ),
    }
    let mut p99s = Vec::new();
    for balance in ["round-robin", "least-request", "peak-ewma"] {
        let targets = [
            Target::start(Duration::ZERO).await,
            Target::start(Duration::ZERO).await,
            Target::start(Duration::from_millis(50)).await,
        ];
        let list: Vec<String> = targets.iter().map(|t| format!("\"{}\"", t.addr)).collect();
        let (gw, addr) = gateway(&format!(
            "[upstreams.u]\ntargets = [{}]\nbalance = \"{balance}\"\n\n\
             [[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
            list.join(", ")
        ))
        .await;
        let url = format!("http://{addr}/");
        let run = |length| {
            let url = url.clone();
            async move {
                match pace {
                    Pace::Rate(r) => open_loop(url, r, length).await,
                    Pace::Closed(c) => {
                        let load = Load::start(url, c);
                        tokio::time::sleep(length).await;
                        load.stop().await
                    }
                }
            }
        };
        // Unmeasured: long enough for the latency estimates to forget
        // their 30 ms start (10 s decay).
        run(warmup).await;
        let slow_before = targets[2].hits.load(Ordering::Relaxed);
        let (sent, failures, lat) = run(phase).await;
        let slow = targets[2].hits.load(Ordering::Relaxed) - slow_before;
        let slow_share = slow as f64 / sent.max(1) as f64;
        println!(
            "  {balance:>13}: {sent} requests, {failures} failed, p50 {:.2} ms, p99 {:.2} ms, slow target took {:.2}%",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            slow_share * 100.0
        );
        p99s.push(pct(&lat, 0.99));
        gw.shutdown(Duration::from_secs(1)).await;
    }
    println!(
        "  p99 least-request / round-robin = {:.2}; peak-ewma / round-robin = {:.2}",
        p99s[1] / p99s[0],
        p99s[2] / p99s[0]
    );
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| a == "a" || a == "b");
    let phase = Duration::from_secs(
        std::env::var("RESILIENCE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4),
    );
    let rate = std::env::var("RESILIENCE_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let warmup = Duration::from_secs(
        std::env::var("RESILIENCE_WARMUP")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if filter.as_deref() != Some("b") {
            part_a(phase).await;
        }
        if filter.as_deref() != Some("a") {
            part_b(phase, warmup, Pace::Rate(rate)).await;
            part_b(phase, warmup, Pace::Closed(32)).await;
        }
    });
}
