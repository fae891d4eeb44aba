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
mod h1;
pub mod headers;
mod health;
mod outbound;
pub mod policy;
mod registry;
mod target;
mod tls;
mod tunnel;

pub use balance::hash_bytes;
pub use h1::{DRAIN_MAX_BYTES, DRAIN_TIMEOUT};
pub use outbound::MAX_OUTBOUND_BODY;
pub use registry::TargetRegistry;
pub use target::{Event, Outcome, Snapshot as TargetSnapshot};
pub use tunnel::TunnelConn;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{
    Request, Response, Uri,
    uri::{Authority, Scheme},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use self::{balance::Balancer, policy::Resilience, target::TargetState};
use crate::{
    body::{Body, BoxError, RequestBodyState},
    config::{ConfigError, Diagnostic, Upstream as UpstreamConfig, UpstreamProtocol},
    telemetry::{
        metrics::{UpstreamErrorKind, UpstreamMetrics},
        throttle::LogThrottle,
    },
    workers,
};

static PANIC_MODE: LogThrottle =
    LogThrottle::new("upstream panic mode", 10, Duration::from_secs(10));

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No upstream has that name.
    #[error("no upstream named `{0}`")]
    Unknown(String),
    /// The target refused or could not be reached in time.
    #[error("upstream `{upstream}` ({target}) could not be reached")]
    Connect {
        /// Upstream name.
        upstream: String,
        /// The target tried.
        target: String,
        /// The connect error.
        #[source]
        source: BoxError,
    },
    /// The connection failed after it was made (reset, protocol error).
    #[error("upstream `{upstream}` ({target}) failed")]
    Failed {
        /// Upstream name.
        upstream: String,
        /// The target tried.
        target: String,
        /// The error.
        #[source]
        source: BoxError,
    },
    /// No response head within the route's timeout (or the upstream
    /// stopped taking the request body for the request-body timeout).
    #[error("upstream `{upstream}` did not answer within {timeout:?}")]
    Timeout {
        /// Upstream name.
        upstream: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The response body stalled for the route's response-body timeout.
    #[error("upstream `{upstream}` response body idle for {timeout:?}")]
    BodyTimeout {
        /// Upstream name.
        upstream: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// Every connection the target may have (`max-connections`) was busy
    /// and the request could not wait for one.
    #[error("upstream `{upstream}` ({target}) is busy: {reason}")]
    Overflow {
        /// Upstream name.
        upstream: String,
        /// The target tried.
        target: String,
        /// Queue full, or waited past `queue-timeout`.
        reason: &'static str,
    },
    /// Load shed before a target was tried: the upstream's `max-requests`
    /// are in flight.
    #[error("upstream `{upstream}` shed the request: {reason}")]
    Shed {
        /// Upstream name.
        upstream: String,
        /// The limit reached, as the `x-pylon-shed` header names it.
        reason: &'static str,
    },
    /// The request could not be formed (bad path from a plugin, ...).
    #[error("invalid request for upstream `{upstream}`: {detail}")]
    InvalidRequest {
        /// Upstream name.
        upstream: String,
        /// What was wrong.
        detail: String,
    },
}

impl UpstreamError {
    /// The class recorded in metrics and spans.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Timeout { .. } | UpstreamError::BodyTimeout { .. } => {
                UpstreamErrorKind::Timeout
            }
            UpstreamError::Connect { .. } => UpstreamErrorKind::Connect,
            UpstreamError::Overflow { .. } | UpstreamError::Shed { .. } => {
                UpstreamErrorKind::Overflow
            }
            _ => UpstreamErrorKind::Failed,
        }
    }

    /// For load pylon shed itself (503): the limit that shed it, the value
    /// of the response's `x-pylon-shed` header.
    pub fn shed_reason(&self) -> Option<&'static str> {
        match self {
            UpstreamError::Shed { reason, .. } => Some(reason),
            UpstreamError::Overflow { reason, .. } => Some(if reason.contains("queue-timeout") {
                "queue-timeout"
            } else {
                "max-pending"
            }),
            _ => None,
        }
    }

    /// What a failed attempt tells about its target.
    pub fn outcome(&self) -> Outcome {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::Failed { .. }
            | UpstreamError::Timeout { .. } => Outcome::Failure,
            _ => Outcome::Neutral,
        }
    }
}

/// An attempt that got no response head; `unsent` is the request back
/// when none of it was written, so it may go elsewhere whatever it is.
#[derive(Debug)]
pub struct AttemptError {
    /// Why.
    pub error: UpstreamError,
    /// The request, untouched, when it never left.
    pub unsent: Option<Request<Body>>,
}

/// Why a transport got no response head (mapped to [`UpstreamError`] with
/// the upstream's name in [`Upstreams::forward`]).
#[derive(Debug)]
enum SendError {
    /// No connection could be made (refused, unreachable, timed out).
    Connect(BoxError),
    /// The connection failed while the request was sent or answered.
    Failed(BoxError),
    /// No connection free and no room or time to wait for one.
    Overflow(&'static str),
}

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
            outcome,
            latency,
            self.probe,
            (&r.outlier, &r.breaker),
            tokio::time::Instant::now(),
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

