//! Where long guest calls finish: a small pool of low-priority threads
//! (`pylon-plugin`, scheduled `SCHED_IDLE`), away from the data-plane
//! workers that serve every connection.
//!
//! A hook call starts on the worker that serves its request and, nearly
//! always, ends there within its first poll. A call still running at an
//! epoch tick is CPU-bound guest code (the store's epoch callback marks it,
//! see `call::new_store`); from its next yield on, the rest of the call
//! runs on this pool while the worker goes back to its connections and
//! awaits the outcome. The pool's threads lower their own priority when
//! they start, so on a machine whose cores are all busy, the kernel gives
//! a worker with a ready connection the CPU before a hostile loop: under
//! Linux's `SCHED_IDLE` policy a waking worker preempts a pool thread at
//! once and the pool runs only on time the workers leave (a `nice` 19
//! thread still gets about 1.5% of a contended core and is preempted
//! only once it is a scheduling granularity ahead). An
//! unprivileged process may lower a thread's priority but never raise it
//! back: hence threads of their own, not workers that lend themselves.
//!
//! A plugin whose recent calls mostly ran long (a hostile loop, a heavy
//! policy) starts its next calls on the pool directly ([`Placement`]):
//! otherwise each of them would hold a worker for its first tick (about
//! a millisecond) before moving, and at hundreds of such calls a second
//! those first ticks alone fill a worker. The plugin's calls come back to
//! their worker once short ones outnumber long ones again.
//!
//! Not for: short calls (they never leave their worker and pay one box),
//! instantiation and `configure` (both bounded, neither on a hot path once
//! configuration happens at load).

use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
};

use tokio::runtime::{Builder, Runtime};
use tracing::instrument::{Instrument, WithSubscriber};

/// The `nice` value of the pool's threads: the lowest priority, kept as
/// the fallback where `SCHED_IDLE` is refused (other kernels, seccomp).
const NICE: i32 = 19;

thread_local! {
    /// Set by a store's epoch callback when the call it interrupts is
    /// long: read and cleared around every inline poll in [`run`].
    static WENT_LONG: Cell<bool> = const { Cell::new(false) };
}

/// Called by the epoch callback at a call's first tick.
pub(crate) fn mark_long() {
    WENT_LONG.with(|w| w.set(true));
}

thread_local! {
    /// Whether this thread is one of the pool's.
    static POOL_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Called by the epoch callback at every tick of a running call. On a
/// pool thread, give the core back to the kernel for a moment: a worker
/// with ready connections on the same core then runs at once, instead of
/// waiting for the end of the pool thread's time slice, which at `nice`
/// 19 on a busy core is still a few milliseconds (a scheduler tick is
/// 4 ms at the common HZ=250). Elsewhere it does nothing: a worker's
/// tasks yield through tokio.
pub(crate) fn tick() {
    if POOL_THREAD.with(Cell::get) {
        std::thread::yield_now();
    }
}

/// The pool, started on first use and never dropped (a tokio runtime must
/// not be dropped from async context, and this one lives as long as the
/// process): one thread per core, plus tokio's blocking threads, all with
/// every driver (host imports await kv on Redis and outbound HTTP there).
fn pool() -> &'static Runtime {
    static POOL: OnceLock<Runtime> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("pylon-plugin")
            .on_thread_start(start_pool_thread)
            .enable_all()
            .build()
            .expect("the plugin thread pool starts")
    })
}

/// Mark the calling thread as the pool's and lower its priority (Linux:
/// `setpriority` and `sched_setscheduler` on a thread id apply to that
/// thread alone). Failure only costs isolation.
fn start_pool_thread() {
    POOL_THREAD.with(|p| p.set(true));
    if let Err(err) = rustix::process::setpriority_process(None, NICE) {
        tracing::warn!(error = %err, "plugin thread keeps normal priority");
    }
    if let Err(err) = schedule_idle() {
        tracing::warn!(error = %err, "plugin thread runs at nice {NICE}, not SCHED_IDLE");
    }
}

