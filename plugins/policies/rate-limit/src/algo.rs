//! The two counting algorithms, written against a small [`Store`] trait
//! (the host's kv in the plugin, a map in unit tests). Both use only atomic
//! `incr` with TTL-on-create for admission, so they hold across gateway
//! instances sharing one store.
//!
//! Every request is counted first (`incr`) and then checked; a request that
//! is refused by any limit is uncounted again in every limit (`incr -1`), so
//! refused requests never use up quota. Concurrent requests may therefore see
//! a count that includes a request about to be rolled back and be refused a
//! moment early, never admitted beyond the limit.

use pylon_plugin_sdk::kv::KvError;

use crate::config::Limit;

/// The parts of the key-value store the algorithms use.
pub(crate) trait Store {
    /// Atomically add `delta` to the counter at `key` (created at 0 with
    /// `ttl_ms`) and return the new value.
    fn incr(&mut self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, KvError>;
    /// The value under `key`.
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Store `value` under `key` for `ttl_ms`.
    fn set(&mut self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), KvError>;
}

/// One limit's state after counting the current request.
#[derive(Debug, Clone)]
pub(crate) struct Usage {
    /// The request fits this limit.
    pub(crate) allowed: bool,
    /// The counter that took this request (for rolling it back).
    pub(crate) counter: String,
    /// Its TTL (so a rollback after an unlikely expiry cannot leave an
    /// immortal key).
    pub(crate) counter_ttl_ms: u64,
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    Sliding {
        limit: u64,
        per: u64,
        prev: u64,
        /// Requests in the current window, this one included.
        cur: u64,
        elapsed: u64,
    },
    Bucket {
        capacity_milli: u128,
        /// Tokens (in thousandths) at the start of window `window`.
        level_milli: u128,
        /// Requests admitted in window `window`, this one included.
        used: u64,
        refill_milli: u128,
        window_ms: u64,
        window: u64,
        now: u64,
    },
}

/// What a client is told about one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct View {
    /// `RateLimit-Limit`: requests per window, or the bucket's capacity.
    pub(crate) limit: u64,
    /// `RateLimit-Remaining`: requests that would be admitted right now.
    pub(crate) remaining: u64,
    /// Milliseconds until the quota is back to `limit` if nothing else arrives.
    pub(crate) reset_ms: u64,
    /// Milliseconds until one more request would be admitted (0: now).
    pub(crate) retry_ms: u64,
}

impl Usage {
    /// The client's view, with this request kept (`true`) or rolled back.
    pub(crate) fn view(&self, kept: bool) -> View {
        let undo = u64::from(!kept);
        match self.state {
            State::Sliding {
                limit,
                per,
                prev,
                cur,
                elapsed,
            } => sliding_view(limit, per, prev, cur.saturating_sub(undo), elapsed),
            State::Bucket {
                capacity_milli,
                level_milli,
                used,
                refill_milli,
                window_ms,
                window,
                now,
            } => {
                let tokens =
                    level_milli.saturating_sub(u128::from(used.saturating_sub(undo)) * 1000);
                let until = |target: u128| -> u64 {
                    if tokens >= target {
                        return 0;
                    }
                    let steps = (target - tokens).div_ceil(refill_milli);
                    let at = (u128::from(window) + steps) * u128::from(window_ms);
                    sat(at.saturating_sub(u128::from(now)))
                };
                View {
                    limit: sat(capacity_milli / 1000),
                    remaining: sat(tokens / 1000),
                    reset_ms: until(capacity_milli),
                    retry_ms: until(1000),
                }
            }
        }
    }
}

fn sat(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// The sliding-window view: the estimate is
/// `prev × (per − elapsed) / per + cur`, kept in units of `1/per` requests
/// so that everything stays in integers.
fn sliding_view(limit: u64, per: u64, prev: u64, cur: u64, elapsed: u64) -> View {
    let (l, w, p, c, e) = (
        u128::from(limit),
        u128::from(per),
        u128::from(prev),
        u128::from(cur),
        u128::from(elapsed),
    );
    let used = p * (w - e) + c * w;
    let remaining = sat((l * w).saturating_sub(used) / w);
    // When one more request fits: in this window once the previous
    // window's weight has decayed enough, else in the next window, where
    // this window's count becomes the decaying one.
    let retry_ms = if c < l {
        match ((l - c - 1) * w).checked_div(p) {
            None => 0,
            Some(slack) => sat((w - slack.min(w)).saturating_sub(e)),
        }
    } else {
        let need = w - ((l - 1) * w / c).min(w);
        sat(w - e + need)
    };
    let reset_ms = if c > 0 {
        sat(w - e + w)
    } else if p > 0 {
        sat(w - e)
    } else {
        0
    };
    View {
        limit,
        remaining,
        reset_ms,
        retry_ms,
    }
}

fn parse_count(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|b| std::str::from_utf8(&b).ok()?.trim().parse::<i64>().ok())
        .map_or(0, |n| u64::try_from(n).unwrap_or(0))
}

