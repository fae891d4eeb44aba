//! The body type used on both sides of the proxy, and bounded buffering.
//!
//! Bodies stream as `BoxBody` unless a plugin asked for them; then they are
//! collected up to a limit and never beyond it.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody, combinators::BoxBody};

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
