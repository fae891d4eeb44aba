//! The resilience settings of an upstream and of a route's retries, as the
//! validated configuration hands them to [`crate::upstream`]: balancing,
//! outlier detection, the per-target breaker, active health checks, the
//! retry budget and the retry policy. Defaults are Envoy's or Linkerd's
//! unless the doc of a field says why not. Parsing and checking them is
//! the configuration's job, not this module's.

use std::time::Duration;

use http::{HeaderName, Method};

/// How an upstream picks a target for a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balance {
    /// Round robin, honouring target weights (the default, as Envoy's).
    #[default]
    RoundRobin,
    /// Power of two random choices over in-flight requests (Envoy's
    /// `LEAST_REQUEST` with `choice_count` 2); with `peak_ewma`, the cost is
    /// the target's peak-EWMA latency times its in-flight requests plus one
    /// (Linkerd's balancer).
    LeastRequest {
        /// Weigh in-flight requests by peak-EWMA latency.
        peak_ewma: bool,
    },
    /// Consistent hashing over a Maglev table (65537 entries, as Envoy's):
    /// a key keeps its target while the set is stable and only about 1/N of
    /// keys move when a target is added or removed. A request without the
    /// key is balanced round robin.
    Hash(HashOn),
}

/// What a hashing upstream hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The value of a request header.
    Header(HeaderName),
    /// The value of a cookie.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
    /// A parameter captured by the route's path pattern (`/users/{id}`).
    PathParam(String),
}

/// Passive outlier detection: consecutive failures eject a target.
#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    /// Consecutive failures (5xx answers, refused or failed connections,
    /// timeouts) that eject a target; 0 turns detection off. Envoy: 5.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long, the n-th n times as long. Envoy: 30 s.
    pub base_ejection: Duration,
    /// The longest an ejection lasts. Envoy: 300 s.
    pub max_ejection: Duration,
    /// The largest share of targets ejected at once, in percent; one target
    /// may always be ejected. Envoy: 10.
    pub max_ejected_percent: u8,
}

impl Default for Outlier {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 10,
        }
    }
}

/// Linkerd's consecutive-failure breaker, per target: open after so many
/// failures in a row, then after a backoff one probe request; its success
/// closes the breaker, its failure opens it again for twice as long.
#[derive(Debug, Clone, PartialEq)]
pub struct Breaker {
    /// Failures in a row that open the breaker; 0 turns it off. Linkerd: 7.
    pub consecutive_failures: u32,
    /// The first open period. Linkerd: 1 s.
    pub backoff: Duration,
    /// The longest open period. Linkerd: 60 s.
    pub max_backoff: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            consecutive_failures: 7,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Active HTTP health checks of every target.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// The method sent. Default `GET`.
    pub method: Method,
    /// The path (and query) asked for.
    pub path: String,
    /// The `Host` header; default the target's `host:port`.
    pub host: Option<String>,
    /// Statuses that count as healthy, as inclusive ranges. Default
    /// 200–399 (Kubernetes' probes, Traefik); Envoy's is 200 only.
    pub statuses: Vec<(u16, u16)>,
    /// Time between checks of a target. Default 5 s (Envoy has none,
    /// Traefik 30 s: 5 s finds a dead target faster at one request per
    /// interval).
    pub interval: Duration,
    /// A check without a response head within this fails. Default 2 s.
    pub timeout: Duration,
    /// Passed checks in a row that make an unhealthy target healthy. Default 2.
    pub healthy_threshold: u32,
    /// Failed checks in a row that make a healthy target unhealthy. Default 2.
    pub unhealthy_threshold: u32,
}

impl HealthCheck {
    /// A check of `path` with the defaults.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            host: None,
            statuses: vec![(200, 399)],
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }

    /// Whether `status` counts as healthy.
    pub fn healthy_status(&self, status: u16) -> bool {
        self.statuses
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

/// How many retries may go on an upstream (Envoy's `retry_budget`, with
/// Linkerd's floor in retries per second): a share of its active requests,
/// with a floor, and past it a few a second.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    /// Retries in flight, as a share of the requests in flight. Envoy: 0.2.
    pub ratio: f64,
    /// Retries always allowed in flight, whatever the ratio. Envoy: 3.
    pub min_concurrent: usize,
    /// Retries a second allowed past the share (a bucket of one second's
    /// worth; 0 = none). Linkerd's `min_retries_per_second`: 10.
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_concurrent: 3,
            min_per_second: 10,
        }
    }
}

/// The upstream-wide resilience settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Resilience {
    /// How targets are picked.
    pub balance: Balance,
    /// Each target's weight (the same length as the targets; default 1).
    pub weights: Vec<u32>,
    /// Passive outlier detection.
    pub outlier: Outlier,
    /// The per-target breaker.
    pub breaker: Breaker,
    /// Active health checks, when configured.
    pub health_check: Option<HealthCheck>,
    /// The retry budget.
    pub retry_budget: RetryBudget,
    /// Requests (attempts) in flight to the upstream at once, all targets
    /// and workers together; beyond, a 503 at once. Envoy: 1024.
    pub max_requests: usize,
}

impl Default for Resilience {
    fn default() -> Self {
        Self {
            balance: Balance::RoundRobin,
            weights: Vec::new(),
            outlier: Outlier::default(),
            breaker: Breaker::default(),
            health_check: None,
            retry_budget: RetryBudget::default(),
            max_requests: 1024,
        }
    }
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so `retries + 1` attempts at most).
    /// Default 2: with a dead target among three, a request still finds a
    /// live one when round robin lands on the dead one twice over (Envoy:
    /// 1, nginx: every server).
    pub retries: u32,
    /// Response statuses that are retried (default 502, 503, 504).
    pub statuses: Vec<u16>,
    /// Retry methods that are not idempotent too (POST, PATCH). A
    /// connection refused before anything was sent is retried regardless.
    pub non_idempotent: bool,
    /// The first backoff ceiling; the n-th retry waits a random time up to
    /// `backoff × 2^(n-1)` (full jitter). Envoy: 25 ms.
    pub backoff: Duration,
    /// The largest backoff ceiling. Envoy: 10 × backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 2,
            statuses: vec![502, 503, 504],
            non_idempotent: false,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
        }
    }
}
