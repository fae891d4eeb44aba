//! Prometheus metrics (OpenMetrics text at `GET /metrics` on the admin
//! listener), through the `prometheus-client` crate.
//!
//! One [`Metrics`] per gateway outlives reloads, so counters keep counting
//! across configuration changes. The request path never looks a label set
//! up in a shared map: each route gets a [`RouteMetrics`] and each upstream
//! an [`UpstreamMetrics`] when its runtime is built, and a route resolves
//! its `(route, status)` handles once per status it ever answers with.
//! Plugin counters live in the plugin runtime and are read at scrape time
//! by a collector, so plugin calls pay nothing extra.
//!
//! Series (all prefixed `pylon_`): `requests_total` and
//! `request_duration_seconds` by `route` and `status`;
//! `upstream_request_duration_seconds` and `upstream_errors_total` by
//! `upstream` (and `kind`: connect, timeout, failed, overflow,
//! body_timeout); `client_body_errors_total` by `route` and `kind`
//! (invalid, timeout); `plugin_calls_total`,
//! `plugin_call_duration_seconds`, `plugin_failures_total`,
//! `plugin_traps_total`, `plugin_deadline_hits_total`,
//! `plugin_memory_hits_total`, `plugin_instantiations_total` by `plugin`;
//! `reloads_total` by `result`; `open_connections`; `runtimes_alive`;
//! `access_log_dropped_total`; `connections_closed_total` by `reason` (a
//! connection limit ended it, [`CloseReason`]); `requests_refused_total`
//! by `reason` (`in_flight`); `stream_idle_timeouts_total`;
//! `tls_handshakes_total` by `result` (`success` or why it failed) and
//! `tls_connections_total` by `version` and `alpn`;
//! `tls_certificate_expiry_seconds` by `listener`, `name` and `sha256`
//! (seconds until a served certificate's `notAfter`, computed at scrape
//! time from what the listener serves now, so a reload updates it);
//! `tunnels_open`, `tunnels_total` by `route` and `tunnels_closed_total`
//! by `route` and `reason`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::{
    plugin::{LATENCY_BUCKETS_US, PluginLoader},
    sync::lock,
};

