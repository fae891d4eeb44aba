//! Phase 3, forward: the upstream call, with the forwarding headers
//! (`X-Forwarded-*`, `Via`, hop-by-hop removed), the trace context, the
//! upstream's metrics, and its response body watched for stalls
//! ([`body::UpstreamBody`]). A small body with a declared length is read
//! whole first (`request-buffer-size`), so a client stalling in it costs no
//! upstream connection, and so it can be sent again.
//!
//! Retries are decided here, per the route's policy (`retry`): an attempt
//! that never left (no connection, or one closed before use) goes to
//! another target whatever the method, since nothing was sent; a reset
//! before the response head or a retried status (502, 503, 504) is retried
//! only for an idempotent method (unless the route says otherwise) and only
//! when the body is held whole (none, the small-body buffer, or the
//! plugins' copy): bytes of a streamed body that went out cannot be sent
//! twice. Each retry waits a random time up to an exponentially growing
//! ceiling (full jitter), prefers a target not yet tried, and must fit the
//! upstream's retry budget ([`super::retry`] keeps what is resent and
//! times the wait). Plugins ran once, before; they see the final
//! answer. Which target, connection limits and timeouts are
//! [`crate::upstream`]'s.

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version, header, uri::PathAndQuery};
use http_body::Body as _;

use super::{
    ConnInfo,
    retry::{Resend, Retry, backoff},
    route::{client_body_error, client_read_error},
};
use crate::{
    body::{self, Body, CollectError, RequestBodyState},
    error::{LOG_LINES_PER_SECOND, ProxyError},
    generation::{Generation, LiveRoute},
    telemetry::{
        observe::{self, UpstreamCall},
        throttle::LogThrottle,
        trace::TRACEPARENT,
    },
    upstream::{
        Attempt, AttemptError, Outcome, Refused, UpstreamError, UpstreamPool, headers,
        policy::RetryPolicy,
    },
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
    /// The route's path parameters (for hashing on one).
    pub(super) params: Vec<(String, String)>,
}

/// Make the client's request head `parts` the head to send upstream, on
/// both paths (ordinary and upgrade): hop-by-hop headers removed, the
/// forwarding headers added (naming `client_version`), `Host` set to the
/// client's when the head has none, and the URI `path_and_query`.
pub(super) fn upstream_head(
    parts: &mut http::request::Parts,
    conn: &ConnInfo,
    host: Option<HeaderValue>,
    client_version: Version,
    path_and_query: &str,
    upstream: &str,
) -> Result<(), UpstreamError> {
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
    let pq = PathAndQuery::try_from(path_and_query).map_err(|_| UpstreamError::InvalidRequest {
        upstream: upstream.to_string(),
        detail: format!("invalid path {path_and_query:?}"),
    })?;
    parts.uri = Uri::from(pq);
    Ok(())
}

/// Send `out` upstream, retrying per the route's policy, and return the
/// response head with its body watched.
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
        body,
        body_state,
        params,
    } = out;
    let Some(upstream) = upstream else {
        return Err(ProxyError::NoUpstream {
            route: route.id.to_string(),
        });
    };
    let upstream_error = |source| ProxyError::Upstream {
        route: route.id.to_string(),
        source,
    };
    let (body, replay) = match &body_state {
        Some(state) => buffer_small_body(route, &parts.headers, body, state).await?,
        // A buffered copy (the plugins'), or none: held whole already.
        None => match body::collect_limited(body, usize::MAX).await {
            Ok(bytes) => (body::full(bytes.clone()), Some(bytes)),
            Err(e) => {
                return Err(ProxyError::RequestBodyRead {
                    route: route.id.to_string(),
                    source: Box::new(e),
                });
            }
        },
    };
    let client_version = parts.version;
    upstream_head(
        &mut parts,
        conn,
        host,
        client_version,
        &path_and_query,
        upstream,
    )
    .map_err(upstream_error)?;
    let Some(pool) = rt.upstreams().get(upstream) else {
        return Err(upstream_error(UpstreamError::Unknown(upstream.to_string())));
    };
    let key = pool.hash_key(&parts.headers, conn.client.ip(), &params);
    let policy = &route.config.retry;
    let calls = Calls {
        rt,
        upstream,
        route,
        body_state: body_state.as_deref(),
    };
    let resp = attempts(&calls, pool, policy, key, parts, body, replay).await?;
    Ok(watch_response(rt, route, upstream, resp))
}

