//! Plugins' outbound HTTP (`pylon:plugin/http-client`) over the same
//! upstream pools the proxy uses: same targets, balancing and connection
//! reuse. Responses are buffered whole, bounded by [`MAX_OUTBOUND_BODY`].
//! Each call is a client span of the request being served (when the plugin
//! runs for one) and carries its `traceparent`, like the proxy's own call.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, header};

use super::{UpstreamError, Upstreams};
use crate::{
    body::{self, CollectError},
    plugin::{OutboundError, OutboundHttp},
    telemetry::{metrics::UpstreamErrorKind, observe, trace::TRACEPARENT},
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
        let call = observe::upstream_call(&Arc::from(upstream), None);
        let traceparent = call.traceparent();
        // What the span records: the response head's status, or why none came.
        let mut head = Err(UpstreamErrorKind::Timeout);
        let exchange = async {
            let (mut parts, bytes) = req.into_parts();
            super::headers::remove_hop_by_hop(&mut parts.headers);
            if let Some(tp) = traceparent {
                parts.headers.insert(TRACEPARENT, tp);
            }
            if !bytes.is_empty() {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            }
            let req = http::Request::from_parts(parts, body::full(bytes));
            let resp = self.forward(upstream, req, timeout, None).await;
            head = resp
                .as_ref()
                .map(|r| r.status().as_u16())
                .map_err(UpstreamError::kind);
            let resp = resp.map_err(|e| match e {
                UpstreamError::Unknown(upstream) => OutboundError::UnknownUpstream { upstream },
                UpstreamError::Timeout { upstream, .. } => OutboundError::Timeout { upstream },
                UpstreamError::InvalidRequest { detail, .. } => OutboundError::Invalid { detail },
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
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(OutboundError::Timeout {
                upstream: upstream.to_string(),
            }),
        };
        call.finish(head);
        result
    }
}
