//! HTTP/1.1 connections to one upstream target, kept alive and reused by
//! one worker thread, within a connection budget all workers share.
//!
//! Requests go straight to hyper's connection-level client: the pool is a
//! stack of idle senders per target, so a request costs a pop, a send and a
//! push (hyper-util's general-purpose client spent about a fifth of the
//! proxy's instructions per request in its pool and dispatch). A connection
//! goes back to the pool only when its response body ended, so whatever is
//! idle can take the next request; one that the upstream closed while idle
//! is skipped, and a request that could not be written to it is retried
//! once on a new connection.
//!
//! Every connection holds a permit of its target's [`TargetLimit`]
//! (`max-connections`, counted over all workers, so the upstream sees at
//! most that many from this gateway). With none free, a request first takes
//! an idle connection from another worker's pool (its I/O then runs on that
//! worker's thread: a cross-thread wake, only at the limit), else queues,
//! at most `max-pending` requests for at most `queue-timeout`, then fails
//! (503). A request whose client went away while its response was awaited,
//! or a response body dropped before its end, is read to its end in the
//! background (at most [`DRAIN_MAX_BYTES`] within [`DRAIN_TIMEOUT`]) so the
//! connection can be reused rather than closed: clients resetting streams
//! in a loop otherwise cost the upstream a connection (and a TIME_WAIT
//! socket) each (issue 22.2).

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header, uri::Authority};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::{
    body::Incoming,
    client::conn::{TrySendError, http1},
};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpStream,
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
};

use super::{error::SendError, tls::UpstreamTls};
use crate::{
    body::{self, Body},
    sync::lock,
};

/// How long a connection may sit idle before it is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long the response to a cancelled request (or the rest of a dropped
/// response body) is read in the background before its connection is
/// closed instead of reused.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How many body bytes are read in the background for that; past it the
/// connection is closed.
pub const DRAIN_MAX_BYTES: usize = 1 << 20;

/// The connection budget of one target, shared by every worker's pool.
pub(super) struct TargetLimit {
    permits: Arc<Semaphore>,
    max_pending: usize,
    queue_timeout: Duration,
    pending: AtomicUsize,
    /// Woken when a connection goes idle in any worker's pool.
    checkin: Notify,
    pools: Mutex<Vec<Weak<TargetPool>>>,
}

impl TargetLimit {
    pub(super) fn new(max_connections: usize, max_pending: usize, queue_timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_connections)),
            max_pending,
            queue_timeout,
            pending: AtomicUsize::new(0),
            checkin: Notify::new(),
            pools: Mutex::new(Vec::new()),
        }
    }

    /// A permit for a connection that is not pooled (a tunnel), if one is
    /// free now.
    pub(super) fn try_tunnel_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// An idle connection from any worker's pool.
    fn steal(&self) -> Option<http1::SendRequest<Body>> {
        let pools: Vec<Arc<TargetPool>> =
            lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
        pools.iter().find_map(|p| p.checkout())
    }
}

/// Counts a queued request until dropped.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Idle connections to one target.
pub(super) struct TargetPool {
    authority: Authority,
    /// The address to connect to; `None`: `authority`'s, looked up per
    /// connection.
    addr: Option<SocketAddr>,
    host: HeaderValue,
    tls: Option<UpstreamTls>,
    connect_timeout: Duration,
    max_idle: usize,
    limit: Arc<TargetLimit>,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>> + Send>>;

/// A request sent and not yet answered. Dropped before its answer (the
/// client went away), it finishes the exchange in the background.
struct InFlight {
    response: Option<ResponseFuture>,
    sender: Option<http1::SendRequest<Body>>,
    pool: Arc<TargetPool>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let (Some(response), Some(sender)) = (self.response.take(), self.sender.take())
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let pool = self.pool.clone();
            rt.spawn(async move {
                let finished = tokio::time::timeout(DRAIN_TIMEOUT, async move {
                    let resp = response.await.ok()?;
                    drain(resp.into_body()).await
                })
                .await;
                if let Ok(Some(())) = finished {
                    pool.checkin(sender);
                }
            });
        }
    }
}

/// Read a body to its end, at most [`DRAIN_MAX_BYTES`]; `None` if it
/// failed or was longer.
async fn drain(mut body: Incoming) -> Option<()> {
    let mut n = 0usize;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.ok()?.data_ref() {
            n += data.len();
            if n > DRAIN_MAX_BYTES {
                return None;
            }
        }
    }
    Some(())
}

impl TargetPool {
    pub(super) fn new(
        authority: Authority,
        addr: Option<SocketAddr>,
        tls: Option<UpstreamTls>,
        connect_timeout: Duration,
        max_idle: usize,
        limit: Arc<TargetLimit>,
    ) -> Arc<Self> {
        let host = HeaderValue::from_str(authority.as_str())
            .expect("an authority is a valid header value");
        let pool = Arc::new(Self {
            authority,
            addr,
            host,
            tls,
            connect_timeout,
            max_idle,
            limit,
            idle: Mutex::new(Vec::new()),
        });
        lock(&pool.limit.pools).push(Arc::downgrade(&pool));
        pool
    }

