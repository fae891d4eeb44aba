//! Per-request observation: what the access log, the request metrics and
//! the server span need, gathered while a request runs.
//!
//! The server opens a [`RequestScope`] when a request head arrives and
//! runs the proxy inside it ([`Observability::run`]); the proxy and the
//! pipeline report what they learn (the route, each plugin call, the
//! upstream call) through the free functions here, which find the scope in
//! a task-local and do nothing outside one (unit tests, benchmarks). The
//! response body is wrapped ([`Observability::finish`]) to count bytes out
//! without buffering; when its last frame is sent, or it is dropped early,
//! the request is recorded once: metrics, access log line, span end.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::{KeyValue, trace::SpanKind};

use super::{
    access_log::{AccessLog, Entry},
    metrics::{Metrics, RouteMetrics, UNMATCHED_ROUTE, UpstreamErrorKind, UpstreamMetrics},
    trace::{ChildSpan, RequestTrace, Tracing},
};
use crate::{
    body::{self, Body, BoxError},
    sync::lock,
};

tokio::task_local! {
    static CURRENT: Arc<RequestScope>;
}

/// Everything a gateway observes requests with: metrics, the access log
/// (when configured) and tracing. One per gateway; outlives reloads.
pub struct Observability {
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    access_log: Option<AccessLog>,
    tracing: Tracing,
    unmatched: Arc<RouteMetrics>,
}

impl Observability {
    /// Put the pieces together.
    pub fn new(metrics: Arc<Metrics>, access_log: Option<AccessLog>, tracing: Tracing) -> Self {
        let unmatched = metrics.route(UNMATCHED_ROUTE);
        Self {
            metrics,
            access_log,
            tracing,
            unmatched,
        }
    }

    /// The tracing setup.
    pub fn tracing(&self) -> &Tracing {
        &self.tracing
    }

    /// Open the scope of one request, when its head has arrived.
    pub fn begin<B>(self: &Arc<Self>, req: &Request<B>, client: SocketAddr) -> Arc<RequestScope> {
        let trace = self
            .tracing
            .start_request(req.headers(), req.method().as_str());
        Arc::new(RequestScope {
            obs: self.clone(),
            start: Instant::now(),
            time: SystemTime::now(),
            method: req.method().clone(),
            path: self
                .access_log
                .as_ref()
                .map(|_| req.uri().path().to_owned()),
            normalized_path: OnceLock::new(),
            client,
            trace,
            route: OnceLock::new(),
            upstream: Mutex::new(None),
            attempt: Mutex::new(None),
            bytes_in: AtomicU64::new(0),
            done: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Run `fut` (the proxy) inside `scope`, where [`route_matched`],
    /// [`plugin_call`] and [`upstream_call`] find it.
    pub async fn run<F: Future>(scope: Arc<RequestScope>, fut: F) -> F::Output {
        CURRENT.scope(scope, fut).await
    }

    /// Wrap the response so that its end records the request.
    pub fn finish(scope: Arc<RequestScope>, resp: Response<Body>) -> Response<Body> {
        let status = resp.status().as_u16();
        let (parts, inner) = resp.into_parts();
        if inner.is_end_stream() {
            scope.record(status, 0);
            return Response::from_parts(parts, inner);
        }
        let body = ObservedBody {
            inner,
            scope: Some(scope),
            status,
            bytes: 0,
        };
        Response::from_parts(parts, body::boxed(body))
    }

    /// Write out what is buffered (access log lines, spans), at shutdown.
    pub async fn flush(&self, timeout: Duration) {
        if let Some(log) = &self.access_log {
            let _ = tokio::time::timeout(timeout, log.flush()).await;
        }
        self.tracing.flush(timeout).await;
    }
}

/// What is known about one request so far.
pub struct RequestScope {
    obs: Arc<Observability>,
    start: Instant,
    time: SystemTime,
    method: Method,
    path: Option<String>,
    /// The path after normalisation, when it differs and a log wants it.
    normalized_path: OnceLock<String>,
    client: SocketAddr,
    trace: RequestTrace,
    route: OnceLock<Arc<RouteMetrics>>,
    upstream: Mutex<Option<(Arc<str>, Duration)>>,
    /// The target of the last upstream attempt and the attempts made.
    attempt: Mutex<Option<(String, usize)>>,
    bytes_in: AtomicU64,
    done: std::sync::atomic::AtomicBool,
}

impl RequestScope {
    /// The request's trace.
    pub fn trace(&self) -> &RequestTrace {
        &self.trace
    }

    /// Count request body bytes read.
    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Relaxed);
    }

    /// Record the finished request, once.
    fn record(&self, status: u16, bytes_out: u64) {
        if self.done.swap(true, Relaxed) {
            return;
        }
        let elapsed = self.start.elapsed();
        let route = self.route.get().unwrap_or(&self.obs.unmatched);
        route.record(status, elapsed);
        let matched = self.route.get().map(|r| &**r.route());
        self.trace.end(self.method.as_str(), matched, status);
        if let Some(log) = &self.obs.access_log {
            let upstream = lock(&self.upstream).clone();
            let attempt = lock(&self.attempt).take();
            let trace_id = self.trace.trace_id_hex();
            log.log(&Entry {
                time: self.time,
                route: matched,
                method: self.method.as_str(),
                path: self
                    .normalized_path
                    .get()
                    .or(self.path.as_ref())
                    .map_or("", String::as_str),
                status,
                bytes_in: self.bytes_in.load(Relaxed),
                bytes_out,
                duration: elapsed,
                upstream: upstream.as_ref().map(|(n, d)| (&**n, *d)),
                target: attempt.as_ref().map(|(t, _)| t.as_str()),
                attempts: attempt.as_ref().map_or(0, |(_, n)| *n),
                client: self.client,
                trace_id: &trace_id,
            });
        }
    }
}

/// Run `f` with the current request's scope, if there is one.
fn with_scope<R>(f: impl FnOnce(&Arc<RequestScope>) -> R) -> Option<R> {
    CURRENT.try_with(|s| f(s)).ok()
}

/// The proxy normalised the request path to `path` (which differs from the
/// one received): the access log shows this one.
pub fn path_normalized(path: &str) {
    with_scope(|s| {
        if s.path.is_some() {
            let _ = s.normalized_path.set(path.to_owned());
        }
    });
}

/// The proxy sends attempt number `n` (from 1) to `target`.
pub fn upstream_attempt(target: &str, n: usize) {
    with_scope(|s| {
        if s.obs.access_log.is_some() {
            let mut a = lock(&s.attempt);
            match &mut *a {
                Some((t, count)) => {
                    t.clear();
                    t.push_str(target);
                    *count = n;
                }
                None => *a = Some((target.to_owned(), n)),
            }
        }
    });
}

/// The proxy matched `route`.
pub fn route_matched(route: &Arc<RouteMetrics>) {
    with_scope(|s| {
        let _ = s.route.set(route.clone());
    });
}

/// A plugin call in progress; its span ends when this is dropped.
pub struct PluginCall(Option<ChildSpan>);

impl PluginCall {
    /// The call failed: mark its span.
    pub fn fail(&mut self, err: &(dyn std::error::Error + 'static)) {
        if let Some(span) = &mut self.0 {
            span.fail(crate::error::ErrorChain(err).to_string());
        }
    }
}

/// A plugin is about to be called for the current request (`phase` is
/// `on-request` or `on-response`).
pub fn plugin_call(plugin: &str, phase: &'static str) -> PluginCall {
    PluginCall(
        with_scope(|s| {
            if !s.obs.tracing.is_exporting() {
                return None;
            }
            Some(s.obs.tracing.child(&s.trace, SpanKind::Internal, || {
                (
                    format!("plugin {plugin} {phase}"),
                    vec![
                        KeyValue::new("pylon.plugin", plugin.to_owned()),
                        KeyValue::new("pylon.phase", phase),
                    ],
                )
            }))
        })
        .flatten(),
    )
}

/// An upstream call in progress.
pub struct UpstreamCall {
    name: Arc<str>,
    metrics: Option<Arc<UpstreamMetrics>>,
    span: Option<ChildSpan>,
    start: Instant,
}

impl UpstreamCall {
    /// The `traceparent` to send upstream: this call's span as parent.
    pub fn traceparent(&self) -> Option<HeaderValue> {
        self.span.as_ref().map(ChildSpan::traceparent)
    }

