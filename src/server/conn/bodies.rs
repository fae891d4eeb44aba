//! The body wrappers of each request: [`ActivityBody`] around the request
//! body and [`ResponseBody`] around the response, noting when bytes move
//! and ending a response once the stream idle timeout has passed.

use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::state::{NONE, StreamGuard, StreamSlot, millis};
use crate::body::{Body, BoxError};

/// A request body that notes when its bytes arrive and when it ends.
pub(in crate::server) struct ActivityBody<B> {
    inner: B,
    slot: Arc<StreamSlot>,
}

impl<B> ActivityBody<B> {
    /// Watch `inner` for the request in `slot`.
    pub(in crate::server) fn new(inner: B, slot: Arc<StreamSlot>) -> Self {
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
pub(in crate::server) struct StreamIdleTimeout;

/// A response body that holds its request's [`StreamGuard`] until it has
/// been sent, notes when its bytes go out and when the connection does not
/// come back for more, and ends with an error (a reset stream) once the
/// stream idle timeout has passed.
pub(in crate::server) struct ResponseBody {
    inner: Body,
    guard: Option<StreamGuard>,
}

impl ResponseBody {
    /// `inner`, answering the request `guard` holds (`None`: a request
    /// refused before it was admitted).
    pub(in crate::server) fn new(inner: Body, guard: Option<StreamGuard>) -> Self {
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
