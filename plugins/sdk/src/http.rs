//! Outbound HTTP to the gateway's named upstreams (`pylon:plugin/http-client`).
//!
//! Only upstreams granted to the plugin can be reached; others answer
//! [`HttpError::Denied`]. The plugin's own deadline still bounds every call.

use crate::bindings::pylon::plugin::http_client as imp;
use crate::{Header, Response};

pub use imp::{HttpError, OutboundRequest};

impl OutboundRequest {
    /// A request with `method` to `upstream` at `path_and_query`, no headers,
    /// no body and no timeout of its own.
    pub fn new(
        method: impl Into<String>,
        upstream: impl Into<String>,
        path_and_query: impl Into<String>,
    ) -> Self {
        OutboundRequest {
            upstream: upstream.into(),
            method: method.into(),
            path_and_query: path_and_query.into(),
            headers: Vec::new(),
            body: None,
            timeout_ms: None,
        }
    }

    /// A `GET` request.
    pub fn get(upstream: impl Into<String>, path_and_query: impl Into<String>) -> Self {
        Self::new("GET", upstream, path_and_query)
    }

    /// A `POST` request with `body`.
    pub fn post(
        upstream: impl Into<String>,
        path_and_query: impl Into<String>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        Self::new("POST", upstream, path_and_query).with_body(body)
    }

    /// Append a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }

    /// Set the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Give up after `ms` milliseconds.
    pub fn with_timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }
}

/// Send one request and wait for the whole response.
pub fn send(request: &OutboundRequest) -> Result<Response, HttpError> {
    imp::send(request)
}

/// Send every request at once (the host runs them concurrently) and wait for
/// all answers, in the order of `requests`.
pub fn send_all(requests: &[OutboundRequest]) -> Vec<Result<Response, HttpError>> {
    imp::send_all(requests)
}
