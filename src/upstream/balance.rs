//! Picking a target for one attempt: weighted round robin, least request
//! (power of two choices, optionally peak-EWMA) or consistent hashing on a
//! Maglev table, always among the targets that may take traffic now
//! ([`super::target`]) and preferring one the request has not tried yet.
//!
//! When no target may take traffic (all unhealthy, ejected or open), the
//! pick spreads over all of them, as Envoy's panic mode does: refusing
//! everything would turn a health-check mistake into a full outage. The
//! caller logs it.
//!
//! Not here: what the targets' states are, or when to retry.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{
    policy::Balance,
    target::{Admit, TargetState},
};

/// Entries in a Maglev table: prime, Envoy's default size.
pub(super) const MAGLEV_SIZE: usize = 65537;

/// The longest walk along the Maglev table past unavailable targets
/// before falling back to round robin (per target, plus a constant).
const HASH_WALK_PER_TARGET: usize = 16;

/// The result of a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pick {
    /// The target's index.
    pub(super) index: usize,
    /// It goes as its breaker's half-open probe.
    pub(super) probe: bool,
    /// No target could take traffic: panic mode.
    pub(super) panic: bool,
}

/// How one upstream picks.
#[derive(Debug)]
pub(super) struct Balancer {
    kind: Kind,
    /// Target indices in smooth weighted round-robin order.
    schedule: Vec<u32>,
    next: AtomicUsize,
}

#[derive(Debug)]
enum Kind {
    RoundRobin,
    LeastRequest { peak_ewma: bool },
    Hash { table: Vec<u32> },
}

impl Balancer {
    /// A balancer over `targets`.
    pub(super) fn new(balance: &Balance, targets: &[TargetState]) -> Self {
        let kind = match balance {
            Balance::RoundRobin => Kind::RoundRobin,
            Balance::LeastRequest { peak_ewma } => Kind::LeastRequest {
                peak_ewma: *peak_ewma,
            },
            Balance::Hash(_) => Kind::Hash {
                table: maglev(targets.iter().map(|t| t.name.as_str())),
            },
        };
        Self {
            kind,
            schedule: smooth_weighted(targets),
            next: AtomicUsize::new(0),
        }
    }

    /// Pick a target for an attempt. `key` is the request's hash (for a
    /// hashing balancer), `tried` the targets this request already tried,
    /// `admit` asks a target's state whether it may take the request (it
    /// may claim a breaker probe, so it is asked only of the target about
    /// to be returned, or of both P2C candidates).
    pub(super) fn pick(
        &self,
        targets: &[TargetState],
        key: Option<u64>,
        tried: &[usize],
        mut admit: impl FnMut(usize) -> Admit,
    ) -> Pick {
        let n = targets.len();
        let found = match (&self.kind, key) {
            (Kind::Hash { table }, Some(key)) if !table.is_empty() => {
                self.hashed(table, n, key, tried, &mut admit)
            }
            (Kind::LeastRequest { peak_ewma }, _) if n > 1 => {
                self.p2c(targets, *peak_ewma, tried, &mut admit)
            }
            _ => None,
        };
        if let Some(p) = found {
            return p;
        }
        if let Some(p) = self.scan(tried, true, &mut admit) {
            return p;
        }
        if let Some(p) = self.scan(tried, false, &mut admit) {
            return p;
        }
        // Panic mode: nothing may take traffic; an untried target first.
        let start = self.next.fetch_add(1, Relaxed);
        let index = (0..n)
            .map(|k| (start + k) % n)
            .find(|i| !tried.contains(i))
            .unwrap_or(start % n);
        Pick {
            index,
            probe: false,
            panic: true,
        }
    }

    /// Round robin over the weighted schedule from the next position.
    fn scan(
        &self,
        tried: &[usize],
        untried_only: bool,
        admit: &mut impl FnMut(usize) -> Admit,
    ) -> Option<Pick> {
        let len = self.schedule.len();
        let start = self.next.fetch_add(1, Relaxed);
        for k in 0..len {
            let i = self.schedule[(start + k) % len] as usize;
            if untried_only && tried.contains(&i) {
                continue;
            }
            match admit(i) {
                Admit::No => {}
                a => return Some(found(i, a)),
            }
        }
        None
    }

