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
//! A request's instance is taken by its first call, once that call can
//! run: a call that would wait for a CPU slot waits without one (see
//! `Inner::instance_to_run`), so live instances follow the calls running,
//! not the requests in flight.
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
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use wasmtime::Store;

use super::{
    call::{
        CallPolicy, arm, arm_from, classify, deadline_error, disarm, finish, instance_survives,
        new_store, timed,
    },
    compiled::CompiledPlugin,
    contract::{Guest, GuestPre},
    convert::Validate,
    offload,
    pool::{IdlePool, Recycler},
    snapshot::Snapshot,
    state::{GuestContext, HostState},
};
use crate::pipeline::{
    FixedEdits, Needs, Plugin, PluginError, PluginRequest, PluginResponse, PluginSession,
    RequestAction, ResponseEdits,
};

/// One live instance and its store.
pub(crate) struct Instance {
    store: Store<HostState>,
    guest: Guest,
    /// Linear memory when it was created (see `pool::Recycler`).
    memory_at_start: usize,
    /// Requests served.
    served: u64,
    /// When the call about to run began to wait for its CPU slot (the
    /// wait counts against its deadline), if it did.
    waiting_since: Option<Instant>,
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
            Ok(Ok(guest)) => {
                let memory_at_start = store.data().limiter.in_use();
                return Ok(Self {
                    store,
                    guest,
                    memory_at_start,
                    served: 0,
                    waiting_since: None,
                });
            }
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
        let Self { store, guest, .. } = self;
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

    /// Arm the store for a hook call; its time counts from when it began
    /// to wait for a CPU slot, if it did.
    fn arm(&mut self, deadline: Duration) -> Instant {
        match self.waiting_since.take() {
            Some(since) => arm_from(&mut self.store, since, deadline),
            None => arm(&mut self.store, deadline),
        }
    }

    /// The request phase. `req` is lent to the store for the call (see
    /// `host::exchange`) and is back in place when this returns, whatever
    /// the outcome; only a cancelled call leaves it behind, with the request
    /// and the instance.
    ///
    /// The instance goes whole into the call because a lent call may finish
    /// on the plugin pool (`offload`); it comes back with the outcome.
    async fn on_request(
        mut self,
        policy: &CallPolicy,
        needs: Needs,
        req: &mut PluginRequest,
    ) -> (Self, Result<RequestAction, PluginError>) {
        let deadline = policy.deadline;
        let handle = self
            .store
            .data_mut()
            .exchange
            .lend_request(req, needs.request_body);
        let started = self.arm(deadline);
        let _ticking = policy.ticker.call();
        // Boxed here, so that the futures around it (this one, the
        // pipeline's) stay small: a future is moved whole, and the call's
        // (wasmtime's fiber future inline) was copied several times per
        // call before it ever ran.
        let (mut this, result) = offload::run(
            &policy.placement,
            Box::pin(async move {
                let call = self.guest.on_request(&mut self.store, handle);
                let result = timed(started, deadline, call).await;
                (self, result)
            }),
        )
        .await;
        this.store.data_mut().exchange.give_back(req, None);
        let action = finish(&mut this.store, policy, deadline, started, result);
        let action = action.and_then(|action| {
            Validate {
                plugin: &policy.plugin,
                max_body: policy.max_body,
            }
            .action(action)
            .inspect_err(|e| policy.stats.record_error(e))
        });
        (this, action)
    }