/// The label a request gets when no route matched it.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Upper bounds (seconds) of request and upstream duration buckets.
const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: Arc<str>,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    upstream: Arc<str>,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamReason {
    upstream: Arc<str>,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamEvent {
    upstream: Arc<str>,
    event: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamResult {
    upstream: Arc<str>,
    result: &'static str,
}

/// The upstream-resilience families, shared by every upstream's handles.
#[derive(Clone, Default)]
struct ResilienceFamilies {
    retries: Family<UpstreamReason, Counter>,
    retries_denied: Family<UpstreamReason, Counter>,
    target_events: Family<UpstreamEvent, Counter>,
    health_checks: Family<UpstreamResult, Counter>,
    shed: Family<UpstreamReason, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteKind {
    route: Arc<str>,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteReason {
    route: Arc<str>,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// How a reload ended, for `pylon_reloads_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new runtime is serving.
    Success,
    /// The old runtime keeps serving.
    Failure,
}

/// Why an upstream call failed, for `pylon_upstream_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Could not connect (refused, unreachable, connect timeout).
    Connect,
    /// No response head within the route's timeout.
    Timeout,
    /// The connection failed after it was made.
    Failed,
    /// The target's connections were all busy and the request could not
    /// queue for one (`max-pending`) or waited past `queue-timeout`.
    Overflow,
}

impl UpstreamErrorKind {
    fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Failed => "failed",
            UpstreamErrorKind::Overflow => "overflow",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsConnectionLabels {
    version: &'static str,
    alpn: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Why the gateway ended a client connection, for
/// `pylon_connections_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Accepted and closed at once: the listener was at `max-connections`.
    AtCapacity,
    /// No request arrived within `header-timeout` of connecting.
    NoRequest,
    /// No request in flight and nothing read for `idle-timeout`.
    Idle,
    /// A write to the socket made no progress for `send-timeout`.
    SendTimeout,
    /// A response waited on the client's flow-control window (or socket)
    /// for `send-timeout`.
    StalledReader,
    /// The client cancelled more requests than its reset budget.
    ResetBudget,
    /// `max-requests-per-connection` served (a graceful close).
    RequestLimit,
}

impl CloseReason {
    const ALL: [CloseReason; 7] = [
        CloseReason::AtCapacity,
        CloseReason::NoRequest,
        CloseReason::Idle,
        CloseReason::SendTimeout,
        CloseReason::StalledReader,
        CloseReason::ResetBudget,
        CloseReason::RequestLimit,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::AtCapacity => "at_capacity",
            CloseReason::NoRequest => "no_request",
            CloseReason::Idle => "idle",
            CloseReason::SendTimeout => "send_timeout",
            CloseReason::StalledReader => "stalled_reader",
            CloseReason::ResetBudget => "reset_budget",
            CloseReason::RequestLimit => "request_limit",
        }
    }
}

/// The gateway's metrics registry and the handles the request path updates.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    request_duration: HistogramFamily<RouteStatus>,
    upstream_duration: HistogramFamily<UpstreamLabel>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    resilience: ResilienceFamilies,
    client_body_errors: Family<RouteKind, Counter>,
    reloads: Family<ResultLabel, Counter>,
    open_connections: Gauge,
    runtimes_alive: Gauge,
    access_log_dropped: Counter,
    connections_closed: Family<ReasonLabel, Counter>,
    requests_refused_in_flight: Counter,
    stream_idle_timeouts: Counter,
    tls_handshakes: Family<ResultLabel, Counter>,
    tls_connections: Family<TlsConnectionLabels, Counter>,
    tls_certificates: Arc<Mutex<TlsCertificates>>,
    tunnels_open: Family<RouteLabel, Gauge>,
    tunnels: Family<RouteLabel, Counter>,
    tunnels_closed: Family<RouteReason, Counter>,
    routes: Mutex<HashMap<Arc<str>, Arc<RouteMetrics>>>,
    upstreams: Mutex<HashMap<Arc<str>, Arc<UpstreamMetrics>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with every pylon series; plugin series are read from
    /// `plugins` at scrape time.
    pub fn new(plugins: PluginLoader) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RouteStatus, Counter>::default();
        let request_duration: HistogramFamily<RouteStatus> =
            Family::new_with_constructor(duration_histogram);
        let upstream_duration: HistogramFamily<UpstreamLabel> =
            Family::new_with_constructor(duration_histogram);
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let client_body_errors = Family::<RouteKind, Counter>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let open_connections = Gauge::default();
        let runtimes_alive = Gauge::default();
        let access_log_dropped = Counter::default();
        registry.register(
            "pylon_requests",
            "Client requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "pylon_request_duration_seconds",
            "Time from request head to the last byte of the response, by route and status",
            request_duration.clone(),
        );
        registry.register(
            "pylon_upstream_request_duration_seconds",
            "Time until an upstream's response head (or failure), by upstream",
            upstream_duration.clone(),
        );
        registry.register(
            "pylon_upstream_errors",
            "Upstream calls that failed, by upstream and kind (connect, timeout, failed, \
             overflow: no connection free nor queue room; body_timeout: the response body \
             stalled)",
            upstream_errors.clone(),
        );
        let resilience = ResilienceFamilies::default();
        registry.register(
            "pylon_upstream_retries",
            "Retries sent to an upstream, by upstream and reason (connect: no connection or \
             nothing sent; reset: the connection failed before the response head; status: a \
             retried status such as 503)",
            resilience.retries.clone(),
        );
        registry.register(
            "pylon_upstream_retries_denied",
            "Retries not sent because the upstream's retry budget was spent, by upstream",
            resilience.retries_denied.clone(),
        );
        registry.register(
            "pylon_upstream_target_events",
            "Changes of a target's state, by upstream and event (ejected, returned: outlier \
             detection; open, half_open, closed: the breaker; unhealthy, healthy: active health \
             checks)",
            resilience.target_events.clone(),
        );
        registry.register(
            "pylon_upstream_health_checks",
            "Active health checks, by upstream and result (pass, fail)",
            resilience.health_checks.clone(),
        );
        registry.register(
            "pylon_upstream_shed",
            "Requests answered 503 at once because an upstream limit was reached, by upstream \
             and reason (max-requests, max-pending, queue-timeout)",
            resilience.shed.clone(),
        );
        registry.register(
            "pylon_client_body_errors",
            "Client request bodies that failed, by route and kind (invalid: bad framing, cut \
             short or reset; timeout: no data for the route's request-body-timeout)",
            client_body_errors.clone(),
        );
        registry.register(
            "pylon_reloads",
            "Configuration reloads, by result (success, failure)",
            reloads.clone(),
        );
        registry.register(
            "pylon_open_connections",
            "Client connections currently open",
            open_connections.clone(),
        );
        registry.register(
            "pylon_runtimes_alive",
            "Runtimes (configurations made live) not yet freed; 1 when no reload is draining",
            runtimes_alive.clone(),
        );
        registry.register(
            "pylon_access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        let connections_closed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "pylon_connections_closed",
            "Client connections the gateway ended because of a connection limit, by reason",
            connections_closed.clone(),
        );
        let requests_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "pylon_requests_refused",
            "Requests answered 503 at once because a listener limit was reached, by reason",
            requests_refused.clone(),
        );
        let requests_refused_in_flight = requests_refused.get_or_create_owned(&ReasonLabel {
            reason: "in_flight",
        });
        let stream_idle_timeouts = Counter::default();
        registry.register(
            "pylon_stream_idle_timeouts",
            "Requests ended because no body bytes moved either way for stream-idle-timeout",
            stream_idle_timeouts.clone(),
        );
        for reason in CloseReason::ALL {
            let _ = connections_closed.get_or_create(&ReasonLabel {
                reason: reason.label(),
            });
        }
        let tls_handshakes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "pylon_tls_handshakes",
            "TLS handshakes on client connections, by result (success, or why it failed: \
             timeout, closed, protocol_error, incompatible, unknown_sni, no_client_certificate, \
             bad_client_certificate, client_rejected, other)",
            tls_handshakes.clone(),
        );
        let tls_connections = Family::<TlsConnectionLabels, Counter>::default();
        registry.register(
            "pylon_tls_connections",
            "Client TLS connections established, by protocol version and ALPN protocol",
            tls_connections.clone(),
        );
        let tunnels_open = Family::<RouteLabel, Gauge>::default();
        registry.register(
            "pylon_tunnels_open",
            "Upgraded connections (WebSocket) being tunnelled now, by route",
            tunnels_open.clone(),
        );
        let tunnels = Family::<RouteLabel, Counter>::default();
        registry.register(
            "pylon_tunnels",
            "Upgraded connections (WebSocket) tunnelled, by route",
            tunnels.clone(),
        );
        let tunnels_closed = Family::<RouteReason, Counter>::default();
        registry.register(
            "pylon_tunnels_closed",
            "Tunnels ended, by route and reason (client_closed, upstream_closed, idle: no byte \
             either way for tunnel-idle-timeout, stalled: a side did not read for the \
             listener's send-timeout, error, shutdown)",
            tunnels_closed.clone(),
        );
        registry.register_collector(Box::new(PluginCollector { plugins }));
        let tls_certificates = Arc::new(Mutex::new(TlsCertificates::new()));
        registry.register_collector(Box::new(TlsCertificateCollector(tls_certificates.clone())));
        // Touch both results so a dashboard sees zeros before the first reload.
        for result in ["success", "failure"] {
            let _ = reloads.get_or_create(&ResultLabel { result });
        }
        Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            resilience,
            client_body_errors,
            reloads,
            open_connections,
            runtimes_alive,
            access_log_dropped,
            connections_closed,
            requests_refused_in_flight,
            stream_idle_timeouts,
            tls_handshakes,
            tls_connections,
            tls_certificates,
            tunnels_open,
            tunnels,
            tunnels_closed,
            routes: Mutex::new(HashMap::new()),
            upstreams: Mutex::new(HashMap::new()),
        }
    }

    /// Encode every series in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The content type of [`Metrics::encode`]'s output.
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// The handles of one route (shared by every runtime that has a route
    /// with this id). Called at load, not per request.
    pub fn route(&self, route: &str) -> Arc<RouteMetrics> {
        let mut routes = lock(&self.routes);
        if let Some(r) = routes.get(route) {
            return r.clone();
        }
        let id: Arc<str> = route.into();
        let body_errors = |kind: &'static str| {
            self.client_body_errors.get_or_create_owned(&RouteKind {
                route: id.clone(),
                kind,
            })
        };
        let r = Arc::new(RouteMetrics {
            client_body_invalid: body_errors("invalid"),
            client_body_timeout: body_errors("timeout"),
            tunnels: TunnelMetrics {
                open: self
                    .tunnels_open
                    .get_or_create_owned(&RouteLabel { route: id.clone() }),
                total: self
                    .tunnels
                    .get_or_create_owned(&RouteLabel { route: id.clone() }),
                closed: self.tunnels_closed.clone(),
            },
            route: id.clone(),
            requests: self.requests.clone(),
            durations: self.request_duration.clone(),
            by_status: ArcSwap::from_pointee(Vec::new()),
            grow: Mutex::new(()),
        });
        routes.insert(id, r.clone());
        r
    }

    /// The handles of one upstream. Called at load, not per request.
    pub fn upstream(&self, upstream: &str) -> Arc<UpstreamMetrics> {
        let mut upstreams = lock(&self.upstreams);
        if let Some(u) = upstreams.get(upstream) {
            return u.clone();
        }
        let name: Arc<str> = upstream.into();
        let errors = |kind: UpstreamErrorKind| {
            self.upstream_errors
                .get_or_create_owned(&UpstreamErrorLabels {
                    upstream: name.clone(),
                    kind: kind.label(),
                })
        };
        let u = Arc::new(UpstreamMetrics {
            duration: self.upstream_duration.get_or_create_owned(&UpstreamLabel {
                upstream: name.clone(),
            }),
            connect: errors(UpstreamErrorKind::Connect),
            timeout: errors(UpstreamErrorKind::Timeout),
            failed: errors(UpstreamErrorKind::Failed),
            overflow: errors(UpstreamErrorKind::Overflow),
            body_timeout: self
                .upstream_errors
                .get_or_create_owned(&UpstreamErrorLabels {
                    upstream: name.clone(),
                    kind: "body_timeout",
                }),
            name: name.clone(),
            families: self.resilience.clone(),
        });
        upstreams.insert(name, u.clone());
        u
    }

    /// Count a reload.
    pub fn reload(&self, result: ReloadResult) {
        let result = match result {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Reloads counted so far with this result.
    pub fn reloads(&self, result: ReloadResult) -> u64 {
        let result = match result {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        };
        self.reloads.get_or_create(&ResultLabel { result }).get()
    }

    /// The open-connections gauge (the server increments and decrements it).
    pub fn open_connections(&self) -> &Gauge {
        &self.open_connections
    }

    /// The counter of connections closed for `reason`.
    pub fn connections_closed(&self, reason: CloseReason) -> Counter {
        self.connections_closed.get_or_create_owned(&ReasonLabel {
            reason: reason.label(),
        })
    }

    /// The counter of requests refused at a listener's in-flight limit.
    pub fn requests_refused_in_flight(&self) -> &Counter {
        &self.requests_refused_in_flight
    }

    /// The counter of requests ended by the stream idle timeout.
    pub fn stream_idle_timeouts(&self) -> &Counter {
        &self.stream_idle_timeouts
    }

    /// Count a client TLS handshake that failed (`reason` is its label).
    pub fn tls_handshake_failed(&self, reason: &'static str) {
        self.tls_handshakes
            .get_or_create(&ResultLabel { result: reason })
            .inc();
    }

    /// Count an established client TLS connection.
    pub fn tls_connection(&self, version: &'static str, alpn: &'static str) {
        self.tls_handshakes
            .get_or_create(&ResultLabel { result: "success" })
            .inc();
        self.tls_connections
            .get_or_create(&TlsConnectionLabels { version, alpn })
            .inc();
    }

    /// Replace what `listener` (its bound address) serves, for
    /// `pylon_tls_certificate_expiry_seconds`: at start and after every
    /// reload that swapped its certificates.
    pub fn set_tls_certificates(&self, listener: &str, certificates: Vec<CertificateExpiry>) {
        lock(&self.tls_certificates).insert(listener.to_owned(), certificates);
    }

    /// The live-generations gauge (see [`GenerationsAlive`]).
    pub fn runtimes_alive(&self) -> &Gauge {
        &self.runtimes_alive
    }

    /// The counter of access log lines dropped under back-pressure.
    pub fn access_log_dropped(&self) -> &Counter {
        &self.access_log_dropped
    }
}

/// Counts one live runtime in `pylon_runtimes_alive` until dropped; a
/// runtime holds one, so the gauge shows whether old runtimes are freed.
pub struct GenerationsAlive(Gauge);

impl GenerationsAlive {
    /// Count one more live runtime.
    pub fn new(metrics: &Metrics) -> Self {
        metrics.runtimes_alive.inc();
        Self(metrics.runtimes_alive.clone())
    }
}

impl Drop for GenerationsAlive {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The metric handles of one route, resolved per status on first use.
pub struct RouteMetrics {
    route: Arc<str>,
    requests: Family<RouteStatus, Counter>,
    durations: HistogramFamily<RouteStatus>,
    by_status: ArcSwap<Vec<StatusHandles>>,
    grow: Mutex<()>,
    client_body_invalid: Counter,
    client_body_timeout: Counter,
    tunnels: TunnelMetrics,
}

/// A route's tunnel series.
struct TunnelMetrics {
    open: Gauge,
    total: Counter,
    closed: Family<RouteReason, Counter>,
}

/// Counts a tunnel as open until dropped, then as closed for the reason
/// last set.
pub struct TunnelGauge {
    route: Arc<RouteMetrics>,
    reason: &'static str,
}

impl TunnelGauge {
    /// Why the tunnel ended (counted when it is dropped).
    pub fn set_reason(&mut self, reason: &'static str) {
        self.reason = reason;
    }
}

impl Drop for TunnelGauge {
    fn drop(&mut self) {
        let t = &self.route.tunnels;
        t.open.dec();
        t.closed
            .get_or_create(&RouteReason {
                route: self.route.route.clone(),
                reason: self.reason,
            })
            .inc();
    }
}

struct StatusHandles {
    status: u16,
    requests: Counter,
    duration: Histogram,
}

impl RouteMetrics {
    /// The route's id (the `route` label).
    pub fn route(&self) -> &Arc<str> {
        &self.route
    }

    /// Count a client request body that failed: `timeout` when it went
    /// idle, else invalid (bad framing, cut short, reset).
    pub fn client_body_error(&self, timeout: bool) {
        if timeout {
            self.client_body_timeout.inc();
        } else {
            self.client_body_invalid.inc();
        }
    }

    /// Count a tunnel opened on this route; it counts as open until the
    /// gauge is dropped.
    pub fn tunnel_opened(self: &Arc<Self>) -> TunnelGauge {
        self.tunnels.total.inc();
        self.tunnels.open.inc();
        TunnelGauge {
            route: self.clone(),
            reason: "error",
        }
    }

    /// Count one answered request and its duration.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(h) = self.by_status.load().iter().find(|h| h.status == status) {
            h.requests.inc();
            h.duration.observe(secs);
            return;
        }
        // First request with this status on this route: resolve the
        // handles once (a route answers with a handful of statuses).
        let _one_writer = lock(&self.grow);
        let current = self.by_status.load_full();
        let handles = match current.iter().find(|h| h.status == status) {
            Some(h) => (h.requests.clone(), h.duration.clone()),
            None => {
                let labels = RouteStatus {
                    route: self.route.clone(),
                    status,
                };
                let h = StatusHandles {
                    status,
                    requests: self.requests.get_or_create_owned(&labels),
                    duration: self.durations.get_or_create_owned(&labels),
                };
                let pair = (h.requests.clone(), h.duration.clone());
                let mut next: Vec<StatusHandles> = current
                    .iter()
                    .map(|h| StatusHandles {
                        status: h.status,
                        requests: h.requests.clone(),
                        duration: h.duration.clone(),
                    })
                    .collect();
                next.push(h);
                self.by_status.store(Arc::new(next));
                pair
            }
        };
        handles.0.inc();
        handles.1.observe(secs);
    }
}

