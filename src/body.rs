//! The body type used on both sides of the proxy, and bounded buffering.
//!
//! Bodies stream as `BoxBody` unless a plugin asked for them; then they are
//! collected up to a limit and never beyond it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response pylon sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
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

/// Buffer a body, failing once it exceeds `limit` bytes.
pub async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, CollectError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.is::<http_body_util::LengthLimitError>() {
                Err(CollectError::TooLarge { limit })
            } else {
                Err(CollectError::Read(e))
            }
        }
    }
}
