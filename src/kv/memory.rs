//! [`MemoryKv`]: the in-process key-value store, the default backend.
//!
//! The map is split into shards, each behind its own `std::sync::Mutex`
//! (never held across an `.await`), so concurrent requests on different keys
//! rarely contend.
//!
//! Bounded: each namespace (a plugin's keys, `<plugin>:…`) registered with
//! [`KvStore::set_quota`] may hold so many entries and so many bytes of keys
//! and values; a write past either is refused with
//! [`KvError::QuotaExceeded`] and counted. Expired entries are evicted
//! without anyone reading them: each shard keeps its keys with a TTL in
//! expiry order, drops the expired ones at the front before every write,
//! and a sweeper thread does the same for every shard once a second. So
//! expired entries are gone within a second, and a quota counts them only
//! that long.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;

use super::{KvError, KvQuota, KvStore, KvUsage};
use crate::sync::lock;

/// How often the sweeper evicts expired entries from every shard.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// An in-memory [`KvStore`]: sharded, with per-namespace quotas and
/// expiry that does not wait for reads.
pub struct MemoryKv {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    next_id: AtomicU64,
}

/// A namespace's quota and usage.
struct Namespace {
    name: String,
    max_bytes: AtomicUsize,
    max_entries: AtomicUsize,
    usage: Arc<KvUsage>,
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Entry>,
    /// Keys with a TTL, by expiry (the id tells equal instants apart).
    expiry: BTreeMap<(Instant, u64), String>,
}

struct Entry {
    value: Bytes,
    expires_at: Option<(Instant, u64)>,
    /// The quota it counts against, if its namespace has one.
    ns: Option<Arc<Namespace>>,
}

impl Entry {
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|(at, _)| now < at)
    }
}

fn size(key: &str, value: &[u8]) -> usize {
    key.len() + value.len()
}

impl Namespace {
    /// Take `bytes` more (and one more entry if `new_entry`), or refuse.
    fn reserve(&self, bytes: usize, new_entry: bool) -> Result<(), KvError> {
        let u = &self.usage;
        let refuse = |what| {
            u.refusals.fetch_add(1, Relaxed);
            KvError::QuotaExceeded {
                namespace: self.name.clone(),
                what,
            }
        };
        if new_entry && u.entries.fetch_add(1, Relaxed) >= self.max_entries.load(Relaxed) {
            u.entries.fetch_sub(1, Relaxed);
            return Err(refuse("entries"));
        }
        if u.bytes.fetch_add(bytes, Relaxed).saturating_add(bytes) > self.max_bytes.load(Relaxed) {
            u.bytes.fetch_sub(bytes, Relaxed);
            if new_entry {
                u.entries.fetch_sub(1, Relaxed);
            }
            return Err(refuse("bytes"));
        }
        Ok(())
    }

    fn release(&self, bytes: usize, entry: bool) {
        self.usage.bytes.fetch_sub(bytes, Relaxed);
        if entry {
            self.usage.entries.fetch_sub(1, Relaxed);
        }
    }
}

