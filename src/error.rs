//! The one place where request-path errors become HTTP statuses, and where
//! they are logged (once).
//!
//! Classified by source: client → 4xx (a request body that fails to
//! arrive → 400, one that stops arriving → 408, even when it failed while
//! streaming upstream), plugin failure → 500 (fail-closed; fail-open never
//! gets here), upstream refused or reset → 502, upstream timeout → 504,
//! every connection to the target busy and no queue room → 503. Bodies are small JSON objects that name no internals.
//!
//! Failures a client or an upstream can repeat at will are logged through a
//! [`LogThrottle`] per class (at most [`LOG_LINES_PER_SECOND`] lines a
//! second each, then a count of what was held back); the metrics count
//! every one.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::{
    body::{self, Body},
    pipeline::PluginError,
    telemetry::throttle::LogThrottle,
    upstream::UpstreamError,
};

pub use crate::chain::ErrorChain;

/// WARN lines per second per class of failed request; the rest are counted
/// and summed up in one line.
pub const LOG_LINES_PER_SECOND: u32 = 10;

const SECOND: Duration = Duration::from_secs(1);
static UPSTREAM_FAILED: LogThrottle =
    LogThrottle::new("request failed (upstream)", LOG_LINES_PER_SECOND, SECOND);
static PLUGIN_FAILED: LogThrottle =
    LogThrottle::new("request failed (plugin)", LOG_LINES_PER_SECOND, SECOND);
static CLIENT_FAILED: LogThrottle =
    LogThrottle::new("request failed (client)", LOG_LINES_PER_SECOND, SECOND);
static OTHER_FAILED: LogThrottle = LogThrottle::new("request failed", LOG_LINES_PER_SECOND, SECOND);

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches.
    #[error("no route matches")]
    NoRoute,
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request body is larger than the route's `max-request-body`, or
    /// than a plugin on the route buffers.
    #[error("request body exceeds the {limit}-byte limit of route `{route}`")]
    RequestBodyTooLarge {
        /// The route.
        route: String,
        /// The limit.
        limit: usize,
    },
    /// The client's body went idle for the route's `request-body-timeout`.
    #[error("request body idle for {timeout:?} on route `{route}`")]
    RequestBodyTimeout {
        /// The route.
        route: String,
        /// The idle timeout that passed.
        timeout: std::time::Duration,
    },
    /// The client failed while sending the body (bad framing, cut short,
    /// reset): a client error, whatever the upstream it was streaming to.
    #[error("request body could not be read on route `{route}`")]
    RequestBodyRead {
        /// The route.
        route: String,
        /// The read error.
        #[source]
        source: body::BoxError,
    },
    /// A fail-closed plugin failed.
    #[error("route `{route}`")]
    Plugin {
        /// The route.
        route: String,
        /// The plugin's failure.
        #[source]
        source: PluginError,
    },
    /// A plugin rewrote the path to one that cannot be normalised.
    #[error("route `{route}`: a plugin rewrote the path to an invalid one")]
    RewrittenPath {
        /// The route.
        route: String,
        /// Why the path was refused.
        #[source]
        source: crate::router::path::PathError,
    },
    /// The route has no upstream and no plugin answered.
    #[error("route `{route}` has no upstream and no plugin answered")]
    NoUpstream {
        /// The route.
        route: String,
    },
    /// The upstream failed.
    #[error("route `{route}`")]
    Upstream {
        /// The route.
        route: String,
        /// What failed.
        #[source]
        source: UpstreamError,
    },
}