/// The metric handles of one upstream.
pub struct UpstreamMetrics {
    duration: Histogram,
    connect: Counter,
    timeout: Counter,
    failed: Counter,
    overflow: Counter,
    body_timeout: Counter,
    name: Arc<str>,
    families: ResilienceFamilies,
}

impl UpstreamMetrics {
    /// Record one call: its time to the response head (or failure) and,
    /// when it failed, why.
    pub fn record(&self, elapsed: Duration, error: Option<UpstreamErrorKind>) {
        self.duration.observe(elapsed.as_secs_f64());
        match error {
            None => {}
            Some(UpstreamErrorKind::Connect) => {
                self.connect.inc();
            }
            Some(UpstreamErrorKind::Timeout) => {
                self.timeout.inc();
            }
            Some(UpstreamErrorKind::Failed) => {
                self.failed.inc();
            }
            Some(UpstreamErrorKind::Overflow) => {
                self.overflow.inc();
            }
        }
    }

    /// Count a response body that stalled past the route's
    /// `response-body-timeout` (after the head was answered).
    pub fn body_timeout(&self) {
        self.body_timeout.inc();
    }

    /// Count a retry sent, for `reason` (`connect`, `reset`, `status`).
    pub fn retry(&self, reason: &'static str) {
        self.families
            .retries
            .get_or_create(&UpstreamReason {
                upstream: self.name.clone(),
                reason,
            })
            .inc();
    }