/// Slack added to every TTL so that instances with slightly different
/// clocks still find each other's counters.
const TTL_SLACK_MS: u64 = 1000;
/// No counter lives longer than this (two of the longest windows).
const MAX_TTL_MS: u64 = 2 * 366 * 24 * 3600 * 1000;

/// `<prefix>:<tag>:<n>`, the key of a counter. Written without the
/// formatting machinery, which cost more than the rest of building the key
/// (this runs two or three times per limit per request).
pub(crate) fn counter_key(prefix: &str, tag: &str, n: u64) -> String {
    let mut key = String::with_capacity(prefix.len() + tag.len() + 22);
    key.push_str(prefix);
    key.push(':');
    key.push_str(tag);
    key.push(':');
    push_u64(&mut key, n);
    key
}

/// Append `n` in decimal.
pub(crate) fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// Sliding window over two fixed-window counters `<prefix>:s:<n>`, where
/// `n = now / per`. The request is admitted when
/// `prev × (per − elapsed) / per + cur ≤ requests`, `elapsed` being the time
/// since the current window began and `cur` including this request.
pub(crate) fn sliding_window(
    store: &mut impl Store,
    prefix: &str,
    limit: &Limit,
    now: u64,
) -> Result<Usage, KvError> {
    let per = limit.per_ms;
    let n = now / per;
    let elapsed = now % per;
    let counter = counter_key(prefix, "s", n);
    let ttl = (2 * per + TTL_SLACK_MS).min(MAX_TTL_MS);
    let cur = store.incr(&counter, 1, ttl)?;
    let cur = u64::try_from(cur).unwrap_or(0);
    let prev = match n.checked_sub(1) {
        Some(p) => parse_count(store.get(&counter_key(prefix, "s", p))?),
        None => 0,
    };
    let (l, w) = (u128::from(limit.requests), u128::from(per));
    let used = u128::from(prev) * u128::from(per - elapsed) + u128::from(cur) * w;
    Ok(Usage {
        allowed: used <= l * w,
        counter,
        counter_ttl_ms: ttl,
        state: State::Sliding {
            limit: limit.requests,
            per,
            prev,
            cur,
            elapsed,
        },
    })
}

/// A token bucket with capacity `burst`, refilled with `requests` tokens per
/// `per`, in discrete steps.
///
/// Time is cut into windows of `w = max(1ms, per / requests)`, so that one
/// window refills (about) one token. The bucket's level at the start of a
/// window is kept under `<prefix>:t:l` as `"<window>:<thousandths>"`, and
/// the requests admitted during window `j` are counted with `incr` under
/// `<prefix>:t:<j>`. The first request of a window derives that window's
/// level from the last recorded one:
///
/// `level(j) = min(capacity, level(i) − admitted(i) + (j − i) × refill)`
///
/// (nothing was admitted between `i` and `j`, or the level would have been
/// recorded there), and a request is admitted while `admitted(j) ≤ level(j)`.
/// Admission within a window is exact across instances because it rests on
/// the atomic counter. The level record is a plain `set`: instances that
/// compute it concurrently compute the same value from the same counters;
/// a request still being counted in window `i` when window `j` starts can be
/// missed in `level(j)`, which admits at most that many extra requests.
/// Counters and the level expire once the bucket would be full again, which
/// is exactly what a missing level means.
pub(crate) fn token_bucket(
    store: &mut impl Store,
    prefix: &str,
    limit: &Limit,
    now: u64,
) -> Result<Usage, KvError> {
    let window_ms = (limit.per_ms / limit.requests).max(1);
    let refill_milli = (u128::from(window_ms) * u128::from(limit.requests) * 1000
        / u128::from(limit.per_ms))
    .max(1);
    let capacity_milli = u128::from(limit.burst) * 1000;
    let window = now / window_ms;
    let refill_windows = capacity_milli.div_ceil(refill_milli);
    let ttl = sat((refill_windows + 2) * u128::from(window_ms))
        .saturating_add(TTL_SLACK_MS)
        .min(MAX_TTL_MS);

    let level_key = format!("{prefix}:t:l");
    let recorded = store.get(&level_key)?.and_then(|v| parse_level(&v));
    let level_milli = match recorded {
        None => {
            store.set(
                &level_key,
                format!("{window}:{capacity_milli}").as_bytes(),
                ttl,
            )?;
            capacity_milli
        }
        // Another instance's clock may run slightly ahead: take its level.
        Some((at, level)) if at >= window => level.min(capacity_milli),
        Some((at, level)) => {
            let admitted = parse_count(store.get(&counter_key(prefix, "t", at))?);
            let left = level.saturating_sub(u128::from(admitted) * 1000);
            let level = (left + u128::from(window - at) * refill_milli).min(capacity_milli);
            store.set(&level_key, format!("{window}:{level}").as_bytes(), ttl)?;
            level
        }
    };
    let counter = counter_key(prefix, "t", window);
    let used = store.incr(&counter, 1, ttl)?;
    let used = u64::try_from(used).unwrap_or(0);
    Ok(Usage {
        allowed: u128::from(used) * 1000 <= level_milli,
        counter,
        counter_ttl_ms: ttl,
        state: State::Bucket {
            capacity_milli,
            level_milli,
            used,
            refill_milli,
            window_ms,
            window,
            now,
        },
    })
}

