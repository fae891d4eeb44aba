//! One client connection from accept to close, and the limits that keep a
//! client from holding the gateway (issues 15 and 22): connections per
//! listener, requests in flight per listener, requests and cancelled
//! requests per connection, and the timeouts of a connection that sends
//! nothing, sits idle, stops reading, or keeps a request open without
//! moving a byte.
//!
//! Each connection runs as one task that polls hyper's connection and, beside
//! it, a watchdog ([`drive`]). The watchdog sleeps until the earliest
//! deadline the connection's state allows and then either closes the
//! connection (dropping it closes the socket at once), asks hyper for a
//! graceful close (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY), or ends one
//! request. What it reads is written by three wrappers: [`WatchedIo`] around
//! the socket (bytes read, writes that make no progress), and around each
//! request's bodies ([`ActivityBody`] in, [`ResponseBody`] out), which note
//! when bytes last moved and whether a response returned data that the
//! connection has not come back for (the client's flow-control window is
//! closed). A connection stays on one worker thread, so the atomics here are
//! never contended; they only make the state shareable with hyper's tasks.
//!
//! Not here: body timeouts toward the upstream and upstream connection
//! limits (`crate::upstream`, `crate::body`), and the limits hyper enforces
//! itself (header sizes, the header read timeout, HTTP/2 frame and
//! pending-reset limits), which [`super`] configures.

use std::{
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::task::AtomicWaker;
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{Notify, watch},
};

use crate::{
    body::{Body, BoxError},
    config::ConnectionLimits,
    sync::lock,
    telemetry::metrics::{CloseReason, Metrics},
};

/// "Not set" in a millisecond timestamp.
const NONE: u64 = u64::MAX;

/// How long a connection closed for abuse (too many cancelled requests)
/// may finish its other requests after its GOAWAY.
const ABUSE_GRACE: Duration = Duration::from_secs(1);

/// What every worker's socket of one listener shares: its limits and how
/// much of them is in use.
pub(super) struct ListenerShared {
    limits: ConnectionLimits,
    header_timeout: Duration,
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    counters: LimitCounters,
}

/// The metric handles a listener's limits count in.
#[derive(Default)]
pub(super) struct LimitCounters {
    closed: [Counter; CLOSE_REASONS],
    refused_in_flight: Counter,
    stream_idle_timeouts: Counter,
}

impl LimitCounters {
    /// The gateway's series.
    pub(super) fn new(metrics: &Metrics) -> Self {
        let closed = [
            CloseReason::AtCapacity,
            CloseReason::NoRequest,
            CloseReason::Idle,
            CloseReason::SendTimeout,
            CloseReason::StalledReader,
            CloseReason::ResetBudget,
            CloseReason::RequestLimit,
        ]
        .map(|r| metrics.connections_closed(r));
        Self {
            closed,
            refused_in_flight: metrics.requests_refused_in_flight().clone(),
            stream_idle_timeouts: metrics.stream_idle_timeouts().clone(),
        }
    }
}

const CLOSE_REASONS: usize = 7;