    /// Count a retry the retry budget denied.
    pub fn retry_denied(&self) {
        self.families
            .retries_denied
            .get_or_create(&UpstreamReason {
                upstream: self.name.clone(),
                reason: "budget",
            })
            .inc();
    }

    /// Count a change of a target's state (see `pylon_upstream_target_events`).
    pub fn target_event(&self, event: &'static str) {
        self.families
            .target_events
            .get_or_create(&UpstreamEvent {
                upstream: self.name.clone(),
                event,
            })
            .inc();
    }

    /// Count an active health check.
    pub fn health_check(&self, passed: bool) {
        self.families
            .health_checks
            .get_or_create(&UpstreamResult {
                upstream: self.name.clone(),
                result: if passed { "pass" } else { "fail" },
            })
            .inc();
    }

    /// Count a request shed by an upstream limit.
    pub fn shed(&self, reason: &'static str) {
        self.families
            .shed
            .get_or_create(&UpstreamReason {
                upstream: self.name.clone(),
                reason,
            })
            .inc();
    }
}

/// A certificate a TLS listener serves, as the expiry gauge sees it.
#[derive(Debug, Clone)]
pub struct CertificateExpiry {
    /// The first name it serves (a `*.` wildcard kept).
    pub name: String,
    /// SHA-256 of the leaf, hex (tells two certificates for one name apart).
    pub sha256: String,
    /// `notAfter`, seconds since the epoch.
    pub not_after: i64,
}

