//! The limits' bookkeeping and the watchdog's decisions, without sockets.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    task::Poll,
    time::Duration,
};

use super::{
    state::{LimitCounters, ListenerShared, reason_index},
    watchdog::Check,
};
use crate::{config::ConnectionLimits, sync::lock, telemetry::metrics::CloseReason};

fn listener(limits: ConnectionLimits) -> Arc<ListenerShared> {
    ListenerShared::new(limits, Duration::from_secs(10), LimitCounters::default())
}

#[test]
fn connections_beyond_the_cap_are_refused_and_slots_come_back() {
    let l = listener(ConnectionLimits {
        max_connections: 2,
        ..Default::default()
    });
    let a = l.admit_connection().expect("first");
    let _b = l.admit_connection().expect("second");
    assert!(l.admit_connection().is_none());
    assert_eq!(
        l.counters.closed[reason_index(CloseReason::AtCapacity)].get(),
        1
    );
    drop(a);
    assert!(l.admit_connection().is_some());
}

#[test]
fn silent_then_idle_connections_have_deadlines() {
    let l = listener(ConnectionLimits {
        idle_timeout: Duration::from_secs(75),
        ..Default::default()
    });
    let c = l.admit_connection().unwrap();
    assert_eq!(c.check(0), Check::Wait(10_000));
    assert_eq!(c.check(10_000), Check::Close(CloseReason::NoRequest));
    let (g, last) = c.admit_request().unwrap();
    assert!(!last);
    // In flight: looked at periodically, never idle.
    assert!(matches!(c.check(500_000), Check::Wait(_)));
    let mut g = g;
    g.finished = true;
    drop(g);
    let done = c.last_done.load(Relaxed);
    assert_eq!(c.check(done + 74_999), Check::Wait(done + 75_000));
    assert_eq!(c.check(done + 75_000), Check::Close(CloseReason::Idle));
}

#[test]
fn a_write_without_progress_closes_after_the_send_timeout() {
    let l = listener(ConnectionLimits::default());
    let c = l.admit_connection().unwrap();
    c.write_blocked_since.store(1_000, Relaxed);
    assert_eq!(c.check(2_000), Check::Wait(10_000));
    assert_eq!(c.check(61_000), Check::Close(CloseReason::SendTimeout));
    c.write_progress(&Poll::Ready(Ok(5usize)), |n| *n > 0);
    assert_eq!(c.check(61_000), Check::Close(CloseReason::NoRequest));
}

#[test]
fn resets_past_the_budget_drain_the_connection() {
    let l = listener(ConnectionLimits {
        http2_max_resets: 1000,
        http2_max_resets_per_second: 3,
        ..Default::default()
    });
    let c = l.admit_connection().unwrap();
    for _ in 0..3 {
        drop(c.admit_request().unwrap());
    }
    assert_eq!(*lock(&c.drain), None);
    drop(c.admit_request().unwrap());
    assert_eq!(*lock(&c.drain), Some(CloseReason::ResetBudget));
}

#[test]
fn the_last_request_of_a_connection_is_flagged() {
    let l = listener(ConnectionLimits {
        max_requests_per_connection: 2,
        ..Default::default()
    });
    let c = l.admit_connection().unwrap();
    let (mut a, last) = c.admit_request().unwrap();
    a.finished = true;
    assert!(!last);
    let (mut b, last) = c.admit_request().unwrap();
    b.finished = true;
    assert!(last);
    assert_eq!(*lock(&c.drain), Some(CloseReason::RequestLimit));
}

#[test]
fn requests_beyond_the_listener_in_flight_limit_are_refused() {
    let l = listener(ConnectionLimits {
        max_requests_in_flight: 1,
        ..Default::default()
    });
    let c = l.admit_connection().unwrap();
    let (mut g, _) = c.admit_request().unwrap();
    g.finished = true;
    assert!(c.admit_request().is_none());
    assert_eq!(l.counters.refused_in_flight.get(), 1);
    drop(g);
    assert!(c.admit_request().is_some());
}

#[test]
fn idle_and_stalled_streams_are_found() {
    let l = listener(ConnectionLimits {
        send_timeout: Duration::from_secs(60),
        stream_idle_timeout: Duration::from_secs(300),
        ..Default::default()
    });
    let c = l.admit_connection().unwrap();
    let (g, _) = c.admit_request().unwrap();
    g.slot.last_activity.store(0, Relaxed);
    assert!(matches!(c.check(299_999), Check::Wait(_)));
    assert!(!g.slot.expired.load(Relaxed));
    assert!(matches!(c.check(300_000), Check::Wait(_)));
    assert!(g.slot.expired.load(Relaxed));
    assert_eq!(l.counters.stream_idle_timeouts.get(), 1);
    g.slot.sent_at.store(300_000, Relaxed);
    assert_eq!(c.check(360_000), Check::Close(CloseReason::StalledReader));
}

#[test]
fn each_close_reason_counts_in_the_counter_made_for_it() {
    for (i, reason) in CloseReason::ALL.into_iter().enumerate() {
        assert_eq!(reason_index(reason), i, "{reason:?}");
    }
}
