//! Plugins' outbound HTTP (`pylon:plugin/http-client`) over the same
//! upstream pools the proxy uses: same targets, balancing and connection
//! reuse. Responses are buffered whole, bounded by [`MAX_OUTBOUND_BODY`].

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, header};

use super::{UpstreamError, Upstreams};
use crate::{
    body::{self, CollectError},
    plugin::{OutboundError, OutboundHttp},
};

/// The largest response body a plugin's outbound request may receive.
pub const MAX_OUTBOUND_BODY: usize = 16 << 20;

/// Used when the plugin gives no timeout (its own deadline still applies).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[async_trait]
impl OutboundHttp for Upstreams {
    async fn send(
        &self,
        upstream: &str,
        req: http::Request<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<http::Response<Bytes>, OutboundError> {
        let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
        let exchange = async {
            let (mut parts, bytes) = req.into_parts();
            super::headers::remove_hop_by_hop(&mut parts.headers);
            if !bytes.is_empty() {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            }
            let req = http::Request::from_parts(parts, body::full(bytes));
            let resp = self
                .forward(upstream, req, timeout)
                .await
                .map_err(|e| match e {
                    UpstreamError::Unknown(upstream) => OutboundError::UnknownUpstream { upstream },
                    UpstreamError::Timeout { upstream, .. } => OutboundError::Timeout { upstream },
                    UpstreamError::InvalidRequest { detail, .. } => {
                        OutboundError::Invalid { detail }
                    }
                    other => OutboundError::Failed {
                        upstream: upstream.to_string(),
                        source: Box::new(other),
                    },
                })?;
            let (mut parts, incoming) = resp.into_parts();
            super::headers::remove_hop_by_hop(&mut parts.headers);
            let bytes = body::collect_limited(incoming, MAX_OUTBOUND_BODY)
                .await
                .map_err(|e| match e {
                    CollectError::TooLarge { .. } | CollectError::Read(_) => {
                        OutboundError::Failed {
                            upstream: upstream.to_string(),
                            source: Box::new(e),
                        }
                    }
                })?;
            Ok(http::Response::from_parts(parts, bytes))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(OutboundError::Timeout {
                upstream: upstream.to_string(),
            }),
        }
    }
}
