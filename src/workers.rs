//! Data-plane worker threads: one single-threaded tokio runtime per worker,
//! each accepting on a socket of its own per listener (`SO_REUSEPORT`: the
//! kernel spreads connections over them) and serving its connections to the
//! end.
//!
//! A connection, its requests, its plugin calls and the upstream
//! connections it uses all stay on one thread, so the request path never
//! pays for a cross-thread wake-up (measured: a shared work-stealing runtime
//! cost about a quarter of the throughput on two cores). The control plane
//! (admin API, reloads, file watching) keeps running on the caller's runtime.

use std::{cell::Cell, thread, time::Duration};

use tokio::{runtime, sync::oneshot};

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker running the current thread, or `None` off the
/// data plane (control-plane tasks, tests, benchmarks).
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// How many [`Striped`] copies there are: more than the workers of any
/// machine this runs on would share a copy between two workers, which is
/// still correct, only slower.
const STRIPES: usize = 16;

/// One `T` per worker (plus one for threads off the data plane), each on
/// cache lines of its own, for counters every request updates: two workers
/// incrementing one shared atomic make its line move between their cores
/// on every call, which costs more than the increment.
pub struct Striped<T> {
    stripes: [Stripe<T>; STRIPES],
}

#[repr(align(128))]
struct Stripe<T>(T);

impl<T: Default> Default for Striped<T> {
    fn default() -> Self {
        Self {
            stripes: std::array::from_fn(|_| Stripe(T::default())),
        }
    }
}

impl<T> Striped<T> {
    /// The current worker's copy (off the data plane: the shared one).
    pub fn local(&self) -> &T {
        let i = current().map_or(0, |w| (w + 1) % STRIPES);
        &self.stripes[i].0
    }

    /// Every copy, to add them up.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.stripes.iter().map(|s| &s.0)
    }
}

/// Running worker threads. Dropping stops them; the tasks still on them are
/// dropped (the gateway drains before that).
pub struct Workers {
    handles: Vec<runtime::Handle>,
    stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Start `count` worker threads.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count {
            let rt = runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("pylon-worker-{index}"))
                .build()?;
            handles.push(rt.handle().clone());
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            stops.push(stop_tx);
            thread::Builder::new()
                .name(format!("pylon-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(Some(index)));
                    let _ = rt.block_on(stop_rx);
                    // Blocking-pool threads (e.g. a compile) get a moment to
                    // end; the process may be exiting anyway.
                    rt.shutdown_timeout(Duration::from_secs(1));
                })?;
        }
        Ok(Workers { handles, stops })
    }

    /// The runtimes to spawn data-plane tasks on, one per worker.
    pub fn handles(&self) -> &[runtime::Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_their_own_worker_and_stop_with_it() {
        let workers = Workers::start(2).expect("start");
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, h) in workers.handles().iter().enumerate() {
            let tx = tx.clone();
            h.spawn(async move { tx.send((i, current())).unwrap() });
        }
        let mut seen: Vec<_> = (0..2).map(|_| rx.recv().unwrap()).collect();
        seen.sort();
        assert_eq!(seen, vec![(0, Some(0)), (1, Some(1))]);
        assert_eq!(current(), None);
        let h = workers.handles()[0].clone();
        drop(workers);
        // The runtime is gone soon after: spawned work is no longer polled.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            drop(h.spawn(async move { tx.send(()).ok() }));
            if rx.recv_timeout(Duration::from_millis(50)).is_err() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "worker kept running");
        }
    }

    #[test]
    fn each_worker_counts_in_its_own_stripe_and_the_sum_sees_all() {
        use std::sync::{
            Arc,
            atomic::{AtomicU64, Ordering::Relaxed},
        };
        let workers = Workers::start(2).expect("start");
        let counts = Arc::new(Striped::<AtomicU64>::default());
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, h) in workers.handles().iter().enumerate() {
            let (counts, tx) = (counts.clone(), tx.clone());
            h.spawn(async move {
                counts.local().fetch_add(10 + i as u64, Relaxed);
                tx.send(std::ptr::from_ref(counts.local()) as usize)
                    .unwrap();
            });
        }
        let a = rx.recv().unwrap();
        let b = rx.recv().unwrap();
        assert_ne!(a, b, "two workers shared a stripe");
        assert_ne!(std::ptr::from_ref(counts.local()) as usize, a);
        counts.local().fetch_add(1, Relaxed);
        assert_eq!(counts.iter().map(|c| c.load(Relaxed)).sum::<u64>(), 22);
        assert_eq!(counts.local().load(Relaxed), 1);
    }
}