fn parse_level(v: &[u8]) -> Option<(u64, u128)> {
    let (at, level) = std::str::from_utf8(v).ok()?.split_once(':')?;
    Some((at.parse().ok()?, level.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    struct Map(HashMap<String, Vec<u8>>);

    impl Store for Map {
        fn incr(&mut self, key: &str, delta: i64, _ttl_ms: u64) -> Result<i64, KvError> {
            let v = parse_count(self.0.get(key).cloned()) as i64 + delta;
            self.0.insert(key.into(), v.to_string().into_bytes());
            Ok(v)
        }
        fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
            Ok(self.0.get(key).cloned())
        }
        fn set(&mut self, key: &str, value: &[u8], _ttl_ms: u64) -> Result<(), KvError> {
            self.0.insert(key.into(), value.to_vec());
            Ok(())
        }
    }

    fn run(
        store: &mut Map,
        f: fn(&mut Map, &str, &Limit, u64) -> Result<Usage, KvError>,
        limit: &Limit,
        now: u64,
    ) -> (bool, View) {
        let u = f(store, "p", limit, now).unwrap();
        if !u.allowed {
            store.incr(&u.counter, -1, u.counter_ttl_ms).unwrap();
        }
        (u.allowed, u.view(u.allowed))
    }

    const L: Limit = Limit {
        requests: 3,
        per_ms: 1000,
        burst: 3,
    };

    #[test]
    fn sliding_window_counts_and_decays() {
        let mut s = Map::default();
        let mut allowed = 0;
        for _ in 0..5 {
            let (ok, v) = run(&mut s, sliding_window, &L, 10_100);
            allowed += usize::from(ok);
            assert_eq!(v.remaining, 3 - allowed as u64);
        }
        assert_eq!(allowed, 3, "refused requests are rolled back, not counted");
        // Blocked for the rest of the window, then until the previous
        // window's weight (3) has decayed to 2: a third into the next one.
        let (ok, v) = run(&mut s, sliding_window, &L, 10_900);
        assert!(!ok);
        assert_eq!(v.retry_ms, 100 + 334);
        assert_eq!(v.reset_ms, 1100);
        let (ok, _) = run(&mut s, sliding_window, &L, 11_300);
        assert!(!ok);
        let (ok, v) = run(&mut s, sliding_window, &L, 11_334);
        assert!(ok);
        assert_eq!(v.remaining, 0);
        // Two windows later everything is gone.
        let (ok, v) = run(&mut s, sliding_window, &L, 13_000);
        assert!(ok);
        assert_eq!(v.remaining, 2);
    }

    #[test]
    fn token_bucket_refills_one_token_per_interval() {
        let mut s = Map::default();
        let l = Limit {
            requests: 10,
            per_ms: 1000,
            burst: 3,
        };
        let results: Vec<_> = (0..4)
            .map(|_| run(&mut s, token_bucket, &l, 50_000).0)
            .collect();
        assert_eq!(results, [true, true, true, false]);
        let (_, v) = run(&mut s, token_bucket, &l, 50_050);
        assert_eq!(v.retry_ms, 50, "next token at the next 100ms step");
        assert_eq!(v.reset_ms, 250);
        let (ok, v) = run(&mut s, token_bucket, &l, 50_100);
        assert!(ok);
        assert_eq!(v.remaining, 0);
        assert!(!run(&mut s, token_bucket, &l, 50_150).0);
        // 250ms later: 2 more tokens, capped at the burst of 3 later on.
        assert!(run(&mut s, token_bucket, &l, 50_350).0);
        assert!(run(&mut s, token_bucket, &l, 50_350).0);
        assert!(!run(&mut s, token_bucket, &l, 50_350).0);
        let (ok, v) = run(&mut s, token_bucket, &l, 90_000);
        assert!(ok);
        assert_eq!(v.remaining, 2);
        assert_eq!(v.limit, 3);
    }

    #[test]
    fn token_bucket_fractional_refill() {
        // 3 per second: windows of 333ms refilling 0.999 tokens each.
        let mut s = Map::default();
        let l = Limit {
            requests: 3,
            per_ms: 1000,
            burst: 1,
        };
        assert!(run(&mut s, token_bucket, &l, 0).0);
        assert!(
            !run(&mut s, token_bucket, &l, 333).0,
            "0.999 tokens is not a token"
        );
        assert!(run(&mut s, token_bucket, &l, 666).0);
    }

    #[test]
    fn counter_keys_write_numbers_in_decimal() {
        assert_eq!(counter_key("r|0|ip:1", "s", 0), "r|0|ip:1:s:0");
        assert_eq!(counter_key("p", "t", 1234567890), "p:t:1234567890");
        assert_eq!(counter_key("p", "s", u64::MAX), format!("p:s:{}", u64::MAX));
    }
}
