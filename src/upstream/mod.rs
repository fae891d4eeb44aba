//! Upstreams: named groups of targets with a pooled HTTP client each, a
//! connection budget per target (`max-connections` with a bounded queue,
//! see [`h1`]), connect and response timeouts, and the error classification
//! the proxy maps to statuses (refused/reset → 502, timeout → 504, no
//! connection to be had or load shed → 503).
//!
//! Each attempt is admitted by [`UpstreamPool::admit`]: the upstream's
//! `max-requests` and, for a retry, its retry budget, then a target picked
//! by the balancer ([`balance`]) among those that may take traffic
//! ([`target`]: health checks, outlier ejection, breaker), and reported back
//! ([`Attempt::report`]) so the target's state learns from it. Retrying is
//! the proxy's decision (`proxy/forward.rs`); active health checks run in
//! [`health`].
//!
//! The response-head timeout counts from the end of the request body, as
//! Envoy's route timeout does: an upload takes as long as the client needs
//! (each chunk within the route's `request-body-timeout`), and an upstream
//! that stops taking the body for that long is a timeout too.
//!
//! An upstream with `tls` speaks HTTP/1.1 over TLS (protocol `http1`) or
//! HTTP/2 agreed by ALPN (protocol `h2`, gRPC over TLS), verifying the
//! targets against the system and webpki roots plus its `ca` ([`tls`]).
//!
//! A target given by host name is resolved again for every new connection
//! (the system resolver, which caches as configured), so a changed address
//! is used as soon as the kept-alive connections to the old one are gone.
//!
//! This module forwards requests it is given; header hygiene is done by
//! [`headers`] and called by the proxy.

mod balance;
mod error;
mod h1;
pub mod headers;
mod health;
mod outbound;
pub mod policy;
mod registry;
mod send;
mod set;
mod target;
mod tls;
mod tunnel;

pub use balance::hash_bytes;
pub use error::{AttemptError, UpstreamError};
pub use h1::{DRAIN_MAX_BYTES, DRAIN_TIMEOUT};
pub use outbound::MAX_OUTBOUND_BODY;
pub use registry::TargetRegistry;
pub use set::Upstreams;
pub use target::{Event, Outcome, Snapshot as TargetSnapshot};
pub use tunnel::TunnelConn;

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::uri::Authority;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use self::{
    balance::Balancer,
    policy::Resilience,
    target::{Report, TargetState},
};
use crate::{
    body::Body,
    config::{Upstream as UpstreamConfig, UpstreamProtocol},
    telemetry::{metrics::UpstreamMetrics, throttle::LogThrottle},
    workers,
};

static PANIC_MODE: LogThrottle =
    LogThrottle::new("upstream panic mode", 10, Duration::from_secs(10));

/// Distinguishes the pools of successive configurations (health checks:
/// only the newest pool's judge a target they share).
static POOL_IDS: AtomicU64 = AtomicU64::new(1);

/// One upstream at run time.
pub struct UpstreamPool {
    /// Unique in the process.
    id: u64,
    config: UpstreamConfig,
    /// Connections per worker thread (slot 0 for everything off the data
    /// plane, then one per worker): a connection's task runs on the thread
    /// that opened it, so sharing connections across workers would wake
    /// another thread on every request.
    transports: Box<[OnceLock<Transport>]>,
    /// The targets, parsed once (validation rejects what does not parse).
    authorities: Vec<Option<Authority>>,
    /// Each target's connection budget, shared by all workers.
    limits: Vec<Arc<h1::TargetLimit>>,
    tls: Option<tls::UpstreamTls>,
    /// The resilience settings (`config`'s, kept at hand).
    resilience: Resilience,
    /// Each target's health, ejection, breaker and load.
    targets: Vec<TargetState>,
    balancer: Balancer,
    /// Attempts admitted and not yet answered (all targets).
    active: AtomicUsize,
    /// Of those, retries.
    retries_active: AtomicUsize,
    /// No target could take traffic at the last pick.
    panicking: AtomicBool,
    metrics: OnceLock<Arc<UpstreamMetrics>>,
}

/// Why [`UpstreamPool::admit`] refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The upstream's `max-requests` are in flight.
    MaxRequests,
    /// A retry over the retry budget.
    Budget,
}

/// An admitted attempt on one target: counted in flight until dropped;
/// [`Attempt::report`] tells the target's state how it went.
pub struct Attempt<'a> {
    pool: &'a UpstreamPool,
    index: usize,
    probe: bool,
    retry: bool,
    reported: bool,
}