/// Served certificates by listener address.
type TlsCertificates = BTreeMap<String, Vec<CertificateExpiry>>;

/// Encodes `pylon_tls_certificate_expiry_seconds` at scrape time, so the
/// value counts down without a timer. Bounded: one series per configured
/// certificate.
struct TlsCertificateCollector(Arc<Mutex<TlsCertificates>>);

impl std::fmt::Debug for TlsCertificateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCertificateCollector")
            .finish_non_exhaustive()
    }
}

impl Collector for TlsCertificateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let served = lock(&self.0).clone();
        let mut family = encoder.encode_descriptor(
            "pylon_tls_certificate_expiry_seconds",
            "Seconds until a served TLS certificate expires (negative: expired), by listener, \
             name and sha256",
            None,
            MetricType::Gauge,
        )?;
        for (listener, certificates) in &served {
            for c in certificates {
                let labels = [
                    ("listener", listener.as_str()),
                    ("name", c.name.as_str()),
                    ("sha256", c.sha256.as_str()),
                ];
                prometheus_client::metrics::gauge::ConstGauge::new(c.not_after.saturating_sub(now))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Reads the plugin runtime's per-plugin counters at scrape time.
struct PluginCollector {
    plugins: PluginLoader,
}

impl std::fmt::Debug for PluginCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginCollector").finish_non_exhaustive()
    }
}

