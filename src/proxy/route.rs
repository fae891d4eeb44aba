//! Phase 1, route: the request's host and normalised path pick the route;
//! the upstream path is normalised again after strip-prefix or rewrite; the
//! client's body is watched from here on ([`body::ClientBody`]), so a body
//! that fails or stops arriving is the client's error (400/408) even when it
//! surfaces as a failed upstream call. The route's `max-request-body` is
//! enforced here: a larger `Content-Length` is refused (413) before any
//! plugin or upstream sees the request, and the watch cuts a body that grows
//! past it (413 while no response has begun; the upstream request is aborted,
//! never completed, so the upstream never takes a truncated body as whole).

use std::{borrow::Cow, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderValue, Request, Uri, Version, header};

use crate::{
    body::{self, Body, ClientBodyFailure, RequestBodyState},
    error::{ErrorChain, LOG_LINES_PER_SECOND, ProxyError},
    generation::{Generation, LiveRoute},
    router::path::{self, PathError, PathNormalization},
    telemetry::{observe, throttle::LogThrottle},
};

static CLIENT_BODY_FAILED: LogThrottle = LogThrottle::new(
    "client request body failed",
    LOG_LINES_PER_SECOND,
    Duration::from_secs(1),
);

/// A request that matched a route.
pub(super) struct Routed<'rt> {
    pub(super) route: &'rt LiveRoute,
    pub(super) parts: http::request::Parts,
    /// The URI authority or `Host` header (see [`request_host`]).
    pub(super) host: Option<HeaderValue>,
    /// The normalised path when normalising changed it; otherwise the
    /// request's own path is normal (see [`Routed::path`]).
    pub(super) normalized: Option<String>,
    /// Parameters the route's pattern captured.
    pub(super) params: Vec<(String, String)>,
    /// The path to send upstream, normalised.
    pub(super) upstream_path: String,
    /// The client's body, watched.
    pub(super) body: Body,
    pub(super) body_state: Arc<RequestBodyState>,
}

impl<'rt> Routed<'rt> {
    /// The normalised request path: what the router matched and plugins see.
    pub(super) fn path(&self) -> &str {
        self.normalized
            .as_deref()
            .unwrap_or_else(|| self.parts.uri.path())
    }
}

/// Route `req`: 400 for a malformed host or a path that does not
/// normalise, 404 (via [`ProxyError::NoRoute`]) when no route matches.
pub(super) fn route(rt: &Generation, req: Request<Body>) -> Result<Routed<'_>, ProxyError> {
    let (parts, body) = req.into_parts();
    let host = request_host(parts.version, &parts.uri, &parts.headers)?;
    let opts = &rt.config().path_normalization;
    let path = path::normalize(parts.uri.path(), opts)
        .map_err(|e| ProxyError::BadRequest(e.public_message()))?;
    if let Cow::Owned(p) = &path {
        observe::path_normalized(p);
    }
    let m = rt
        .router()
        .route_request(
            host.as_deref(),
            &parts.method,
            &path,
            &parts.headers,
            parts.uri.query(),
        )
        .ok_or(ProxyError::NoRoute)?;
    let normalized = match path {
        Cow::Owned(p) => Some(p),
        Cow::Borrowed(_) => None,
    };
    let route = rt.route(m.index);
    observe::route_matched(&route.metrics);
    let upstream_path = renormalize(m.upstream_path, opts)
        .map_err(|e| ProxyError::BadRequest(e.public_message()))?;
    if let Some(limit) = route.config.max_request_body
        && declared_length(&parts.headers).is_some_and(|n| n > limit)
    {
        return Err(too_large(route, limit));
    }
    let (body, body_state) = watch_client_body(route, body);
    let host = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok());
    Ok(Routed {
        route,
        parts,
        host,
        normalized,
        params: m.params,
        upstream_path,
        body,
        body_state,
    })
}

/// `path?query`, as it goes upstream.
pub(super) fn path_and_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
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
pub(super) fn rewritten_path(p: &str, opts: &PathNormalization) -> Result<String, PathError> {
    if !p.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    Ok(path::normalize(p, opts)?.into_owned())
}

/// The body length the request declares, if it declares one that parses
/// (hyper refuses a malformed or conflicting one before pylon sees it).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(route: &LiveRoute, limit: u64) -> ProxyError {
    ProxyError::RequestBodyTooLarge {
        route: route.id.to_string(),
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
    }
}

/// Watch the client's body for the route's idle timeout, its size limit and for failure,
/// counting and logging (throttled) a failure where it happens.
fn watch_client_body(route: &LiveRoute, body: Body) -> (Body, Arc<RequestBodyState>) {
    let metrics = route.metrics.clone();
    let route_id = route.id.clone();
    body::ClientBody::wrap(
        body,
        route.config.request_body_timeout,
        route.config.max_request_body,
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
                    ClientBodyFailure::TooLarge(limit) => {
                        tracing::info!(route = %route_id, limit, "client request body over max-request-body; cut")
                    }
                }
            }
        }),
    )
}

/// The error for reading the client's body failing with `source`: the
/// client's own failure (400/408) when the watch saw one, else a read error.
pub(super) fn client_read_error(
    route: &LiveRoute,
    state: &RequestBodyState,
    source: crate::body::BoxError,
) -> ProxyError {
    match state.take_failure() {
        Some(failure) => client_body_error(route, failure),
        None => ProxyError::RequestBodyRead {
            route: route.id.to_string(),
            source,
        },
    }
}

/// The error for a client body that failed or stopped arriving.
pub(super) fn client_body_error(route: &LiveRoute, failure: ClientBodyFailure) -> ProxyError {
    match failure {
        ClientBodyFailure::Timeout(timeout) => ProxyError::RequestBodyTimeout {
            route: route.id.to_string(),
            timeout,
        },
        ClientBodyFailure::Invalid(source) => ProxyError::RequestBodyRead {
            route: route.id.to_string(),
            source,
        },
        ClientBodyFailure::TooLarge(limit) => too_large(route, limit),
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
