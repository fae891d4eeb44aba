//! Distributed tracing: W3C trace context in and out of every request, and
//! OpenTelemetry spans exported over OTLP/HTTP (protobuf) when configured.
//!
//! Trace context is always handled, exporter or not: a request's
//! `traceparent` is continued (or a new trace id is made), every upstream
//! call carries a `traceparent` with the same trace id and a new parent
//! span id, and the trace id is written to the access log. With
//! `[tracing] otlp-endpoint` set, the request (server span), each plugin
//! call and each upstream call (client span) are also recorded as spans and
//! exported in batches by a background task; without it, no span is built
//! and ids come from a random generator.
//!
//! Spans leave through a bounded queue: when the collector is slow or down,
//! spans are dropped rather than held (the request path never waits).

use std::{fmt, time::Duration};

use http::{HeaderMap, HeaderValue};
use opentelemetry::{
    Context, KeyValue,
    trace::{
        Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
        TraceState, Tracer as _, TracerProvider as _,
    },
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{
        IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
        SpanProcessor,
    },
};
use tokio::sync::{mpsc, oneshot};

/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";

/// Spans queued for export before new ones are dropped.
const QUEUE_SPANS: usize = 8192;
/// Spans sent in one OTLP request at most.
const MAX_BATCH: usize = 512;
/// One export may take this long before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter for {endpoint}")]
pub struct TracingError {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

/// The gateway's tracing: ids for trace context, and the span exporter
/// when one is configured.
pub struct Tracing {
    ids: RandomIdGenerator,
    otel: Option<Otel>,
}

struct Otel {
    tracer: SdkTracer,
    // Kept so the provider (and its processor) live as long as the tracer.
    _provider: SdkTracerProvider,
    queue: mpsc::Sender<Msg>,
}

impl fmt::Debug for Tracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracing")
            .field("exporting", &self.otel.is_some())
            .finish()
    }
}

impl Tracing {
    /// Trace context only; no spans are recorded.
    pub fn disabled() -> Self {
        Self {
            ids: RandomIdGenerator::default(),
            otel: None,
        }
    }

