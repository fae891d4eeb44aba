//! The idle instances of a `pooled` plugin on one route, kept per
//! data-plane worker. Not here: what an instance is or when one may be
//! reused (`instance`).

use std::sync::Mutex;

use crate::sync::lock;

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
    use super::IdlePool;
    use crate::workers::Workers;

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