/// What each attempt needs besides its request.
struct Calls<'a> {
    rt: &'a Generation,
    upstream: &'a str,
    route: &'a LiveRoute,
    body_state: Option<&'a RequestBodyState>,
}

/// The attempts of one request: the first, then retries while the policy,
/// the budget and the body allow.
async fn attempts(
    calls: &Calls<'_>,
    pool: &UpstreamPool,
    policy: &RetryPolicy,
    key: Option<u64>,
    parts: http::request::Parts,
    body: Body,
    replay: Option<Bytes>,
) -> Result<Response<Body>, ProxyError> {
    let resend = Resend::new(policy, &parts, replay);
    let mut req = Request::from_parts(parts, body);
    let mut tried: Vec<usize> = Vec::new();
    // The answer to give if a retry cannot go: the last response, or error.
    let mut last: Option<Result<Response<Body>, UpstreamError>> = None;
    loop {
        let retry = !tried.is_empty();
        let attempt = match pool.admit(key, &tried, retry) {
            Ok(a) => a,
            Err(refused) => return refused_answer(calls, refused, last),
        };
        tried.push(attempt.index());
        observe::upstream_attempt(attempt.target(), tried.len());
        let call = start_call(calls, &mut req);
        let start = tokio::time::Instant::now();
        let result = pool
            .send(&attempt, req, calls.route.config.timeout, calls.body_state)
            .await;
        let latency = start.elapsed();
        let more = (tried.len() as u32) <= policy.retries;
        let (retry, next) = match result {
            Ok(resp) => match after_response(policy, &resend, attempt, call, resp, latency, more) {
                ControlFlow::Break(resp) => return Ok(resp),
                ControlFlow::Continue((resp, again)) => {
                    last = Some(Ok(resp));
                    (Retry::Status, again)
                }
            },
            Err(failure) => {
                let (retry, again, error) =
                    after_failure(calls, attempt, call, failure, more, &resend)?;
                last = Some(Err(error));
                (retry, again)
            }
        };
        if let Some(m) = calls.rt.upstream_metrics(calls.upstream) {
            m.1.retry(retry.label());
        }
        tokio::time::sleep(backoff(policy, tried.len() as u32)).await;
        req = next;
    }
}

/// The upstream call's span and metrics for one attempt, its trace
/// context put on `req`.
fn start_call(calls: &Calls<'_>, req: &mut Request<Body>) -> UpstreamCall {
    let call = match calls.rt.upstream_metrics(calls.upstream) {
        Some((name, metrics)) => observe::upstream_call(name, Some(metrics)),
        None => observe::upstream_call(&Arc::from(calls.upstream), None),
    };
    if let Some(tp) = call.traceparent() {
        req.headers_mut().insert(TRACEPARENT, tp);
    }
    call
}

/// An attempt that got a response head: accounted, and either the answer
/// (`Break`) or, for a retried status that may go again, the response to
/// answer with if the retry cannot go and the request to send
/// (`Continue`).
fn after_response(
    policy: &RetryPolicy,
    resend: &Resend,
    attempt: Attempt<'_>,
    call: UpstreamCall,
    resp: Response<Body>,
    latency: Duration,
    more: bool,
) -> ControlFlow<Response<Body>, (Response<Body>, Request<Body>)> {
    call.finish(Ok(resp.status().as_u16()));
    let status = resp.status();
    attempt.report(
        if status.is_server_error() {
            Outcome::Failure
        } else {
            Outcome::Success
        },
        Some(latency),
    );
    let retried = more && resend.safe_method && policy.statuses.contains(&status.as_u16());
    match retried.then(|| resend.request()).flatten() {
        Some(again) => ControlFlow::Continue((resp, again)),
        None => ControlFlow::Break(resp),
    }
}