    fn p2c(
        &self,
        targets: &[TargetState],
        peak_ewma: bool,
        tried: &[usize],
        admit: &mut impl FnMut(usize) -> Admit,
    ) -> Option<Pick> {
        let n = targets.len();
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        let candidate = |i: usize, admit: &mut dyn FnMut(usize) -> Admit| {
            if tried.contains(&i) {
                return Admit::No;
            }
            admit(i)
        };
        let ca = candidate(a, admit);
        if ca == Admit::Probe {
            return Some(found(a, ca));
        }
        let cb = candidate(b, admit);
        if cb == Admit::Probe {
            return Some(found(b, cb));
        }
        let cost = |i: usize| {
            let t = &targets[i];
            let load = if peak_ewma {
                t.cost()
            } else {
                (t.in_flight() + 1) as f64
            };
            load / f64::from(t.weight)
        };
        match (ca, cb) {
            (Admit::Yes, Admit::Yes) => {
                Some(found(if cost(b) < cost(a) { b } else { a }, Admit::Yes))
            }
            (Admit::Yes, _) => Some(found(a, Admit::Yes)),
            (_, Admit::Yes) => Some(found(b, Admit::Yes)),
            _ => None,
        }
    }

    fn hashed(
        &self,
        table: &[u32],
        n: usize,
        key: u64,
        tried: &[usize],
        admit: &mut impl FnMut(usize) -> Admit,
    ) -> Option<Pick> {
        let start = (key % table.len() as u64) as usize;
        let walk = (n * HASH_WALK_PER_TARGET + 64).min(table.len());
        let mut last = usize::MAX;
        for k in 0..walk {
            let i = table[(start + k) % table.len()] as usize;
            if i == last || tried.contains(&i) {
                continue;
            }
            last = i;
            match admit(i) {
                Admit::No => {}
                a => return Some(found(i, a)),
            }
        }
        None
    }
}

fn found(index: usize, a: Admit) -> Pick {
    Pick {
        index,
        probe: a == Admit::Probe,
        panic: false,
    }
}

