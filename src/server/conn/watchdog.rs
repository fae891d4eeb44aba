//! The per-connection watchdog: it sleeps until the earliest deadline the
//! connection's state allows, then closes the connection, asks hyper for
//! a graceful close, or ends one request.

use std::{
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::sync::watch;

use super::state::{ConnState, NONE, millis};
use crate::{sync::lock, telemetry::metrics::CloseReason};

/// How long a connection closed for abuse (too many cancelled requests)
/// may finish its other requests after its GOAWAY.
const ABUSE_GRACE: Duration = Duration::from_secs(1);

/// What the watchdog decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Check {
    /// Look again at this time (ms).
    Wait(u64),
    /// Close now.
    Close(CloseReason),
}

impl ConnState {
    /// The watchdog's look at the connection at `now`: close it, or when to
    /// look again. Marks requests idle past the stream timeout as expired.
    pub(super) fn check(&self, now: u64) -> Check {
        let l = self.limits();
        let send = millis(l.send_timeout);
        let stream_idle = millis(l.stream_idle_timeout);
        // The watchdog is not woken when a request starts or ends (that
        // would cost a wake-up per request): it looks at least this often,
        // so a stall, an idle stream or the connection turning idle is seen
        // within a quarter of its timeout.
        let period = (send.min(stream_idle).min(millis(l.idle_timeout)) / 4).max(10);
        let mut next = now.saturating_add(period);
        let blocked = self.write_blocked_since.load(Relaxed);
        if blocked != NONE {
            if now >= blocked.saturating_add(send) {
                return Check::Close(CloseReason::SendTimeout);
            }
            next = next.min(blocked.saturating_add(send));
        }
        if self.in_flight.load(Relaxed) == 0 {
            let (deadline, reason) = if self.requests.load(Relaxed) == 0 {
                (millis(self.listener.header_timeout), CloseReason::NoRequest)
            } else {
                let last = self
                    .last_read
                    .load(Relaxed)
                    .max(self.last_done.load(Relaxed));
                (
                    last.saturating_add(millis(l.idle_timeout)),
                    CloseReason::Idle,
                )
            };
            if now >= deadline {
                return Check::Close(reason);
            }
            return Check::Wait(next.min(deadline));
        }
        for s in lock(&self.streams).iter() {
            let sent = s.sent_at.load(Relaxed);
            if sent != NONE {
                if now >= sent.saturating_add(send) {
                    return Check::Close(CloseReason::StalledReader);
                }
                next = next.min(sent.saturating_add(send));
            }
            if !s.expired.load(Relaxed) {
                let idle_deadline = s.last_activity.load(Relaxed).saturating_add(stream_idle);
                if now >= idle_deadline {
                    s.expired.store(true, Relaxed);
                    self.listener.counters.stream_idle_timeouts.inc();
                    s.waker.wake();
                } else {
                    next = next.min(idle_deadline);
                }
            }
        }
        Check::Wait(next)
    }
}

/// Serve one connection to its end: poll `conn` (hyper's connection) and
/// close it when the watchdog says so, or ask it to close gracefully
/// (`graceful`) at the request limit, past the reset budget, or when
/// `shutdown` turns true. Dropping `conn` closes the socket.
pub(in crate::server) async fn drive<C, E>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    state: Arc<ConnState>,
    mut shutdown: watch::Receiver<bool>,
    client: SocketAddr,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut conn = pin!(conn);
    let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
    let mut draining = *shutdown.borrow();
    if draining {
        graceful(conn.as_mut());
    }
    let mut hard_deadline: Option<u64> = None;
    loop {
        let now = state.now();
        if !draining && let Some(reason) = *lock(&state.drain) {
            draining = true;
            state.listener.count_close(reason);
            tracing::debug!(%client, reason = reason.label(), "closing the connection gracefully");
            graceful(conn.as_mut());
            if reason == CloseReason::ResetBudget {
                hard_deadline = Some(now + millis(ABUSE_GRACE));
            }
        }
        let next = match state.check(now) {
            Check::Close(reason) => {
                state.listener.count_close(reason);
                tracing::debug!(%client, reason = reason.label(), "closing the connection");
                return;
            }
            Check::Wait(next) => next,
        };
        let next = match hard_deadline {
            Some(h) if now >= h => return,
            Some(h) => next.min(h),
            None => next,
        };
        let at = state.epoch + Duration::from_millis(next.min(now + 3_600_000));
        sleep.as_mut().reset(tokio::time::Instant::from_std(at));
        tokio::select! {
            biased;
            done = conn.as_mut() => {
                if let Err(err) = done {
                    tracing::debug!(%client, error = %err, "connection ended with an error");
                }
                return;
            }
            changed = shutdown.changed(), if !draining => {
                // A dropped sender means the gateway is gone: close as well.
                let _ = changed;
                draining = true;
                graceful(conn.as_mut());
            }
            () = state.wake.notified() => {}
            () = sleep.as_mut() => {}
        }
    }
}
