//! What a request's retries need (see [`super::forward`] for when a
//! request is retried): what can be sent again (the head and the body held
//! whole), why an attempt went again (the `reason` of
//! `pylon_upstream_retries`), and how long to wait before it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, Version};

use crate::{
    body::{self, Body},
    upstream::policy::RetryPolicy,
};

/// The request head every attempt sends.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    fn request(&self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Why an attempt is retried, for `pylon_upstream_retries{reason}`.
pub(super) enum Retry {
    /// Nothing was sent (no connection, or one closed before use).
    Connect,
    /// The connection failed before the response head.
    Reset,
    /// A retried status.
    Status,
}

impl Retry {
    pub(super) fn label(&self) -> &'static str {
        match self {
            Retry::Connect => "connect",
            Retry::Reset => "reset",
            Retry::Status => "status",
        }
    }
}

/// What the attempts of one request can send again: the head and the
/// whole body, kept only when a retry could use them.
pub(super) struct Resend {
    head: Option<Head>,
    replay: Option<Bytes>,
    /// Whether a request that reached the upstream may go again (an
    /// idempotent method, or the route allows any).
    pub(super) safe_method: bool,
}

impl Resend {
    /// What a request with head `parts` and, when held whole, body bytes
    /// `replay` can send again under `policy`.
    pub(super) fn new(
        policy: &RetryPolicy,
        parts: &http::request::Parts,
        replay: Option<Bytes>,
    ) -> Self {
        Resend {
            safe_method: policy.non_idempotent || is_idempotent(&parts.method),
            // The head is kept for a resend only when a whole body could go again.
            head: (policy.retries > 0 && replay.is_some()).then(|| Head {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                version: parts.version,
                headers: parts.headers.clone(),
            }),
            replay,
        }
    }

    /// The request again, when it can be resent.
    pub(super) fn request(&self) -> Option<Request<Body>> {
        match (&self.head, &self.replay) {
            (Some(head), Some(bytes)) => Some(head.request(body::full(bytes.clone()))),
            _ => None,
        }
    }
}

/// Full jitter: a random time up to `backoff × 2^(n-1)`, capped, before
/// the n-th retry (AWS's "exponential backoff and jitter", Envoy's).
pub(super) fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    let ceiling = policy
        .backoff
        .saturating_mul(1u32 << (n.saturating_sub(1)).min(20))
        .min(policy.max_backoff);
    ceiling.mul_f64(fastrand::f64())
}

/// RFC 9110 §9.2.2: a method whose repetition has the effect of one.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
