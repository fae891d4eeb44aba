//! What a target's state is told and tells: how an attempt went
//! ([`Outcome`], [`Report`]), the changes worth logging ([`Event`]) and the
//! view the admin API shows ([`Snapshot`]).

use tokio::time::{Duration, Instant};

/// A change worth logging and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Ejected for this long.
    Ejected(Duration),
    /// Back from an ejection.
    Returned,
    /// The breaker opened for this long.
    BreakerOpened(Duration),
    /// The breaker let one probe through.
    BreakerHalfOpen,
    /// The breaker closed.
    BreakerClosed,
    /// The active health check marked it unhealthy.
    Unhealthy,
    /// The active health check marked it healthy again.
    Healthy,
}

impl Event {
    /// The label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Event::Ejected(_) => "ejected",
            Event::Returned => "returned",
            Event::BreakerOpened(_) => "open",
            Event::BreakerHalfOpen => "half_open",
            Event::BreakerClosed => "closed",
            Event::Unhealthy => "unhealthy",
            Event::Healthy => "healthy",
        }
    }
}

/// How an attempt went, as far as the target's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is not a 5xx.
    Success,
    /// A 5xx, a refused or failed connection, a timeout.
    Failure,
    /// Nothing learnt about the target (the client went away, the
    /// request was shed before it left).
    Neutral,
}

/// How one attempt on a target went, for [`super::TargetState::record`].
#[derive(Debug, Clone, Copy)]
pub(in crate::upstream) struct Report {
    /// What it tells about the target.
    pub(in crate::upstream) outcome: Outcome,
    /// Time to the response head, when there was one.
    pub(in crate::upstream) latency: Option<Duration>,
    /// It went as the breaker's half-open probe.
    pub(in crate::upstream) probe: bool,
    /// When it ended.
    pub(in crate::upstream) now: Instant,
}

/// One target's state, for the admin API.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The active health check's verdict (true without checks).
    pub healthy: bool,
    /// Time left in the current ejection.
    pub ejected_for: Option<Duration>,
    /// Ejections so far (the multiplier of the next one).
    pub ejections: u32,
    /// `closed`, `open` or `half-open`.
    pub breaker: &'static str,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Requests in flight.
    pub in_flight: usize,
    /// Peak-EWMA latency.
    pub ewma: Duration,
}
