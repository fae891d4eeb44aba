//! Prometheus metrics (OpenMetrics text at `GET /metrics` on the admin
//! listener), through the `prometheus-client` crate.
//!
//! One [`Metrics`] per gateway outlives reloads, so counters keep counting
//! across configuration changes. The request path never looks a label set
//! up in a shared map: each route gets a [`RouteMetrics`] and each upstream
//! an [`UpstreamMetrics`] when its generation is built, and a route resolves
//! its `(route, status)` handles once per status it ever answers with.
//! Plugin counters live in the plugin loader and are read at scrape time
//! by a collector, so plugin calls pay nothing extra.
//!
//! One file per family: `routes`, `upstreams`, `tls`, `plugins`; the label
//! sets and label enums are `labels`. This file registers them in order and
//! holds the process and connection series.
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

mod labels;
mod plugins;
mod routes;
mod tls;
mod upstreams;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub use labels::{CloseReason, ReloadResult, UpstreamErrorKind};
use labels::{ReasonLabel, ResultLabel};
use routes::RouteFamilies;
pub use routes::{RouteMetrics, TunnelGauge};
pub use tls::CertificateExpiry;
use tls::TlsFamilies;
use upstreams::UpstreamFamilies;
pub use upstreams::UpstreamMetrics;

use crate::{plugin::PluginLoader, sync::lock};

/// The label a request gets when no route matched it.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The gateway's metrics registry and the handles the request path updates.
pub struct Metrics {
    registry: Registry,
    route_families: RouteFamilies,
    upstream_families: UpstreamFamilies,
    process: ProcessSeries,
    connections: ConnectionSeries,
    tls: TlsFamilies,
    routes: Mutex<HashMap<Arc<str>, Arc<RouteMetrics>>>,
    upstreams: Mutex<HashMap<Arc<str>, Arc<UpstreamMetrics>>>,
}

/// The series of the process: reloads, generations alive, open
/// connections, access log lines dropped.
struct ProcessSeries {
    reloads: Family<ResultLabel, Counter>,
    open_connections: Gauge,
    runtimes_alive: Gauge,
    access_log_dropped: Counter,
}

impl ProcessSeries {
    fn register(registry: &mut Registry) -> Self {
        let s = Self {
            reloads: Family::default(),
            open_connections: Gauge::default(),
            runtimes_alive: Gauge::default(),
            access_log_dropped: Counter::default(),
        };
        registry.register(
            "pylon_reloads",
            "Configuration reloads, by result (success, failure)",
            s.reloads.clone(),
        );
        registry.register(
            "pylon_open_connections",
            "Client connections currently open",
            s.open_connections.clone(),
        );
        registry.register(
            "pylon_runtimes_alive",
            "Runtimes (configurations made live) not yet freed; 1 when no reload is draining",
            s.runtimes_alive.clone(),
        );
        registry.register(
            "pylon_access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            s.access_log_dropped.clone(),
        );
        // Touch both results so a dashboard sees zeros before the first reload.
        for result in ["success", "failure"] {
            let _ = s.reloads.get_or_create(&ResultLabel { result });
        }
        s
    }
}

/// The series of the listeners' connection limits.
struct ConnectionSeries {
    closed: Family<ReasonLabel, Counter>,
    refused_in_flight: Counter,
    stream_idle_timeouts: Counter,
}

