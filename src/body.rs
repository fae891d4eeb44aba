//! The body type used on both sides of the proxy, and bounded buffering.
//!
//! Bodies stream as `BoxBody` unless a plugin asked for them; then they are
//! collected up to a limit and never beyond it. A streaming body is never
//! waited for without bound: [`ClientBody`] and [`UpstreamBody`] fail a
//! body that goes idle between chunks (issue 15.3), and [`ClientBody`]
//! keeps the reason a client's body failed apart from upstream failures.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, BodyStream, Full, StreamBody, combinators::BoxBody};
use tokio::{sync::Notify, time::Sleep};

use crate::sync::lock;

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response pylon sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Box any body whose errors convert into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// Why a body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// It was longer than the limit.
    #[error("body exceeds the {limit}-byte limit")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The peer failed while sending it.
    #[error("body could not be read")]
    Read(#[source] BoxError),
}

/// Buffer a body, failing as soon as it exceeds `limit` bytes (the rest is
/// never read).
pub async fn collect_limited(mut body: Body, limit: usize) -> Result<Bytes, CollectError> {
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(CollectError::Read)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            return Err(CollectError::TooLarge { limit });
        }
        // One chunk (the common case) is returned without a copy.
        match (&mut first, &mut buf) {
            (None, None) => first = Some(data),
            (Some(f), None) => {
                let mut b = BytesMut::with_capacity(len);
                b.extend_from_slice(f);
                b.extend_from_slice(&data);
                buf = Some(b);
                first = None;
            }
            (_, Some(b)) => b.extend_from_slice(&data),
        }
    }
    Ok(match (first, buf) {
        (_, Some(b)) => b.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

/// A body buffered up to a limit, or — past the limit — handed back whole
/// as a stream (what was read so far, then the rest), so nothing is lost.
pub enum Buffered {
    /// The whole body, within the limit.
    Full(Bytes),
    /// Longer than the limit: the same bytes, streaming.
    TooLarge(Body),
}

/// Buffer `body` if it fits in `limit` bytes; otherwise give it back as a
/// stream that replays the bytes already read, without buffering more.
pub async fn buffer_or_stream(mut body: Body, limit: usize) -> Result<Buffered, BoxError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                if buf.len() + data.len() > limit {
                    buf.extend_from_slice(&data);
                    let head = http_body::Frame::data(buf.freeze());
                    let stream = futures::stream::once(async move { Ok::<_, BoxError>(head) })
                        .chain(BodyStream::new(body));
                    return Ok(Buffered::TooLarge(BodyExt::boxed(StreamBody::new(stream))));
                }
                buf.extend_from_slice(&data);
            }
            // Trailers end the body; a buffered body carries none.
            Err(_) => break,
        }
    }
    Ok(Buffered::Full(buf.freeze()))
}

/// How long a body may go without a chunk while pylon waits for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no body data for {0:?}")]
pub struct IdleTimeout(pub Duration);

/// A timer that runs only while the body's producer is awaited: it starts
/// when the inner body first returns `Pending` after a chunk and is
/// cleared by the next chunk. While the consumer is not polling (it is
/// applying back-pressure), no time counts against the producer.
struct IdleTimer {
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    fn new(idle: Duration) -> Self {
        Self { idle, sleep: None }
    }

    fn reset(&mut self) {
        self.sleep = None;
    }

    /// Called when the producer is `Pending`: has it been so for too long?
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let idle = self.idle;
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
}

/// Why a client's request body failed, as recorded for the proxy.
#[derive(Debug)]
pub enum ClientBodyFailure {
    /// No chunk for the route's `request-body-timeout`.
    Timeout(Duration),
    /// The connection reported an error: bad chunked framing, a body cut
    /// short, or the client resetting the stream.
    Invalid(BoxError),
    /// The body grew past the route's `max-request-body` (this many bytes).
    TooLarge(u64),
}

/// The error the upstream side sees when the client's body failed (the
/// cause is kept in [`RequestBodyState`] for the proxy).
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub struct ClientBodyFailed;

/// What the proxy and the upstream wait know about a request body while it
/// streams: when it last moved, whether the client is being waited for,
/// whether it ended, and why it failed.
#[derive(Debug)]
pub struct RequestBodyState {
    base: Instant,
    idle: Duration,
    /// Milliseconds after `base` of the last chunk (or of [`Self::touch`]).
    last_progress_ms: AtomicU64,
    waiting_on_client: AtomicBool,
    finished: AtomicBool,
    finish: Notify,
    failure: Mutex<Option<ClientBodyFailure>>,
}

impl RequestBodyState {
    fn new(idle: Duration) -> Self {
        Self {
            base: Instant::now(),
            idle,
            last_progress_ms: AtomicU64::new(0),
            waiting_on_client: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            finish: Notify::new(),
            failure: Mutex::new(None),
        }
    }

    /// The idle timeout between chunks.
    pub fn idle_timeout(&self) -> Duration {
        self.idle
    }

    /// Count now as progress (the request is about to be sent upstream).
    pub fn touch(&self) {
        self.progress();
    }

