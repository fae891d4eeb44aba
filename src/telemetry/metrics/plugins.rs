//! The plugin families (`pylon_plugin_*`): read from the plugin loader's
//! per-plugin counters at scrape time by a collector, so plugin calls pay
//! nothing for them.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::plugin::{LATENCY_BUCKETS_US, PluginLoader, PluginStatsSnapshot};

/// A plugin's counter, read from its stats snapshot.
type Field = fn(&PluginStatsSnapshot) -> u64;

/// The plugin counters: name, help, and the field read.
const COUNTERS: [(&str, &str, Field); 9] = [
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

/// The plugin gauges (key-value usage).
const GAUGES: [(&str, &str, Field); 2] = [
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

/// Reads the plugin loader's per-plugin counters at scrape time.
pub(super) struct PluginCollector {
    pub(super) plugins: PluginLoader,
}

impl std::fmt::Debug for PluginCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginCollector").finish_non_exhaustive()
    }
}

impl Collector for PluginCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.plugins.stats();
        for (name, help, field) in COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (plugin, snap) in &stats {
                let labels = [("plugin", plugin.as_str())];
                ConstCounter::new(field(snap)).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, field) in GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (plugin, snap) in &stats {
                let labels = [("plugin", plugin.as_str())];
                ConstGauge::new(field(snap) as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        encode_recycled(&mut encoder, &stats)?;
        encode_latency(&mut encoder, &stats)
    }
}

/// `pylon_plugin_instances_recycled_total{route,plugin,reason}`.
fn encode_recycled(
    encoder: &mut DescriptorEncoder,
    stats: &[(String, PluginStatsSnapshot)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "pylon_plugin_instances_recycled",
        "Pooled plugin instances retired instead of reused, before their memory reached the cap \
         (reason memory) or after recycle-after-requests requests (reason requests), by route and plugin",
        None,
        MetricType::Counter,
    )?;
    for (plugin, snap) in stats {
        for (route, reason, n) in &snap.recycled {
            let labels = [
                ("route", route.as_str()),
                ("plugin", plugin.as_str()),
                ("reason", *reason),
            ];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// `pylon_plugin_call_duration_seconds`, from each plugin's latency buckets.
fn encode_latency(
    encoder: &mut DescriptorEncoder,
    stats: &[(String, PluginStatsSnapshot)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "pylon_plugin_call_duration_seconds",
        "Guest call latency, by plugin",
        None,
        MetricType::Histogram,
    )?;
    for (plugin, snap) in stats {
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