    /// Send `req` (whose URI carries only path and query) to `attempt`'s
    /// target, waiting at most `timeout` for the response head after the
    /// request body (whose progress `body` reports, for a streamed one)
    /// has been sent.
    pub async fn send(
        &self,
        attempt: &Attempt<'_>,
        req: Request<Body>,
        timeout: Duration,
        body: Option<&RequestBodyState>,
    ) -> Result<Response<Body>, AttemptError> {
        self.send_to(attempt.index, req, timeout, body).await
    }

    async fn send_to(
        &self,
        n: usize,
        mut req: Request<Body>,
        timeout: Duration,
        body: Option<&RequestBodyState>,
    ) -> Result<Response<Body>, AttemptError> {
        let upstream = self.config.name.as_str();
        let target = &self.config.targets[n];
        let fail = |error| AttemptError {
            error,
            unsent: None,
        };
        let invalid_target = || UpstreamError::InvalidRequest {
            upstream: upstream.to_string(),
            detail: format!("invalid target {target:?}"),
        };
        if req.uri().path_and_query().is_none() {
            *req.uri_mut() = Uri::from_static("/");
        }
        if let Some(b) = body {
            b.touch();
        }
        let deadline = head_deadline(timeout, body);
        let sent = match self.transport() {
            Transport::Http1(targets) => {
                let target_pool = targets[n]
                    .as_ref()
                    .ok_or_else(invalid_target)
                    .map_err(fail)?;
                *req.version_mut() = http::Version::HTTP_11;
                tokio::select! {
                    sent = target_pool.send(req) => Ok(sent),
                    () = deadline => Err(()),
                }
            }
            Transport::H2c(_) | Transport::H2(_) => {
                let mut uri = std::mem::take(req.uri_mut()).into_parts();
                uri.scheme = Some(match self.tls {
                    Some(_) => Scheme::HTTPS,
                    None => Scheme::HTTP,
                });
                uri.authority = Some(
                    self.authorities[n]
                        .clone()
                        .ok_or_else(invalid_target)
                        .map_err(fail)?,
                );
                *req.uri_mut() = Uri::from_parts(uri).map_err(|e| {
                    fail(UpstreamError::InvalidRequest {
                        upstream: upstream.to_string(),
                        detail: format!("{e}"),
                    })
                })?;
                *req.version_mut() = http::Version::HTTP_2;
                let send = async {
                    match self.transport() {
                        Transport::H2(client) => client.request(req).await,
                        Transport::H2c(client) => client.request(req).await,
                        Transport::Http1(_) => unreachable!("matched above"),
                    }
                    .map(|resp| resp.map(crate::body::boxed))
                    .map_err(|err| {
                        if err.is_connect() {
                            (SendError::Connect(Box::new(err)), None)
                        } else {
                            (SendError::Failed(Box::new(err)), None)
                        }
                    })
                };
                tokio::select! {
                    sent = send => Ok(sent),
                    () = deadline => Err(()),
                }
            }
        };
        let (err, unsent) = match sent {
            Err(()) => {
                return Err(fail(UpstreamError::Timeout {
                    upstream: upstream.to_string(),
                    timeout,
                }));
            }
            Ok(Ok(resp)) => return Ok(resp),
            Ok(Err(e)) => e,
        };
        let error = match err {
            SendError::Connect(source) => UpstreamError::Connect {
                upstream: upstream.to_string(),
                target: target.clone(),
                source,
            },
            SendError::Failed(source) => UpstreamError::Failed {
                upstream: upstream.to_string(),
                target: target.clone(),
                source,
            },
            SendError::Overflow(reason) => UpstreamError::Overflow {
                upstream: upstream.to_string(),
                target: target.clone(),
                reason,
            },
        };
        Err(AttemptError { error, unsent })
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

/// All upstreams of a configuration.
#[derive(Default)]
pub struct Upstreams {
    pools: BTreeMap<String, Arc<UpstreamPool>>,
}

impl Upstreams {
    /// Build a pool per configured upstream, with connections kept apart
    /// for each of `workers` data-plane threads and no target state from
    /// earlier configurations. An upstream whose TLS
    /// files do not load is left out (logged; calls to it fail as to an
    /// unknown upstream, never in cleartext): [`Upstreams::try_new`]
    /// reports it instead.
    pub fn new(configs: &BTreeMap<String, UpstreamConfig>, workers: usize) -> Self {
        let registry = TargetRegistry::new();
        let mut pools = BTreeMap::new();
        for (name, c) in configs {
            match upstream_tls(c) {
                Ok(tls) => {
                    pools.insert(
                        name.clone(),
                        Arc::new(UpstreamPool::new(c.clone(), workers, tls, &registry)),
                    );
                }
                Err(err) => {
                    tracing::error!(upstream = %name, error = %crate::chain::ErrorChain(&err), "upstream left out: its TLS settings do not load");
                }
            }
        }
        Self { pools }
    }

    /// [`Upstreams::new`], with each target's state taken from `registry`
    /// (an earlier configuration's, when it listed the target), reporting
    /// every upstream whose TLS files (CA bundle, client certificate and
    /// key) do not load.
    pub fn try_new(
        configs: &BTreeMap<String, UpstreamConfig>,
        workers: usize,
        registry: &TargetRegistry,
    ) -> Result<Self, ConfigError> {
        let mut pools = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, c) in configs {
            match upstream_tls(c) {
                Ok(tls) => {
                    pools.insert(
                        name.clone(),
                        Arc::new(UpstreamPool::new(c.clone(), workers, tls, registry)),
                    );
                }
                Err(err) => problems.push(Diagnostic {
                    location: None,
                    subject: Some(format!("upstream \"{name}\"")),
                    message: crate::chain::ErrorChain(&err).to_string(),
                }),
            }
        }
        if problems.is_empty() {
            Ok(Self { pools })
        } else {
            Err(ConfigError {
                diagnostics: problems,
            })
        }
    }

    /// The upstream with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<UpstreamPool>> {
        self.pools.get(name)
    }

