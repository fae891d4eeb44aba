//! [`MemoryKv`]: the in-process key-value store, the default backend.
//!
//! The map is split into shards, each behind its own `std::sync::Mutex`
//! (never held across an `.await`), so concurrent requests on different keys
//! rarely contend. Expired entries are dropped lazily when touched, and each
//! shard sweeps itself after a number of writes proportional to its size, so
//! keys that are never read again do not accumulate while the cost of
//! sweeping stays amortised O(1) per write.
//!
//! It is not a cache with a size bound: a plugin that writes ever new keys
//! without a TTL grows it. Plugins that cache should always set a TTL.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Mutex,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;

use super::{KvError, KvStore};

/// Writes a shard takes at least before it sweeps out expired entries.
const MIN_WRITES_BETWEEN_SWEEPS: usize = 1024;

/// An in-memory [`KvStore`]: sharded, with lazy and periodic expiry.
pub struct MemoryKv {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Entry>,
    writes_since_sweep: usize,
}

struct Entry {
    value: Bytes,
    expires_at: Option<Instant>,
}

impl Entry {
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

impl Shard {
    /// The live entry under `key`, removing it first if it has expired.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.map.get(key).is_some_and(|e| !e.is_live(now)) {
            self.map.remove(key);
        }
        self.map.get_mut(key)
    }

    fn note_write(&mut self, now: Instant) {
        self.writes_since_sweep += 1;
        if self.writes_since_sweep >= MIN_WRITES_BETWEEN_SWEEPS.max(self.map.len() / 2) {
            self.map.retain(|_, e| e.is_live(now));
            self.writes_since_sweep = 0;
        }
    }
}

impl Default for MemoryKv {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryKv {
    /// An empty store with a shard count suited to this machine.
    pub fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self::with_shards((cpus * 4).next_power_of_two())
    }

    /// An empty store with `shards` shards (at least one).
    pub fn with_shards(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// The number of stored entries, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) as usize) % self.shards.len();
        lock(&self.shards[index])
    }

    fn get_at(&self, key: &str, now: Instant) -> Option<Bytes> {
        self.shard(key).live(key, now).map(|e| e.value.clone())
    }

    fn set_at(&self, key: &str, value: Bytes, ttl: Option<Duration>, now: Instant) {
        let mut shard = self.shard(key);
        let expires_at = ttl.map(|ttl| deadline(now, ttl));
        shard
            .map
            .insert(key.to_owned(), Entry { value, expires_at });
        shard.note_write(now);
    }

    fn delete_at(&self, key: &str, now: Instant) -> bool {
        let mut shard = self.shard(key);
        shard.map.remove(key).is_some_and(|e| e.is_live(now))
    }

    fn incr_at(
        &self,
        key: &str,
        delta: i64,
        ttl_on_create: Option<Duration>,
        now: Instant,
    ) -> Result<i64, KvError> {
        let mut shard = self.shard(key);
        let next = match shard.live(key, now) {
            Some(entry) => {
                let current = parse_integer(&entry.value).ok_or_else(|| KvError::NotANumber {
                    key: key.to_owned(),
                })?;
                let next = current
                    .checked_add(delta)
                    .ok_or_else(|| KvError::Overflow {
                        key: key.to_owned(),
                    })?;
                entry.value = Bytes::from(next.to_string());
                next
            }
            None => {
                let expires_at = ttl_on_create.map(|ttl| deadline(now, ttl));
                shard.map.insert(
                    key.to_owned(),
                    Entry {
                        value: Bytes::from(delta.to_string()),
                        expires_at,
                    },
                );
                delta
            }
        };
        shard.note_write(now);
        Ok(next)
    }
}

