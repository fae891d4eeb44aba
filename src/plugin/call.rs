//! The call policy: how every call into a plugin's instances is bounded and
//! accounted, whatever the instance and wherever it runs (request path,
//! load time, snapshot).
//!
//! - [`CallPolicy`]: the plugin's `max-concurrency` permits, deadline,
//!   memory cap, CPU slots (and when a call waits for one before it takes
//!   an instance) and where its calls start (`offload`);
//! - [`new_store`], [`arm`], [`arm_from`], [`disarm`]: a store's epoch behaviour (yield
//!   or trap at each tick) and the per-call deadline and memory refusal;
//! - [`finish`] and [`classify`]: a finished call accounted, and its
//!   failure turned into a [`PluginError`] by what wasmtime and the
//!   limiter report (never by message text).
//!
//! Not here: instances and the pipeline traits (`instance`), the idle pool
//! (`pool`), the engine and ticker (`engine`).

use std::{
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

use wasmtime::{Store, Trap, UpdateDeadline};

use super::{
    offload,
    state::{GuestContext, HostState},
    stats::PluginStats,
    ticker::EpochTicker,
};
use crate::{pipeline::PluginError, sync::lock};

/// How calls into one plugin's instances are bounded and accounted.
#[derive(Clone)]
pub(crate) struct CallPolicy {
    pub(crate) plugin: Arc<str>,
    /// Keeps the epoch advancing while a call runs.
    pub(crate) ticker: Arc<EpochTicker>,
    pub(crate) deadline: Duration,
    pub(crate) memory_limit: usize,
    /// The largest body the plugin may return (its `max-body-size`).
    pub(crate) max_body: usize,
    pub(crate) stats: Arc<PluginStats>,
    /// The plugin's `max-concurrency`: calls (and the instantiations
    /// before them) in progress at once, all routes together.
    pub(crate) calls: Arc<tokio::sync::Semaphore>,
    pub(crate) max_concurrency: usize,
    /// Calls that have run through an epoch tick (CPU-bound ones) that
    /// may run at once: one per worker thread.
    pub(crate) cpu: Arc<tokio::sync::Semaphore>,
    /// Where this route plugin's calls start (learnt from their length).
    pub(crate) placement: Arc<offload::Placement>,
}

impl CallPolicy {
    /// A permit to call into the plugin, waiting at most its deadline
    /// for one; past that, [`PluginError::Busy`] (counted).
    pub(crate) async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, PluginError> {
        let busy = || {
            let err = PluginError::Busy {
                plugin: self.plugin.clone(),
                max_concurrency: self.max_concurrency,
            };
            self.stats.record_error(&err);
            err
        };
        if let Ok(permit) = self.calls.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // Boxed: the wait is rare, and inline it would grow every call's
        // future (moved whole at least once per call).
        let wait = Box::pin(tokio::time::timeout(
            self.deadline,
            self.calls.clone().acquire_owned(),
        ));
        match wait.await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(busy()),
        }
    }

    /// Whether a call about to take an instance should first wait for a
    /// CPU slot: when the plugin's calls start on the plugin pool, or its
    /// long calls hold every slot (a new call would likely queue behind
    /// them). Waiting for a slot before taking the instance keeps the live
    /// instances near the calls that run rather than the calls in flight.
    pub(crate) fn slot_first(&self) -> bool {
        self.placement.on_pool() || self.cpu.available_permits() == 0
    }

    /// A CPU slot, waiting at most `deadline`; past that,
    /// [`PluginError::Deadline`] (counted).
    pub(crate) async fn cpu_slot(
        &self,
        deadline: Duration,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, PluginError> {
        let wait = tokio::time::timeout(deadline, self.cpu.clone().acquire_owned());
        match wait.await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                let err = deadline_error(self, deadline);
                self.stats.record_error(&err);
                Err(err)
            }
        }
    }

    /// Run one call into Wasm, armed at `started`: the epoch ticks while it
    /// runs, and `deadline` also bounds the time the guest waits on host
    /// awaits (kv, http, WASI polls), which the epoch cannot interrupt.
    ///
    /// The timer is armed only once the call first waits: most calls finish
    /// in their first poll, and registering a tokio timer per call (and
    /// clearing it after) cost more than some plugins' whole call; and
    /// `started` is the clock reading the caller took anyway.
    pub(crate) async fn bounded<F: Future>(
        &self,
        started: Instant,
        deadline: Duration,
        call: F,
    ) -> Result<F::Output, Elapsed> {
        let _ticking = self.ticker.call();
        timed(started, deadline, call).await
    }
}

/// `call`, bounded by `deadline` from `started` while it waits (see
/// [`CallPolicy::bounded`]); owns nothing of the policy, so a call can take
/// it along to the plugin pool (`offload`).
pub(crate) async fn timed<F: Future>(
    started: Instant,
    deadline: Duration,
    call: F,
) -> Result<F::Output, Elapsed> {
    // `None`: a deadline past the end of time, which never fires.
    let until = started.checked_add(deadline);
    let mut call = std::pin::pin!(call);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = call.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let Some(until) = until else {
            return Poll::Pending;
        };
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until.into())));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A call's deadline passed while it waited on the host.
#[derive(Debug)]
pub(crate) struct Elapsed;