    /// The response head arrived (`Ok`) or the call failed.
    pub fn finish(mut self, result: Result<u16, UpstreamErrorKind>) {
        let elapsed = self.start.elapsed();
        if let Some(m) = &self.metrics {
            m.record(elapsed, result.err());
        }
        if let Some(span) = &mut self.span {
            match result {
                Ok(status) => {
                    span.set_attribute(KeyValue::new(
                        "http.response.status_code",
                        i64::from(status),
                    ));
                    if status >= 500 {
                        span.fail(String::new());
                    }
                }
                Err(kind) => span.fail(format!("{kind:?}")),
            }
        }
        let name = self.name.clone();
        with_scope(|s| {
            *lock(&s.upstream) = Some((name, elapsed));
        });
    }
}

impl UpstreamCall {
    /// The call failed because the client's request body did: nothing is
    /// counted against the upstream (the client's error is counted where
    /// its body failed).
    pub fn client_failed(mut self) {
        if let Some(span) = &mut self.span {
            span.fail("client request body failed".to_owned());
        }
    }
}

/// The proxy is about to call `upstream` for the current request.
pub fn upstream_call(upstream: &Arc<str>, metrics: Option<&Arc<UpstreamMetrics>>) -> UpstreamCall {
    let span = with_scope(|s| {
        s.obs.tracing.child(&s.trace, SpanKind::Client, || {
            (
                format!("upstream {upstream}"),
                vec![KeyValue::new("pylon.upstream", upstream.to_string())],
            )
        })
    });
    UpstreamCall {
        name: upstream.clone(),
        metrics: metrics.cloned(),
        span,
        start: Instant::now(),
    }
}

/// Counts request body bytes into the scope as the proxy reads them.
pub struct CountedBody<B> {
    inner: B,
    scope: Arc<RequestScope>,
}

impl<B> CountedBody<B> {
    /// Wrap a request body.
    pub fn new(inner: B, scope: Arc<RequestScope>) -> Self {
        Self { inner, scope }
    }
}

impl<B> HttpBody for CountedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.scope.add_bytes_in(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body on its way to the client: counts bytes and records
/// the request when the last frame leaves or the body is dropped.
struct ObservedBody {
    inner: Body,
    scope: Option<Arc<RequestScope>>,
    status: u16,
    bytes: u64,
}

impl ObservedBody {
    fn done(&mut self) {
        if let Some(scope) = self.scope.take() {
            scope.record(self.status, self.bytes);
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.done();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.done();
    }
}
