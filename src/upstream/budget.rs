//! The retry budget of one upstream (Envoy's `retry_budget`, with
//! Linkerd's floor in retries per second): a retry may go while the
//! retries in flight are within `ratio` of the upstream's requests in
//! flight (at least `min-concurrent`), or, past that, while a bucket of
//! `min-per-second` tokens (refilled at that rate, one second's worth at
//! most) has one left.
//!
//! Why the bucket: when a target dies, every request in flight on it fails
//! at the same instant, and their retries, all at once, outnumber a
//! concurrency share computed for steady traffic (3 of 16 clients' requests
//! in the benchmark; one 502 in two runs of four). The bucket lets such a
//! burst through, while a storm (every attempt failing, all the time) is
//! still held to the share plus `min-per-second`.
//!
//! Not here: whether a request may be retried at all (`proxy/forward.rs`).

use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering::Relaxed},
};

use tokio::time::Instant;

use super::policy::RetryBudget;
use crate::sync::lock;

/// The retries in flight on an upstream and the bucket past its share.
#[derive(Debug)]
pub(super) struct Budget {
    config: RetryBudget,
    in_flight: AtomicUsize,
    /// Tokens left and when they were counted.
    bucket: Mutex<(f64, Instant)>,
}

impl Budget {
    pub(super) fn new(config: RetryBudget) -> Self {
        let full = f64::from(config.min_per_second);
        Self {
            config,
            in_flight: AtomicUsize::new(0),
            bucket: Mutex::new((full, Instant::now())),
        }
    }

    /// Take a place for one retry, `active` requests (this one included)
    /// being in flight on the upstream; `false`: over the budget.
    pub(super) fn take(&self, active: usize, now: Instant) -> bool {
        let share = self
            .config
            .min_concurrent
            .max((self.config.ratio * active as f64) as usize);
        if self.in_flight.fetch_add(1, Relaxed) < share || self.token(now) {
            return true;
        }
        self.in_flight.fetch_sub(1, Relaxed);
        false
    }

    /// A retry taken with [`Budget::take`] ended.
    pub(super) fn release(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// Retries in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    fn token(&self, now: Instant) -> bool {
        let rate = f64::from(self.config.min_per_second);
        if rate == 0.0 {
            return false;
        }
        let mut b = lock(&self.bucket);
        let elapsed = now.saturating_duration_since(b.1).as_secs_f64();
        b.0 = (b.0 + elapsed * rate).min(rate);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(min_per_second: u32) -> Budget {
        Budget::new(RetryBudget {
            ratio: 0.2,
            min_concurrent: 3,
            min_per_second,
        })
    }

    #[test]
    fn past_the_share_a_burst_goes_on_the_bucket_then_its_rate() {
        let b = budget(10);
        let t0 = Instant::now();
        // 16 requests in flight: a share of 3, then 10 from the bucket.
        let taken = (0..20).filter(|_| b.take(16, t0)).count();
        assert_eq!(taken, 13);
        assert_eq!(b.in_flight(), 13);
        // Nothing back until time passes: 10 a second.
        assert!(!b.take(16, t0 + Duration::from_millis(50)));
        assert!(b.take(16, t0 + Duration::from_millis(150)));
        assert!(!b.take(16, t0 + Duration::from_millis(160)));
        // A second later the bucket is full again, never fuller.
        let later = t0 + Duration::from_secs(5);
        assert_eq!((0..20).filter(|_| b.take(16, later)).count(), 10);
    }

    #[test]
    fn within_the_share_no_token_is_spent_and_a_released_place_comes_back() {
        let b = budget(0);
        let t0 = Instant::now();
        // 40 in flight: 8.
        assert_eq!((0..20).filter(|_| b.take(40, t0)).count(), 8);
        b.release();
        assert!(b.take(40, t0));
        assert!(!b.take(40, t0), "no bucket when min-per-second = 0");
    }
}