/// A store for one instance of the route plugin `ctx`: its memory cap, and
/// the epoch behaviour every call into it gets, armed for a first call
/// (instantiation) that must end within `deadline`.
///
/// At every epoch tick a running guest either traps, once its call's
/// deadline has passed (`Trap::Interrupt`, counted as a deadline hit), or
/// yields to the worker's other tasks (`tokio::task::yield_now`, which
/// queues it behind them) and goes on at the next tick. So CPU-bound guest
/// code holds a worker for one tick at a time, never for its whole
/// deadline; and a call that runs through a tick makes the ticker tick
/// every [`LONG_CALL_TICK`](super::ticker::LONG_CALL_TICK) until it ends.
pub(crate) fn new_store(
    engine: &wasmtime::Engine,
    ctx: &Arc<GuestContext>,
    policy: &CallPolicy,
    deadline: Duration,
) -> Store<HostState> {
    let mut store = Store::new(engine, HostState::new(ctx.clone(), policy.memory_limit));
    store.limiter(|s| &mut s.limiter);
    let long_calls = policy.ticker.long_calls();
    let cpu = policy.cpu.clone();
    store.epoch_deadline_callback(move |mut cx| {
        let data = cx.data_mut();
        if data.call_until.is_some_and(|until| Instant::now() >= until) {
            return Ok(UpdateDeadline::Interrupt);
        }
        offload::tick();
        if data.long_call.is_none() {
            // A call's first tick: from now on it is CPU-bound work, which
            // runs only while holding one of the plugin's CPU slots (one
            // per worker), so a plugin's long calls never take more than
            // the workers' share between them, however many are in flight.
            // Waiting for a slot counts against the call's deadline.
            // It also finishes on the plugin pool, not on this worker.
            let long = long_calls.start();
            let slot = long.slot();
            data.long_call = Some(long);
            offload::mark_long();
            // A call that waited for its slot before it started has one.
            if let Some(held) = data.cpu_slot.take() {
                *lock(&slot) = Some(held);
                return Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ));
            }
            let cpu = cpu.clone();
            return Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    if let Ok(permit) = cpu.acquire_owned().await {
                        *lock(&slot) = Some(permit);
                    }
                    tokio::task::yield_now().await;
                }),
            ));
        }
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    arm(&mut store, deadline);
    store
}

/// Arm a store for one call: a fresh deadline, no memory refusal yet.
pub(crate) fn arm(store: &mut Store<HostState>, deadline: Duration) -> Instant {
    arm_from(store, Instant::now(), deadline)
}

/// [`arm`], for a call whose time started at `since` (when it began to
/// wait for a CPU slot); returns `since`.
pub(crate) fn arm_from(
    store: &mut Store<HostState>,
    since: Instant,
    deadline: Duration,
) -> Instant {
    store.set_epoch_deadline(1);
    let data = store.data_mut();
    data.limiter.reset_denied();
    data.call_until = since.checked_add(deadline);
    since
}

/// The call is over: the ticker may slow down again.
pub(crate) fn disarm(store: &mut Store<HostState>) {
    let data = store.data_mut();
    data.long_call = None;
    data.cpu_slot = None;
    data.call_until = None;
}

/// Account for a finished call and turn its failure into a [`PluginError`].
pub(crate) fn finish<R>(
    store: &mut Store<HostState>,
    policy: &CallPolicy,
    deadline: Duration,
    started: Instant,
    result: Result<wasmtime::Result<R>, Elapsed>,
) -> Result<R, PluginError> {
    disarm(store);
    let result = match result {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(err)) => Err(classify(policy, store, deadline, err)),
        Err(_elapsed) => Err(deadline_error(policy, deadline)),
    };
    policy
        .stats
        .record_call(started.elapsed(), result.as_ref().err());
    result
}

/// Classify a failed call by what wasmtime and the limiter report (never
/// by message text).
pub(crate) fn classify(
    policy: &CallPolicy,
    store: &Store<HostState>,
    deadline: Duration,
    err: wasmtime::Error,
) -> PluginError {
    if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        deadline_error(policy, deadline)
    } else if store.data().limiter.denied() {
        PluginError::Memory {
            plugin: policy.plugin.clone(),
            limit_bytes: policy.memory_limit,
        }
    } else {
        PluginError::Trap {
            plugin: policy.plugin.clone(),
            source: err.into_boxed_dyn_error(),
        }
    }
}

pub(crate) fn deadline_error(policy: &CallPolicy, deadline: Duration) -> PluginError {
    PluginError::Deadline {
        plugin: policy.plugin.clone(),
        deadline,
    }
}

/// Whether an instance may serve again after this failure: only when the
/// guest itself ran to completion and merely returned something unusable.
pub(crate) fn instance_survives(err: &PluginError) -> bool {
    matches!(err, PluginError::InvalidOutput { .. })
}
