//! Unit tests of re-resolution: a resolver whose answer the test changes.

use std::{
    io,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use futures::future::BoxFuture;

use super::{Resolve, refresh};
use crate::{
    config,
    upstream::{Outcome, TargetRegistry, UpstreamPool, Upstreams},
};

/// Answers what the test last set.
struct Fake(Mutex<io::Result<Vec<SocketAddr>>>);

impl Fake {
    fn answer(&self, addrs: &[&str]) {
        *self.0.lock().unwrap() = Ok(addrs.iter().map(|a| a.parse().unwrap()).collect());
    }

    fn fail(&self) {
        *self.0.lock().unwrap() = Err(io::Error::other("SERVFAIL"));
    }
}

impl Resolve for Arc<Fake> {
    fn lookup(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        assert_eq!((host, port), ("svc.test", 8080));
        let answer = match &*self.0.lock().unwrap() {
            Ok(a) => Ok(a.clone()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        Box::pin(async move { answer })
    }
}

fn pool(extra: &str) -> Arc<UpstreamPool> {
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstreams.u]\n\
         targets = [\"svc.test:8080\", \"10.0.0.9:80\"]\n{extra}"
    );
    let cfg = config::parse(&text, Path::new("t.toml"), Path::new(".")).unwrap();
    let ups = Upstreams::try_new(&cfg.upstreams, 1, &TargetRegistry::new()).unwrap();
    ups.get("u").unwrap().clone()
}

fn names(pool: &UpstreamPool) -> Vec<String> {
    pool.target_states().map(|(n, _)| n).collect()
}

#[tokio::test]
async fn a_host_name_stands_for_each_address_and_follows_the_answer() {
    let pool = pool("");
    let dns = Arc::new(Fake(Mutex::new(Ok(Vec::new()))));
    // Before the first look-up: the name itself.
    assert_eq!(names(&pool), ["svc.test:8080", "10.0.0.9:80"]);

    dns.answer(&["10.0.0.2:8080", "10.0.0.1:8080", "10.0.0.2:8080"]);
    refresh(&pool, &dns).await;
    assert_eq!(
        names(&pool),
        [
            "svc.test:8080 (10.0.0.1:8080)",
            "svc.test:8080 (10.0.0.2:8080)",
            "10.0.0.9:80"
        ]
    );
    // 10.0.0.2 fails until ejected (5 in a row); 10.0.0.1 holds a request.
    let members = pool.members.load_full();
    let ids: Vec<usize> = members.endpoints.iter().map(|e| e.id).collect();
    let kept = members.endpoints[1].clone();
    for _ in 0..5 {
        let a = pool.admit(None, &[ids[0], ids[2]], false).unwrap();
        assert_eq!(a.target(), "svc.test:8080 (10.0.0.2:8080)");
        a.report(Outcome::Failure, None);
    }
    let held = pool.admit(None, &[ids[1], ids[2]], false).unwrap();
    assert_eq!(held.target(), "svc.test:8080 (10.0.0.1:8080)");

    // The same answer again: nothing is rebuilt.
    refresh(&pool, &dns).await;
    assert!(Arc::ptr_eq(&members, &pool.members.load_full()));

    // 10.0.0.1 goes, 10.0.0.3 comes: 10.0.0.2 keeps its endpoint and its
    // ejection; the request on 10.0.0.1 ends where it is.
    dns.answer(&["10.0.0.3:8080", "10.0.0.2:8080"]);
    refresh(&pool, &dns).await;
    assert_eq!(
        names(&pool),
        [
            "svc.test:8080 (10.0.0.2:8080)",
            "svc.test:8080 (10.0.0.3:8080)",
            "10.0.0.9:80"
        ]
    );
    let now = pool.members.load_full();
    assert!(Arc::ptr_eq(&now.endpoints[0], &kept));
    let states: Vec<_> = pool.target_states().collect();
    assert!(states[0].1.ejected_for.is_some(), "{:?}", states[0]);
    assert!(states[1].1.ejected_for.is_none());
    assert_eq!(held.target(), "svc.test:8080 (10.0.0.1:8080)");
    assert_eq!(pool.active().0, 1);
    drop(held);
    assert_eq!(pool.active().0, 0);
    // The ejected one gets nothing; the new one and the IP target do.
    for _ in 0..20 {
        let a = pool.admit(None, &[], false).unwrap();
        assert_ne!(a.target(), "svc.test:8080 (10.0.0.2:8080)");
    }

    // A failed look-up, or an empty answer, keeps the last addresses.
    dns.fail();
    refresh(&pool, &dns).await;
    dns.answer(&[]);
    refresh(&pool, &dns).await;
    assert!(Arc::ptr_eq(&now, &pool.members.load_full()));
}

#[tokio::test]
async fn a_request_avoids_a_target_it_tried_across_a_swap() {
    let pool = pool("");
    let dns = Arc::new(Fake(Mutex::new(Ok(Vec::new()))));
    dns.answer(&["10.0.0.1:8080"]);
    refresh(&pool, &dns).await;
    let first = pool.admit(None, &[], false).unwrap();
    let tried = [first.index()];
    let target = first.target().to_string();
    drop(first);
    dns.answer(&["10.0.0.1:8080", "10.0.0.5:8080"]);
    refresh(&pool, &dns).await;
    for _ in 0..20 {
        let retry = pool.admit(None, &tried, true).unwrap();
        assert_ne!(retry.target(), target);
    }
}

#[tokio::test]
async fn hashing_follows_the_new_set_and_keeps_the_keys_of_an_address_that_stays() {
    let pool = pool("balance = \"hash\"\nhash-on = \"client-ip\"\n");
    let dns = Arc::new(Fake(Mutex::new(Ok(Vec::new()))));
    dns.answer(&["10.0.0.1:8080", "10.0.0.2:8080"]);
    refresh(&pool, &dns).await;
    let pick = |key: u64| {
        pool.admit(Some(key), &[], false)
            .unwrap()
            .target()
            .to_string()
    };
    let keys: Vec<u64> = (0..3000u32)
        .map(|k| crate::upstream::hash_bytes(&k.to_be_bytes(), 0))
        .collect();
    let before: Vec<String> = keys.iter().map(|&k| pick(k)).collect();
    dns.answer(&["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]);
    refresh(&pool, &dns).await;
    let after: Vec<String> = keys.iter().map(|&k| pick(k)).collect();
    let new = "svc.test:8080 (10.0.0.3:8080)";
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let to_new = after.iter().filter(|a| *a == new).count();
    // Ideal: a quarter of the keys move, all to the new address.
    assert!(
        (500..1000).contains(&to_new),
        "{to_new} keys on the new address"
    );
    assert!(
        moved < to_new + 150,
        "{moved} moved, {to_new} to the new address"
    );
}
