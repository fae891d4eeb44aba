//! The request/response model plugins see and the edits they return.
//!
//! These mirror the WIT contract's `types` interface with validated `http`
//! types (header names and values are checked once, at the boundary).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::{body::BoxError, tls::ClientIdentity};

/// What a plugin asked of the host when it accepted its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// Call the request phase at all.
    pub request_phase: bool,
    /// Buffer the request body (bounded) and pass it to the request phase.
    pub request_body: bool,
    /// Call the response phase at all.
    pub response_phase: bool,
    /// Buffer the response body (bounded) and pass it to the response phase.
    pub response_body: bool,
}

impl Default for Needs {
    /// The request phase only, without bodies.
    fn default() -> Self {
        Needs {
            request_phase: true,
            request_body: false,
            response_phase: false,
            response_body: false,
        }
    }
}

impl Needs {
    /// The union of two sets of needs.
    pub fn union(self, other: Needs) -> Needs {
        Needs {
            request_phase: self.request_phase || other.request_phase,
            request_body: self.request_body || other.request_body,
            response_phase: self.response_phase || other.response_phase,
            response_body: self.response_body || other.response_body,
        }
    }
}

/// Header edits a plugin declared once, at configure, for every request:
/// the host applies them at the plugin's place in the pipeline without
/// calling it (see `needs.fixed-*-headers` in the contract).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FixedEdits {
    /// Applied to the request before the plugin's request phase.
    pub request: Vec<HeaderOp>,
    /// Applied to the response before the plugin's response phase.
    pub response: Vec<HeaderOp>,
}

static NO_FIXED_EDITS: FixedEdits = FixedEdits {
    request: Vec::new(),
    response: Vec::new(),
};

impl FixedEdits {
    /// No edits (what a plugin that declares none has).
    pub fn none() -> &'static FixedEdits {
        &NO_FIXED_EDITS
    }
}

/// The request as plugins see it; edits of earlier plugins are applied
/// before later plugins see it.
#[derive(Debug, Clone)]
pub struct PluginRequest {
    /// The matched route's id.
    pub route: Arc<str>,
    /// The request method.
    pub method: Method,
    /// The path, without the query, as it will be sent upstream so far.
    pub path: String,
    /// The raw query without `?`.
    pub query: Option<String>,
    /// All headers; repeated names keep every value.
    pub headers: HeaderMap,
    /// The client's address.
    pub client_addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The verified client certificate of the connection (mTLS), shared
    /// by every request of that connection.
    pub client_identity: Option<Arc<ClientIdentity>>,
    /// Named parameters captured by the route's path pattern.
    pub params: Vec<(String, String)>,
    /// The buffered body, when a plugin on the route asked for it.
    pub body: Option<Bytes>,
}

/// A response produced by a plugin or received from the upstream.
#[derive(Debug, Clone)]
pub struct PluginResponse {
    /// The status code.
    pub status: StatusCode,
    /// All headers.
    pub headers: HeaderMap,
    /// The body when buffered (always for plugin-made responses).
    pub body: Option<Bytes>,
}

impl PluginResponse {
    /// A response with a status and no headers or body.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: None,
        }
    }
}

/// Header entries a request or response may reach through plugin edits:
/// an edit list that would take it past this fails its plugin (see
/// [`HeaderOp::fit`]). Each list is capped lower (1,000 entries) when the
/// plugin returns it, and clients and upstreams send at most 100.
pub const MAX_MESSAGE_HEADERS: usize = 2_000;

/// Applying header edits would take a message past [`MAX_MESSAGE_HEADERS`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("header edits would take the message to {would_have} header entries, over the cap of {max}", max = MAX_MESSAGE_HEADERS)]
pub struct HeaderLimit {
    /// The entries the message could have after the edits.
    pub would_have: usize,
}

/// One header edit; edits apply in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Replace every value of the name with this one.
    Set(HeaderName, HeaderValue),
    /// Add a value and keep the others.
    Append(HeaderName, HeaderValue),
    /// Remove every value of the name.
    Remove(HeaderName),
}

impl HeaderOp {
    /// Check that `ops` applied to `headers` cannot take it past
    /// [`MAX_MESSAGE_HEADERS`] (each set or append adds at most one entry),
    /// before any is applied: a list that does not fit is refused whole.
    pub fn fit(headers: &HeaderMap, ops: &[HeaderOp]) -> Result<(), HeaderLimit> {
        let growth = ops
            .iter()
            .filter(|op| !matches!(op, HeaderOp::Remove(_)))
            .count();
        let would_have = headers.len().saturating_add(growth);
        if would_have > MAX_MESSAGE_HEADERS {
            return Err(HeaderLimit { would_have });
        }
        Ok(())
    }