impl ConnectionSeries {
    fn register(registry: &mut Registry) -> Self {
        let closed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "pylon_connections_closed",
            "Client connections the gateway ended because of a connection limit, by reason",
            closed.clone(),
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "pylon_requests_refused",
            "Requests answered 503 at once because a listener limit was reached, by reason",
            refused.clone(),
        );
        let refused_in_flight = refused.get_or_create_owned(&ReasonLabel {
            reason: "in_flight",
        });
        let stream_idle_timeouts = Counter::default();
        registry.register(
            "pylon_stream_idle_timeouts",
            "Requests ended because no body bytes moved either way for stream-idle-timeout",
            stream_idle_timeouts.clone(),
        );
        for reason in CloseReason::ALL {
            let _ = closed.get_or_create(&ReasonLabel {
                reason: reason.label(),
            });
        }
        Self {
            closed,
            refused_in_flight,
            stream_idle_timeouts,
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with every pylon series; plugin series are read from
    /// `plugins` at scrape time. Families are registered in the order
    /// `/metrics` lists them.
    pub fn new(plugins: PluginLoader) -> Self {
        let mut registry = Registry::default();
        let route_families = RouteFamilies::register_requests(&mut registry);
        let upstream_families = UpstreamFamilies::register(&mut registry);
        route_families.register_client_body_errors(&mut registry);
        let process = ProcessSeries::register(&mut registry);
        let connections = ConnectionSeries::register(&mut registry);
        let tls = TlsFamilies::register(&mut registry);
        route_families.register_tunnels(&mut registry);
        registry.register_collector(Box::new(plugins::PluginCollector { plugins }));
        tls.register_certificates(&mut registry);
        Self {
            registry,
            route_families,
            upstream_families,
            process,
            connections,
            tls,
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
        let r = Arc::new(self.route_families.handles(&id));
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
        let u = Arc::new(self.upstream_families.handles(&name));
        upstreams.insert(name, u.clone());
        u
    }

    /// Count a reload.
    pub fn reload(&self, result: ReloadResult) {
        self.process
            .reloads
            .get_or_create(&ResultLabel {
                result: result.label(),
            })
            .inc();
    }

    /// Reloads counted so far with this result.
    pub fn reloads(&self, result: ReloadResult) -> u64 {
        self.process
            .reloads
            .get_or_create(&ResultLabel {
                result: result.label(),
            })
            .get()
    }

    /// The open-connections gauge (the server increments and decrements it).
    pub fn open_connections(&self) -> &Gauge {
        &self.process.open_connections
    }

    /// The counter of connections closed for `reason`.
    pub fn connections_closed(&self, reason: CloseReason) -> Counter {
        self.connections.closed.get_or_create_owned(&ReasonLabel {
            reason: reason.label(),
        })
    }

    /// The counter of requests refused at a listener's in-flight limit.
    pub fn requests_refused_in_flight(&self) -> &Counter {
        &self.connections.refused_in_flight
    }

    /// The counter of requests ended by the stream idle timeout.
    pub fn stream_idle_timeouts(&self) -> &Counter {
        &self.connections.stream_idle_timeouts
    }

    /// Count a client TLS handshake that failed (`reason` is its label).
    pub fn tls_handshake_failed(&self, reason: &'static str) {
        self.tls.handshake_failed(reason);
    }

    /// Count an established client TLS connection.
    pub fn tls_connection(&self, version: &'static str, alpn: &'static str) {
        self.tls.connection(version, alpn);
    }

    /// Replace what `listener` (its bound address) serves, for
    /// `pylon_tls_certificate_expiry_seconds`: at start and after every
    /// reload that swapped its certificates.
    pub fn set_tls_certificates(&self, listener: &str, certificates: Vec<CertificateExpiry>) {
        self.tls.set_certificates(listener, certificates);
    }

    /// The live-generations gauge (see [`GenerationsAlive`]).
    pub fn runtimes_alive(&self) -> &Gauge {
        &self.process.runtimes_alive
    }

    /// The counter of access log lines dropped under back-pressure.
    pub fn access_log_dropped(&self) -> &Counter {
        &self.process.access_log_dropped
    }
}

/// Counts one live runtime in `pylon_runtimes_alive` until dropped; a
/// runtime holds one, so the gauge shows whether old runtimes are freed.
pub struct GenerationsAlive(Gauge);

impl GenerationsAlive {
    /// Count one more live runtime.
    pub fn new(metrics: &Metrics) -> Self {
        metrics.process.runtimes_alive.inc();
        Self(metrics.process.runtimes_alive.clone())
    }
}

impl Drop for GenerationsAlive {
    fn drop(&mut self) {
        self.0.dec();
    }
}
