//! What pylon knows about one target at run time: requests in flight, the
//! peak-EWMA latency, failures in a row, and the three reasons it may get
//! no traffic: an active health check failed, outlier detection ejected
//! it, or its breaker is open. Picking among targets is [`super::balance`]'s;
//! this module only answers "may this target take a request now?" and
//! records how each attempt went.
//!
//! The common case (a target with no mark against it) is one atomic load;
//! the lock is taken only while a target is marked. The clock is an
//! argument (`now`), so unit tests drive the breaker and ejection logic
//! through exact instants, deterministically.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed},
};

use tokio::time::{Duration, Instant};

pub(super) use self::report::Report;
pub use self::report::{Event, Outcome, Snapshot};
use super::policy::{Breaker, Outlier};
use crate::sync::lock;

mod report;

/// Marked unhealthy by the active health check.
const UNHEALTHY: u8 = 1;
/// Ejected by outlier detection.
const EJECTED: u8 = 2;
/// Its breaker is open or half-open.
const BREAKER: u8 = 4;

/// Linkerd's default RTT estimate before a target has answered.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Linkerd's peak-EWMA decay.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// The breaker of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BreakerState {
    /// Traffic flows.
    Closed,
    /// No traffic until `until`.
    Open {
        /// When the probe may go.
        until: Instant,
        /// How long this open period lasted.
        backoff: Duration,
    },
    /// One probe request may go (`probing` once it has); its result decides.
    HalfOpen {
        /// The open period before this probe.
        backoff: Duration,
        /// The probe is in flight.
        probing: bool,
    },
}

#[derive(Debug)]
struct Marks {
    healthy: bool,
    /// Checks in a row that disagree with `healthy`.
    check_streak: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
    last_return: Option<Instant>,
    breaker: BreakerState,
}

/// One target's run-time state: its name and weight in this
/// configuration, and what it has shown ([`Live`]), which a reload that
/// keeps the target carries over ([`super::registry`]). A clone shares
/// what it has shown.
#[derive(Debug, Clone)]
pub(super) struct TargetState {
    /// The configured `host:port`.
    pub(super) name: String,
    /// Its weight.
    pub(super) weight: u32,
    live: Arc<Live>,
}

/// What a target has shown: requests in flight, latency, failures and
/// marks. Shared by every configuration that lists the target, so a reload
/// neither forgets a dead target nor resets its load and latency.
#[derive(Debug)]
pub(super) struct Live {
    in_flight: AtomicUsize,
    /// Peak-EWMA latency in nanoseconds, and when it was last updated
    /// (nanoseconds since `epoch`).
    ewma_ns: AtomicU64,
    ewma_at: AtomicU64,
    epoch: Instant,
    consecutive: AtomicU32,
    flags: AtomicU8,
    marks: Mutex<Marks>,
    /// The upstream pool whose health checks judge it (the newest
    /// configuration's; an older one still draining leaves it alone).
    owner: AtomicU64,
}

impl Live {
    /// A healthy target with no history.
    pub(super) fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            ewma_ns: AtomicU64::new(DEFAULT_RTT.as_nanos() as u64),
            ewma_at: AtomicU64::new(0),
            epoch: Instant::now(),
            consecutive: AtomicU32::new(0),
            flags: AtomicU8::new(0),
            marks: Mutex::new(Marks {
                healthy: true,
                check_streak: 0,
                ejected_until: None,
                ejections: 0,
                last_return: None,
                breaker: BreakerState::Closed,
            }),
            owner: AtomicU64::new(0),
        }
    }
}

/// May a target take a request now, and if so, as the breaker's probe?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// No.
    No,
    /// Yes.
    Yes,
    /// Yes, as the half-open breaker's single probe.
    Probe,
}

impl TargetState {
    /// A healthy target with no history.
    #[cfg(test)]
    pub(super) fn new(name: String, weight: u32) -> Self {
        Self::with_live(name, weight, Arc::new(Live::new()))
    }

    /// A target whose history is `live` (kept from an earlier
    /// configuration, or new).
    pub(super) fn with_live(name: String, weight: u32, live: Arc<Live>) -> Self {
        Self {
            name,
            weight: weight.max(1),
            live,
        }
    }

    /// Make pool `owner`'s health checks the ones that judge this target;
    /// without health checks (`checked` false) a verdict of an earlier
    /// configuration's checks no longer holds, so the target counts as
    /// healthy again.
    pub(super) fn claim(&self, owner: u64, checked: bool) {
        self.live.owner.store(owner, Relaxed);
        if !checked {
            let mut m = lock(&self.live.marks);
            m.healthy = true;
            m.check_streak = 0;
            self.sync_flags(&m);
        }
    }

