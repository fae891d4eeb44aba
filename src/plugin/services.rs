//! The services plugins' host capabilities are backed by, given to the
//! plugin loader by the gateway (or by a test): the kv store and the
//! transport for outbound HTTP. The capabilities themselves are `host`.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;

use crate::kv::KvStore;

/// The services the host capabilities use, shared by all plugins.
#[derive(Clone)]
pub struct HostServices {
    /// Backs `pylon:plugin/kv` (keys are namespaced per plugin).
    pub kv: Arc<dyn KvStore>,
    /// Backs `pylon:plugin/http-client`.
    pub http: Arc<dyn OutboundHttp>,
    /// Backs `pylon:plugin/clock.now-ms`.
    pub clock: WallClock,
}

/// The wall clock plugins read (`pylon:plugin/clock.now-ms`); the
/// monotonic clock is always the system's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WallClock {
    /// The system clock: what the gateway uses.
    #[default]
    System,
    /// Always this many milliseconds since the Unix epoch: `pylon plugin
    /// test` cases that check time windows (a signature's age, an expiry).
    Fixed(u64),
}

/// Sends plugins' outbound requests to named upstreams.
///
/// `req`'s URI holds only the path and query (`/users/7?full=1`); the
/// implementation picks a target of `upstream` and sets scheme, authority
/// and `host` itself. It must not block the thread.
#[async_trait]
pub trait OutboundHttp: Send + Sync + 'static {
    /// Send `req` to `upstream` and return the whole response. With a
    /// `timeout`, give up after it with [`OutboundError::Timeout`].
    async fn send(
        &self,
        upstream: &str,
        req: http::Request<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<http::Response<Bytes>, OutboundError>;
}

/// Why an outbound request failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// No upstream has this name.
    #[error("no upstream named `{upstream}`")]
    UnknownUpstream {
        /// The name asked for.
        upstream: String,
    },
    /// The timeout passed before the whole response arrived.
    #[error("request to upstream `{upstream}` timed out")]
    Timeout {
        /// The upstream.
        upstream: String,
    },
    /// Connection refused or reset, protocol error, body too large, ...
    #[error("request to upstream `{upstream}` failed")]
    Failed {
        /// The upstream.
        upstream: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request cannot be sent as it is.
    #[error("invalid outbound request: {detail}")]
    Invalid {
        /// What is wrong with it.
        detail: String,
    },
}
