//! The request path: route, run the pipeline's request phase, forward
//! upstream (streaming unless a plugin asked for a body), run the response
//! phase in reverse, answer. Errors go to [`crate::error`] for their status.
//!
//! The request path is normalised ([`crate::router::path`]) before anything
//! else sees it: the router matches it, plugins see it, the access log
//! shows it, and it (after strip-prefix, rewrite or a plugin's rewrite,
//! each normalised again) is what goes upstream.
//!
//! The client's body is watched from the moment the route is known
//! ([`body::ClientBody`]): if it fails or stops arriving, the request is a
//! client error (400/408) even when the failure surfaced as a failed
//! upstream call. The upstream's body is watched on its way back
//! ([`body::UpstreamBody`]).

use std::{borrow::Cow, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use http::{
    HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version, header, uri::PathAndQuery,
};

use crate::{
    body::{self, Body, Buffered, ClientBodyFailure, CollectError, IdleTimeout, RequestBodyState},
    error::{ErrorChain, LOG_LINES_PER_SECOND, ProxyError},
    pipeline::{PluginRequest, PluginResponse, RequestOutcome, Sessions},
    router::path::{self, PathError, PathNormalization},
    runtime::{RouteRuntime, Runtime},
    telemetry::{observe, throttle::LogThrottle, trace::TRACEPARENT},
    upstream::{UpstreamError, headers},
};

static CLIENT_BODY_FAILED: LogThrottle = LogThrottle::new(
    "client request body failed",
    LOG_LINES_PER_SECOND,
    Duration::from_secs(1),
);
static UPSTREAM_BODY_STALLED: LogThrottle = LogThrottle::new(
    "upstream response body stalled",
    LOG_LINES_PER_SECOND,
    Duration::from_secs(1),
);

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub client: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The client's IP as a header value, for `X-Forwarded-For`.
    client_ip: HeaderValue,
}

impl ConnInfo {
    /// A connection from `client` over `scheme`.
    pub fn new(client: SocketAddr, scheme: &'static str) -> Self {
        Self {
            client,
            scheme,
            client_ip: headers::client_ip_value(client.ip()),
        }
    }
}

/// Handle one client request to completion.
pub async fn handle(rt: Arc<Runtime>, req: Request<Body>, conn: ConnInfo) -> Response<Body> {
    // Boxing as `dyn Future + Send` proves `Send` here, with concrete
    // lifetimes; left to hyper's higher-ranked service bounds, rustc cannot.
    let fut: Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send + '_>> =
        Box::pin(proxy(&rt, req, conn));
    match fut.await {
        Ok(resp) => resp,
        Err(err) => err.into_response(),
    }
}

