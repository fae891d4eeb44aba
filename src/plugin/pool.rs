//! The idle instances of a `pooled` plugin on one route, kept per
//! data-plane worker, and the [`Recycler`] that retires an instance
//! before its memory reaches the cap. Not here: what an instance is or
//! when a failed one is dropped (`instance`).

use std::sync::Mutex;

use crate::{config::Recycle, sync::lock};

/// Why a pooled instance was retired after a request instead of reused
/// (the `reason` label of `pylon_plugin_instances_recycled_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RecycleReason {
    /// Its linear memory grew past `recycle-memory-percent` of the cap.
    Memory,
    /// It served `recycle-after-requests` requests.
    Requests,
}

impl RecycleReason {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Requests => "requests",
        }
    }
}

/// Decides, after each request, whether a pooled instance goes back to the
/// pool. An interpreter's heap (JavaScript, Python) only grows, and a call
/// that meets the memory cap fails its request: retiring the instance
/// while it still has room keeps every request served, at the price of
/// one instantiation of the snapshot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recycler {
    /// Retire at or past this many bytes of linear memory.
    memory_bytes: usize,
    /// Retire after this many requests; 0: never.
    after_requests: u64,
}

impl Recycler {
    pub(crate) fn new(recycle: Recycle, memory_limit: usize) -> Self {
        let share = memory_limit as u128 * u128::from(recycle.memory_percent.min(100)) / 100;
        Self {
            memory_bytes: usize::try_from(share).unwrap_or(usize::MAX),
            after_requests: recycle.after_requests,
        }
    }

    /// `None` to reuse an instance that holds `memory` bytes now, held
    /// `at_start` bytes when it was created, and has served `served`
    /// requests; else why it is retired. One that has not grown is kept
    /// whatever it holds: its replacement would start as large, so a
    /// snapshot already past the share would otherwise be replaced at
    /// every request.
    pub(crate) fn verdict(
        &self,
        memory: usize,
        at_start: usize,
        served: u64,
    ) -> Option<RecycleReason> {
        if memory >= self.memory_bytes && memory > at_start {
            Some(RecycleReason::Memory)
        } else if self.after_requests > 0 && served >= self.after_requests {
            Some(RecycleReason::Requests)
        } else {
            None
        }
    }
}

/// Instances kept for reuse, for `pooled` isolation: a stack per data-plane
/// worker (and one for calls off the data plane), so an instance keeps
/// serving the core whose caches hold its memory and store. The stacks
/// share `pool-size` between them; a worker whose stack is empty takes an
/// idle instance from another before creating one, and one whose stack is
/// full gives its instance to another with room.
pub(crate) struct IdlePool<T> {
    shards: Box<[Shard<T>]>,
}

/// One worker's idle instances, on its own cache lines.
#[repr(align(128))]
struct Shard<T> {
    cap: usize,
    idle: Mutex<Vec<T>>,
}

impl<T> IdlePool<T> {
    pub(crate) fn new(max_idle: usize, workers: usize) -> Self {
        let n = workers.max(1) + 1;
        let shards = (0..n)
            .map(|i| Shard {
                cap: max_idle / n + usize::from(i < max_idle % n),
                idle: Mutex::new(Vec::new()),
            })
            .collect();
        Self { shards }
    }

    /// Worker `w` uses stack `w`; everything off the data plane the last.
    fn home(&self) -> usize {
        let workers = self.shards.len() - 1;
        crate::workers::current().map_or(workers, |w| w % workers)
    }

    pub(crate) fn take(&self) -> Option<T> {
        let (home, n) = (self.home(), self.shards.len());
        (0..n).find_map(|i| lock(&self.shards[(home + i) % n].idle).pop())
    }

    pub(crate) fn put(&self, instance: T) {
        let (home, n) = (self.home(), self.shards.len());
        for i in 0..n {
            let shard = &self.shards[(home + i) % n];
            let mut idle = lock(&shard.idle);
            if idle.len() < shard.cap {
                idle.push(instance);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{IdlePool, RecycleReason, Recycler};
    use crate::{config::Recycle, workers::Workers};

    #[test]
    fn instances_are_recycled_past_the_memory_share_or_the_request_count() {
        const MIB: usize = 1 << 20;
        let r = Recycler::new(Recycle::default(), 64 * MIB);
        // 75% of 64 MiB is 48 MiB.
        assert_eq!(r.verdict(47 * MIB, 20 * MIB, 1_000_000), None);
        assert_eq!(
            r.verdict(48 * MIB, 20 * MIB, 1),
            Some(RecycleReason::Memory)
        );
        // A snapshot that starts past the share is kept until it grows.
        assert_eq!(r.verdict(50 * MIB, 50 * MIB, 5), None);
        assert_eq!(
            r.verdict(51 * MIB, 50 * MIB, 5),
            Some(RecycleReason::Memory)
        );

        let r = Recycler::new(
            Recycle {
                memory_percent: 100,
                after_requests: 3,
            },
            usize::MAX,
        );
        assert_eq!(r.verdict(usize::MAX - 1, 0, 2), None);
        assert_eq!(r.verdict(1, 0, 3), Some(RecycleReason::Requests));
        assert_eq!(r.verdict(usize::MAX, 0, 1), Some(RecycleReason::Memory));
    }

    /// Run `f` on worker `w` and wait for its answer.
    fn on<R: Send + 'static>(
        workers: &Workers,
        w: usize,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        workers.handles()[w].spawn(async move { tx.send(f()).ok() });
        rx.recv().expect("worker answers")
    }

    #[test]
    fn idle_instances_stay_with_their_worker_and_are_shared_when_needed() {
        let workers = Workers::start(2).expect("workers");
        let pool = std::sync::Arc::new(IdlePool::<u32>::new(4, 2));
        let p = pool.clone();
        on(&workers, 0, move || {
            p.put(1);
            p.put(2);
        });
        let p = pool.clone();
        on(&workers, 1, move || p.put(3));
        // Each worker gets back what it released, newest first.
        let p = pool.clone();
        assert_eq!(on(&workers, 1, move || p.take()), Some(3));
        let p = pool.clone();
        assert_eq!(on(&workers, 0, move || p.take()), Some(2));
        // A worker with none idle takes another's rather than none.
        let p = pool.clone();
        assert_eq!(on(&workers, 1, move || p.take()), Some(1));
        let p = pool.clone();
        assert_eq!(on(&workers, 1, move || p.take()), None);

        // pool-size bounds the idle instances of all workers together; a
        // worker whose share is full hands its instance to another's.
        let p = pool.clone();
        on(&workers, 0, move || (10..20).for_each(|i| p.put(i)));
        let p = pool.clone();
        let kept = on(&workers, 1, move || std::iter::from_fn(|| p.take()).count());
        assert_eq!(kept, 4);
        assert_eq!(pool.take(), None);
    }

    #[test]
    fn a_pool_smaller_than_the_worker_count_still_keeps_its_instances() {
        let workers = Workers::start(2).expect("workers");
        let pool = std::sync::Arc::new(IdlePool::<u32>::new(1, 2));
        let p = pool.clone();
        on(&workers, 1, move || p.put(7));
        let p = pool.clone();
        assert_eq!(on(&workers, 1, move || p.take()), Some(7));
        // Off the data plane (load time, benchmarks) too.
        pool.put(8);
        assert_eq!(pool.take(), Some(8));
    }
}
