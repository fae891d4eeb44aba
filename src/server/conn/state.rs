//! The state a connection's limits are kept in: what a listener's
//! connections share ([`ListenerShared`]), one connection
//! ([`ConnState`]) and one request on it ([`StreamSlot`], held by a
//! [`StreamGuard`]). Written by the socket and body wrappers, read by the
//! watchdog; times are milliseconds since the connection was accepted.

use std::{
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::Poll,
    time::{Duration, Instant},
};

use futures::task::AtomicWaker;
use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

use crate::{
    body::Body,
    config::ConnectionLimits,
    sync::lock,
    telemetry::metrics::{CloseReason, Metrics},
};

/// "Not set" in a millisecond timestamp.
pub(super) const NONE: u64 = u64::MAX;

/// What every worker's socket of one listener shares: its limits and how
/// much of them is in use.
pub(in crate::server) struct ListenerShared {
    pub(super) limits: ConnectionLimits,
    pub(super) header_timeout: Duration,
    connections: AtomicUsize,
    pub(super) in_flight: AtomicUsize,
    pub(super) counters: LimitCounters,
}

/// The metric handles a listener's limits count in.
#[derive(Default)]
pub(in crate::server) struct LimitCounters {
    pub(super) closed: [Counter; CLOSE_REASONS],
    pub(super) refused_in_flight: Counter,
    pub(super) stream_idle_timeouts: Counter,
}

impl LimitCounters {
    /// The gateway's series.
    pub(in crate::server) fn new(metrics: &Metrics) -> Self {
        let closed = CloseReason::ALL.map(|r| metrics.connections_closed(r));
        Self {
            closed,
            refused_in_flight: metrics.requests_refused_in_flight().clone(),
            stream_idle_timeouts: metrics.stream_idle_timeouts().clone(),
        }
    }
}

const CLOSE_REASONS: usize = 7;

pub(super) fn reason_index(reason: CloseReason) -> usize {
    match reason {
        CloseReason::AtCapacity => 0,
        CloseReason::NoRequest => 1,
        CloseReason::Idle => 2,
        CloseReason::SendTimeout => 3,
        CloseReason::StalledReader => 4,
        CloseReason::ResetBudget => 5,
        CloseReason::RequestLimit => 6,
    }
}

impl ListenerShared {
    /// The shared state of a listener with these limits.
    pub(in crate::server) fn new(
        limits: ConnectionLimits,
        header_timeout: Duration,
        counters: LimitCounters,
    ) -> Arc<Self> {
        Arc::new(Self {
            limits,
            header_timeout,
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            counters,
        })
    }

    /// Take one of the listener's connection slots, or count a connection
    /// refused at capacity (the caller closes it without reading).
    pub(in crate::server) fn admit_connection(self: &Arc<Self>) -> Option<Arc<ConnState>> {
        let open = self.connections.fetch_add(1, Relaxed);
        if open >= self.limits.max_connections {
            self.connections.fetch_sub(1, Relaxed);
            self.count_close(CloseReason::AtCapacity);
            return None;
        }
        Some(Arc::new(ConnState {
            listener: self.clone(),
            epoch: Instant::now(),
            last_read: AtomicU64::new(0),
            last_done: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(NONE),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            resets: AtomicU64::new(0),
            reset_second: Mutex::new((0, 0)),
            streams: Mutex::new(Vec::new()),
            drain: Mutex::new(None),
            wake: Notify::new(),
        }))
    }

    pub(super) fn count_close(&self, reason: CloseReason) {
        self.counters.closed[reason_index(reason)].inc();
    }
}

/// One connection's state, shared by its task, its socket wrapper and the
/// requests on it. Times are milliseconds since the connection was accepted.
pub(in crate::server) struct ConnState {
    pub(super) listener: Arc<ListenerShared>,
    pub(super) epoch: Instant,
    pub(super) last_read: AtomicU64,
    /// When the last request in flight ended.
    pub(super) last_done: AtomicU64,
    pub(super) write_blocked_since: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) in_flight: AtomicUsize,
    resets: AtomicU64,
    /// (second, resets counted in it).
    reset_second: Mutex<(u64, u64)>,
    pub(super) streams: Mutex<Vec<Arc<StreamSlot>>>,
    /// Why the connection should close gracefully, once decided.
    pub(super) drain: Mutex<Option<CloseReason>>,
    pub(super) wake: Notify,
}

impl ConnState {
    pub(super) fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    pub(super) fn limits(&self) -> &ConnectionLimits {
        &self.listener.limits
    }