/// Lock a shard; a poisoned shard is still consistent (no operation panics
/// half-way through an update), so poisoning is ignored.
fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `now + ttl`, saturating far in the future for absurd TTLs.
fn deadline(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn parse_integer(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[async_trait]
impl KvStore for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        Ok(self.get_at(key, Instant::now()))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), KvError> {
        self.set_at(key, value, ttl, Instant::now());
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.delete_at(key, Instant::now()))
    }

    async fn incr(
        &self,
        key: &str,
        delta: i64,
        ttl_on_create: Option<Duration>,
    ) -> Result<i64, KvError> {
        self.incr_at(key, delta, ttl_on_create, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn set_get_delete_round_trip() {
        let kv = MemoryKv::new();
        assert_eq!(kv.get("a").await.unwrap(), None);
        kv.set("a", Bytes::from_static(b"\xff\x00bytes"), None)
            .await
            .unwrap();
        assert_eq!(
            kv.get("a").await.unwrap().as_deref(),
            Some(&b"\xff\x00bytes"[..])
        );
        assert!(kv.delete("a").await.unwrap());
        assert!(!kv.delete("a").await.unwrap());
        assert_eq!(kv.get("a").await.unwrap(), None);
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let kv = MemoryKv::with_shards(1);
        let t0 = Instant::now();
        kv.set_at("k", Bytes::from_static(b"v"), Some(SEC), t0);
        assert!(kv.get_at("k", t0 + SEC / 2).is_some());
        assert!(kv.get_at("k", t0 + SEC).is_none());
        assert_eq!(kv.len(), 0, "lazy expiry removes the entry it touched");
    }

    #[test]
    fn set_replaces_the_expiry() {
        let kv = MemoryKv::with_shards(1);
        let t0 = Instant::now();
        kv.set_at("k", Bytes::from_static(b"v"), Some(SEC), t0);
        kv.set_at("k", Bytes::from_static(b"w"), None, t0);
        assert_eq!(kv.get_at("k", t0 + 10 * SEC).as_deref(), Some(&b"w"[..]));
    }

    #[test]
    fn delete_of_an_expired_key_reports_false() {
        let kv = MemoryKv::with_shards(1);
        let t0 = Instant::now();
        kv.set_at("k", Bytes::from_static(b"v"), Some(SEC), t0);
        assert!(!kv.delete_at("k", t0 + 2 * SEC));
    }

    #[test]
    fn incr_creates_with_ttl_and_keeps_the_expiry() {
        let kv = MemoryKv::with_shards(1);
        let t0 = Instant::now();
        assert_eq!(kv.incr_at("n", 5, Some(SEC), t0).unwrap(), 5);
        // A later incr with another TTL does not extend the window.
        assert_eq!(
            kv.incr_at("n", -2, Some(10 * SEC), t0 + SEC / 2).unwrap(),
            3
        );
        assert_eq!(kv.get_at("n", t0 + SEC / 2).as_deref(), Some(&b"3"[..]));
        // Expired: counts from zero again, with the new TTL.
        assert_eq!(kv.incr_at("n", 1, Some(SEC), t0 + SEC).unwrap(), 1);
        assert!(kv.get_at("n", t0 + 2 * SEC).is_none());
    }

    #[test]
    fn incr_rejects_non_integers_and_overflow() {
        let kv = MemoryKv::with_shards(1);
        let t0 = Instant::now();
        kv.set_at("s", Bytes::from_static(b"abc"), None, t0);
        assert!(matches!(
            kv.incr_at("s", 1, None, t0),
            Err(KvError::NotANumber { key }) if key == "s"
        ));
        kv.set_at("m", Bytes::from(i64::MAX.to_string()), None, t0);
        assert!(matches!(
            kv.incr_at("m", 1, None, t0),
            Err(KvError::Overflow { .. })
        ));
        assert_eq!(
            kv.get_at("m", t0).as_deref(),
            Some(i64::MAX.to_string().as_bytes())
        );
    }

    #[test]
    fn sweeps_remove_expired_keys_nobody_reads() {
        let kv = MemoryKv::with_shards(1);
        let t0 = Instant::now();
        for i in 0..MIN_WRITES_BETWEEN_SWEEPS {
            kv.set_at(&format!("old{i}"), Bytes::new(), Some(SEC), t0);
        }
        for i in 0..MIN_WRITES_BETWEEN_SWEEPS {
            kv.set_at(&format!("new{i}"), Bytes::new(), None, t0 + 2 * SEC);
        }
        assert!(
            kv.len() <= MIN_WRITES_BETWEEN_SWEEPS + 1,
            "expired keys were swept, {} left",
            kv.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_incr_is_atomic() {
        let kv = Arc::new(MemoryKv::new());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let kv = kv.clone();
                tokio::spawn(async move {
                    for _ in 0..1000 {
                        kv.incr("hits", 1, None).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(kv.incr("hits", 0, None).await.unwrap(), 8000);
    }
}