/// The answer when the pool refuses an attempt (a retry past the budget,
/// or the upstream's `max-requests`): the last response or error, if a
/// first attempt was made.
fn refused_answer(
    calls: &Calls<'_>,
    refused: Refused,
    last: Option<Result<Response<Body>, UpstreamError>>,
) -> Result<Response<Body>, ProxyError> {
    if refused == Refused::Budget
        && let Some(m) = calls.rt.upstream_metrics(calls.upstream)
    {
        m.1.retry_denied();
    }
    let upstream_error = |source| ProxyError::Upstream {
        route: calls.route.id.to_string(),
        source,
    };
    match last {
        Some(Ok(resp)) => Ok(resp),
        Some(Err(e)) => Err(upstream_error(e)),
        None => Err(upstream_error(UpstreamError::Shed {
            upstream: calls.upstream.to_string(),
            reason: "max-requests",
        })),
    }
}

/// An attempt that failed: accounted, and either the retry to send (why,
/// the request, and the error to answer with if it cannot go) or the
/// request's error.
fn after_failure(
    calls: &Calls<'_>,
    attempt: Attempt<'_>,
    call: UpstreamCall,
    AttemptError { error, unsent }: AttemptError,
    more: bool,
    resend: &Resend,
) -> Result<(Retry, Request<Body>, UpstreamError), ProxyError> {
    if let Some(failure) = calls.body_state.and_then(RequestBodyState::take_failure) {
        call.client_failed();
        attempt.report(Outcome::Neutral, None);
        return Err(client_body_error(calls.route, failure));
    }
    call.finish(Err(error.kind()));
    attempt.report(error.outcome(), None);
    if let (UpstreamError::Overflow { .. }, Some(reason), Some(m)) = (
        &error,
        error.shed_reason(),
        calls.rt.upstream_metrics(calls.upstream),
    ) {
        m.1.shed(reason);
    }
    let again = resend.request();
    let next = match &error {
        UpstreamError::Connect { .. } | UpstreamError::Failed { .. } if more => {
            match (unsent, again) {
                // Never written: safe whatever the method.
                (Some(unsent), _) => Some((Retry::Connect, unsent)),
                (None, Some(again)) if matches!(error, UpstreamError::Connect { .. }) => {
                    Some((Retry::Connect, again))
                }
                (None, Some(again)) if resend.safe_method => Some((Retry::Reset, again)),
                _ => None,
            }
        }
        _ => None,
    };
    match next {
        Some((retry, again)) => Ok((retry, again, error)),
        None => Err(ProxyError::Upstream {
            route: calls.route.id.to_string(),
            source: error,
        }),
    }
}

/// The upstream's response with hop-by-hop headers removed, `Via` added,
/// and its body watched for stalls.
fn watch_response(
    rt: &Generation,
    route: &LiveRoute,
    upstream: &str,
    resp: Response<Body>,
) -> Response<Body> {
    let (mut rparts, rbody) = resp.into_parts();
    headers::remove_hop_by_hop(&mut rparts.headers);
    headers::append_via(&mut rparts.headers, rparts.version);
    let stalled_metrics = rt.upstream_metrics(upstream).map(|(_, m)| m.clone());
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
    Response::from_parts(rparts, rbody)
}

/// Read a client's body whole before the upstream is connected to when its
/// declared length is within the route's `request-buffer-size` (nginx's
/// request buffering), so that a client which never finishes a small body
/// costs no upstream connection. Only a declared length qualifies: a body
/// of unknown length may be a stream the client feeds as answers come
/// (gRPC-style), which buffering would stall. Content-Length bodies carry no
/// trailers over HTTP/1; an HTTP/2 client's request trailers on such a body
/// are not forwarded.
///
/// Returns the body to send and, when it is held whole (buffered here, or
/// empty), its bytes for a resend.
async fn buffer_small_body(
    route: &LiveRoute,
    headers: &HeaderMap,
    body: Body,
    state: &RequestBodyState,
) -> Result<(Body, Option<Bytes>), ProxyError> {
    if body.is_end_stream() {
        return Ok((body, Some(Bytes::new())));
    }
    let limit = route.config.request_buffer_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > 0 && n <= limit as u64 => {
            match body::collect_limited(body, limit).await {
                Ok(bytes) => Ok((body::full(bytes.clone()), Some(bytes))),
                Err(CollectError::Read(source)) => Err(client_read_error(route, state, source)),
                // hyper holds a body to its declared length.
                Err(CollectError::TooLarge { .. }) => Err(ProxyError::BadRequest(
                    "body longer than its Content-Length",
                )),
            }
        }
        _ => Ok((body, None)),
    }
}