/// nginx's smooth weighted round robin, unrolled into one cycle: each
/// target appears `weight` times, spread out rather than in runs.
fn smooth_weighted(targets: &[TargetState]) -> Vec<u32> {
    let total: i64 = targets.iter().map(|t| i64::from(t.weight)).sum();
    let mut current = vec![0i64; targets.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, t) in targets.iter().enumerate() {
            current[i] += i64::from(t.weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

/// A Maglev lookup table (Eisenbud et al., 2016) over targets named
/// `names`: every target fills about the same share of entries, and adding
/// or removing one changes few entries besides its own.
pub(super) fn maglev<'a>(names: impl Iterator<Item = &'a str>) -> Vec<u32> {
    let m = MAGLEV_SIZE as u64;
    let perms: Vec<(u64, u64)> = names
        .map(|name| {
            let offset = hash_bytes(name.as_bytes(), 0x9e37_79b9) % m;
            let skip = hash_bytes(name.as_bytes(), 0x85eb_ca6b) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    if perms.is_empty() {
        return Vec::new();
    }
    let mut table = vec![u32::MAX; MAGLEV_SIZE];
    let mut next = vec![0u64; perms.len()];
    let mut filled = 0;
    'fill: loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while table[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            table[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == MAGLEV_SIZE {
                break 'fill;
            }
        }
    }
    table
}

/// A stable 64-bit hash (FNV-1a, then a splitmix64 finish for spread):
/// the same key lands on the same target in every pylon process.
pub fn hash_bytes(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::policy::HashOn;

    fn targets(names: &[&str]) -> Vec<TargetState> {
        names
            .iter()
            .map(|n| TargetState::new((*n).into(), 1))
            .collect()
    }

    #[test]
    fn round_robin_honours_weights_and_spreads_them() {
        let ts = vec![
            TargetState::new("a:1".into(), 3),
            TargetState::new("b:1".into(), 1),
        ];
        let b = Balancer::new(&Balance::RoundRobin, &ts);
        let picks: Vec<usize> = (0..8)
            .map(|_| b.pick(&ts, None, &[], |_| Admit::Yes).index)
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        assert!(
            !picks.windows(4).any(|w| w.iter().all(|&i| i == 0)),
            "{picks:?}"
        );
    }

    #[test]
    fn unavailable_and_tried_targets_are_skipped_then_panic() {
        let ts = targets(&["a:1", "b:1", "c:1"]);
        let b = Balancer::new(&Balance::RoundRobin, &ts);
        for _ in 0..10 {
            let p = b.pick(
                &ts,
                None,
                &[],
                |i| if i == 1 { Admit::No } else { Admit::Yes },
            );
            assert_ne!(p.index, 1);
            let p = b.pick(&ts, None, &[0], |_| Admit::Yes);
            assert_ne!(p.index, 0, "an untried target first");
        }
        // Only the tried one is available: it is retried rather than a dead one.
        let p = b.pick(
            &ts,
            None,
            &[0],
            |i| if i == 0 { Admit::Yes } else { Admit::No },
        );
        assert_eq!((p.index, p.panic), (0, false));
        let p = b.pick(&ts, None, &[], |_| Admit::No);
        assert!(p.panic);
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let ts = targets(&["a:1", "b:1"]);
        for _ in 0..5 {
            ts[0].start();
        }
        let b = Balancer::new(&Balance::LeastRequest { peak_ewma: false }, &ts);
        for _ in 0..20 {
            assert_eq!(b.pick(&ts, None, &[], |_| Admit::Yes).index, 1);
        }
    }

    #[test]
    fn hashing_is_stable_and_moves_few_keys_when_a_target_is_added() {
        let names: Vec<String> = (0..5).map(|i| format!("10.0.0.{i}:80")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let before = targets(&refs[..4]);
        let after = targets(&refs);
        let on = Balance::Hash(HashOn::ClientIp);
        let (b4, b5) = (Balancer::new(&on, &before), Balancer::new(&on, &after));
        let keys: Vec<u64> = (0..10_000u32)
            .map(|k| hash_bytes(&k.to_be_bytes(), 0))
            .collect();
        let pick =
            |b: &Balancer, ts: &[TargetState], k| b.pick(ts, Some(k), &[], |_| Admit::Yes).index;
        let (mut moved, mut elsewhere) = (0, 0);
        let mut counts = [0usize; 4];
        for &k in &keys {
            let i = pick(&b4, &before, k);
            assert_eq!(i, pick(&b4, &before, k), "same key, same target");
            counts[i] += 1;
            let j = pick(&b5, &after, k);
            if i != j {
                moved += 1;
                if j != 4 {
                    elsewhere += 1;
                }
            }
        }
        // Ideal: 1/5 of the keys move, all to the new target; Maglev is
        // within a few percent of that.
        assert!((1500..2600).contains(&moved), "moved {moved}");
        assert!(
            elsewhere < 500,
            "{elsewhere} keys moved between old targets"
        );
        assert!(
            counts.iter().all(|&c| (2000..3000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn hashing_walks_past_an_unavailable_target() {
        let ts = targets(&["a:1", "b:1", "c:1"]);
        let b = Balancer::new(&Balance::Hash(HashOn::ClientIp), &ts);
        for k in 0..200u64 {
            let key = hash_bytes(&k.to_be_bytes(), 0);
            let home = b.pick(&ts, Some(key), &[], |_| Admit::Yes).index;
            let p = b.pick(&ts, Some(key), &[], |i| {
                if i == home { Admit::No } else { Admit::Yes }
            });
            assert_ne!(p.index, home);
            assert!(!p.panic);
        }
    }
}