async fn proxy(
    rt: &Runtime,
    req: Request<Body>,
    conn: ConnInfo,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let mut body = Some(body);
    let host = request_host(parts.version, &parts.uri, &parts.headers)?;
    let opts = &rt.config().path_normalization;
    let path = path::normalize(parts.uri.path(), opts)
        .map_err(|e| ProxyError::BadRequest(e.public_message()))?;
    if let Cow::Owned(p) = &path {
        observe::path_normalized(p);
    }
    let m = rt
        .router()
        .route(host.as_deref(), &parts.method, &path)
        .ok_or(ProxyError::NoRoute)?;
    let route = rt.route(m.index);
    observe::route_matched(&route.metrics);
    let upstream_path = renormalize(m.upstream_path, opts)
        .map_err(|e| ProxyError::BadRequest(e.public_message()))?;
    let (client_body, body_state) = watch_client_body(route, body.take().expect("not yet taken"));
    body = Some(client_body);
    let query = parts.uri.query().map(str::to_owned);
    let host_value = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok());

    if route.pipeline.is_empty() {
        let pq = path_and_query(&upstream_path, query.as_deref());
        let body = body.take().expect("body not yet consumed");
        let sent = (body, Some(&*body_state));
        return forward(rt, route, None, parts, &pq, host_value, &conn, sent).await;
    }

    let needs = route.pipeline.needs();
    let buffered = if needs.request_body {
        let body = body.take().expect("body not yet consumed");
        match body::collect_limited(body, route.request_body_limit).await {
            Ok(b) => Some(b),
            Err(CollectError::TooLarge { limit }) => {
                return Err(ProxyError::RequestBodyTooLarge {
                    route: route.id.to_string(),
                    limit,
                });
            }
            Err(CollectError::Read(source)) => {
                return Err(match body_state.take_failure() {
                    Some(failure) => client_body_error(route, failure),
                    None => ProxyError::RequestBodyRead {
                        route: route.id.to_string(),
                        source,
                    },
                });
            }
        }
    } else {
        None
    };
    let mut headers = std::mem::take(&mut parts.headers);
    // HTTP/2 carries the host in the URI; plugins always see a `host` header.
    if !headers.contains_key(header::HOST)
        && let Some(h) = &host_value
    {
        headers.insert(header::HOST, h.clone());
    }
    let mut preq = PluginRequest {
        route: route.id.clone(),
        method: parts.method.clone(),
        path: path.clone().into_owned(),
        query,
        headers,
        client_addr: conn.client,
        scheme: conn.scheme,
        params: m.params,
        body: buffered,
    };
    let plugin_error = |source| ProxyError::Plugin {
        route: route.id.to_string(),
        source,
    };
    let mut sessions = Sessions::default();
    let outcome = route
        .pipeline
        .on_request(&mut preq, &mut sessions)
        .await
        .map_err(plugin_error)?;

    let is_head = parts.method == http::Method::HEAD;
    let (mut presp, passthrough) = match outcome {
        RequestOutcome::Respond(resp) => (resp, None),
        RequestOutcome::Forward { upstream } => {
            // Only a plugin's override allocates here; named again only on error.
            let chosen_upstream = upstream.clone();
            // A plugin's path replaces the upstream path, normalised like a
            // client's: one normal form goes upstream whoever wrote it.
            let path = if preq.path != *path {
                rewritten_path(&preq.path, opts).map_err(|source| ProxyError::RewrittenPath {
                    route: route.id.to_string(),
                    source,
                })?
            } else {
                upstream_path
            };
            let pq = path_and_query(&path, preq.query.as_deref());
            // A response-phase call sees the request as sent; without one
            // (no plugin left, or only header edits to apply on the way
            // back) the headers can move instead of being copied.
            parts.headers = if sessions.calls_response_phase() {
                preq.headers.clone()
            } else {
                std::mem::take(&mut preq.headers)
            };
            parts.method = preq.method.clone();
            let sent = match &preq.body {
                Some(b) => {
                    parts.headers.remove(header::CONTENT_LENGTH);
                    parts.headers.remove(header::TRANSFER_ENCODING);
                    (body::full(b.clone()), None)
                }
                None => match body.take() {
                    Some(b) => (b, Some(&*body_state)),
                    None => (body::empty(), None),
                },
            };
            let resp = forward(rt, route, upstream, parts, &pq, host_value, &conn, sent).await?;
            if sessions.is_empty() {
                return Ok(resp);
            }
            let (rparts, rbody) = resp.into_parts();
            let (body, passthrough) = if route.pipeline.wants_response_body() && !is_head {
                match body::buffer_or_stream(rbody, route.response_body_limit).await {
                    Ok(Buffered::Full(b)) => (Some(b), None),
                    // Too large for the plugins that asked: they see no body
                    // and the response streams through unaltered.
                    Ok(Buffered::TooLarge(stream)) => (None, Some(stream)),
                    Err(source) => {
                        let upstream = chosen_upstream
                            .or_else(|| route.config.upstream.clone())
                            .unwrap_or_default();
                        return Err(ProxyError::Upstream {
                            route: route.id.to_string(),
                            source: match source.downcast_ref::<IdleTimeout>() {
                                Some(IdleTimeout(timeout)) => UpstreamError::BodyTimeout {
                                    upstream,
                                    timeout: *timeout,
                                },
                                None => UpstreamError::Failed {
                                    upstream,
                                    target: "response body".into(),
                                    source,
                                },
                            },
                        });
                    }
                }
            } else {
                (None, Some(rbody))
            };
            let presp = PluginResponse {
                status: rparts.status,
                headers: rparts.headers,
                body,
            };
            (presp, passthrough)
        }
    };
    route
        .pipeline
        .on_response(&mut preq, &mut sessions, &mut presp)
        .await
        .map_err(plugin_error)?;
    let mut headers = presp.headers;
    let body = match (presp.body, passthrough) {
        (Some(b), _) => {
            if !is_head {
                fix_length(&mut headers, presp.status, b.len());
            }
            body::full(b)
        }
        (None, Some(stream)) => stream,
        (None, None) => {
            fix_length(&mut headers, presp.status, 0);
            body::empty()
        }
    };
    Ok(Response::from_parts(
        rparts_with(presp.status, headers),
        body,
    ))
}

