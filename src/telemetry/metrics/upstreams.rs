//! The upstream families (`pylon_upstream_*`): call durations, errors by
//! kind, and the resilience counters (retries, target events, health
//! checks, shedding); and [`UpstreamMetrics`], the handles of one upstream.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::labels::{
    HistogramFamily, UpstreamErrorKind, UpstreamErrorLabels, UpstreamEvent, UpstreamLabel,
    UpstreamReason, UpstreamResult, duration_histogram,
};

/// The upstream-resilience families, shared by every upstream's handles.
#[derive(Clone, Default)]
struct ResilienceFamilies {
    retries: Family<UpstreamReason, Counter>,
    retries_denied: Family<UpstreamReason, Counter>,
    target_events: Family<UpstreamEvent, Counter>,
    health_checks: Family<UpstreamResult, Counter>,
    shed: Family<UpstreamReason, Counter>,
    resolutions: Family<UpstreamResult, Counter>,
}

/// Every upstream family, registered once; each upstream's handles are
/// resolved from them at load.
pub(super) struct UpstreamFamilies {
    duration: HistogramFamily<UpstreamLabel>,
    errors: Family<UpstreamErrorLabels, Counter>,
    resilience: ResilienceFamilies,
}

impl UpstreamFamilies {
    /// Register the upstream families in `registry`.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let duration: HistogramFamily<UpstreamLabel> =
            Family::new_with_constructor(duration_histogram);
        let errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "pylon_upstream_request_duration_seconds",
            "Time until an upstream's response head (or failure), by upstream",
            duration.clone(),
        );
        registry.register(
            "pylon_upstream_errors",
            "Upstream calls that failed, by upstream and kind (connect, timeout, failed, \
             overflow: no connection free nor queue room; body_timeout: the response body \
             stalled)",
            errors.clone(),
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
            "pylon_upstream_resolutions",
            "Look-ups of targets given by host name, by upstream and result (ok; fail: the last \
             addresses stay in use; changed: the addresses changed and the upstream balances over \
             the new set)",
            resilience.resolutions.clone(),
        );
        Self {
            duration,
            errors,
            resilience,
        }
    }

    /// The handles of the upstream `name`.
    pub(super) fn handles(&self, name: &Arc<str>) -> UpstreamMetrics {
        let errors = |kind: &'static str| {
            self.errors.get_or_create_owned(&UpstreamErrorLabels {
                upstream: name.clone(),
                kind,
            })
        };
        UpstreamMetrics {
            duration: self.duration.get_or_create_owned(&UpstreamLabel {
                upstream: name.clone(),
            }),
            connect: errors(UpstreamErrorKind::Connect.label()),
            timeout: errors(UpstreamErrorKind::Timeout.label()),
            failed: errors(UpstreamErrorKind::Failed.label()),
            overflow: errors(UpstreamErrorKind::Overflow.label()),
            body_timeout: errors("body_timeout"),
            name: name.clone(),
            families: self.resilience.clone(),
        }
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

    /// Count a look-up of a host-name target (`ok`, `fail`), or a change of
    /// the addresses (`changed`).
    pub fn resolution(&self, result: &'static str) {
        self.families
            .resolutions
            .get_or_create(&UpstreamResult {
                upstream: self.name.clone(),
                result,
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