impl Attempt<'_> {
    /// The target (`host:port` as configured).
    pub fn target(&self) -> &str {
        &self.pool.targets[self.index].name
    }

    /// The target's index in the upstream's list.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Record how the attempt went (`latency`: time to the response head).
    pub fn report(mut self, outcome: Outcome, latency: Option<Duration>) {
        self.reported = true;
        let pool = self.pool;
        let r = &pool.resilience;
        let mut events = Vec::new();
        pool.targets[self.index].record(
            Report {
                outcome,
                latency,
                probe: self.probe,
                now: tokio::time::Instant::now(),
            },
            (&r.outlier, &r.breaker),
            || pool.may_eject(),
            &mut events,
        );
        pool.emit(self.index, &events);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let pool = self.pool;
        pool.targets[self.index].end();
        pool.active.fetch_sub(1, Ordering::Relaxed);
        if self.retry {
            pool.retries_active.fetch_sub(1, Ordering::Relaxed);
        }
        if self.probe && !self.reported {
            pool.targets[self.index].release_probe();
        }
    }
}

/// How one worker reaches the upstream's targets.
enum Transport {
    /// HTTP/1.1: pylon's pool per target (`None` for an unparsable target).
    Http1(Vec<Option<Arc<h1::TargetPool>>>),
    /// h2c: hyper-util's client, which multiplexes one connection per target.
    H2c(Box<Client<HttpConnector, Body>>),
    /// h2 over TLS: the same, with the TLS handshake in its connector.
    H2(Box<Client<tls::H2Connector, Body>>),
}