/// Put the calling thread under `SCHED_IDLE`. rustix does not offer
/// `sched_setscheduler`, hence the one libc call.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn schedule_idle() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialised `sched_param` that outlives
    // the call, which only reads it; pid 0 names the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn schedule_idle() -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// The calling thread's scheduling policy (Linux), for the tests.
#[cfg(all(test, target_os = "linux"))]
#[allow(unsafe_code)]
fn policy() -> i32 {
    // SAFETY: no arguments but the pid; 0 names the calling thread.
    unsafe { libc::sched_getscheduler(0) }
}

/// Where one route plugin's calls start, learnt from how its recent calls
/// went: a score that a long call raises by [`LONG_WEIGHT`] and a short
/// one lowers by one, between 0 and [`MAX_SCORE`]. At [`START_ON_POOL`] or
/// more, calls start on the pool. So four long calls in a row move the
/// plugin, and it takes some fifty short calls to bring it back: a plugin
/// with as few as one long call in five stays on the pool.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    score: AtomicU32,
}

const LONG_WEIGHT: u32 = 4;
const MAX_SCORE: u32 = 64;
const START_ON_POOL: u32 = 16;

impl Placement {
    /// Whether this plugin's calls start on the pool.
    pub(crate) fn on_pool(&self) -> bool {
        self.score.load(Ordering::Relaxed) >= START_ON_POOL
    }

    fn record(&self, long: bool) {
        let _ = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(if long {
                    (s + LONG_WEIGHT).min(MAX_SCORE)
                } else {
                    s.saturating_sub(1)
                })
            });
    }
}

/// Run `call` inline and, once it has gone long, on the plugin pool; or
/// wholly on the pool when `placement` says the plugin's calls run long.
///
/// The call future owns everything it touches (store, guest handle), so it
/// can move between threads half-way; it comes boxed (`Unpin`), so moving
/// it to the pool moves a pointer. If this future is dropped (the
/// request went away) while the call is on the pool, the call is aborted
/// there. A panic in the call resumes here, as it would inline.
pub(crate) async fn run<F>(placement: &Placement, call: F) -> F::Output
where
    F: Future + Unpin + Send + 'static,
    F::Output: Send + 'static,
{
    let mut call = Watched {
        call,
        went_long: false,
    };
    if !placement.on_pool() {
        let inline = std::future::poll_fn(|cx| poll_inline(Pin::new(&mut call), cx)).await;
        if let Some((out, long)) = inline {
            placement.record(long);
            return out;
        }
    }
    // The pool's threads have no subscriber or span of their own: the
    // call's events (guest stdout/stderr, host `log`) keep the caller's,
    // so they reach the same log with the request's trace.
    let call = call
        .instrument(tracing::Span::current())
        .with_current_subscriber();
    let task = AbortOnDrop(pool().spawn(call));
    match task.await {
        Ok((out, long)) => {
            placement.record(long);
            out
        }
        Err(err) => match err.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only `AbortOnDrop` aborts, and it is gone by then; a pool
            // shutting down does not happen (never dropped).
            Err(err) => unreachable!("plugin pool task ended without an outcome: {err}"),
        },
    }
}

pin_project_lite::pin_project! {
    /// A call that notes whether it went long at any of its polls,
    /// wherever it is polled; its output is the call's and that.
    struct Watched<F> {
        #[pin]
        call: F,
        went_long: bool,
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = (F::Output, bool);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outer = WENT_LONG.with(|w| w.replace(false));
        let poll = this.call.poll(cx);
        let long = WENT_LONG.with(|w| w.replace(outer));
        *this.went_long |= long;
        poll.map(|out| (out, *this.went_long))
    }
}