    /// All upstreams by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<UpstreamPool>)> {
        self.pools.iter()
    }

    /// Send `req` (whose URI carries only path and query) to a target of
    /// `upstream`, once (no retry), waiting at most `timeout` for the
    /// response head after the request body (whose progress `body`
    /// reports, for a streamed one) has been sent. Plugins' outbound calls
    /// come this way.
    pub async fn forward(
        &self,
        upstream: &str,
        req: Request<Body>,
        timeout: Duration,
        body: Option<&RequestBodyState>,
    ) -> Result<Response<Body>, UpstreamError> {
        let pool = self
            .pools
            .get(upstream)
            .ok_or_else(|| UpstreamError::Unknown(upstream.to_string()))?;
        let attempt = pool
            .admit(None, &[], false)
            .map_err(|_| UpstreamError::Shed {
                upstream: upstream.to_string(),
                reason: "max-requests",
            })?;
        let start = tokio::time::Instant::now();
        let result = pool.send(&attempt, req, timeout, body).await;
        match &result {
            Ok(resp) => attempt.report(
                if resp.status().is_server_error() {
                    Outcome::Failure
                } else {
                    Outcome::Success
                },
                Some(start.elapsed()),
            ),
            Err(e) => attempt.report(e.error.outcome(), None),
        }
        result.map_err(|e| e.error)
    }

    /// Start the active health checks of every upstream that has them, on
    /// the current tokio runtime; each stops when its upstream is dropped
    /// (the configuration was replaced).
    pub fn start_health_checks(&self) {
        for pool in self.pools.values() {
            if let Some(hc) = &pool.resilience.health_check {
                health::spawn(Arc::downgrade(pool), hc.clone());
            }
        }
    }
}

/// The TLS an upstream speaks, if any, with its config loaded and the
/// ALPN its protocol needs.
fn upstream_tls(c: &UpstreamConfig) -> Result<Option<tls::UpstreamTls>, crate::tls::TlsError> {
    let Some(settings) = &c.tls else {
        return Ok(None);
    };
    let alpn: &[&[u8]] = match c.protocol {
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => &[b"h2"],
        UpstreamProtocol::Http1 => &[b"http/1.1"],
    };
    let config = crate::tls::client::client_config(settings, alpn)?;
    if settings.insecure_skip_verify {
        tracing::warn!(
            upstream = %c.name,
            "insecure-skip-verify: the certificates of this upstream's targets are NOT verified; \
             anyone on the path can impersonate them"
        );
    }
    let name = match &settings.server_name {
        Some(n) => Some(crate::tls::client::server_name(settings, n)?),
        None => None,
    };
    Ok(Some(tls::UpstreamTls::new(config, name)))
}

/// Completes when the response head is late: `timeout` after the request
/// body was sent, or when the upstream has not taken any of the body for
/// the body's idle timeout. While the client is the one awaited, its own
/// idle timeout ([`crate::body::ClientBody`]) applies instead.
async fn head_deadline(timeout: Duration, body: Option<&RequestBodyState>) {
    if let Some(b) = body {
        loop {
            let finished = b.finished();
            tokio::pin!(finished);
            let idle_until = b.last_progress() + b.idle_timeout();
            let wait = if b.waiting_on_client() {
                tokio::time::Instant::now() + b.idle_timeout()
            } else if std::time::Instant::now() >= idle_until {
                return;
            } else {
                idle_until.into()
            };
            tokio::select! {
                () = &mut finished => break,
                () = tokio::time::sleep_until(wait) => {}
            }
        }
    }
    tokio::time::sleep(timeout).await;
}