impl UpstreamPool {
    fn new(
        config: UpstreamConfig,
        workers: usize,
        tls: Option<tls::UpstreamTls>,
        registry: &TargetRegistry,
    ) -> Self {
        let id = POOL_IDS.fetch_add(1, Ordering::Relaxed);
        let checked = config.resilience.health_check.is_some();
        let targets: Vec<TargetState> = config
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let state = TargetState::with_live(
                    t.clone(),
                    config.resilience.weights.get(i).copied().unwrap_or(1),
                    registry.live(&config.name, t),
                );
                state.claim(id, checked);
                state
            })
            .collect();
        Self {
            id,
            tls,
            transports: (0..=workers.max(1)).map(|_| OnceLock::new()).collect(),
            authorities: config
                .targets
                .iter()
                .map(|t| Authority::try_from(t.as_str()).ok())
                .collect(),
            limits: config
                .targets
                .iter()
                .map(|_| {
                    Arc::new(h1::TargetLimit::new(
                        config.max_connections,
                        config.max_pending,
                        config.queue_timeout,
                    ))
                })
                .collect(),
            resilience: config.resilience.clone(),
            balancer: Balancer::new(&config.resilience.balance, &targets),
            targets,
            config,
            active: AtomicUsize::new(0),
            retries_active: AtomicUsize::new(0),
            panicking: AtomicBool::new(false),
            metrics: OnceLock::new(),
        }
    }

    fn transport(&self) -> &Transport {
        let slot = workers::current().map_or(0, |w| 1 + w % (self.transports.len() - 1));
        self.transports[slot].get_or_init(|| match self.config.protocol {
            UpstreamProtocol::Http1 => Transport::Http1(
                self.authorities
                    .iter()
                    .zip(&self.limits)
                    .map(|(a, limit)| {
                        a.clone().map(|a| {
                            h1::TargetPool::new(
                                a,
                                self.tls.clone(),
                                self.config.connect_timeout,
                                self.config.max_idle_per_target,
                                limit.clone(),
                            )
                        })
                    })
                    .collect(),
            ),
            UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(self.config.connect_timeout));
                connector.set_nodelay(true);
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(self.config.max_idle_per_target)
                    .http2_only(true);
                match &self.tls {
                    // Validation allows h2 only with tls, h2c only without.
                    Some(tls) => {
                        connector.enforce_http(false);
                        Transport::H2(Box::new(builder.build(tls::H2Connector {
                            tcp: connector,
                            tls: tls.clone(),
                        })))
                    }
                    None => {
                        connector.enforce_http(true);
                        Transport::H2c(Box::new(builder.build(connector)))
                    }
                }
            }
        })
    }

    /// The upstream's configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Admit an attempt: within `max-requests` and, for a retry, the
    /// retry budget, on a target picked by the balancer (`key` for a
    /// hashing one) that may take traffic, preferring one not in `tried`.
    pub fn admit(
        &self,
        key: Option<u64>,
        tried: &[usize],
        retry: bool,
    ) -> Result<Attempt<'_>, Refused> {
        let active = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        if active > self.resilience.max_requests {
            self.active.fetch_sub(1, Ordering::Relaxed);
            if let Some(m) = self.metrics.get() {
                m.shed("max-requests");
            }
            return Err(Refused::MaxRequests);
        }
        if retry {
            let budget = &self.resilience.retry_budget;
            let allowed = budget
                .min_concurrent
                .max((budget.ratio * active as f64) as usize);
            if self.retries_active.fetch_add(1, Ordering::Relaxed) >= allowed {
                self.retries_active.fetch_sub(1, Ordering::Relaxed);
                self.active.fetch_sub(1, Ordering::Relaxed);
                return Err(Refused::Budget);
            }
        }
        let mut events = Vec::new();
        let mut returned = Vec::new();
        let now = tokio::time::Instant::now();
        let pick = self.balancer.pick(&self.targets, key, tried, |i| {
            let before = events.len();
            let a = self.targets[i].admit(now, &mut events);
            returned.extend(std::iter::repeat_n(i, events.len() - before));
            a
        });
        for (i, e) in returned.iter().zip(&events) {
            self.emit(*i, std::slice::from_ref(e));
        }
        if pick.panic != self.panicking.load(Ordering::Relaxed)
            && self.panicking.swap(pick.panic, Ordering::Relaxed) != pick.panic
            && PANIC_MODE.admit()
        {
            if pick.panic {
                tracing::warn!(upstream = %self.config.name, "panic mode: no target is healthy, out of ejection and with its breaker closed; requests are spread over all targets");
            } else {
                tracing::info!(upstream = %self.config.name, "panic mode over: a target takes traffic again");
            }
        }
        self.targets[pick.index].start();
        Ok(Attempt {
            pool: self,
            index: pick.index,
            probe: pick.probe,
            retry,
            reported: false,
        })
    }

    /// A target for a tunnel (a WebSocket): the balancer's pick among
    /// those that may take traffic, without the attempt accounting (a
    /// tunnel is not a request whose answer teaches the target's state).
    pub(super) fn pick(&self) -> usize {
        let now = tokio::time::Instant::now();
        let mut events = Vec::new();
        let pick = self.balancer.pick(&self.targets, None, &[], |i| {
            self.targets[i].admit(now, &mut events)
        });
        if pick.probe {
            self.targets[pick.index].release_probe();
        }
        pick.index
    }

    /// Whether outlier detection may eject one more target now.
    fn may_eject(&self) -> bool {
        let n = self.targets.len();
        let max = (n * usize::from(self.resilience.outlier.max_ejected_percent) / 100).max(1);
        self.targets.iter().filter(|t| t.is_ejected()).count() < max
    }

    /// Log and count what happened to target `index`.
    fn emit(&self, index: usize, events: &[Event]) {
        let upstream = &self.config.name;
        let target = &self.targets[index].name;
        for e in events {
            if let Some(m) = self.metrics.get() {
                m.target_event(e.label());
            }
            match e {
                Event::Ejected(time) => {
                    tracing::warn!(%upstream, %target, ?time, "target ejected after consecutive failures")
                }
                Event::Returned => tracing::info!(%upstream, %target, "target back from ejection"),
                Event::BreakerOpened(time) => {
                    tracing::warn!(%upstream, %target, ?time, "target's breaker opened")
                }
                Event::BreakerHalfOpen => {
                    tracing::info!(%upstream, %target, "target's breaker half-open: one probe request")
                }
                Event::BreakerClosed => {
                    tracing::info!(%upstream, %target, "target's breaker closed")
                }
                Event::Unhealthy => {
                    tracing::warn!(%upstream, %target, "target failed its health checks: no traffic")
                }
                Event::Healthy => {
                    tracing::info!(%upstream, %target, "target passed its health checks: traffic again")
                }
            }
        }
    }

    /// The key a hashing upstream hashes the request on, if it is one and
    /// the request has the key.
    pub fn hash_key(
        &self,
        headers: &http::HeaderMap,
        client: std::net::IpAddr,
        params: &[(String, String)],
    ) -> Option<u64> {
        use policy::{Balance, HashOn};
        let Balance::Hash(on) = &self.resilience.balance else {
            return None;
        };
        match on {
            HashOn::Header(name) => headers.get(name).map(|v| hash_bytes(v.as_bytes(), 0)),
            HashOn::Cookie(name) => cookie(headers, name).map(|v| hash_bytes(v, 0)),
            HashOn::ClientIp => Some(match client {
                std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets(), 0),
                std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets(), 0),
            }),
            HashOn::PathParam(name) => params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| hash_bytes(v.as_bytes(), 0)),
        }
    }

    /// Each target's state, in configuration order.
    pub fn target_states(&self) -> impl Iterator<Item = (&str, TargetSnapshot)> {
        let now = tokio::time::Instant::now();
        self.targets
            .iter()
            .map(move |t| (t.name.as_str(), t.snapshot(now)))
    }

    /// Attempts in flight and, of those, retries.
    pub fn active(&self) -> (usize, usize) {
        (
            self.active.load(Ordering::Relaxed),
            self.retries_active.load(Ordering::Relaxed),
        )
    }

    /// Hand the pool its metric handles (once, at load).
    pub fn attach_metrics(&self, metrics: Arc<UpstreamMetrics>) {
        let _ = self.metrics.set(metrics);
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
        })
}