fn reason_index(reason: CloseReason) -> usize {
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
    pub(super) fn new(
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
    pub(super) fn admit_connection(self: &Arc<Self>) -> Option<Arc<ConnState>> {
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

    fn count_close(&self, reason: CloseReason) {
        self.counters.closed[reason_index(reason)].inc();
    }
}

/// One connection's state, shared by its task, its socket wrapper and the
/// requests on it. Times are milliseconds since the connection was accepted.
pub(super) struct ConnState {
    listener: Arc<ListenerShared>,
    epoch: Instant,
    last_read: AtomicU64,
    /// When the last request in flight ended.
    last_done: AtomicU64,
    write_blocked_since: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    resets: AtomicU64,
    /// (second, resets counted in it).
    reset_second: Mutex<(u64, u64)>,
    streams: Mutex<Vec<Arc<StreamSlot>>>,
    /// Why the connection should close gracefully, once decided.
    drain: Mutex<Option<CloseReason>>,
    wake: Notify,
}

/// What the watchdog decided.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    /// Look again at this time (ms).
    Wait(u64),
    /// Close now.
    Close(CloseReason),
}

impl ConnState {
    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn limits(&self) -> &ConnectionLimits {
        &self.listener.limits
    }

    /// Admit one request on this connection: `None` when the listener is at
    /// its in-flight limit (counted; the caller answers 503). The flag says
    /// whether this is the connection's last request.
    pub(super) fn admit_request(self: &Arc<Self>) -> Option<(StreamGuard, bool)> {
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

    fn drain(&self, reason: CloseReason) {
        let mut d = lock(&self.drain);
        if d.is_none() {
            *d = Some(reason);
            self.wake.notify_one();
        }
    }

    fn read_some(&self) {
        self.last_read.store(self.now(), Relaxed);
    }

    fn write_progress<T>(&self, polled: &Poll<io::Result<T>>, wrote: impl Fn(&T) -> bool) {
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

    /// The watchdog's look at the connection at `now`: close it, or when to
    /// look again. Marks requests idle past the stream timeout as expired.
    fn check(&self, now: u64) -> Check {
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

/// One request's activity, written by its bodies and read by the watchdog.
pub(super) struct StreamSlot {
    epoch: Instant,
    /// When body bytes last moved either way (or the request began).
    last_activity: AtomicU64,
    /// When the response body last returned data, while the connection has
    /// not polled it since (it waits for the client's window or socket).
    sent_at: AtomicU64,
    /// The stream idle timeout passed: the request is to end.
    expired: AtomicBool,
    /// The request body has ended.
    request_done: AtomicBool,
    /// Whoever waits on this request (the handler, the response body).
    waker: AtomicWaker,
}

impl StreamSlot {
    fn touch(&self) {
        self.last_activity
            .store(millis(self.epoch.elapsed()), Relaxed);
    }

    /// Resolves once the stream idle timeout has ended this request.
    pub(super) async fn expired(&self) {
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
    /// (as Envoy's `stream_idle_timeout`). The timeout starts again for
    /// sending it.
    pub(super) fn idle_response(&self) -> http::Response<Body> {
        self.touch();
        self.expired.store(false, Relaxed);
        if self.request_done.load(Relaxed) {
            crate::error::error_response(StatusCode::GATEWAY_TIMEOUT, "stream idle timeout")
        } else {
            crate::error::error_response(StatusCode::REQUEST_TIMEOUT, "stream idle timeout")
        }
    }
}

/// Holds a request's place in the listener's and the connection's
/// in-flight counts until its response has been sent or abandoned. Dropped
/// before the response ended, it counts a client reset.
pub(super) struct StreamGuard {
    slot: Arc<StreamSlot>,
    conn: Arc<ConnState>,
    finished: bool,
}

impl StreamGuard {
    /// The request's activity slot.
    pub(super) fn slot(&self) -> &Arc<StreamSlot> {
        &self.slot
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.conn.end_request(&self.slot, self.finished);
    }
}

/// The socket, noting for the watchdog when bytes arrive and when a write
/// makes no progress.
pub(super) struct WatchedIo<T> {
    inner: T,
    conn: Arc<ConnState>,
}

impl<T> WatchedIo<T> {
    /// Watch `inner` for `conn`.
    pub(super) fn new(inner: T, conn: Arc<ConnState>) -> Self {
        Self { inner, conn }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.read_some();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.conn.write_progress(&polled, |n| *n > 0);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.conn.write_progress(&polled, |n| *n > 0);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.conn.write_progress(&polled, |_| true);
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that notes when its bytes arrive and when it ends.
pub(super) struct ActivityBody<B> {
    inner: B,
    slot: Arc<StreamSlot>,
}

impl<B> ActivityBody<B> {
    /// Watch `inner` for the request in `slot`.
    pub(super) fn new(inner: B, slot: Arc<StreamSlot>) -> Self {
        Self { inner, slot }
    }
}

impl<B> HttpBody for ActivityBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                self.slot.touch();
                if self.inner.is_end_stream() {
                    self.slot.request_done.store(true, Relaxed);
                }
            }
            Poll::Ready(None) => self.slot.request_done.store(true, Relaxed),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The stream idle timeout ended a response that had started.
#[derive(Debug, thiserror::Error)]
#[error("no body bytes moved for the stream idle timeout")]
pub(super) struct StreamIdleTimeout;

/// A response body that holds its request's [`StreamGuard`] until it has
/// been sent, notes when its bytes go out and when the connection does not
/// come back for more, and ends with an error (a reset stream) once the
/// stream idle timeout has passed.
pub(super) struct ResponseBody {
    inner: Body,
    guard: Option<StreamGuard>,
}

impl ResponseBody {
    /// `inner`, answering the request `guard` holds (`None`: a request
    /// refused before it was admitted).
    pub(super) fn new(inner: Body, guard: Option<StreamGuard>) -> Self {
        Self { inner, guard }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(guard) = &mut this.guard else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        let slot = &guard.slot;
        slot.sent_at.store(NONE, Relaxed);
        if slot.expired.load(Relaxed) {
            guard.finished = true;
            return Poll::Ready(Some(Err(Box::new(StreamIdleTimeout))));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                let now = millis(slot.epoch.elapsed());
                slot.last_activity.store(now, Relaxed);
                // Also for the last chunk: it may be the one that waits on
                // the client's window (a whole small body is one chunk).
                slot.sent_at.store(now, Relaxed);
                if this.inner.is_end_stream() {
                    guard.finished = true;
                }
            }
            Poll::Ready(_) => guard.finished = true,
            Poll::Pending => slot.waker.register(cx.waker()),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper drops a body it knows is empty without polling it.
        if let Some(g) = &mut self.guard
            && self.inner.is_end_stream()
        {
            g.finished = true;
        }
    }
}

/// Serve one connection to its end: poll `conn` (hyper's connection) and
/// close it when the watchdog says so, or ask it to close gracefully
/// (`graceful`) at the request limit, past the reset budget, or when
/// `shutdown` turns true. Dropping `conn` closes the socket.
pub(super) async fn drive<C, E>(
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

impl Drop for ConnState {
    fn drop(&mut self) {
        self.listener.connections.fetch_sub(1, Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(NONE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
