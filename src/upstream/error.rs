//! How an upstream call fails: [`UpstreamError`] (what the proxy maps to
//! a status, counts and logs), [`AttemptError`] (one attempt's failure,
//! with the request back when none of it left) and the transports' own
//! [`SendError`]. Mapping to statuses is [`crate::error`]'s.

use std::time::Duration;

use http::Request;

use super::target::Outcome;
use crate::{
    body::{Body, BoxError},
    telemetry::metrics::UpstreamErrorKind,
};

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No upstream has that name.
    #[error("no upstream named `{0}`")]
    Unknown(String),
    /// The target refused or could not be reached in time.
    #[error("upstream `{upstream}` ({target}) could not be reached")]
    Connect {
        /// Upstream name.
        upstream: String,
        /// The target tried.
        target: String,
        /// The connect error.
        #[source]
        source: BoxError,
    },
    /// The connection failed after it was made (reset, protocol error).
    #[error("upstream `{upstream}` ({target}) failed")]
    Failed {
        /// Upstream name.
        upstream: String,
        /// The target tried.
        target: String,
        /// The error.
        #[source]
        source: BoxError,
    },
    /// No response head within the route's timeout (or the upstream
    /// stopped taking the request body for the request-body timeout).
    #[error("upstream `{upstream}` did not answer within {timeout:?}")]
    Timeout {
        /// Upstream name.
        upstream: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The response body stalled for the route's response-body timeout.
    #[error("upstream `{upstream}` response body idle for {timeout:?}")]
    BodyTimeout {
        /// Upstream name.
        upstream: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// Every connection the target may have (`max-connections`) was busy
    /// and the request could not wait for one.
    #[error("upstream `{upstream}` ({target}) is busy: {reason}")]
    Overflow {
        /// Upstream name.
        upstream: String,
        /// The target tried.
        target: String,
        /// Queue full, or waited past `queue-timeout`.
        reason: &'static str,
    },
    /// Load shed before a target was tried: the upstream's `max-requests`
    /// are in flight.
    #[error("upstream `{upstream}` shed the request: {reason}")]
    Shed {
        /// Upstream name.
        upstream: String,
        /// The limit reached, as the `x-pylon-shed` header names it.
        reason: &'static str,
    },
    /// The request could not be formed (bad path from a plugin, ...).
    #[error("invalid request for upstream `{upstream}`: {detail}")]
    InvalidRequest {
        /// Upstream name.
        upstream: String,
        /// What was wrong.
        detail: String,
    },
}

impl UpstreamError {
    /// The class recorded in metrics and spans.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Timeout { .. } | UpstreamError::BodyTimeout { .. } => {
                UpstreamErrorKind::Timeout
            }
            UpstreamError::Connect { .. } => UpstreamErrorKind::Connect,
            UpstreamError::Overflow { .. } | UpstreamError::Shed { .. } => {
                UpstreamErrorKind::Overflow
            }
            _ => UpstreamErrorKind::Failed,
        }
    }

    /// For load pylon shed itself (503): the limit that shed it, the value
    /// of the response's `x-pylon-shed` header.
    pub fn shed_reason(&self) -> Option<&'static str> {
        match self {
            UpstreamError::Shed { reason, .. } => Some(reason),
            UpstreamError::Overflow { reason, .. } => Some(if reason.contains("queue-timeout") {
                "queue-timeout"
            } else {
                "max-pending"
            }),
            _ => None,
        }
    }

    /// What a failed attempt tells about its target.
    pub fn outcome(&self) -> Outcome {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::Failed { .. }
            | UpstreamError::Timeout { .. } => Outcome::Failure,
            _ => Outcome::Neutral,
        }
    }
}

/// An attempt that got no response head; `unsent` is the request back
/// when none of it was written, so it may go elsewhere whatever it is.
#[derive(Debug)]
pub struct AttemptError {
    /// Why.
    pub error: UpstreamError,
    /// The request, untouched, when it never left.
    pub unsent: Option<Request<Body>>,
}

/// Why a transport got no response head (mapped to [`UpstreamError`] with
/// the upstream's name in [`super::Upstreams::forward`]).
#[derive(Debug)]
pub(super) enum SendError {
    /// No connection could be made (refused, unreachable, timed out).
    Connect(BoxError),
    /// The connection failed while the request was sent or answered.
    Failed(BoxError),
    /// No connection free and no room or time to wait for one.
    Overflow(&'static str),
}
