//! HTTP/1.1 connections to one upstream target, kept alive and reused by
//! one worker thread.
//!
//! Requests go straight to hyper's connection-level client: the pool is a
//! stack of idle senders per target, so a request costs a pop, a send and a
//! push (hyper-util's general-purpose client spent about a fifth of the
//! proxy's instructions per request in its pool and dispatch). A connection
//! goes back to the pool only when its response body ended, so whatever is
//! idle can take the next request; one that the upstream closed while idle
//! is skipped, and a request that could not be written to it is retried
//! once on a new connection.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header, uri::Authority};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::SendError;
use crate::body::{self, Body};

/// How long a connection may sit idle before it is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections to one target.
pub(super) struct TargetPool {
    authority: Authority,
    host: HeaderValue,
    connect_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl TargetPool {
    pub(super) fn new(authority: Authority, connect_timeout: Duration, max_idle: usize) -> Self {
        let host = HeaderValue::from_str(authority.as_str())
            .expect("an authority is a valid header value");
        Self {
            authority,
            host,
            connect_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Send `req` (origin-form URI) and return the response with a body
    /// that gives the connection back when it ends.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(SendError::Failed("connection closed before use".into()));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(resp, sender)),
                Err(mut err) => match err.take_message() {
                    // Never written: the upstream had closed the idle
                    // connection. Another one gets the request.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Failed(Box::new(err.into_error()))),
                },
            }
        }
    }

    fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
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
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<http1::SendRequest<Body>, SendError> {
        let addr = self.authority.as_str();
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(SendError::Connect(Box::new(e))),
                Err(_) => {
                    return Err(SendError::Connect(
                        format!("no connection within {:?}", self.connect_timeout).into(),
                    ));
                }
            };
        let _ = stream.set_nodelay(true);
        // One flattened write per message rather than writev: requests and
        // responses through a gateway are mostly small, where the kernel's
        // per-iovec work cost more than copying the body into the buffer.
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "upstream connection ended with an error");
            }
        });
        Ok(sender)
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
                inner,
                back: Some((self.clone(), sender)),
            })
        })
    }
}

/// A response body that returns its connection to the pool at its end (and
/// lets it close if dropped before).
struct PooledBody {
    inner: Incoming,
    back: Option<(Arc<TargetPool>, http1::SendRequest<Body>)>,
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
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
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
