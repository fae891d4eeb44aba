//! [`MemoryKv`](super::MemoryKv): quotas, expiry, sweeping and atomic increments.

use std::sync::Arc;

use super::*;

/// Run a store future that never waits, to completion.
trait NowOrNever {
    fn now_or_never_ok(self);
}

impl<F: std::future::Future<Output = Result<(), KvError>>> NowOrNever for F {
    fn now_or_never_ok(self) {
        futures::executor::block_on(self).unwrap();
    }
}

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
    kv.set_at("k", Bytes::from_static(b"v"), Some(SEC), t0)
        .unwrap();
    assert!(kv.get_at("k", t0 + SEC / 2).is_some());
    assert!(kv.get_at("k", t0 + SEC).is_none());
    assert_eq!(kv.len(), 0, "lazy expiry removes the entry it touched");
}

#[test]
fn set_replaces_the_expiry() {
    let kv = MemoryKv::with_shards(1);
    let t0 = Instant::now();
    kv.set_at("k", Bytes::from_static(b"v"), Some(SEC), t0)
        .unwrap();
    kv.set_at("k", Bytes::from_static(b"w"), None, t0).unwrap();
    assert_eq!(kv.get_at("k", t0 + 10 * SEC).as_deref(), Some(&b"w"[..]));
}

#[test]
fn delete_of_an_expired_key_reports_false() {
    let kv = MemoryKv::with_shards(1);
    let t0 = Instant::now();
    kv.set_at("k", Bytes::from_static(b"v"), Some(SEC), t0)
        .unwrap();
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
    kv.set_at("s", Bytes::from_static(b"abc"), None, t0)
        .unwrap();
    assert!(matches!(
        kv.incr_at("s", 1, None, t0),
        Err(KvError::NotANumber { key }) if key == "s"
    ));
    kv.set_at("m", Bytes::from(i64::MAX.to_string()), None, t0)
        .unwrap();
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
fn expired_keys_nobody_reads_are_evicted_by_writes_and_the_sweeper() {
    let kv = MemoryKv::with_shards(1);
    let t0 = Instant::now();
    for i in 0..1000 {
        kv.set_at(&format!("old{i}"), Bytes::new(), Some(SEC), t0)
            .unwrap();
    }
    kv.set_at("new", Bytes::new(), None, t0 + 2 * SEC).unwrap();
    assert_eq!(kv.len(), 1, "a write evicts its shard's expired keys");

    let kv = MemoryKv::with_shards(8);
    for i in 0..1000 {
        kv.set(
            &format!("k{i}"),
            Bytes::new(),
            Some(Duration::from_millis(1)),
        )
        .now_or_never_ok();
    }
    let deadline = Instant::now() + 20 * SEC;
    while !kv.is_empty() {
        assert!(Instant::now() < deadline, "sweeper left {} keys", kv.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn quotas_bound_entries_and_bytes_per_namespace_and_count_refusals() {
    let kv = MemoryKv::with_shards(4);
    let t0 = Instant::now();
    let usage = kv
        .set_quota(
            "p",
            KvQuota {
                max_bytes: 100,
                max_entries: 3,
            },
        )
        .unwrap();
    for i in 0..3 {
        kv.set_at(&format!("p:{i}"), Bytes::from_static(b"v"), None, t0)
            .unwrap();
    }
    assert!(matches!(
        kv.set_at("p:3", Bytes::from_static(b"v"), None, t0),
        Err(KvError::QuotaExceeded {
            what: "entries",
            ..
        })
    ));
    // Replacing an entry needs no new one; other namespaces are not bound.
    kv.set_at("p:0", Bytes::from_static(b"w"), None, t0)
        .unwrap();
    kv.set_at("q:0", Bytes::from(vec![0; 1000]), None, t0)
        .unwrap();
    assert!(matches!(
        kv.set_at("p:1", Bytes::from(vec![0; 100]), None, t0),
        Err(KvError::QuotaExceeded { what: "bytes", .. })
    ));
    assert_eq!(usage.entries.load(Relaxed), 3);
    assert_eq!(usage.bytes.load(Relaxed), 3 * 4);
    assert_eq!(usage.refusals.load(Relaxed), 2);
    // Deleting and expiring give the room back.
    assert!(kv.delete_at("p:2", t0));
    kv.set_at("p:9", Bytes::from_static(b"v"), Some(SEC), t0)
        .unwrap();
    assert_eq!(usage.entries.load(Relaxed), 3);
    kv.inner.evict_expired(t0 + 2 * SEC);
    assert_eq!(usage.entries.load(Relaxed), 2);
    assert_eq!(kv.incr_at("p:n", 5, None, t0).unwrap(), 5);
    assert_eq!(usage.bytes.load(Relaxed), 2 * 4 + 4);
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