impl Collector for PluginCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.plugins.stats();
        type Field = fn(&crate::plugin::PluginStatsSnapshot) -> u64;
        let counters: [(&str, &str, Field); 9] = [
            (
                "pylon_plugin_calls",
                "Guest calls (configure, on-request, on-response), by plugin",
                |s| s.calls,
            ),
            (
                "pylon_plugin_failures",
                "Guest calls that failed for any reason, by plugin",
                |s| s.failures,
            ),
            (
                "pylon_plugin_traps",
                "Guest calls that trapped, by plugin",
                |s| s.traps,
            ),
            (
                "pylon_plugin_deadline_hits",
                "Guest calls stopped at their deadline, by plugin",
                |s| s.deadline_hits,
            ),
            (
                "pylon_plugin_memory_hits",
                "Guest calls that failed at the memory cap, by plugin",
                |s| s.memory_hits,
            ),
            (
                "pylon_plugin_instantiations",
                "Plugin instances created, by plugin",
                |s| s.instantiations,
            ),
            (
                "pylon_plugin_invalid_outputs",
                "Guest results the host refused (malformed or past an output cap), by plugin",
                |s| s.invalid_outputs,
            ),
            (
                "pylon_plugin_busy",
                "Requests refused because the plugin was at its max-concurrency, by plugin",
                |s| s.busy,
            ),
            (
                "pylon_plugin_kv_refusals",
                "Key-value writes refused (value too large, quota exceeded), by plugin",
                |s| s.kv_refusals,
            ),
        ];
        for (name, help, field) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (plugin, snap) in &stats {
                let labels = [("plugin", plugin.as_str())];
                ConstCounter::new(field(snap)).encode(family.encode_family(&labels)?)?;
            }
        }
        let gauges: [(&str, &str, Field); 2] = [
            (
                "pylon_plugin_kv_bytes",
                "Bytes of keys and values a plugin holds in the in-memory key-value store",
                |s| s.kv_bytes,
            ),
            (
                "pylon_plugin_kv_entries",
                "Entries a plugin holds in the in-memory key-value store",
                |s| s.kv_entries,
            ),
        ];
        for (name, help, field) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (plugin, snap) in &stats {
                let labels = [("plugin", plugin.as_str())];
                prometheus_client::metrics::gauge::ConstGauge::new(field(snap) as i64)
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "pylon_plugin_call_duration_seconds",
            "Guest call latency, by plugin",
            None,
            MetricType::Histogram,
        )?;
        for (plugin, snap) in &stats {
            let labels = [("plugin", plugin.as_str())];
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
                .iter()
                .map(|&us| us as f64 / 1e6)
                .chain(std::iter::once(f64::INFINITY))
                .zip(snap.latency_buckets.iter().copied())
                .collect();
            let sum = snap.total_call_nanos as f64 / 1e9;
            family
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, snap.calls, &buckets, None,
                )?;
        }
        Ok(())
    }
}