    /// Apply this edit to a header map. Refused (the map unchanged) only
    /// past `http`'s own entry limit, which [`HeaderOp::fit`] keeps far off.
    pub fn apply(&self, headers: &mut HeaderMap) -> Result<(), HeaderLimit> {
        let len = headers_len_plus_one(headers);
        match self {
            HeaderOp::Set(n, v) => headers.try_insert(n.clone(), v.clone()).map(drop),
            HeaderOp::Append(n, v) => headers.try_append(n.clone(), v.clone()).map(drop),
            HeaderOp::Remove(n) => {
                headers.remove(n);
                Ok(())
            }
        }
        .map_err(|_| HeaderLimit { would_have: len })
    }

    /// Apply this edit, moving its name and value into the map (a per-request
    /// edit is used once; cloning a freshly made value can allocate).
    pub fn apply_owned(self, headers: &mut HeaderMap) -> Result<(), HeaderLimit> {
        let len = headers_len_plus_one(headers);
        match self {
            HeaderOp::Set(n, v) => headers.try_insert(n, v).map(drop),
            HeaderOp::Append(n, v) => headers.try_append(n, v).map(drop),
            HeaderOp::Remove(n) => {
                headers.remove(&n);
                Ok(())
            }
        }
        .map_err(|_| HeaderLimit { would_have: len })
    }
}

fn headers_len_plus_one(headers: &HeaderMap) -> usize {
    headers.len().saturating_add(1)
}

/// Changes to a request that continues.
#[derive(Debug, Clone, Default)]
pub struct RequestEdits {
    /// Header edits, in order.
    pub headers: Vec<HeaderOp>,
    /// A new path (without query).
    pub path: Option<String>,
    /// A new query; empty removes it.
    pub query: Option<String>,
    /// Send to this named upstream instead of the route's.
    pub upstream: Option<String>,
    /// A new body (honoured only for plugins that asked for the body).
    pub body: Option<Bytes>,
    /// Edits for the response, applied where this plugin's response phase
    /// would run.
    pub response_headers: Vec<HeaderOp>,
}

/// The request phase's decision.
#[derive(Debug, Clone)]
pub enum RequestAction {
    /// Go on with these edits.
    Continue(RequestEdits),
    /// Answer now; the upstream and later plugins are skipped.
    Respond(PluginResponse),
}

/// Changes to a response on its way back.
#[derive(Debug, Clone, Default)]
pub struct ResponseEdits {
    /// A new status.
    pub status: Option<StatusCode>,
    /// Header edits, in order.
    pub headers: Vec<HeaderOp>,
    /// A new body (honoured only for plugins that asked for the body).
    pub body: Option<Bytes>,
}

/// Why a plugin call failed. Every variant names the plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The call ran past the plugin's deadline (epoch interruption).
    #[error("plugin `{plugin}` exceeded its deadline of {deadline:?}")]
    Deadline {
        /// The plugin id.
        plugin: Arc<str>,
        /// The configured deadline.
        deadline: Duration,
    },
    /// The instance tried to grow memory past its cap.
    #[error("plugin `{plugin}` exceeded its memory cap of {limit_bytes} bytes")]
    Memory {
        /// The plugin id.
        plugin: Arc<str>,
        /// The cap.
        limit_bytes: usize,
    },
    /// The guest trapped (panic, unreachable, out-of-bounds, ...).
    #[error("plugin `{plugin}` trapped")]
    Trap {
        /// The plugin id.
        plugin: Arc<str>,
        /// The trap with its backtrace.
        #[source]
        source: BoxError,
    },
    /// No instance could be created (pool exhausted, instantiation trap).
    #[error("plugin `{plugin}` could not be instantiated")]
    Instantiate {
        /// The plugin id.
        plugin: Arc<str>,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// Every call the plugin may run at once (`max-concurrency`) was in
    /// progress for as long as its deadline: the request was not served.
    #[error("plugin `{plugin}` is at its max-concurrency of {max_concurrency} calls")]
    Busy {
        /// The plugin id.
        plugin: Arc<str>,
        /// The configured bound.
        max_concurrency: usize,
    },
    /// The plugin returned something the host cannot apply.
    #[error("plugin `{plugin}` returned an invalid {what}: {detail}")]
    InvalidOutput {
        /// The plugin id.
        plugin: Arc<str>,
        /// Which part of the output.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}

impl PluginError {
    /// The id of the plugin that failed.
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Deadline { plugin, .. }
            | PluginError::Memory { plugin, .. }
            | PluginError::Trap { plugin, .. }
            | PluginError::Instantiate { plugin, .. }
            | PluginError::Busy { plugin, .. }
            | PluginError::InvalidOutput { plugin, .. } => plugin,
        }
    }
}