    /// Admit one request on this connection: `None` when the listener is at
    /// its in-flight limit (counted; the caller answers 503). The flag says
    /// whether this is the connection's last request.
    pub(in crate::server) fn admit_request(self: &Arc<Self>) -> Option<(StreamGuard, bool)> {
        let listener = &self.listener;
        if listener.in_flight.fetch_add(1, Relaxed) >= listener.limits.max_requests_in_flight {
            listener.in_flight.fetch_sub(1, Relaxed);
            listener.counters.refused_in_flight.inc();
            return None;
        }
        let now = self.now();
        let slot = Arc::new(StreamSlot {
            epoch: self.epoch,
            last_activity: AtomicU64::new(now),
            sent_at: AtomicU64::new(NONE),
            expired: AtomicBool::new(false),
            request_done: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        lock(&self.streams).push(slot.clone());
        self.in_flight.fetch_add(1, Relaxed);
        let n = self.requests.fetch_add(1, Relaxed) + 1;
        let max = self.limits().max_requests_per_connection;
        let last = max != 0 && n >= max;
        if last {
            self.drain(CloseReason::RequestLimit);
        }
        Some((
            StreamGuard {
                slot,
                conn: self.clone(),
                finished: false,
            },
            last,
        ))
    }

    fn end_request(&self, slot: &Arc<StreamSlot>, finished: bool) {
        self.listener.in_flight.fetch_sub(1, Relaxed);
        lock(&self.streams).retain(|s| !Arc::ptr_eq(s, slot));
        let now = self.now();
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.last_done.store(now, Relaxed);
        }
        if !finished {
            self.client_reset(now);
        }
    }

    /// A request the client abandoned before its response ended (an
    /// HTTP/2 RST_STREAM, or a closed connection).
    fn client_reset(&self, now: u64) {
        let total = self.resets.fetch_add(1, Relaxed) + 1;
        let this_second = {
            let mut w = lock(&self.reset_second);
            if w.0 != now / 1000 {
                *w = (now / 1000, 0);
            }
            w.1 += 1;
            w.1
        };
        let l = self.limits();
        if total > l.http2_max_resets || this_second > l.http2_max_resets_per_second {
            self.drain(CloseReason::ResetBudget);
        }
    }

    pub(super) fn drain(&self, reason: CloseReason) {
        let mut d = lock(&self.drain);
        if d.is_none() {
            *d = Some(reason);
            self.wake.notify_one();
        }
    }

    pub(super) fn read_some(&self) {
        self.last_read.store(self.now(), Relaxed);
    }

    pub(super) fn write_progress<T>(
        &self,
        polled: &Poll<io::Result<T>>,
        wrote: impl Fn(&T) -> bool,
    ) {
        match polled {
            Poll::Pending => {
                if self.write_blocked_since.load(Relaxed) == NONE {
                    self.write_blocked_since.store(self.now(), Relaxed);
                    // With a request in flight the watchdog looks often
                    // enough anyway; without one (a PING flood) it may be
                    // asleep until the idle deadline.
                    if self.in_flight.load(Relaxed) == 0 {
                        self.wake.notify_one();
                    }
                }
            }
            Poll::Ready(Ok(v)) if wrote(v) => {
                if self.write_blocked_since.load(Relaxed) != NONE {
                    self.write_blocked_since.store(NONE, Relaxed);
                }
            }
            Poll::Ready(_) => {}
        }
    }
}

/// One request's activity, written by its bodies and read by the watchdog.
pub(in crate::server) struct StreamSlot {
    pub(super) epoch: Instant,
    /// When body bytes last moved either way (or the request began).
    pub(super) last_activity: AtomicU64,
    /// When the response body last returned data, while the connection has
    /// not polled it since (it waits for the client's window or socket).
    pub(super) sent_at: AtomicU64,
    /// The stream idle timeout passed: the request is to end.
    pub(super) expired: AtomicBool,
    /// The request body has ended.
    pub(super) request_done: AtomicBool,
    /// Whoever waits on this request (the handler, the response body).
    pub(super) waker: AtomicWaker,
}

impl StreamSlot {
    pub(super) fn touch(&self) {
        self.last_activity
            .store(millis(self.epoch.elapsed()), Relaxed);
    }

    /// Resolves once the stream idle timeout has ended this request.
    pub(in crate::server) async fn expired(&self) {
        std::future::poll_fn(|cx| {
            if self.expired.load(Relaxed) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.expired.load(Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// The answer to a request whose stream idle timeout passed before its
    /// response started: 408 while its body was still arriving, else 504
    /// (as Envoy's `stream_idle_timeout`); for a gRPC request (`grpc`),
    /// DEADLINE_EXCEEDED. The timeout starts again for sending it.
    pub(in crate::server) fn idle_response(&self, grpc: bool) -> http::Response<Body> {
        self.touch();
        self.expired.store(false, Relaxed);
        let status = if self.request_done.load(Relaxed) {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::REQUEST_TIMEOUT
        };
        crate::error::error_response_for(grpc, status, "stream idle timeout")
    }
}

/// Holds a request's place in the listener's and the connection's
/// in-flight counts until its response has been sent or abandoned. Dropped
/// before the response ended, it counts a client reset.
pub(in crate::server) struct StreamGuard {
    pub(super) slot: Arc<StreamSlot>,
    conn: Arc<ConnState>,
    pub(super) finished: bool,
}

impl StreamGuard {
    /// The request's activity slot.
    pub(in crate::server) fn slot(&self) -> &Arc<StreamSlot> {
        &self.slot
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.conn.end_request(&self.slot, self.finished);
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.listener.connections.fetch_sub(1, Relaxed);
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(NONE - 1)
}
