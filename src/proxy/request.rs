//! Phase 2, the request phase: buffer the client's body when a plugin on
//! the route asked for it (bounded by the route's limit), run the
//! pipeline's request phase, and turn what the plugins left into the
//! request that goes upstream (a rewritten path normalised like a
//! client's, one normal form whoever wrote it).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, header};

use super::{
    ConnInfo,
    forward::Outbound,
    route::{Routed, client_read_error, path_and_query, rewritten_path},
};
use crate::{
    body::{self, Body, CollectError, RequestBodyState},
    error::ProxyError,
    generation::{Generation, LiveRoute},
    pipeline::{PluginRequest, RequestOutcome, Sessions},
};

/// The request as the plugins see it, kept for the response phase.
pub(super) struct Exchange<'rt> {
    pub(super) route: &'rt LiveRoute,
    pub(super) preq: PluginRequest,
    pub(super) is_head: bool,
}

/// What is left of the client's request once the plugins have it: the
/// pieces [`Onward::outbound`] sends on.
pub(super) struct Onward {
    /// The head without its headers (the plugins hold those).
    parts: http::request::Parts,
    host: Option<HeaderValue>,
    /// The normalised client path when normalising changed it (else the
    /// request's own path is normal), to see whether a plugin rewrote it.
    normalized: Option<String>,
    upstream_path: String,
    /// The client's stream; `None` once buffered for the plugins.
    body: Option<Body>,
    body_state: Arc<RequestBodyState>,
}

/// Buffer the body if asked, then run the request phase.
pub(super) async fn request_phase<'rt>(
    routed: Routed<'rt>,
    conn: &ConnInfo,
    sessions: &mut Sessions,
) -> Result<(Exchange<'rt>, Onward, RequestOutcome), ProxyError> {
    let path = routed.path().to_owned();
    let Routed {
        route,
        mut parts,
        host,
        normalized,
        params,
        upstream_path,
        body,
        body_state,
    } = routed;
    // A gRPC call's body is a stream that may never end while the call
    // waits on answers: never buffered (see `super::grpc`).
    let buffer_it = route.pipeline.needs().request_body && !super::grpc::is_grpc(&parts.headers);
    let (buffered, body) = if buffer_it {
        (Some(buffer(route, body, &body_state).await?), None)
    } else {
        (None, Some(body))
    };
    let mut headers = std::mem::take(&mut parts.headers);
    // HTTP/2 carries the host in the URI; plugins always see a `host` header.
    if !headers.contains_key(header::HOST)
        && let Some(h) = &host
    {
        headers.insert(header::HOST, h.clone());
    }
    let mut preq = PluginRequest {
        route: route.id.clone(),
        method: parts.method.clone(),
        path,
        query: parts.uri.query().map(str::to_owned),
        headers,
        client_addr: conn.client,
        scheme: conn.scheme,
        client_identity: conn.identity.clone(),
        params,
        body: buffered,
    };
    let outcome = route
        .pipeline
        .on_request(&mut preq, sessions)
        .await
        .map_err(|source| ProxyError::Plugin {
            route: route.id.to_string(),
            source,
        })?;
    let exchange = Exchange {
        route,
        preq,
        is_head: parts.method == http::Method::HEAD,
    };
    let onward = Onward {
        parts,
        host,
        normalized,
        upstream_path,
        body,
        body_state,
    };
    Ok((exchange, onward, outcome))
}

/// The client's whole body, within the route's limit.
async fn buffer(
    route: &LiveRoute,
    body: Body,
    state: &RequestBodyState,
) -> Result<Bytes, ProxyError> {
    match body::collect_limited(body, route.request_body_limit).await {
        Ok(b) => Ok(b),
        Err(CollectError::TooLarge { limit }) => Err(ProxyError::RequestBodyTooLarge {
            route: route.id.to_string(),
            limit,
        }),
        Err(CollectError::Read(source)) => Err(client_read_error(route, state, source)),
    }
}

impl Onward {
    /// The upstream request from what the plugins left in `exchange`, to
    /// `upstream` (a plugin's choice) or the route's.
    pub(super) fn outbound<'a, 'rt: 'a>(
        mut self,
        rt: &Generation,
        exchange: &mut Exchange<'rt>,
        upstream: Option<&'a str>,
        sessions: &Sessions,
        conn: &'a ConnInfo,
    ) -> Result<Outbound<'a>, ProxyError> {
        let route = exchange.route;
        let preq = &mut exchange.preq;
        let client_path = self.normalized.as_deref().unwrap_or(self.parts.uri.path());
        let path = if preq.path != client_path {
            rewritten_path(&preq.path, &rt.config().path_normalization).map_err(|source| {
                ProxyError::RewrittenPath {
                    route: route.id.to_string(),
                    source,
                }
            })?
        } else {
            self.upstream_path
        };
        // A response-phase call sees the request as sent; without one (no
        // plugin left, or only header edits to apply on the way back) the
        // headers can move instead of being copied.
        self.parts.headers = if sessions.calls_response_phase() {
            preq.headers.clone()
        } else {
            std::mem::take(&mut preq.headers)
        };
        self.parts.method = preq.method.clone();
        let (body, body_state) = match &preq.body {
            Some(b) => {
                self.parts.headers.remove(header::CONTENT_LENGTH);
                self.parts.headers.remove(header::TRANSFER_ENCODING);
                (body::full(b.clone()), None)
            }
            None => match self.body {
                Some(b) => (b, Some(self.body_state)),
                None => (body::empty(), None),
            },
        };
        Ok(Outbound {
            route,
            upstream: upstream.or(route.config.upstream.as_deref()),
            parts: self.parts,
            path_and_query: path_and_query(&path, preq.query.as_deref()),
            host: self.host,
            conn,
            body,
            body_state,
            params: preq.params.clone(),
        })
    }
}
