//! [`WasmPlugin`]: a compiled component configured on one route, as a
//! [`crate::pipeline::Plugin`]; and the guarded calls into its instances.
//!
//! Isolation follows the plugin definition:
//! - `fresh`: every request gets a new instance (of the route's snapshot,
//!   see `snapshot`, and the pooling allocator), which serves both phases
//!   of that request only;
//! - `pooled`: instances are reused by later requests (never two at a
//!   time); a new one, when none is idle, is an instance of the snapshot
//!   too. One whose call failed in Wasm (trap, deadline, memory) is
//!   dropped, never reused.
//!
//! So `configure` never runs on the request path: only at load, where its
//! state is captured in the snapshot.
//!
//! Every call — instantiation included — gets a fresh epoch deadline (so
//! nothing carries over between requests) and a timer of the same length,
//! armed only if the call waits on a host await (kv, http), which bounds
//! those waits as well. A hook call still running at an epoch tick
//! (CPU-bound guest code) finishes on the plugin pool (`offload`), its
//! store and the lent request travelling with it and coming back with the
//! outcome; the timer travels too, so it is the pool that stops a call
//! whose deadline passed while it waited.
//!
//! An instance speaks the contract version its component exports; its
//! hooks get the request and response lent through `host::exchange`, and
//! what an older version returns is converted to the current types
//! (`contract`), so all go through the same validation.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::Poll,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::{
    CompiledPlugin,
    contract::{Guest, GuestPre},
    convert::Validate,
    engine::EpochTicker,
    offload,
    snapshot::Snapshot,
    state::{GuestContext, HostState},
    stats::PluginStats,
};
use crate::pipeline::{
    FixedEdits, Needs, Plugin, PluginError, PluginRequest, PluginResponse, PluginSession,
    RequestAction, ResponseEdits,
};
use crate::sync::lock;

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
    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, PluginError> {
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
        match tokio::time::timeout(self.deadline, self.calls.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(busy()),
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
async fn timed<F: Future>(
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

/// One live instance and its store.
pub(crate) struct Instance {
    store: Store<HostState>,
    guest: Guest,
}

/// A `configure` that ran: the plugin's answer to its config, its needs
/// and the header edits it fixed for every request.
pub(crate) type ConfigureResult = Result<(Needs, FixedEdits), String>;

impl Instance {
    /// Instantiate `compiled` for the route plugin `ctx`, within `deadline`.
    pub(crate) async fn new(
        pre: &GuestPre,
        ctx: &Arc<GuestContext>,
        policy: &CallPolicy,
        deadline: Duration,
    ) -> Result<Self, PluginError> {
        let mut store = new_store(pre.engine(), ctx, policy, deadline);
        policy.stats.record_instantiation();
        let instantiate = pre.instantiate(&mut store);
        let result = policy.bounded(Instant::now(), deadline, instantiate).await;
        disarm(&mut store);
        let err = match result {
            Ok(Ok(guest)) => return Ok(Self { store, guest }),
            Ok(Err(err)) => classify(policy, &store, deadline, err),
            Err(_elapsed) => deadline_error(policy, deadline),
        };
        // Deadline and memory failures keep their class; a trap in a start
        // function and everything else (pool exhausted, ...) is reported as
        // an instantiation failure.
        let err = match err {
            PluginError::Trap { plugin, source } => PluginError::Instantiate { plugin, source },
            other => other,
        };
        policy.stats.record_error(&err);
        Err(err)
    }

    /// Call `configure`.
    pub(crate) async fn configure(
        &mut self,
        policy: &CallPolicy,
        deadline: Duration,
        config_json: &str,
    ) -> Result<ConfigureResult, PluginError> {
        let Self { store, guest } = self;
        let started = arm(store, deadline);
        let call = guest.configure(&mut *store, config_json);
        let result = policy.bounded(started, deadline, call).await;
        let answer = finish(store, policy, deadline, started, result)?;
        match answer {
            Ok(needs) => Validate {
                plugin: &policy.plugin,
                max_body: policy.max_body,
            }
            .configured(needs)
            .map(Ok),
            Err(message) => Ok(Err(message)),
        }
    }

    /// The request phase. `req` is lent to the store for the call (see
    /// `host::exchange`) and is back in place when this returns, whatever
    /// the outcome; only a cancelled call leaves it behind, with the request
    /// and the instance.
    ///
    /// The instance is taken for the call because a lent call may finish on
    /// the plugin pool (`offload`); it comes back with the outcome.
    async fn on_request(
        self,
        policy: &CallPolicy,
        needs: Needs,
        req: &mut PluginRequest,
    ) -> (Self, Result<RequestAction, PluginError>) {
        let Self { mut store, guest } = self;
        let deadline = policy.deadline;
        let action = {
            let handle = store
                .data_mut()
                .exchange
                .lend_request(req, needs.request_body);
            let started = arm(&mut store, deadline);
            let lent = guest.clone();
            let _ticking = policy.ticker.call();
            let (back, result) = offload::run(&policy.placement, async move {
                let result = timed(started, deadline, lent.on_request(&mut store, handle)).await;
                (store, result)
            })
            .await;
            store = back;
            store.data_mut().exchange.give_back(req, None);
            finish(&mut store, policy, deadline, started, result)
        };
        let action = action.and_then(|action| {
            Validate {
                plugin: &policy.plugin,
                max_body: policy.max_body,
            }
            .action(action)
            .inspect_err(|e| policy.stats.record_error(e))
        });
        (Self { store, guest }, action)
    }

    /// The response phase; `req` and `resp` are lent as in `on_request`.
    async fn on_response(
        self,
        policy: &CallPolicy,
        needs: Needs,
        req: &mut PluginRequest,
        resp: &mut PluginResponse,
    ) -> (Self, Result<ResponseEdits, PluginError>) {
        let Self { mut store, guest } = self;
        let deadline = policy.deadline;
        let edits = {
            let exchange = &mut store.data_mut().exchange;
            let req_handle = exchange.lend_request(req, needs.request_body);
            let resp_handle = exchange.lend_response(resp, needs.response_body);
            let started = arm(&mut store, deadline);
            let lent = guest.clone();
            let _ticking = policy.ticker.call();
            let (back, result) = offload::run(&policy.placement, async move {
                let call = lent.on_response(&mut store, req_handle, resp_handle);
                let result = timed(started, deadline, call).await;
                (store, result)
            })
            .await;
            store = back;
            store.data_mut().exchange.give_back(req, Some(resp));
            finish(&mut store, policy, deadline, started, result)
        };
        let edits = edits.and_then(|edits| {
            Validate {
                plugin: &policy.plugin,
                max_body: policy.max_body,
            }
            .response_edits(edits)
            .inspect_err(|e| policy.stats.record_error(e))
        });
        (Self { store, guest }, edits)
    }
}

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
/// every [`LONG_CALL_TICK`](super::engine::LONG_CALL_TICK) until it ends.
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
        super::offload::tick();
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
            super::offload::mark_long();
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
    let now = Instant::now();
    store.set_epoch_deadline(1);
    let data = store.data_mut();
    data.limiter.reset_denied();
    data.call_until = now.checked_add(deadline);
    now
}

/// The call is over: the ticker may slow down again.
pub(crate) fn disarm(store: &mut Store<HostState>) {
    let data = store.data_mut();
    data.long_call = None;
    data.call_until = None;
}

/// Account for a finished call and turn its failure into a [`PluginError`].
fn finish<R>(
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
fn classify(
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

fn deadline_error(policy: &CallPolicy, deadline: Duration) -> PluginError {
    PluginError::Deadline {
        plugin: policy.plugin.clone(),
        deadline,
    }
}

/// Whether an instance may serve again after this failure: only when the
/// guest itself ran to completion and merely returned something unusable.
fn instance_survives(err: &PluginError) -> bool {
    matches!(err, PluginError::InvalidOutput { .. })
}

/// Instances kept for reuse, for `pooled` isolation: a stack per data-plane
/// worker (and one for calls off the data plane), so an instance keeps
/// serving the core whose caches hold its memory and store. The stacks
/// share `pool-size` between them; a worker whose stack is empty takes an
/// idle instance from another before creating one, and one whose stack is
/// full gives its instance to another with room.
struct IdlePool<T = Instance> {
    shards: Box<[Shard<T>]>,
}

/// One worker's idle instances, on its own cache lines.
#[repr(align(128))]
struct Shard<T> {
    cap: usize,
    idle: Mutex<Vec<T>>,
}

impl<T> IdlePool<T> {
    fn new(max_idle: usize, workers: usize) -> Self {
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

    fn take(&self) -> Option<T> {
        let (home, n) = (self.home(), self.shards.len());
        (0..n).find_map(|i| lock(&self.shards[(home + i) % n].idle).pop())
    }

    fn put(&self, instance: T) {
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

/// A plugin configured on one route.
pub(crate) struct WasmPlugin {
    inner: Arc<Inner>,
}

struct Inner {
    /// Keeps the component (and its stats) alive while the route serves.
    _compiled: Arc<CompiledPlugin>,
    ctx: Arc<GuestContext>,
    policy: CallPolicy,
    needs: Needs,
    fixed: FixedEdits,
    /// `None` for `fresh` isolation.
    pool: Option<IdlePool>,
    /// The component already configured for this route: every new
    /// instance is one of it, and needs no `configure` call.
    snapshot: Snapshot,
}

/// How a plugin that accepted its config at load serves requests.
pub(crate) enum Ready {
    /// From an idle pool of up to `max_idle` instances over `workers`
    /// worker threads, starting with the instance configured at load.
    Pooled {
        max_idle: usize,
        workers: usize,
        first: Instance,
    },
    /// From a new instance per request.
    Fresh,
}

impl WasmPlugin {
    /// Wrap a plugin that accepted its config at load.
    pub(crate) fn new(
        compiled: Arc<CompiledPlugin>,
        ctx: Arc<GuestContext>,
        policy: CallPolicy,
        (needs, fixed): (Needs, FixedEdits),
        snapshot: Snapshot,
        ready: Ready,
    ) -> Self {
        let (pool, first) = match ready {
            Ready::Pooled {
                max_idle,
                workers,
                first,
            } => (Some(IdlePool::new(max_idle, workers)), Some(first)),
            Ready::Fresh => (None, None),
        };
        let inner = Arc::new(Inner {
            _compiled: compiled,
            ctx,
            policy,
            needs,
            fixed,
            pool,
            snapshot,
        });
        if let Some(first) = first {
            inner.release(first);
        }
        Self { inner }
    }
}

impl Inner {
    fn take_idle(&self) -> Option<Instance> {
        self.pool.as_ref()?.take()
    }

    fn release(&self, instance: Instance) {
        if let Some(pool) = &self.pool {
            pool.put(instance);
        }
    }

    /// A new instance, configured: one of the snapshot taken at load.
    async fn new_configured(&self) -> Result<Instance, PluginError> {
        let policy = &self.policy;
        Instance::new(&self.snapshot.pre, &self.ctx, policy, policy.deadline).await
    }
}

#[async_trait]
impl Plugin for WasmPlugin {
    fn id(&self) -> &str {
        &self.inner.policy.plugin
    }

    fn needs(&self) -> Needs {
        self.inner.needs
    }

    fn fixed(&self) -> &FixedEdits {
        &self.inner.fixed
    }

    async fn start(&self) -> Result<Box<dyn PluginSession>, PluginError> {
        let permit = self.inner.policy.permit().await?;
        let instance = match self.inner.take_idle() {
            Some(instance) => instance,
            None => self.inner.new_configured().await?,
        };
        Ok(Box::new(WasmSession {
            plugin: self.inner.clone(),
            instance: Some(instance),
            permit: Some(permit),
            failed: false,
        }))
    }

    fn record_failure(&self, err: &PluginError) {
        self.inner.policy.stats.record_error(err);
    }
}

/// One instance serving one request; released to the pool (if pooled and
/// still healthy) when dropped.
struct WasmSession {
    plugin: Arc<Inner>,
    /// `None` while a call has it (and for good if that call was cancelled,
    /// with the guest suspended half-way: such an instance never serves
    /// again).
    instance: Option<Instance>,
    /// Held from `start` through the request phase, and again for the
    /// response phase: the session's place under `max-concurrency`.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A call failed in Wasm.
    failed: bool,
}

impl WasmSession {
    /// Take the instance for a call, and a permit if the session holds none.
    async fn begin(&mut self) -> Result<Instance, PluginError> {
        if self.permit.is_none() {
            self.permit = Some(self.plugin.policy.permit().await?);
        }
        self.instance
            .take()
            .ok_or_else(|| PluginError::Instantiate {
                plugin: self.plugin.policy.plugin.clone(),
                source: "session used after release".into(),
            })
    }

    /// The call is over: the instance is back; the permit is not held
    /// between the phases (the upstream's time is not a call).
    fn end<R>(
        &mut self,
        instance: Instance,
        result: Result<R, PluginError>,
    ) -> Result<R, PluginError> {
        self.instance = Some(instance);
        self.permit = None;
        if let Err(err) = &result
            && !instance_survives(err)
        {
            self.failed = true;
        }
        result
    }
}

#[async_trait]
impl PluginSession for WasmSession {
    async fn on_request(&mut self, req: &mut PluginRequest) -> Result<RequestAction, PluginError> {
        let instance = self.begin().await?;
        let plugin = &self.plugin;
        let (instance, result) = instance.on_request(&plugin.policy, plugin.needs, req).await;
        self.end(instance, result)
    }

    async fn on_response(
        &mut self,
        req: &mut PluginRequest,
        resp: &mut PluginResponse,
    ) -> Result<ResponseEdits, PluginError> {
        let instance = self.begin().await?;
        let plugin = &self.plugin;
        let (instance, result) = instance
            .on_response(&plugin.policy, plugin.needs, req, resp)
            .await;
        self.end(instance, result)
    }
}

impl Drop for WasmSession {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take()
            && !self.failed
        {
            self.plugin.release(instance);
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
