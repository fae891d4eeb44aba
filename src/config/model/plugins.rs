//! The validated `[plugins.NAME]` sections: what a plugin is (component,
//! isolation, recycling) and what it may use (deadline, memory, body size,
//! concurrency, the key-value store, granted capabilities).

use std::{path::PathBuf, time::Duration};

use super::Location;

/// How plugin instances are isolated between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// A new instance per request: nothing leaks between requests.
    Fresh,
    /// Reused instances (never concurrently); an instance that failed is discarded.
    Pooled {
        /// Idle instances kept per route plugin.
        max_idle: usize,
    },
}

/// When a `pooled` instance is retired after a request instead of going
/// back to the idle pool (the next request gets a new instance of the
/// snapshot). An interpreter's heap (JavaScript, Python) only grows: without
/// this a long-lived instance ends at the memory cap and fails a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recycle {
    /// Retire an instance whose linear memory has grown to this share of
    /// the plugin's `memory` cap, in percent (1–100).
    pub memory_percent: u8,
    /// Retire an instance after it served this many requests; 0: never.
    pub after_requests: u64,
}

impl Default for Recycle {
    /// At 75% of the memory cap; no request limit.
    fn default() -> Self {
        Self {
            memory_percent: 75,
            after_requests: 0,
        }
    }
}

/// Host capabilities granted to a plugin; everything is denied by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// `pylon:plugin/log`.
    pub log: bool,
    /// `pylon:plugin/clock`.
    pub clock: bool,
    /// `pylon:plugin/kv`.
    pub kv: bool,
    /// Upstreams the plugin may call through `pylon:plugin/http-client`.
    pub http_upstreams: Vec<String>,
}

/// A plugin definition: a component and how to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginDef {
    /// The plugin's name.
    pub name: String,
    /// The component file (absolute, resolved against the config file's folder).
    pub component: PathBuf,
    /// Fresh or pooled instances.
    pub isolation: Isolation,
    /// When a pooled instance is retired rather than reused.
    pub recycle: Recycle,
    /// The longest one call may run.
    pub deadline: Duration,
    /// The linear-memory cap per instance.
    pub memory_limit_bytes: usize,
    /// The largest body buffered for this plugin (a 413 past it), and the
    /// largest body it may return.
    pub max_body_bytes: usize,
    /// Calls into the plugin in progress at once, all routes together;
    /// past it a request waits up to the deadline, then gets 503.
    pub max_concurrency: usize,
    /// What the plugin may keep in the key-value store.
    pub kv: KvLimits,
    /// Granted capabilities.
    pub grants: Grants,
    /// Where it was defined.
    pub location: Location,
}

/// Bounds on one plugin's use of the key-value store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Bytes of keys and values the plugin may hold in the in-memory store.
    pub max_bytes: usize,
    /// Entries it may hold in the in-memory store.
    pub max_entries: usize,
    /// The largest value it may store (both backends).
    pub max_value_bytes: usize,
}

impl Default for KvLimits {
    /// 64 MiB and 100,000 entries per plugin, values up to 1 MiB.
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_entries: 100_000,
            max_value_bytes: 1 << 20,
        }
    }
}
