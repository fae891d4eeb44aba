//! The label sets of pylon's series, and the public enums that name a
//! label's values ([`ReloadResult`], [`UpstreamErrorKind`],
//! [`CloseReason`]); the duration buckets of its histograms.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, histogram::Histogram},
};

/// Upper bounds (seconds) of request and upstream duration buckets.
const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub(super) fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

pub(super) type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteStatus {
    pub(super) route: Arc<str>,
    pub(super) status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct UpstreamLabel {
    pub(super) upstream: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct UpstreamErrorLabels {
    pub(super) upstream: Arc<str>,
    pub(super) kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct UpstreamReason {
    pub(super) upstream: Arc<str>,
    pub(super) reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct UpstreamEvent {
    pub(super) upstream: Arc<str>,
    pub(super) event: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct UpstreamResult {
    pub(super) upstream: Arc<str>,
    pub(super) result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteKind {
    pub(super) route: Arc<str>,
    pub(super) kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteLabel {
    pub(super) route: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteReason {
    pub(super) route: Arc<str>,
    pub(super) reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabel {
    pub(super) result: &'static str,
}

/// How a reload ended, for `pylon_reloads_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new runtime is serving.
    Success,
    /// The old runtime keeps serving.
    Failure,
}

impl ReloadResult {
    /// The `result` label.
    pub(super) fn label(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
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
    pub(super) fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Failed => "failed",
            UpstreamErrorKind::Overflow => "overflow",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TlsConnectionLabels {
    pub(super) version: &'static str,
    pub(super) alpn: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabel {
    pub(super) reason: &'static str,
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
    /// Every reason, in the order of their counters.
    pub(crate) const ALL: [CloseReason; 7] = [
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