    fn progress(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_progress_ms.store(ms, Ordering::Relaxed);
    }

    /// When the body last moved.
    pub fn last_progress(&self) -> Instant {
        self.base + Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed))
    }

    /// Whether the body is waiting for the client (not for the upstream to
    /// take what was read).
    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Relaxed)
    }

    /// Whether the body ended (or failed).
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Wait until the body ended or failed.
    pub async fn finished(&self) {
        loop {
            let notified = self.finish.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_finished() {
                return;
            }
            notified.await;
        }
    }

    fn set_finished(&self) {
        self.finished.store(true, Ordering::Release);
        self.finish.notify_waiters();
    }

    /// Why the client's body failed, if it did (taken once).
    pub fn take_failure(&self) -> Option<ClientBodyFailure> {
        lock(&self.failure).take()
    }

    /// Whether the client's body failed.
    pub fn failed(&self) -> bool {
        lock(&self.failure).is_some()
    }

    fn fail(&self, failure: ClientBodyFailure) {
        *lock(&self.failure) = Some(failure);
        self.set_finished();
    }
}

/// Called once when a client body fails, to count and log it.
pub type OnClientBodyFailure = Box<dyn Fn(&ClientBodyFailure) + Send + Sync>;

/// A client's request body on its way upstream: fails after `idle` without
/// a chunk, and records any failure in a shared [`RequestBodyState`] so
/// that the proxy answers 400/408 (a client error) instead of blaming the
/// upstream the half-sent request was aborted on. The upstream side sees
/// only [`ClientBodyFailed`]: hyper then stops writing the request (no
/// terminating chunk) and closes that connection, so the upstream never
/// gets a truncated request as a complete one and the connection is never
/// reused.
pub struct ClientBody {
    inner: Body,
    timer: IdleTimer,
    /// Body bytes the client may still send (`u64::MAX`: no limit).
    allowance: u64,
    limit: Option<u64>,
    state: Arc<RequestBodyState>,
    on_failure: OnClientBodyFailure,
    done: bool,
}

impl ClientBody {
    /// Wrap `inner`, which may carry at most `limit` bytes; the returned
    /// state is shared with the proxy.
    pub fn wrap(
        inner: Body,
        idle: Duration,
        limit: Option<u64>,
        on_failure: OnClientBodyFailure,
    ) -> (Body, Arc<RequestBodyState>) {
        let state = Arc::new(RequestBodyState::new(idle));
        if inner.is_end_stream() {
            state.set_finished();
            return (inner, state);
        }
        let body = ClientBody {
            inner,
            timer: IdleTimer::new(idle),
            allowance: limit.unwrap_or(u64::MAX),
            limit,
            state: state.clone(),
            on_failure,
            done: false,
        };
        (BodyExt::boxed(body), state)
    }

    fn failed(
        &mut self,
        failure: ClientBodyFailure,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        (self.on_failure)(&failure);
        self.state.fail(failure);
        Poll::Ready(Some(Err(Box::new(ClientBodyFailed))))
    }
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                match self.allowance.checked_sub(len) {
                    Some(left) => self.allowance = left,
                    None => {
                        let limit = self.limit.unwrap_or(u64::MAX);
                        return self.failed(ClientBodyFailure::TooLarge(limit));
                    }
                }
                self.timer.reset();
                self.state.waiting_on_client.store(false, Ordering::Relaxed);
                self.state.progress();
                if self.inner.is_end_stream() {
                    self.done = true;
                    self.state.set_finished();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.done = true;
                self.state.set_finished();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => self.failed(ClientBodyFailure::Invalid(e)),
            Poll::Pending => {
                self.state.waiting_on_client.store(true, Ordering::Relaxed);
                if self.timer.poll_expired(cx) {
                    let idle = self.timer.idle;
                    self.failed(ClientBodyFailure::Timeout(idle))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream's response body on its way to the client: fails with
/// [`IdleTimeout`] after `idle` without a chunk, so that a stalled upstream
/// cannot hold the client (hyper then cuts the response: the HTTP/1
/// connection is closed before the body's end, the HTTP/2 stream reset).
/// `on_timeout` is called once, to count and log it.
pub struct UpstreamBody {
    inner: Body,
    timer: IdleTimer,
    on_timeout: Option<Box<dyn FnOnce() + Send + Sync>>,
    done: bool,
}

impl UpstreamBody {
    /// Wrap `inner` (an empty body is returned as it is).
    pub fn wrap(inner: Body, idle: Duration, on_timeout: Box<dyn FnOnce() + Send + Sync>) -> Body {
        if inner.is_end_stream() {
            return inner;
        }
        BodyExt::boxed(UpstreamBody {
            inner,
            timer: IdleTimer::new(idle),
            on_timeout: Some(on_timeout),
            done: false,
        })
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.timer.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if self.timer.poll_expired(cx) {
                    self.done = true;
                    if let Some(f) = self.on_timeout.take() {
                        f();
                    }
                    Poll::Ready(Some(Err(Box::new(IdleTimeout(self.timer.idle)))))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