impl Shard {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        if let Some(at) = entry.expires_at {
            self.expiry.remove(&at);
        }
        if let Some(ns) = &entry.ns {
            ns.release(size(key, &entry.value), true);
        }
        Some(entry)
    }

    /// The live entry under `key`, removing it first if it has expired.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.map.get(key).is_some_and(|e| !e.is_live(now)) {
            self.remove(key);
        }
        self.map.get_mut(key)
    }

    /// Evict every entry expired at `now` (the front of the expiry index).
    fn evict_expired(&mut self, now: Instant) {
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(e) = self.map.remove(&key)
                && let Some(ns) = &e.ns
            {
                ns.release(size(&key, &e.value), true);
            }
        }
    }

    /// Store `value` under `key`, within the namespace's quota.
    fn put(
        &mut self,
        key: &str,
        value: Bytes,
        expires_at: Option<(Instant, u64)>,
        ns: Option<Arc<Namespace>>,
    ) -> Result<(), KvError> {
        let new_size = size(key, &value);
        // Only an entry that counts against the quota can lend it its room
        // (entries written before the namespace had a quota do not).
        let old = self
            .map
            .get(key)
            .filter(|e| e.ns.is_some())
            .map(|e| size(key, &e.value));
        if let Some(ns) = &ns {
            match old {
                Some(old) if new_size <= old => ns.release(old - new_size, false),
                Some(old) => ns.reserve(new_size - old, false)?,
                None => ns.reserve(new_size, true)?,
            }
        }
        let previous = self.map.insert(
            key.to_owned(),
            Entry {
                value,
                expires_at,
                ns,
            },
        );
        if let Some(at) = previous.and_then(|p| p.expires_at) {
            self.expiry.remove(&at);
        }
        if let Some(at) = expires_at {
            self.expiry.insert(at, key.to_owned());
        }
        Ok(())
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

    /// An empty store with `shards` shards (at least one), and its sweeper.
    pub fn with_shards(shards: usize) -> Self {
        let inner = Arc::new(Inner {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            hasher: RandomState::new(),
            namespaces: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        // Without a thread the store still works; expired entries then
        // leave at the next write to their shard.
        let _ = std::thread::Builder::new()
            .name("pylon-kv-sweep".into())
            .spawn(move || sweep_while_alive(weak));
        Self { inner }
    }

    /// The number of stored entries, expired ones not yet evicted included.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Evict every expired entry now (what the sweeper does each second).
    pub fn evict_expired(&self) {
        self.inner.evict_expired(Instant::now());
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let inner = &*self.inner;
        let index = (inner.hasher.hash_one(key) as usize) % inner.shards.len();
        lock(&inner.shards[index])
    }

    fn namespace(&self, key: &str) -> Option<Arc<Namespace>> {
        let (ns, _) = key.split_once(':')?;
        read(&self.inner.namespaces).get(ns).cloned()
    }

    fn expiry(&self, now: Instant, ttl: Option<Duration>) -> Option<(Instant, u64)> {
        ttl.map(|ttl| (deadline(now, ttl), self.inner.next_id.fetch_add(1, Relaxed)))
    }

    fn get_at(&self, key: &str, now: Instant) -> Option<Bytes> {
        self.shard(key).live(key, now).map(|e| e.value.clone())
    }

    fn set_at(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Result<(), KvError> {
        let ns = self.namespace(key);
        let expires_at = self.expiry(now, ttl);
        let mut shard = self.shard(key);
        shard.evict_expired(now);
        shard.put(key, value, expires_at, ns)
    }

    fn delete_at(&self, key: &str, now: Instant) -> bool {
        let mut shard = self.shard(key);
        shard.remove(key).is_some_and(|e| e.is_live(now))
    }

    fn incr_at(
        &self,
        key: &str,
        delta: i64,
        ttl_on_create: Option<Duration>,
        now: Instant,
    ) -> Result<i64, KvError> {
        let ns = self.namespace(key);
        let expires_at = self.expiry(now, ttl_on_create);
        let mut shard = self.shard(key);
        shard.evict_expired(now);
        let (next, keep) = match shard.live(key, now) {
            Some(entry) => {
                let current = parse_integer(&entry.value).ok_or_else(|| KvError::NotANumber {
                    key: key.to_owned(),
                })?;
                let next = current
                    .checked_add(delta)
                    .ok_or_else(|| KvError::Overflow {
                        key: key.to_owned(),
                    })?;
                (next, entry.expires_at)
            }
            None => (delta, expires_at),
        };
        shard.put(key, Bytes::from(next.to_string()), keep, ns)?;
        Ok(next)
    }
}

impl Inner {
    fn evict_expired(&self, now: Instant) {
        for shard in &*self.shards {
            lock(shard).evict_expired(now);
        }
    }
}

fn sweep_while_alive(store: Weak<Inner>) {
    loop {
        std::thread::sleep(SWEEP_INTERVAL);
        match store.upgrade() {
            Some(inner) => inner.evict_expired(Instant::now()),
            None => return,
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        self.set_at(key, value, ttl, Instant::now())
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

    fn set_quota(&self, namespace: &str, quota: KvQuota) -> Option<Arc<KvUsage>> {
        let mut namespaces = self
            .inner
            .namespaces
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ns = namespaces.entry(namespace.to_owned()).or_insert_with(|| {
            Arc::new(Namespace {
                name: namespace.to_owned(),
                max_bytes: AtomicUsize::new(quota.max_bytes),
                max_entries: AtomicUsize::new(quota.max_entries),
                usage: Arc::default(),
            })
        });
        ns.max_bytes.store(quota.max_bytes, Relaxed);
        ns.max_entries.store(quota.max_entries, Relaxed);
        Some(ns.usage.clone())
    }
}

#[cfg(test)]
mod tests;
