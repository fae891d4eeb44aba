//! The breaker, ejection, health and latency logic of [`super::TargetState`],
//! driven through exact instants of a hand-advanced clock.

use super::*;

/// A test clock: instants advanced by hand.
struct Clock(Instant);

impl Clock {
    fn new() -> Self {
        Clock(Instant::now())
    }
    fn advance(&mut self, d: Duration) {
        self.0 += d;
    }
}

fn fail(t: &TargetState, c: &Clock, probe: bool, o: &Outlier, b: &Breaker) -> Vec<Event> {
    let mut ev = Vec::new();
    let report = Report {
        outcome: Outcome::Failure,
        latency: None,
        probe,
        now: c.0,
    };
    t.record(report, (o, b), || true, &mut ev);
    ev
}

fn admit(t: &TargetState, c: &Clock) -> (Admit, Vec<Event>) {
    let mut ev = Vec::new();
    (t.admit(c.0, &mut ev), ev)
}

#[test]
fn ejection_lasts_base_times_count_and_is_capped() {
    let t = TargetState::new("a:1".into(), 1);
    let mut c = Clock::new();
    let o = Outlier {
        consecutive_failures: 3,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(25),
        max_ejected_percent: 100,
    };
    let b = Breaker {
        consecutive_failures: 0,
        ..Breaker::default()
    };
    for round in 1..=3u32 {
        assert!(fail(&t, &c, false, &o, &b).is_empty());
        assert!(fail(&t, &c, false, &o, &b).is_empty());
        let ev = fail(&t, &c, false, &o, &b);
        let expect = Duration::from_secs(10 * u64::from(round)).min(Duration::from_secs(25));
        assert_eq!(ev, vec![Event::Ejected(expect)], "round {round}");
        assert_eq!(admit(&t, &c).0, Admit::No);
        c.advance(expect - Duration::from_millis(1));
        assert_eq!(admit(&t, &c).0, Admit::No);
        c.advance(Duration::from_millis(1));
        assert_eq!(admit(&t, &c), (Admit::Yes, vec![Event::Returned]));
    }
}

#[test]
fn ejection_refused_when_the_share_is_used_up() {
    let t = TargetState::new("a:1".into(), 1);
    let c = Clock::new();
    let o = Outlier {
        consecutive_failures: 1,
        ..Outlier::default()
    };
    let b = Breaker {
        consecutive_failures: 0,
        ..Breaker::default()
    };
    let mut ev = Vec::new();
    t.record(
        Report {
            outcome: Outcome::Failure,
            latency: None,
            probe: false,
            now: c.0,
        },
        (&o, &b),
        || false,
        &mut ev,
    );
    assert!(ev.is_empty());
    assert_eq!(admit(&t, &c).0, Admit::Yes);
}

#[test]
fn breaker_opens_probes_once_and_doubles_its_backoff() {
    let t = TargetState::new("a:1".into(), 1);
    let mut c = Clock::new();
    let o = Outlier {
        consecutive_failures: 0,
        ..Outlier::default()
    };
    let b = Breaker {
        consecutive_failures: 2,
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(3),
    };
    assert!(fail(&t, &c, false, &o, &b).is_empty());
    assert_eq!(
        fail(&t, &c, false, &o, &b),
        vec![Event::BreakerOpened(Duration::from_secs(1))]
    );
    assert_eq!(admit(&t, &c).0, Admit::No);
    c.advance(Duration::from_secs(1));
    assert_eq!(admit(&t, &c), (Admit::Probe, vec![Event::BreakerHalfOpen]));
    // Only one probe at a time.
    assert_eq!(admit(&t, &c).0, Admit::No);
    assert_eq!(
        fail(&t, &c, true, &o, &b),
        vec![Event::BreakerOpened(Duration::from_secs(2))]
    );
    c.advance(Duration::from_secs(2));
    assert_eq!(admit(&t, &c).0, Admit::Probe);
    assert_eq!(
        fail(&t, &c, true, &o, &b),
        vec![Event::BreakerOpened(Duration::from_secs(3))],
        "capped at max-backoff"
    );
    c.advance(Duration::from_secs(3));
    assert_eq!(admit(&t, &c).0, Admit::Probe);
    // A dropped probe lets another go.
    t.release_probe();
    assert_eq!(admit(&t, &c).0, Admit::Probe);
    let mut ev = Vec::new();
    t.record(
        Report {
            outcome: Outcome::Success,
            latency: None,
            probe: true,
            now: c.0,
        },
        (&o, &b),
        || true,
        &mut ev,
    );
    assert_eq!(ev, vec![Event::BreakerClosed]);
    assert_eq!(admit(&t, &c).0, Admit::Yes);
}

#[test]
fn health_follows_the_thresholds() {
    let t = TargetState::new("a:1".into(), 1);
    let now = Instant::now();
    let check = |passed| t.check_result(passed, (2, 3), now);
    assert!(check(false).is_empty());
    assert!(check(false).is_empty());
    assert!(check(true).is_empty(), "a pass resets the streak");
    assert!(check(false).is_empty());
    assert!(check(false).is_empty());
    assert_eq!(check(false), vec![Event::Unhealthy]);
    assert_eq!(t.admit(now, &mut Vec::new()), Admit::No);
    assert!(check(true).is_empty());
    assert_eq!(check(true), vec![Event::Healthy]);
    assert_eq!(t.admit(now, &mut Vec::new()), Admit::Yes);
}

#[test]
fn a_passed_health_check_ends_an_ejection() {
    let t = TargetState::new("a:1".into(), 1);
    let c = Clock::new();
    let o = Outlier {
        consecutive_failures: 1,
        ..Outlier::default()
    };
    let b = Breaker::default();
    assert_eq!(
        fail(&t, &c, false, &o, &b),
        vec![Event::Ejected(o.base_ejection)]
    );
    assert_eq!(admit(&t, &c).0, Admit::No);
    assert_eq!(t.check_result(true, (2, 2), c.0), vec![Event::Returned]);
    assert_eq!(admit(&t, &c).0, Admit::Yes);
}

#[test]
fn peak_ewma_jumps_up_and_decays_down() {
    let t = TargetState::new("a:1".into(), 1);
    let mut c = Clock::new();
    let (o, b) = (Outlier::default(), Breaker::default());
    let mut ev = Vec::new();
    let ok = Outcome::Success;
    t.record(
        Report {
            outcome: ok,
            latency: Some(Duration::from_millis(500)),
            probe: false,
            now: c.0,
        },
        (&o, &b),
        || true,
        &mut ev,
    );
    assert_eq!(t.ewma(), Duration::from_millis(500));
    c.advance(Duration::from_secs(10));
    t.record(
        Report {
            outcome: ok,
            latency: Some(Duration::from_millis(10)),
            probe: false,
            now: c.0,
        },
        (&o, &b),
        || true,
        &mut ev,
    );
    let e = t.ewma();
    assert!(
        e < Duration::from_millis(300) && e > Duration::from_millis(10),
        "{e:?}"
    );
}