    /// The response phase; `req` and `resp` are lent as in `on_request`.
    async fn on_response(
        mut self,
        policy: &CallPolicy,
        needs: Needs,
        req: &mut PluginRequest,
        resp: &mut PluginResponse,
    ) -> (Self, Result<ResponseEdits, PluginError>) {
        let deadline = policy.deadline;
        let exchange = &mut self.store.data_mut().exchange;
        let req_handle = exchange.lend_request(req, needs.request_body);
        let resp_handle = exchange.lend_response(resp, needs.response_body);
        let started = self.arm(deadline);
        let _ticking = policy.ticker.call();
        // Boxed as in `on_request`.
        let (mut this, result) = offload::run(
            &policy.placement,
            Box::pin(async move {
                let call = self
                    .guest
                    .on_response(&mut self.store, req_handle, resp_handle);
                let result = timed(started, deadline, call).await;
                (self, result)
            }),
        )
        .await;
        this.store.data_mut().exchange.give_back(req, Some(resp));
        let edits = finish(&mut this.store, policy, deadline, started, result);
        let edits = edits.and_then(|edits| {
            Validate {
                plugin: &policy.plugin,
                max_body: policy.max_body,
            }
            .response_edits(edits)
            .inspect_err(|e| policy.stats.record_error(e))
        });
        (this, edits)
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
    pool: Option<IdlePool<Instance>>,
    /// When a pooled instance is retired rather than reused.
    recycler: Recycler,
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
        let def = compiled.def();
        let recycler = Recycler::new(def.recycle, def.memory_limit_bytes);
        let inner = Arc::new(Inner {
            _compiled: compiled,
            recycler,
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

    /// Release an instance that served a request, unless it is due for
    /// recycling (counted, and dropped: the next request gets a new one).
    fn release_served(&self, mut instance: Instance) {
        if self.pool.is_none() {
            return;
        }
        instance.served += 1;
        let memory = instance.store.data().limiter.in_use();
        match self
            .recycler
            .verdict(memory, instance.memory_at_start, instance.served)
        {
            Some(reason) => self.policy.stats.record_recycled(&self.ctx.route, reason),
            None => self.release(instance),
        }
    }

    /// A new instance, configured: one of the snapshot taken at load;
    /// its instantiation within `deadline`.
    async fn new_configured(&self, deadline: Duration) -> Result<Instance, PluginError> {
        Instance::new(&self.snapshot.pre, &self.ctx, &self.policy, deadline).await
    }

    /// An idle instance for a call that need not wait for a CPU slot, if
    /// there is one: the common case of [`Inner::instance_to_run`],
    /// without its future.
    fn idle_to_run_now(&self) -> Option<Instance> {
        if self.policy.slot_first() {
            return None;
        }
        self.take_idle()
    }

    /// An instance for a session's first call, taken only once the call
    /// can run. A call that would wait for a CPU slot (see
    /// `CallPolicy::slot_first`) waits before it takes one, and keeps the
    /// slot for its call: a pooled instance lives on after the request, and
    /// each maps its own copy of the snapshot's memory, so instances taken
    /// by calls that only wait made a Python or JavaScript plugin under load
    /// keep one per client connection. The plugin's deadline then bounds
    /// the wait, the instantiation and the call together, as it bounds a
    /// call that waits for its slot at its first tick.
    async fn instance_to_run(&self) -> Result<Instance, PluginError> {
        let deadline = self.policy.deadline;
        let waited = if self.policy.slot_first() {
            let since = Instant::now();
            let slot = self.policy.cpu_slot(deadline).await?;
            Some((since, slot))
        } else {
            None
        };
        let mut instance = match (self.take_idle(), &waited) {
            (Some(instance), _) => instance,
            (None, None) => self.new_configured(deadline).await?,
            (None, Some((since, _))) => {
                let left = deadline.saturating_sub(since.elapsed());
                self.new_configured(left).await?
            }
        };
        if let Some((since, slot)) = waited {
            instance.waiting_since = Some(since);
            instance.store.data_mut().cpu_slot = Some(slot);
        }
        Ok(instance)
    }
}

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

    /// A session holding nothing yet: its first call takes the session's
    /// place under `max-concurrency`, then its instance once that call can
    /// run (`Inner::instance_to_run`).
    fn start(&self) -> Box<dyn PluginSession> {
        Box::new(WasmSession {
            plugin: self.inner.clone(),
            instance: None,
            called: false,
            permit: None,
            failed: false,
        })
    }

    fn record_failure(&self, err: &PluginError) {
        self.inner.policy.stats.record_error(err);
    }
}

/// One instance serving one request; released to the pool (if pooled and
/// still healthy) when dropped.
struct WasmSession {
    plugin: Arc<Inner>,
    /// `None` until the first call takes one, while a call has it, and for
    /// good if that call was cancelled, with the guest suspended half-way:
    /// such an instance never serves again.
    instance: Option<Instance>,
    /// A call has begun: from then on the session has its instance.
    called: bool,
    /// Held from the first call through the request phase, and again for
    /// the response phase: the session's place under `max-concurrency`.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A call failed in Wasm.
    failed: bool,
}

impl WasmSession {
    /// Take the instance for a call (the first call gets one), and a
    /// permit if the session holds none.
    async fn begin(&mut self) -> Result<Instance, PluginError> {
        if self.permit.is_none() {
            self.permit = Some(self.plugin.policy.permit().await?);
        }
        if !std::mem::replace(&mut self.called, true) {
            // An idle pooled instance that may run at once is taken here;
            // only the rest (a wait for a CPU slot, an instantiation) is a
            // future, boxed so that those large futures are not part of
            // every call's (moved whole, pooled hits too).
            if let Some(instance) = self.plugin.idle_to_run_now() {
                return Ok(instance);
            }
            return Box::pin(self.plugin.instance_to_run()).await;
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
            self.plugin.release_served(instance);
        }
    }
}
