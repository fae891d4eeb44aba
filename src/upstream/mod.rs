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
//! A target given by host name is re-resolved every `dns-refresh`
//! ([`resolve`]) and stands for every address it resolves to: one endpoint
//! each ([`members`]), balanced and judged (health, ejection, breaker) on
//! its own; the set is swapped whole when the answer changes.
//!
//! This module forwards requests it is given; header hygiene is done by
//! [`headers`] and called by the proxy.

mod balance;
mod budget;
mod error;
mod h1;
pub mod headers;
mod health;
mod members;
mod outbound;
pub mod policy;
mod registry;
mod resolve;
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

use arc_swap::ArcSwap;

use self::{members::Members, policy::Resilience, target::Report};
use crate::{
    config::Upstream as UpstreamConfig,
    telemetry::{metrics::UpstreamMetrics, throttle::LogThrottle},
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
    /// Data-plane worker threads (each endpoint keeps connections per worker).
    workers: usize,
    tls: Option<tls::UpstreamTls>,
    /// The resilience settings (`config`'s, kept at hand).
    resilience: Resilience,
    /// The endpoints (one per address of each target) with their health,
    /// ejection, breaker and load, and the balancer over them; swapped
    /// whole when a host name resolves to other addresses.
    members: ArcSwap<Members>,
    /// The next endpoint's id.
    next_endpoint: AtomicUsize,
    /// Where new endpoints find the state an earlier configuration had.
    registry: TargetRegistry,
    /// Attempts admitted and not yet answered (all targets).
    active: AtomicUsize,
    /// Of those, retries, within the retry budget.
    retries: budget::Budget,
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
    /// The endpoint set it was picked from (it stays valid while a newer
    /// set is swapped in).
    members: Arc<Members>,
    index: usize,
    probe: bool,
    retry: bool,
    reported: bool,
}

impl Attempt<'_> {
    /// The target (`host:port` as configured; a host name's with the
    /// address it resolved to).
    pub fn target(&self) -> &str {
        &self.members.states[self.index].name
    }

    /// The target's id, unique within the upstream (what
    /// [`UpstreamPool::admit`]'s `tried` holds).
    pub fn index(&self) -> usize {
        self.members.endpoints[self.index].id
    }

    /// Record how the attempt went (`latency`: time to the response head).
    pub fn report(mut self, outcome: Outcome, latency: Option<Duration>) {
        self.reported = true;
        let pool = self.pool;
        let r = &pool.resilience;
        let mut events = Vec::new();
        let state = &self.members.states[self.index];
        state.record(
            Report {
                outcome,
                latency,
                probe: self.probe,
                now: tokio::time::Instant::now(),
            },
            (&r.outlier, &r.breaker),
            || pool.may_eject(&self.members),
            &mut events,
        );
        pool.emit(&state.name, &events);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let pool = self.pool;
        let state = &self.members.states[self.index];
        state.end();
        pool.active.fetch_sub(1, Ordering::Relaxed);
        if self.retry {
            pool.retries.release();
        }
        if self.probe && !self.reported {
            state.release_probe();
        }
    }
}

impl UpstreamPool {
    fn new(
        config: UpstreamConfig,
        workers: usize,
        tls: Option<tls::UpstreamTls>,
        registry: &TargetRegistry,
    ) -> Self {
        let retries = budget::Budget::new(config.resilience.retry_budget.clone());
        let mut pool = Self {
            id: POOL_IDS.fetch_add(1, Ordering::Relaxed),
            tls,
            workers,
            resilience: config.resilience.clone(),
            members: ArcSwap::from_pointee(Members::empty(&config.resilience.balance)),
            next_endpoint: AtomicUsize::new(0),
            registry: registry.clone(),
            config,
            active: AtomicUsize::new(0),
            retries,
            panicking: AtomicBool::new(false),
            metrics: OnceLock::new(),
        };
        // An IP target is its address; a host name is looked up per
        // connection until its first resolution.
        let wanted: Vec<_> = (0..pool.config.targets.len())
            .map(|i| (i, pool.config.targets[i].parse().ok()))
            .collect();
        pool.members = ArcSwap::from_pointee(pool.build_members(&wanted, None));
        pool
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
        if retry && !self.retries.take(active, tokio::time::Instant::now()) {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Budget);
        }
        let members = self.members.load_full();
        let tried = members.indices_of(tried);
        let mut events = Vec::new();
        let mut returned = Vec::new();
        let now = tokio::time::Instant::now();
        let pick = members.balancer.pick(&members.states, key, &tried, |i| {
            let before = events.len();
            let a = members.states[i].admit(now, &mut events);
            returned.extend(std::iter::repeat_n(i, events.len() - before));
            a
        });
        for (i, e) in returned.iter().zip(&events) {
            self.emit(&members.states[*i].name, std::slice::from_ref(e));
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
        members.states[pick.index].start();
        Ok(Attempt {
            pool: self,
            members,
            index: pick.index,
            probe: pick.probe,
            retry,
            reported: false,
        })
    }

    /// A target for a tunnel (a WebSocket): the balancer's pick among
    /// those that may take traffic, without the attempt accounting (a
    /// tunnel is not a request whose answer teaches the target's state);
    /// its endpoint and name.
    fn pick(&self) -> (Arc<members::Endpoint>, String) {
        let members = self.members.load();
        let now = tokio::time::Instant::now();
        let mut events = Vec::new();
        let pick = members.balancer.pick(&members.states, None, &[], |i| {
            members.states[i].admit(now, &mut events)
        });
        let state = &members.states[pick.index];
        if pick.probe {
            state.release_probe();
        }
        (members.endpoints[pick.index].clone(), state.name.clone())
    }

    /// Whether outlier detection may eject one more of `members` now.
    fn may_eject(&self, members: &Members) -> bool {
        let n = members.states.len();
        let max = (n * usize::from(self.resilience.outlier.max_ejected_percent) / 100).max(1);
        members.states.iter().filter(|t| t.is_ejected()).count() < max
    }

    /// Log and count what happened to `target`.
    fn emit(&self, target: &str, events: &[Event]) {
        let upstream = &self.config.name;
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

    /// Each endpoint's name and state, in configuration order (a host
    /// name's addresses in address order).
    pub fn target_states(&self) -> impl Iterator<Item = (String, TargetSnapshot)> {
        let now = tokio::time::Instant::now();
        let members = self.members.load_full();
        (0..members.states.len()).map(move |i| {
            let t = &members.states[i];
            (t.name.clone(), t.snapshot(now))
        })
    }

    /// Attempts in flight and, of those, retries.
    pub fn active(&self) -> (usize, usize) {
        (
            self.active.load(Ordering::Relaxed),
            self.retries.in_flight(),
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