    /// Export spans to an OTLP/HTTP collector at `endpoint` (its base URL,
    /// e.g. `http://127.0.0.1:4318`; spans go to `/v1/traces`). Starts the
    /// export task on the current tokio runtime.
    pub fn otlp(endpoint: &str, service_name: &str) -> Result<Self, TracingError> {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|source| TracingError {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        let resource = Resource::builder()
            .with_service_name(service_name.to_owned())
            .build();
        exporter.set_resource(&resource);
        let (queue, rx) = mpsc::channel(QUEUE_SPANS);
        tokio::spawn(export_loop(exporter, rx));
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(QueueProcessor {
                queue: queue.clone(),
            })
            .build();
        let tracer = provider.tracer("pylon");
        Ok(Self {
            ids: RandomIdGenerator::default(),
            otel: Some(Otel {
                tracer,
                _provider: provider,
                queue,
            }),
        })
    }

    /// Whether spans are recorded and exported.
    pub fn is_exporting(&self) -> bool {
        self.otel.is_some()
    }

    /// Start the trace of one request: continue the client's `traceparent`
    /// when it is valid, else start a new trace.
    pub fn start_request(&self, headers: &HeaderMap, method: &str) -> RequestTrace {
        let parent = headers
            .get(TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        match &self.otel {
            Some(otel) => {
                let parent_cx = match &parent {
                    Some(p) => Context::new().with_remote_span_context(p.clone()),
                    None => Context::new(),
                };
                let span = otel
                    .tracer
                    .span_builder(method.to_owned())
                    .with_kind(SpanKind::Server)
                    .with_attributes([KeyValue::new("http.request.method", method.to_owned())])
                    .start_with_context(&otel.tracer, &parent_cx);
                let sc = span.span_context().clone();
                RequestTrace {
                    trace_id: sc.trace_id(),
                    span_id: sc.span_id(),
                    flags: sc.trace_flags(),
                    cx: Some(parent_cx.with_span(span)),
                }
            }
            None => RequestTrace {
                trace_id: parent
                    .as_ref()
                    .map_or_else(|| self.ids.new_trace_id(), SpanContext::trace_id),
                span_id: self.ids.new_span_id(),
                flags: parent
                    .as_ref()
                    .map_or(TraceFlags::default(), SpanContext::trace_flags),
                cx: None,
            },
        }
    }

    /// Start a child span of `request` (a plugin call or an upstream call).
    /// `describe` gives its name and attributes; it is only called when
    /// spans are exported, so the request path allocates nothing for
    /// tracing otherwise.
    pub fn child(
        &self,
        request: &RequestTrace,
        kind: SpanKind,
        describe: impl FnOnce() -> (String, Vec<KeyValue>),
    ) -> ChildSpan {
        match (&self.otel, &request.cx) {
            (Some(otel), Some(cx)) => {
                let (name, attributes) = describe();
                let span = otel
                    .tracer
                    .span_builder(name)
                    .with_kind(kind)
                    .with_attributes(attributes)
                    .start_with_context(&otel.tracer, cx);
                ChildSpan {
                    span_id: span.span_context().span_id(),
                    trace_id: request.trace_id,
                    flags: request.flags,
                    span: Some(span),
                }
            }
            _ => ChildSpan {
                span_id: self.ids.new_span_id(),
                trace_id: request.trace_id,
                flags: request.flags,
                span: None,
            },
        }
    }

    /// Export every span ended so far (at shutdown), waiting at most `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        let Some(otel) = &self.otel else { return };
        let (done, wait) = oneshot::channel();
        if otel.queue.send(Msg::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(timeout, wait).await;
        }
    }
}

/// The trace of one request: its ids and, when exporting, its server span.
pub struct RequestTrace {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
    cx: Option<Context>,
}

impl RequestTrace {
    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id.to_bytes())
    }

    /// The trace id.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The request's (server) span id.
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// End the server span with the route and status (no-op when not exporting).
    pub fn end(&self, method: &str, route: Option<&str>, status: u16) {
        let Some(cx) = &self.cx else { return };
        let span = cx.span();
        if let Some(route) = route {
            span.update_name(format!("{method} {route}"));
            span.set_attribute(KeyValue::new("http.route", route.to_owned()));
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// A plugin or upstream call's span (or only its id when not exporting).
pub struct ChildSpan {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl ChildSpan {
    /// The `traceparent` naming this span as the parent, for the upstream.
    pub fn traceparent(&self) -> HeaderValue {
        format_traceparent(self.trace_id, self.span_id, self.flags)
    }

    /// Mark the span failed.
    pub fn fail(&mut self, description: String) {
        if let Some(span) = &mut self.span {
            span.set_status(Status::error(description));
        }
    }

    /// Add an attribute.
    pub fn set_attribute(&mut self, kv: KeyValue) {
        if let Some(span) = &mut self.span {
            span.set_attribute(kv);
        }
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        if let Some(span) = &mut self.span {
            span.end();
        }
    }
}

/// Parse a W3C `traceparent` (version `00`, or a later version read as
/// `00`): `vv-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase,
/// ids not all zero. Anything else is ignored (a new trace starts).
pub fn parse_traceparent(v: &[u8]) -> Option<SpanContext> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let lower_hex = |p: &str, n: usize| {
        p.len() == n && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !lower_hex(version, 2)
        || version == "ff"
        || !lower_hex(trace, 32)
        || !lower_hex(parent, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(parent).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::default(),
    ))
}

/// `00-<trace id>-<span id>-<flags>`.
pub fn format_traceparent(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> HeaderValue {
    // Every proxied request sends one: built in place, not through `format!`.
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    hex::encode_to_slice(trace_id.to_bytes(), &mut buf[3..35]).expect("32 hex digits fit");
    buf[35] = b'-';
    hex::encode_to_slice(span_id.to_bytes(), &mut buf[36..52]).expect("16 hex digits fit");
    buf[52] = b'-';
    hex::encode_to_slice([flags.to_u8()], &mut buf[53..55]).expect("2 hex digits fit");
    HeaderValue::from_bytes(&buf).expect("hex digits and dashes are a valid header value")
}

enum Msg {
    Span(Box<SpanData>),
    Flush(oneshot::Sender<()>),
}

/// Hands ended spans to the export task without blocking.
#[derive(Debug)]
struct QueueProcessor {
    queue: mpsc::Sender<Msg>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        // A full queue means the collector is behind: drop, never wait.
        let _ = self.queue.try_send(Msg::Span(Box::new(span)));
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Export what is queued, one batch at a time: whatever accumulated while
/// the previous export ran goes in the next (up to [`MAX_BATCH`]).
async fn export_loop(exporter: opentelemetry_otlp::SpanExporter, mut rx: mpsc::Receiver<Msg>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Span(span) => batch.push(*span),
                Msg::Flush(done) => flushes.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
            let n = spans.len();
            if let Err(err) = exporter.export(spans).await {
                tracing::warn!(error = %err, spans = n, "OTLP export failed; spans dropped");
            }
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_malformed() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(ok).unwrap();
        assert!(sc.is_sampled());
        let out = format_traceparent(sc.trace_id(), sc.span_id(), sc.trace_flags());
        assert_eq!(out.as_bytes(), ok);
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"garbage",
            b"",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future")
                .is_some()
        );
    }

    #[test]
    fn without_exporter_the_trace_id_is_continued_and_span_ids_are_new() {
        let t = Tracing::disabled();
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let req = t.start_request(&h, "GET");
        assert_eq!(req.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = t.child(&req, SpanKind::Client, || unreachable!("not exporting"));
        let tp = child.traceparent();
        let sc = parse_traceparent(tp.as_bytes()).unwrap();
        assert_eq!(sc.trace_id(), req.trace_id());
        assert_ne!(sc.span_id(), SpanId::from_hex("00f067aa0ba902b7").unwrap());
        assert!(sc.is_sampled());
        let fresh = t.start_request(&HeaderMap::new(), "GET");
        assert_ne!(fresh.trace_id(), TraceId::INVALID);
        assert_ne!(fresh.trace_id(), req.trace_id());
    }
}