    /// Whether pool `owner`'s health checks judge this target.
    pub(super) fn owned_by(&self, owner: u64) -> bool {
        self.live.owner.load(Relaxed) == owner
    }

    /// Requests in flight to it.
    pub(super) fn in_flight(&self) -> usize {
        self.live.in_flight.load(Relaxed)
    }

    pub(super) fn start(&self) {
        self.live.in_flight.fetch_add(1, Relaxed);
    }

    pub(super) fn end(&self) {
        self.live.in_flight.fetch_sub(1, Relaxed);
    }

    /// The peak-EWMA latency estimate.
    pub(super) fn ewma(&self) -> Duration {
        Duration::from_nanos(self.live.ewma_ns.load(Relaxed))
    }

    /// Linkerd's cost: latency times load.
    pub(super) fn cost(&self) -> f64 {
        self.live.ewma_ns.load(Relaxed) as f64 * (self.in_flight() + 1) as f64
    }

    fn observe_latency(&self, rtt: Duration, now: Instant) {
        let now = now.saturating_duration_since(self.live.epoch).as_nanos() as u64;
        let rtt = rtt.as_nanos().min(u128::from(u64::MAX)) as u64;
        let prev = self.live.ewma_ns.load(Relaxed);
        let at = self.live.ewma_at.swap(now, Relaxed);
        let next = if rtt > prev {
            rtt
        } else {
            let elapsed = now.saturating_sub(at) as f64;
            let w = (-elapsed / EWMA_DECAY.as_nanos() as f64).exp();
            (prev as f64 * w + rtt as f64 * (1.0 - w)) as u64
        };
        self.live.ewma_ns.store(next, Relaxed);
    }

    /// Whether it may take a request now. A target whose ejection has run
    /// out returns here (`events` gets [`Event::Returned`]); an open breaker
    /// whose backoff passed turns half-open and admits one probe.
    pub(super) fn admit(&self, now: Instant, events: &mut Vec<Event>) -> Admit {
        if self.live.flags.load(Relaxed) == 0 {
            return Admit::Yes;
        }
        let mut m = lock(&self.live.marks);
        if let Some(until) = m.ejected_until
            && now >= until
        {
            m.ejected_until = None;
            m.last_return = Some(now);
            self.live.consecutive.store(0, Relaxed);
            events.push(Event::Returned);
        }
        if !m.healthy || m.ejected_until.is_some() {
            self.sync_flags(&m);
            return Admit::No;
        }
        let admit = match m.breaker {
            BreakerState::Closed => Admit::Yes,
            BreakerState::Open { until, backoff } if now >= until => {
                m.breaker = BreakerState::HalfOpen {
                    backoff,
                    probing: true,
                };
                events.push(Event::BreakerHalfOpen);
                Admit::Probe
            }
            BreakerState::Open { .. } => Admit::No,
            BreakerState::HalfOpen {
                backoff,
                probing: false,
            } => {
                m.breaker = BreakerState::HalfOpen {
                    backoff,
                    probing: true,
                };
                Admit::Probe
            }
            BreakerState::HalfOpen { probing: true, .. } => Admit::No,
        };
        self.sync_flags(&m);
        admit
    }

    /// A probe that never reported (its request was dropped): let another go.
    pub(super) fn release_probe(&self) {
        let mut m = lock(&self.live.marks);
        if let BreakerState::HalfOpen { backoff, .. } = m.breaker {
            m.breaker = BreakerState::HalfOpen {
                backoff,
                probing: false,
            };
        }
    }

