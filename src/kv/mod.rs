//! The key-value store behind the plugins' `kv` capability.
//!
//! [`KvStore`] is the narrow async interface the host side of
//! `pylon:plugin/kv` calls; [`MemoryKv`] is the in-process default. A shared
//! backend (Redis) implements the same trait so rate limits and caches hold
//! across gateway instances.
//!
//! This module knows nothing about plugins: per-plugin key namespacing and
//! capability checks live in `crate::plugin::host::kv`.

mod memory;
mod redis;

pub use memory::MemoryKv;
pub use redis::RedisKv;

use std::{
    sync::atomic::{AtomicU64, AtomicUsize},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;

/// A boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a key-value operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The backend could not be reached or failed.
    #[error("key-value backend unavailable")]
    Unavailable {
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// `incr` found a value that is not a decimal 64-bit integer.
    #[error("value under key `{key}` is not an integer")]
    NotANumber {
        /// The key (as stored, namespace included).
        key: String,
    },
    /// `incr` would leave the 64-bit signed range.
    #[error("incrementing key `{key}` would overflow")]
    Overflow {
        /// The key (as stored, namespace included).
        key: String,
    },
    /// The write would take the namespace past its quota (entries or
    /// bytes), even after expired entries were evicted.
    #[error("key-value quota of namespace `{namespace}` exceeded ({what})")]
    QuotaExceeded {
        /// The namespace (the plugin's name).
        namespace: String,
        /// Which bound: `entries` or `bytes`.
        what: &'static str,
    },
}

/// What one namespace (one plugin's keys) may hold in a store that keeps
/// its data in the gateway's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// Bytes of keys and values together.
    pub max_bytes: usize,
    /// Entries.
    pub max_entries: usize,
}

/// What one namespace holds now, and how often its writes were refused.
#[derive(Debug, Default)]
pub struct KvUsage {
    /// Bytes of keys and values, expired entries not yet evicted included.
    pub bytes: AtomicUsize,
    /// Entries, likewise.
    pub entries: AtomicUsize,
    /// Writes refused at the quota.
    pub refusals: AtomicU64,
}

/// An async key-value store with per-key expiry and atomic increment.
///
/// Keys are opaque strings (callers namespace them), values opaque bytes.
/// Every operation is atomic with respect to the others on the same key.
/// A key past its expiry behaves exactly like a missing key.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// The value under `key`, unless missing or expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError>;

    /// Store `value` under `key`, replacing any value and any expiry. With a
    /// `ttl` the key expires that long from now; without one it never does.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), KvError>;

    /// Remove `key`; `true` when it existed (and had not expired).
    async fn delete(&self, key: &str) -> Result<bool, KvError>;

    /// Atomically add `delta` to the decimal integer under `key` and return
    /// the new value. A missing (or expired) key counts as 0 and is created
    /// with `ttl_on_create`; an existing key keeps its expiry. The value is
    /// stored as ASCII decimal, the way Redis `INCRBY` stores it.
    async fn incr(
        &self,
        key: &str,
        delta: i64,
        ttl_on_create: Option<Duration>,
    ) -> Result<i64, KvError>;

    /// Bound what keys starting with `namespace` followed by `:` may hold
    /// (a later call replaces the bound), and return the namespace's usage
    /// counters, or `None` for a backend that keeps its data elsewhere
    /// (Redis bounds itself with `maxmemory`). Default: no bound.
    fn set_quota(&self, _namespace: &str, _quota: KvQuota) -> Option<std::sync::Arc<KvUsage>> {
        None
    }
}
