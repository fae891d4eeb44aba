//! Per-plugin counters, updated with relaxed atomics on every call and read
//! as a [`PluginStatsSnapshot`] (for the admin API and Prometheus).

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use super::pool::RecycleReason;
use crate::{pipeline::PluginError, sync::lock, workers::Striped};

/// Upper bounds of the latency histogram's buckets, in microseconds; a
/// last, unbounded bucket follows.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 10_000, 50_000, 250_000,
];

/// Live counters of one plugin (all routes together), kept per worker and
/// added up when read.
#[derive(Default)]
pub(crate) struct PluginStats {
    counters: Striped<Counters>,
    /// What the plugin holds in the in-memory kv store, once it has a quota.
    kv_usage: std::sync::Mutex<Option<std::sync::Arc<crate::kv::KvUsage>>>,
    /// kv writes refused (value too large, quota exceeded).
    kv_refusals: AtomicU64,
    /// Pooled instances retired before reuse, by route and reason: rare
    /// (one per instance lifetime), so a lock is cheap enough.
    recycled: std::sync::Mutex<std::collections::BTreeMap<(String, RecycleReason), u64>>,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    failures: AtomicU64,
    traps: AtomicU64,
    deadline_hits: AtomicU64,
    memory_hits: AtomicU64,
    invalid_outputs: AtomicU64,
    busy: AtomicU64,
    total_call_nanos: AtomicU64,
    instantiations: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

/// A point-in-time copy of one plugin's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginStatsSnapshot {
    /// Guest calls made (`configure`, `on-request`, `on-response`).
    pub calls: u64,
    /// Calls that failed, for any reason.
    pub failures: u64,
    /// Calls that trapped (panic, unreachable, denied `log`/`clock`, ...).
    pub traps: u64,
    /// Calls stopped at their deadline.
    pub deadline_hits: u64,
    /// Calls that failed after the memory cap refused a growth.
    pub memory_hits: u64,
    /// Calls whose result the host could not apply (malformed, or past an
    /// output cap).
    pub invalid_outputs: u64,
    /// Requests refused because the plugin was at its `max-concurrency`.
    pub busy: u64,
    /// Time spent in calls, in nanoseconds.
    pub total_call_nanos: u64,
    /// Instances created.
    pub instantiations: u64,
    /// kv writes refused: a value over `kv-max-value-size`, or past the
    /// in-memory store's quota.
    pub kv_refusals: u64,
    /// Bytes of keys and values the plugin holds in the in-memory kv store.
    pub kv_bytes: u64,
    /// Entries it holds there.
    pub kv_entries: u64,
    /// Call latency histogram: counts per bucket of
    /// [`LATENCY_BUCKETS_US`], then one for slower calls.
    pub latency_buckets: Vec<u64>,
    /// Pooled instances retired before reuse: `(route, reason, count)`,
    /// reason `memory` (past `recycle-memory-percent`) or `requests`
    /// (`recycle-after-requests`).
    pub recycled: Vec<(String, &'static str, u64)>,
}

impl PluginStats {
    /// Count one guest call, failed or not.
    pub(crate) fn record_call(&self, elapsed: Duration, error: Option<&PluginError>) {
        let c = self.counters.local();
        c.calls.fetch_add(1, Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        c.total_call_nanos.fetch_add(nanos, Relaxed);
        let us = nanos / 1_000;
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        c.latency[bucket].fetch_add(1, Relaxed);
        if let Some(err) = error {
            self.record_error(err);
        }
    }

    /// Count one failure by its class (also for failures outside calls,
    /// such as instantiation or invalid output).
    pub(crate) fn record_error(&self, err: &PluginError) {
        let c = self.counters.local();
        c.failures.fetch_add(1, Relaxed);
        let counter = match err {
            PluginError::Deadline { .. } => &c.deadline_hits,
            PluginError::Memory { .. } => &c.memory_hits,
            PluginError::Trap { .. } => &c.traps,
            PluginError::InvalidOutput { .. } => &c.invalid_outputs,
            PluginError::Busy { .. } => &c.busy,
            PluginError::Instantiate { .. } => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_kv_refusal(&self) {
        self.kv_refusals.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_kv_usage(&self, usage: Option<std::sync::Arc<crate::kv::KvUsage>>) {
        *lock(&self.kv_usage) = usage;
    }

    /// Count a pooled instance of `route` retired instead of reused.
    pub(crate) fn record_recycled(&self, route: &str, reason: RecycleReason) {
        *lock(&self.recycled)
            .entry((route.to_owned(), reason))
            .or_default() += 1;
    }

    pub(crate) fn record_instantiation(&self) {
        self.counters.local().instantiations.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> PluginStatsSnapshot {
        let kv = lock(&self.kv_usage).clone();
        let sum = |f: fn(&Counters) -> &AtomicU64| -> u64 {
            self.counters.iter().map(|c| f(c).load(Relaxed)).sum()
        };
        PluginStatsSnapshot {
            calls: sum(|c| &c.calls),
            failures: sum(|c| &c.failures),
            traps: sum(|c| &c.traps),
            deadline_hits: sum(|c| &c.deadline_hits),
            memory_hits: sum(|c| &c.memory_hits),
            invalid_outputs: sum(|c| &c.invalid_outputs),
            busy: sum(|c| &c.busy),
            total_call_nanos: sum(|c| &c.total_call_nanos),
            instantiations: sum(|c| &c.instantiations),
            kv_refusals: self.kv_refusals.load(Relaxed),
            kv_bytes: kv.as_ref().map_or(0, |u| u.bytes.load(Relaxed) as u64),
            kv_entries: kv.as_ref().map_or(0, |u| u.entries.load(Relaxed) as u64),
            latency_buckets: (0..=LATENCY_BUCKETS_US.len())
                .map(|b| {
                    self.counters
                        .iter()
                        .map(|c| c.latency[b].load(Relaxed))
                        .sum()
                })
                .collect(),
            recycled: lock(&self.recycled)
                .iter()
                .map(|((route, reason), n)| (route.clone(), reason.as_str(), *n))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn calls_land_in_the_right_counters_and_buckets() {
        let s = PluginStats::default();
        s.record_call(Duration::from_micros(3), None);
        s.record_call(Duration::from_secs(1), None);
        let err = PluginError::Deadline {
            plugin: Arc::from("p"),
            deadline: Duration::from_millis(5),
        };
        s.record_call(Duration::from_millis(6), Some(&err));
        let snap = s.snapshot();
        assert_eq!(snap.calls, 3);
        assert_eq!(snap.failures, 1);
        assert_eq!(snap.deadline_hits, 1);
        assert_eq!(snap.latency_buckets[0], 1);
        assert_eq!(snap.latency_buckets[LATENCY_BUCKETS_US.len()], 1);
        assert_eq!(snap.latency_buckets.iter().sum::<u64>(), 3);
    }
}