    /// Record an attempt's outcome. `may_eject` says whether outlier
    /// detection may eject this target now (the ejected share allows it);
    /// it is asked only when the failure streak reaches the threshold.
    pub(super) fn record(
        &self,
        report: Report,
        (outlier, breaker): (&Outlier, &Breaker),
        may_eject: impl FnOnce() -> bool,
        events: &mut Vec<Event>,
    ) {
        let Report {
            outcome,
            latency,
            probe,
            now,
        } = report;
        if let Some(rtt) = latency {
            self.observe_latency(rtt, now);
        }
        match outcome {
            Outcome::Neutral => {
                if probe {
                    self.release_probe();
                }
            }
            Outcome::Success => {
                if self.live.consecutive.load(Relaxed) != 0 {
                    self.live.consecutive.store(0, Relaxed);
                }
                if probe || self.live.flags.load(Relaxed) & BREAKER != 0 {
                    let mut m = lock(&self.live.marks);
                    if matches!(m.breaker, BreakerState::HalfOpen { .. }) {
                        m.breaker = BreakerState::Closed;
                        events.push(Event::BreakerClosed);
                        self.sync_flags(&m);
                    }
                }
            }
            Outcome::Failure => {
                let n = self.live.consecutive.fetch_add(1, Relaxed) + 1;
                if probe {
                    let mut m = lock(&self.live.marks);
                    if let BreakerState::HalfOpen { backoff, .. } = m.breaker {
                        let backoff = (backoff * 2).min(breaker.max_backoff);
                        m.breaker = BreakerState::Open {
                            until: now + backoff,
                            backoff,
                        };
                        events.push(Event::BreakerOpened(backoff));
                        self.sync_flags(&m);
                    }
                    return;
                }
                let eject = outlier.consecutive_failures > 0 && n >= outlier.consecutive_failures;
                let open = breaker.consecutive_failures > 0 && n >= breaker.consecutive_failures;
                if !eject && !open {
                    return;
                }
                let eject = eject && may_eject();
                let mut m = lock(&self.live.marks);
                if eject && m.ejected_until.is_none() {
                    // The multiplier decays: a target that stayed in for
                    // the longest ejection starts over.
                    if m.last_return
                        .is_some_and(|r| now.saturating_duration_since(r) >= outlier.max_ejection)
                    {
                        m.ejections = 0;
                    }
                    m.ejections += 1;
                    let time = (outlier.base_ejection * m.ejections).min(outlier.max_ejection);
                    m.ejected_until = Some(now + time);
                    events.push(Event::Ejected(time));
                } else if open && m.breaker == BreakerState::Closed {
                    m.breaker = BreakerState::Open {
                        until: now + breaker.backoff,
                        backoff: breaker.backoff,
                    };
                    events.push(Event::BreakerOpened(breaker.backoff));
                }
                self.sync_flags(&m);
            }
        }
    }

    /// The active health check's verdict on one check, and what changed.
    /// A pass also ends an ejection, as Envoy's
    /// `successful_active_health_check_uneject_host` does: the check just
    /// saw the target answer.
    pub(super) fn check_result(
        &self,
        passed: bool,
        (healthy_after, unhealthy_after): (u32, u32),
        now: Instant,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let mut m = lock(&self.live.marks);
        if passed && m.ejected_until.is_some() {
            m.ejected_until = None;
            m.last_return = Some(now);
            self.live.consecutive.store(0, Relaxed);
            events.push(Event::Returned);
        }
        if passed == m.healthy {
            m.check_streak = 0;
        } else {
            m.check_streak += 1;
            let needed = if passed {
                healthy_after
            } else {
                unhealthy_after
            };
            if m.check_streak >= needed.max(1) {
                m.check_streak = 0;
                m.healthy = passed;
                if passed {
                    self.live.consecutive.store(0, Relaxed);
                }
                events.push(if passed {
                    Event::Healthy
                } else {
                    Event::Unhealthy
                });
            }
        }
        self.sync_flags(&m);
        events
    }

    /// Whether it is ejected now (an expired ejection counts until noticed).
    pub(super) fn is_ejected(&self) -> bool {
        self.live.flags.load(Relaxed) & EJECTED != 0
    }

    /// A view for the admin API.
    pub(super) fn snapshot(&self, now: Instant) -> Snapshot {
        let m = lock(&self.live.marks);
        Snapshot {
            healthy: m.healthy,
            ejected_for: m
                .ejected_until
                .map(|u| u.saturating_duration_since(now))
                .filter(|d| !d.is_zero()),
            ejections: m.ejections,
            breaker: match m.breaker {
                BreakerState::Closed => "closed",
                BreakerState::Open { until, .. } if now < until => "open",
                BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => "half-open",
            },
            consecutive_failures: self.live.consecutive.load(Relaxed),
            in_flight: self.in_flight(),
            ewma: self.ewma(),
        }
    }

    fn sync_flags(&self, m: &Marks) {
        let mut f = 0;
        if !m.healthy {
            f |= UNHEALTHY;
        }
        if m.ejected_until.is_some() {
            f |= EJECTED;
        }
        if m.breaker != BreakerState::Closed {
            f |= BREAKER;
        }
        self.live.flags.store(f, Relaxed);
    }
}

#[cfg(test)]
mod tests;