    /// Send `req` (origin-form URI) and return the response with a body
    /// that gives the connection back when it ends. A request that failed
    /// before any of it was written (no connection to be had, or one that
    /// closed before use) comes back with the error, untouched, so it can
    /// go to another target whatever its method and body.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, (SendError, Option<Request<Body>>)> {
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        loop {
            // Connecting and queueing are boxed: rare next to a reused
            // connection, and their futures (TCP, TLS and HTTP/1
            // handshakes, timers) would otherwise size every request's
            // future, which is moved whole at least once per request.
            let got = match self.checkout() {
                Some(sender) => Ok((sender, true)),
                None => match self.limit.permits.clone().try_acquire_owned() {
                    Ok(permit) => Box::pin(self.connect(permit)).await.map(|s| (s, false)),
                    Err(_) => Box::pin(self.wait_for_connection()).await,
                },
            };
            let (mut sender, reused) = match got {
                Ok(got) => got,
                Err(e) => return Err((e, Some(req))),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err((
                    SendError::Failed("connection closed before use".into()),
                    Some(req),
                ));
            }
            let mut exchange = InFlight {
                response: Some(Box::pin(sender.try_send_request(req))),
                sender: Some(sender),
                pool: self.clone(),
            };
            let result = exchange
                .response
                .as_mut()
                .expect("set above")
                .as_mut()
                .await;
            exchange.response = None;
            let sender = exchange.sender.take().expect("set above");
            match result {
                Ok(resp) => return Ok(self.pooled(resp, sender)),
                Err(mut err) => match err.take_message() {
                    // Never written: the upstream had closed the idle
                    // connection. Another one gets the request.
                    Some(unsent) if reused => req = unsent,
                    unsent => {
                        return Err((SendError::Failed(Box::new(err.into_error())), unsent));
                    }
                },
            }
        }
    }

    /// All `max-connections` are open: queue for an idle one or a free
    /// permit, within `max-pending` and `queue-timeout`. Returns the
    /// connection and whether it was reused.
    async fn wait_for_connection(
        self: &Arc<Self>,
    ) -> Result<(http1::SendRequest<Body>, bool), SendError> {
        let limit = &self.limit;
        if limit.pending.fetch_add(1, Ordering::Relaxed) >= limit.max_pending {
            limit.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(SendError::Overflow(
                "all connections busy and the queue full",
            ));
        }
        let _queued = Queued(&limit.pending);
        let deadline = tokio::time::Instant::now() + limit.queue_timeout;
        loop {
            let notified = limit.checkin.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(sender) = self.checkout().or_else(|| limit.steal()) {
                return Ok((sender, true));
            }
            tokio::select! {
                permit = limit.permits.clone().acquire_owned() => {
                    if let Ok(permit) = permit {
                        return Ok((self.connect(permit).await?, false));
                    }
                }
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(SendError::Overflow("all connections busy past queue-timeout"));
                }
            }
        }
    }

    fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = lock(&self.idle);
        while let Some(Idle { sender, since }) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn checkin(&self, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        {
            let mut idle = lock(&self.idle);
            if idle.len() >= self.max_idle {
                return;
            }
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        self.limit.checkin.notify_waiters();
    }

    /// Open a connection (TCP, then TLS if the upstream has it, both
    /// within the connect timeout); it holds `permit` for as long as it
    /// lives.
    async fn connect(
        &self,
        permit: OwnedSemaphorePermit,
    ) -> Result<http1::SendRequest<Body>, SendError> {
        let connecting = async {
            let stream = match self.addr {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect(self.authority.as_str()).await,
            }
            .map_err(|e| SendError::Connect(Box::new(e)))?;
            let _ = stream.set_nodelay(true);
            match &self.tls {
                None => handshake(stream, permit).await,
                Some(tls) => {
                    let name = tls
                        .name_for(self.authority.host())
                        .map_err(SendError::Connect)?;
                    let stream = tls
                        .connect(name, stream)
                        .await
                        .map_err(|e| SendError::Connect(Box::new(e)))?;
                    handshake(stream, permit).await
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Connect(
                format!("no connection within {:?}", self.connect_timeout).into(),
            )),
        }
    }

    fn pooled(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: http1::SendRequest<Body>,
    ) -> Response<Body> {
        if resp.body().is_end_stream() {
            self.checkin(sender);
            return resp.map(body::boxed);
        }
        resp.map(|inner| {
            body::boxed(PooledBody {
                inner: Some(inner),
                back: Some((self.clone(), sender)),
            })
        })
    }
}

/// HTTP/1.1 over `io`, whose connection task holds `permit`.
async fn handshake<I>(
    io: I,
    permit: OwnedSemaphorePermit,
) -> Result<http1::SendRequest<Body>, SendError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // One flattened write per message rather than writev: requests and
    // responses through a gateway are mostly small, where the kernel's
    // per-iovec work cost more than copying the body into the buffer.
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::Connect(Box::new(e)))?;
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(err) = conn.await {
            tracing::debug!(error = %err, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A response body that returns its connection to the pool at its end; if
/// dropped before, the rest is read in the background (bounded) and the
/// connection returned then, or closed.
struct PooledBody {
    inner: Option<Incoming>,
    back: Option<(Arc<TargetPool>, http1::SendRequest<Body>)>,
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                self.back = None;
                false
            }
            Poll::Pending => false,
        };
        if ended && let Some((pool, sender)) = self.back.take() {
            pool.checkin(sender);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let (Some(inner), Some((pool, sender))) = (self.inner.take(), self.back.take())
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if let Ok(Some(())) = tokio::time::timeout(DRAIN_TIMEOUT, drain(inner)).await {
                    pool.checkin(sender);
                }
            });
        }
    }
}
