//! Phase 3, forward: one request to an upstream, with the forwarding
//! headers (`X-Forwarded-*`, `Via`, hop-by-hop removed), the trace context,
//! the upstream's metrics, and its response body watched for stalls
//! ([`body::UpstreamBody`]). A small body with a declared length is read
//! whole first (`request-buffer-size`), so a client stalling in it costs no
//! upstream connection. Which target, connection limits and timeouts
//! are [`crate::upstream`]'s.

use std::{sync::Arc, time::Duration};

use http::{HeaderMap, HeaderValue, Request, Response, Uri, header, uri::PathAndQuery};
use http_body::Body as _;

use super::{
    ConnInfo,
    route::{client_body_error, client_read_error},
};
use crate::{
    body::{self, Body, CollectError, RequestBodyState},
    error::{LOG_LINES_PER_SECOND, ProxyError},
    generation::{Generation, LiveRoute},
    telemetry::{observe, throttle::LogThrottle, trace::TRACEPARENT},
    upstream::{UpstreamError, headers},
};

static UPSTREAM_BODY_STALLED: LogThrottle = LogThrottle::new(
    "upstream response body stalled",
    LOG_LINES_PER_SECOND,
    Duration::from_secs(1),
);

/// Everything one upstream call needs.
pub(super) struct Outbound<'a> {
    pub(super) route: &'a LiveRoute,
    /// The upstream's name: a plugin's choice or the route's.
    pub(super) upstream: Option<&'a str>,
    /// The request head to send (method, version, headers); its URI is
    /// replaced by `path_and_query`.
    pub(super) parts: http::request::Parts,
    pub(super) path_and_query: String,
    /// The client's host, for `Host` (when the head has none) and
    /// `X-Forwarded-Host`.
    pub(super) host: Option<HeaderValue>,
    pub(super) conn: &'a ConnInfo,
    pub(super) body: Body,
    /// The client's body's state when `body` is the client's stream (not a
    /// buffered copy): its failure makes the call the client's error.
    pub(super) body_state: Option<Arc<RequestBodyState>>,
}

/// Send `out` upstream and return the response head with its body watched.
pub(super) async fn forward(
    rt: &Generation,
    out: Outbound<'_>,
) -> Result<Response<Body>, ProxyError> {
    let Outbound {
        route,
        upstream,
        mut parts,
        path_and_query,
        host,
        conn,
        mut body,
        body_state,
    } = out;
    let Some(upstream) = upstream else {
        return Err(ProxyError::NoUpstream {
            route: route.id.to_string(),
        });
    };
    if let Some(state) = &body_state {
        body = buffer_small_body(route, &parts.headers, body, state).await?;
    }
    let client_version = parts.version;
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::add_forwarded(
        &mut parts.headers,
        &conn.client_ip,
        conn.scheme,
        host.as_ref(),
        client_version,
    );
    if let Some(h) = host
        && !parts.headers.contains_key(header::HOST)
    {
        parts.headers.insert(header::HOST, h);
    }
    let pq = PathAndQuery::try_from(path_and_query.as_str()).map_err(|_| ProxyError::Upstream {
        route: route.id.to_string(),
        source: UpstreamError::InvalidRequest {
            upstream: upstream.to_string(),
            detail: format!("invalid path {path_and_query:?}"),
        },
    })?;
    parts.uri = Uri::from(pq);
    let metrics = rt.upstream_metrics(upstream);
    let call = match metrics {
        Some((name, metrics)) => observe::upstream_call(name, Some(metrics)),
        None => observe::upstream_call(&Arc::from(upstream), None),
    };
    if let Some(tp) = call.traceparent() {
        parts.headers.insert(TRACEPARENT, tp);
    }
    let req = Request::from_parts(parts, body);
    let body_state = body_state.as_deref();
    let result = rt
        .upstreams()
        .forward(upstream, req, route.config.timeout, body_state)
        .await;
    if result.is_err()
        && let Some(failure) = body_state.and_then(RequestBodyState::take_failure)
    {
        call.client_failed();
        return Err(client_body_error(route, failure));
    }
    call.finish(match &result {
        Ok(resp) => Ok(resp.status().as_u16()),
        Err(e) => Err(e.kind()),
    });
    let resp = result.map_err(|source| ProxyError::Upstream {
        route: route.id.to_string(),
        source,
    })?;
    let (mut rparts, rbody) = resp.into_parts();
    headers::remove_hop_by_hop(&mut rparts.headers);
    headers::append_via(&mut rparts.headers, rparts.version);
    let stalled_metrics = metrics.map(|(_, m)| m.clone());
    let (route_id, upstream_name) = (route.id.clone(), upstream.to_owned());
    let idle = route.config.response_body_timeout;
    let rbody = body::UpstreamBody::wrap(
        rbody,
        idle,
        Box::new(move || {
            if let Some(m) = stalled_metrics {
                m.body_timeout();
            }
            if UPSTREAM_BODY_STALLED.admit() {
                tracing::warn!(route = %route_id, upstream = %upstream_name, ?idle, "upstream response body stalled; response cut");
            }
        }),
    );
    Ok(Response::from_parts(rparts, rbody))
}

/// Read a client's body whole before the upstream is connected to when its
/// declared length is within the route's `request-buffer-size` (nginx's
/// request buffering), so that a client which never finishes a small body
/// costs no upstream connection. Only a declared length qualifies: a body
/// of unknown length may be a stream the client feeds as answers come
/// (gRPC-style), which buffering would stall. Content-Length bodies carry no
/// trailers over HTTP/1; an HTTP/2 client's request trailers on such a body
/// are not forwarded.
async fn buffer_small_body(
    route: &LiveRoute,
    headers: &HeaderMap,
    body: Body,
    state: &RequestBodyState,
) -> Result<Body, ProxyError> {
    let limit = route.config.request_buffer_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > 0 && n <= limit as u64 && !body.is_end_stream() => {
            match body::collect_limited(body, limit).await {
                Ok(bytes) => Ok(body::full(bytes)),
                Err(CollectError::Read(source)) => Err(client_read_error(route, state, source)),
                // hyper holds a body to its declared length.
                Err(CollectError::TooLarge { .. }) => Err(ProxyError::BadRequest(
                    "body longer than its Content-Length",
                )),
            }
        }
        _ => Ok(body),
    }
}