fn rparts_with(status: StatusCode, headers: HeaderMap) -> http::response::Parts {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.headers = headers;
    parts
}

fn fix_length(headers: &mut HeaderMap, status: StatusCode, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        headers.remove(header::CONTENT_LENGTH);
    } else {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    rt: &Runtime,
    route: &RouteRuntime,
    upstream_override: Option<String>,
    mut parts: http::request::Parts,
    path_and_query: &str,
    host: Option<HeaderValue>,
    conn: &ConnInfo,
    (body, body_state): (Body, Option<&RequestBodyState>),
) -> Result<Response<Body>, ProxyError> {
    let upstream = match upstream_override
        .as_deref()
        .or(route.config.upstream.as_deref())
    {
        Some(u) => u,
        None => {
            return Err(ProxyError::NoUpstream {
                route: route.id.to_string(),
            });
        }
    };
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
    let pq = PathAndQuery::try_from(path_and_query).map_err(|_| ProxyError::Upstream {
        route: route.id.to_string(),
        source: crate::upstream::UpstreamError::InvalidRequest {
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

/// `p` normalised, reusing its allocation when it already is.
fn renormalize(p: String, opts: &PathNormalization) -> Result<String, PathError> {
    let changed = match path::normalize(&p, opts)? {
        Cow::Owned(n) => Some(n),
        Cow::Borrowed(_) => None,
    };
    Ok(changed.unwrap_or(p))
}

/// A plugin's rewritten path, normalised; it must be origin-form.
fn rewritten_path(p: &str, opts: &PathNormalization) -> Result<String, PathError> {
    if !p.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    Ok(path::normalize(p, opts)?.into_owned())
}

/// Watch the client's body for the route's idle timeout and for failure,
/// counting and logging (throttled) a failure where it happens.
fn watch_client_body(route: &RouteRuntime, body: Body) -> (Body, Arc<RequestBodyState>) {
    let metrics = route.metrics.clone();
    let route_id = route.id.clone();
    body::ClientBody::wrap(
        body,
        route.config.request_body_timeout,
        Box::new(move |failure| {
            metrics.client_body_error(matches!(failure, ClientBodyFailure::Timeout(_)));
            if CLIENT_BODY_FAILED.admit() {
                match failure {
                    ClientBodyFailure::Timeout(idle) => {
                        tracing::info!(route = %route_id, ?idle, "client request body stopped arriving")
                    }
                    ClientBodyFailure::Invalid(e) => {
                        tracing::info!(route = %route_id, error = %ErrorChain(&**e), "client request body failed")
                    }
                }
            }
        }),
    )
}

fn client_body_error(route: &RouteRuntime, failure: ClientBodyFailure) -> ProxyError {
    let route = route.id.to_string();
    match failure {
        ClientBodyFailure::Timeout(timeout) => ProxyError::RequestBodyTimeout { route, timeout },
        ClientBodyFailure::Invalid(source) => ProxyError::RequestBodyRead { route, source },
    }
}

fn path_and_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

/// The request's host: the URI authority (HTTP/2, absolute-form) or the
/// `Host` header. A request with two `Host` headers is malformed, and so is
/// an HTTP/1.1 request with none (RFC 9112 §3.2); HTTP/1.0 may omit it.
fn request_host(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<String>, ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let from_header = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if from_header.is_none() && version == Version::HTTP_11 {
        return Err(ProxyError::BadRequest("missing Host header"));
    }
    let from_header = match from_header {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ProxyError::BadRequest("invalid Host header"))?,
        ),
        None => None,
    };
    Ok(match (uri.authority(), from_header) {
        (Some(a), _) => Some(a.as_str().to_string()),
        (None, Some(h)) => Some(h.to_string()),
        (None, None) => None,
    })
}