/// One inline poll: `Ready(Some(out))` when the call finished,
/// `Ready(None)` when it went long and must move, `Pending` otherwise.
fn poll_inline<F: Future>(
    mut call: Pin<&mut Watched<F>>,
    cx: &mut Context<'_>,
) -> Poll<Option<(F::Output, bool)>> {
    match call.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending if call.went_long => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    }
}

/// A pool task that is aborted when its awaiting side goes away.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`run`] of `call`, boxed as the plugin's calls are.
    async fn run_boxed<F>(placement: &Placement, call: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        run(placement, Box::pin(call)).await
    }

    async fn run_default<F>(call: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        run_boxed(&Placement::default(), call).await
    }

    fn thread_name() -> Option<String> {
        std::thread::current().name().map(str::to_owned)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_that_never_goes_long_stays_on_its_thread() {
        let here = thread_name();
        let there = run_boxed(&Placement::default(), async {
            tokio::task::yield_now().await;
            thread_name()
        })
        .await;
        assert_eq!(there, here);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "current_thread")]
    async fn a_call_moves_to_the_low_priority_pool_at_its_first_long_yield() {
        let here = thread_name();
        let (before, after, priority) = run_boxed(&Placement::default(), async {
            let before = thread_name();
            mark_long();
            tokio::task::yield_now().await;
            let nice = rustix::process::getpriority_process(None).expect("getpriority");
            (before, thread_name(), (nice, policy()))
        })
        .await;
        assert_eq!(before, here);
        assert_eq!(after.as_deref(), Some("pylon-plugin"));
        assert_eq!(priority, (NICE, libc::SCHED_IDLE));
    }

    /// Events of a call that moved to the pool reach the caller's
    /// subscriber (here a thread-local one) inside the caller's span.
    #[tokio::test(flavor = "current_thread")]
    async fn a_call_on_the_pool_logs_to_the_callers_subscriber_in_its_span() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;

        /// (thread, span) of each event.
        type Events = Vec<(String, Option<String>)>;
        #[derive(Clone, Default)]
        struct Seen(Arc<Mutex<Events>>);
        impl<S> tracing_subscriber::Layer<S> for Seen
        where
            S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
        {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let span = ctx.event_span(event).map(|s| s.name().to_owned());
                let thread = thread_name().unwrap_or_default();
                self.0.lock().unwrap().push((thread, span));
            }
        }

        let seen = Seen::default();
        let _guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(seen.clone()));
        let span = tracing::info_span!("request");
        run_default(async {
            mark_long();
            tokio::task::yield_now().await;
            tracing::info!("from the pool");
        })
        .instrument(span)
        .await;
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            [("pylon-plugin".to_owned(), Some("request".to_owned()))]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_the_caller_aborts_the_call_on_the_pool() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let caller = tokio::spawn(run_default(async move {
            mark_long();
            tokio::task::yield_now().await;
            let _tx = tx;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        }));
        started_rx.await.expect("the call runs on the pool");
        caller.abort();
        // The call's future (holding `tx`) is dropped on the pool.
        assert!(rx.await.is_err());
    }

    async fn long_call() {
        mark_long();
        tokio::task::yield_now().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_plugin_whose_calls_run_long_starts_them_on_the_pool_until_short_ones_win() {
        let here = thread_name();
        let placement = Placement::default();
        for _ in 0..3 {
            run_boxed(&placement, long_call()).await;
        }
        assert!(
            !placement.on_pool(),
            "three long calls are not a pattern yet"
        );
        run_boxed(&placement, long_call()).await;
        assert!(placement.on_pool());
        // Now even a call that never goes long starts on the pool, and it
        // is not counted as long there.
        let there = run_boxed(&placement, async { thread_name() }).await;
        assert_eq!(there.as_deref(), Some("pylon-plugin"));
        let mut short = 1;
        while placement.on_pool() {
            run_boxed(&placement, async {}).await;
            short += 1;
            assert!(short < 100, "short calls never bring the plugin back");
        }
        assert_eq!(run_boxed(&placement, async { thread_name() }).await, here);
    }
}