impl ProxyError {
    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) | ProxyError::RequestBodyRead { .. } => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::RequestBodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RequestBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Plugin { source, .. } => match source {
                PluginError::Instantiate { .. } | PluginError::Busy { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ProxyError::RewrittenPath { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::NoUpstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Upstream { source, .. } => match source {
                UpstreamError::Timeout { .. } | UpstreamError::BodyTimeout { .. } => {
                    StatusCode::GATEWAY_TIMEOUT
                }
                UpstreamError::Overflow { .. } | UpstreamError::Shed { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                UpstreamError::Connect { .. }
                | UpstreamError::Failed { .. }
                | UpstreamError::Unknown(_) => StatusCode::BAD_GATEWAY,
                UpstreamError::InvalidRequest { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    fn public_message(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route matches the request",
            ProxyError::BadRequest(m) => m,
            ProxyError::RequestBodyRead { .. } => "the request body could not be read",
            ProxyError::RequestBodyTooLarge { .. } => "request body too large",
            ProxyError::RequestBodyTimeout { .. } => "the request body stopped arriving",
            ProxyError::Plugin { .. } => "a policy on this route failed",
            ProxyError::RewrittenPath { .. } => "the request could not be forwarded",
            ProxyError::NoUpstream { .. } => "no upstream for this route",
            ProxyError::Upstream { source, .. } => match source {
                UpstreamError::Timeout { .. } | UpstreamError::BodyTimeout { .. } => {
                    "upstream timed out"
                }
                UpstreamError::Overflow { .. } | UpstreamError::Shed { .. } => "upstream busy",
                UpstreamError::InvalidRequest { .. } => "the request could not be forwarded",
                _ => "upstream unavailable",
            },
        }
    }

    /// Log the error (once, here) and turn it into the client's response:
    /// for a gRPC request (`grpc`), HTTP 200 with the gRPC status of
    /// [`grpc_status`] in a trailers-only response.
    pub fn into_response_for(self, grpc: bool) -> Response<Body> {
        if !grpc {
            return self.into_response();
        }
        let status = self.status();
        self.log();
        grpc_response(grpc_status(status), self.public_message())
    }

    /// Log the error (once, here) and turn it into the client's response.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        self.log();
        let shed = match &self {
            ProxyError::Upstream { source, .. } => source.shed_reason(),
            _ => None,
        };
        let mut resp = error_response(status, self.public_message());
        if let Some(reason) = shed {
            resp.headers_mut()
                .insert(SHED_HEADER, HeaderValue::from_static(reason));
        }
        resp
    }

    fn log(&self) {
        let status = self.status();
        match self.log_throttle() {
            None => {
                tracing::debug!(status = status.as_u16(), error = %ErrorChain(self), "request rejected")
            }
            Some(throttle) => {
                if throttle.admit() {
                    tracing::warn!(status = status.as_u16(), error = %ErrorChain(self), "request failed")
                }
            }
        }
    }

    /// The throttle of this error's WARN line, or `None` for errors that
    /// are only worth a DEBUG line (the request was simply refused).
    fn log_throttle(&self) -> Option<&'static LogThrottle> {
        match self {
            // A failed client body was logged (throttled) where it failed,
            // with the route's counter.
            ProxyError::NoRoute
            | ProxyError::BadRequest(_)
            | ProxyError::RequestBodyRead { .. }
            | ProxyError::RequestBodyTimeout { .. } => None,
            ProxyError::RequestBodyTooLarge { .. } => Some(&CLIENT_FAILED),
            ProxyError::Plugin { .. } | ProxyError::RewrittenPath { .. } => Some(&PLUGIN_FAILED),
            ProxyError::Upstream { .. } => Some(&UPSTREAM_FAILED),
            ProxyError::NoUpstream { .. } => Some(&OTHER_FAILED),
        }
    }
}

/// The gRPC status code for an answer pylon gives with HTTP `status`: the
/// gRPC spec's HTTP-to-gRPC mapping (401 → UNAUTHENTICATED 16, 403 →
/// PERMISSION_DENIED 7, 404 → UNIMPLEMENTED 12, 429, 502 and 503 →
/// UNAVAILABLE 14), except that a timeout (408, 504) is DEADLINE_EXCEEDED
/// 4 as Envoy answers it, a body too large is RESOURCE_EXHAUSTED 8, other
/// 4xx are INVALID_ARGUMENT 3 and other 5xx INTERNAL 13.
pub fn grpc_status(status: StatusCode) -> u32 {
    match status.as_u16() {
        200..=299 => 0,
        401 => 16,
        403 => 7,
        404 => 12,
        408 | 504 => 4,
        413 => 8,
        429 | 502 | 503 => 14,
        400..=499 => 3,
        _ => 13,
    }
}

/// A gRPC trailers-only response: HTTP 200, `content-type:
/// application/grpc`, `grpc-status` and the percent-encoded
/// `grpc-message` in the one header block, no body.
pub fn grpc_response(code: u32, message: &str) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    resp
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as
/// `%XX` (the gRPC HTTP/2 protocol spec).
pub fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Names the limit that shed a request pylon answered 503 at once
/// (`max-requests`, `max-pending`, `queue-timeout`), as Envoy's
/// `x-envoy-overloaded` does.
pub const SHED_HEADER: &str = "x-pylon-shed";

/// A small JSON error response: `{"error": "...", "status": N}`.
pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    error_response_json(status, message)
}

/// [`error_response`], or for a gRPC request (`grpc`) the trailers-only
/// gRPC answer with the status [`grpc_status`] maps `status` to: what the
/// server itself answers (too many requests in flight, a stream idle
/// timeout) reaches a gRPC client as a gRPC status, not an HTTP error its
/// library can only guess at.
pub fn error_response_for(grpc: bool, status: StatusCode, message: &str) -> Response<Body> {
    if grpc {
        grpc_response(grpc_status(status), message)
    } else {
        error_response_json(status, message)
    }
}

fn error_response_json(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message, "status": status.as_u16() }).to_string();
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
