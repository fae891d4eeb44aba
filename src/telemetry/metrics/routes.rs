//! The route families (`pylon_requests_total`,
//! `pylon_request_duration_seconds`, `pylon_client_body_errors_total`, the
//! tunnel series) and [`RouteMetrics`], the handles of one route, which
//! resolves its `(route, status)` handles once per status it answers with.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::labels::{
    HistogramFamily, RouteKind, RouteLabel, RouteReason, RouteStatus, duration_histogram,
};
use crate::sync::lock;

/// Every route family, registered once; each route's handles are resolved
/// from them at load.
pub(super) struct RouteFamilies {
    requests: Family<RouteStatus, Counter>,
    request_duration: HistogramFamily<RouteStatus>,
    client_body_errors: Family<RouteKind, Counter>,
    tunnels_open: Family<RouteLabel, Gauge>,
    tunnels: Family<RouteLabel, Counter>,
    tunnels_closed: Family<RouteReason, Counter>,
}

impl RouteFamilies {
    /// Register the request families in `registry`.
    pub(super) fn register_requests(registry: &mut Registry) -> Self {
        let requests = Family::<RouteStatus, Counter>::default();
        let request_duration: HistogramFamily<RouteStatus> =
            Family::new_with_constructor(duration_histogram);
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
        Self {
            requests,
            request_duration,
            client_body_errors: Family::default(),
            tunnels_open: Family::default(),
            tunnels: Family::default(),
            tunnels_closed: Family::default(),
        }
    }

    /// Register the client body error family in `registry`.
    pub(super) fn register_client_body_errors(&self, registry: &mut Registry) {
        registry.register(
            "pylon_client_body_errors",
            "Client request bodies that failed, by route and kind (invalid: bad framing, cut \
             short or reset; timeout: no data for the route's request-body-timeout)",
            self.client_body_errors.clone(),
        );
    }

    /// Register the tunnel families in `registry`.
    pub(super) fn register_tunnels(&self, registry: &mut Registry) {
        registry.register(
            "pylon_tunnels_open",
            "Upgraded connections (WebSocket) being tunnelled now, by route",
            self.tunnels_open.clone(),
        );
        registry.register(
            "pylon_tunnels",
            "Upgraded connections (WebSocket) tunnelled, by route",
            self.tunnels.clone(),
        );
        registry.register(
            "pylon_tunnels_closed",
            "Tunnels ended, by route and reason (client_closed, upstream_closed, idle: no byte \
             either way for tunnel-idle-timeout, stalled: a side did not read for the \
             listener's send-timeout, error, shutdown)",
            self.tunnels_closed.clone(),
        );
    }

    /// The handles of the route `id`.
    pub(super) fn handles(&self, id: &Arc<str>) -> RouteMetrics {
        let body_errors = |kind: &'static str| {
            self.client_body_errors.get_or_create_owned(&RouteKind {
                route: id.clone(),
                kind,
            })
        };
        RouteMetrics {
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
        }
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
