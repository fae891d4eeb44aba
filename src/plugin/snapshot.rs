//! Snapshots: the component pre-initialised with one route's config, so
//! every new instance (one per request for `fresh` isolation, one per idle
//! pool miss for `pooled`) starts configured and `configure` never runs on
//! the request path.
//!
//! At load, the component is instrumented (wasmtime-wizer adds an export
//! that reads every core instance's memories and globals), instantiated,
//! `configure`d with the route's config, and its state is written back into
//! a copy of the component as data segments and global initialisers. That
//! copy is compiled through the same caches as any component and
//! pre-instantiated. Each new instance is one of it: the same state every
//! time, nothing carried over from another request.
//!
//! The snapshot is cached under what determines it ([`SnapshotKey`]: the
//! component, the config, the plugin and its grants), not under its own
//! bytes: those differ at every load of a component whose `configure` reads
//! WASI random or clocks (the Python interpreter seeds its hashes), which
//! would recompile it every time. A restart or a reload with the same
//! config and component then instruments, configures and compiles nothing;
//! `configure`'s host calls (log, clock, kv) happened at the load that took
//! the snapshot.
//!
//! Not every component can be captured, and those are refused at load
//! (`PluginLoadError::NotConfigurableAtLoad`, with this module's reason):
//! wizer refuses some shapes (nested components, a module instantiated
//! twice, component start functions), and a `configure` that leaves host
//! resources alive (a WASI stream kept in a static) cannot be, since those
//! live in the host, not in the instance.

use std::{path::PathBuf, sync::Arc, time::Duration};

use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use wasmtime::{
    Engine, Store, Trap,
    component::{Instance as ComponentInstance, InstancePre, Lift, Linker, WasmList},
};
use wasmtime_wizer::{ComponentContext, ComponentInstanceState, Wizer};

use super::{
    cache::{CachedComponent, ComponentCache},
    call::{CallPolicy, arm, disarm, new_store},
    compiled::CompiledPlugin,
    contract::{ContractVersion, Guest, GuestPre},
    reclaim,
    state::{GuestContext, HostState},
};

/// The instance export wizer's instrumentation adds.
const ACCESS_EXPORT: &str = "wasmtime:wizer/access";

/// The least time reading a configured instance's state back may take.
/// This is load-time host work (lifting the whole linear memory, tens of
/// MiB for Python or JavaScript), not the plugin's policy code, so the
/// plugin's per-call deadline (100 ms by default) is too short for it: a
/// read cut short would leave the plugin without a snapshot, configuring
/// on every request.
const READ_DEADLINE: Duration = Duration::from_secs(30);

/// A component pre-initialised for one route, ready to instantiate.
pub(crate) struct Snapshot {
    pub(crate) pre: GuestPre,
    /// Keeps the compiled snapshot in the memory cache while in use.
    _component: Arc<CachedComponent>,
}

/// Why a plugin's configured state cannot be captured (it is refused).
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoSnapshot {
    /// wizer cannot instrument or rewrite this component.
    #[error("the component cannot be snapshotted")]
    Unsupported(#[source] wasmtime::Error),
    /// Instantiating or configuring the instrumented copy failed.
    #[error("configuring the instrumented component failed")]
    Configure(#[source] wasmtime::Error),
    /// `configure` answered otherwise than it did for the same config.
    #[error("configure rejected the config it accepted just before: {0}")]
    Inconsistent(String),
    /// `configure` did not finish within the plugin's deadline.
    #[error("configure did not finish within {0:?}")]
    Deadline(Duration),
    /// `configure` left host resources open that a snapshot cannot hold.
    #[error("configure left host resources open (a WASI stream or pollable)")]
    LiveResources,
    /// A compile of the instrumented component or of the snapshot failed.
    #[error("compiling the snapshot failed")]
    Compile(#[source] wasmtime::Error),
}

/// Take a snapshot of `compiled` configured with `config_json` for the
/// route plugin `ctx`, its calls bounded by `policy` and `deadline`, and
/// whether it was taken now (`true`) or found in a cache (`false`).
/// Compiles (blocking work, moved off the async threads); the instrumented
/// copy and the snapshot are each cached by hash.
pub(crate) async fn take(
    cache: &Arc<ComponentCache>,
    linker: &Arc<Linker<HostState>>,
    compiled: &CompiledPlugin,
    (ctx, policy): (&Arc<GuestContext>, &CallPolicy),
    deadline: Duration,
    config_json: &str,
) -> Result<(Snapshot, bool), NoSnapshot> {
    let version = compiled.contract();
    let key = SnapshotKey::new(compiled, ctx, policy, config_json);
    if let Some(component) = cache.lookup(&key.0) {
        return Ok((ready(linker, version, component)?, false));
    }
    let capture = Capture {
        path: compiled.def().component.clone(),
        expected: compiled.sha256_hex().to_owned(),
        engine: compiled.engine().clone(),
        cache: cache.clone(),
        linker: linker.clone(),
        version,
        ctx: ctx.clone(),
        policy: policy.clone(),
        deadline,
        config_json: config_json.to_owned(),
    };
    // Instrumenting, configuring and reading the state back (the whole
    // linear memory) take seconds for a large component: all of it runs on
    // a blocking thread, which drives the guest calls itself. The
    // instrumentation context borrows the bytes, so it stays there too.
    let handle = tokio::runtime::Handle::current();
    let snapshot = tokio::task::spawn_blocking(move || capture.run(&handle))
        .await
        .map_err(|join| {
            NoSnapshot::Unsupported(wasmtime::format_err!("snapshot task failed: {join}"))
        })??;

    let component = compile(cache, key, snapshot).await?;
    Ok((ready(linker, version, component)?, true))
}

/// Everything taking one snapshot needs, owned, for the blocking thread
/// it runs on.
struct Capture {
    path: PathBuf,
    /// The component's hash when it was compiled.
    expected: String,
    engine: Engine,
    cache: Arc<ComponentCache>,
    linker: Arc<Linker<HostState>>,
    version: ContractVersion,
    ctx: Arc<GuestContext>,
    policy: CallPolicy,
    deadline: Duration,
    config_json: String,
}

impl Capture {
    /// Instrument the component, configure an instance of it and read its
    /// state back: the snapshot's bytes. Blocking; drives the guest calls
    /// on `handle`.
    fn run(self, handle: &Handle) -> Result<Vec<u8>, NoSnapshot> {
        let bytes = self.read_component()?;
        let wizer = Wizer::new();
        let (cx, instrumented) = wizer
            .instrument_component(&bytes)
            .map_err(NoSnapshot::Unsupported)?;
        let instrumented = reclaim::compile(|| self.cache.compile(&instrumented))
            .map_err(|failure| NoSnapshot::Compile(failure.0))?;
        let pre = self
            .linker
            .instantiate_pre(&instrumented.component)
            .map_err(NoSnapshot::Configure)?;

        let mut store = new_store(&self.engine, &self.ctx, &self.policy, self.deadline);
        let instance = self.configure(handle, &mut store, &pre)?;
        if store.data().wasi.as_ref().is_some_and(|w| !w.is_empty()) {
            return Err(NoSnapshot::LiveResources);
        }

        // The reads get a deadline of their own, not what configure left.
        disarm(&mut store);
        arm(&mut store, self.deadline.max(READ_DEADLINE));
        let _ticking = self.policy.ticker.call();
        let snapshot = read_state(handle, &wizer, &cx, &mut store, instance);
        // The instance, its store and wizer's copies of its memory are
        // freed here, on this thread: give their pages back.
        drop(store);
        drop((pre, instrumented));
        drop(cx);
        drop(bytes);
        reclaim::give_back();
        snapshot
    }

    /// The component's bytes: not kept since the compile (tens of MiB for
    /// an interpreter), so read again, and only if it is still the
    /// component that was compiled.
    fn read_component(&self) -> Result<Vec<u8>, NoSnapshot> {
        let path = &self.path;
        let bytes = std::fs::read(path).map_err(|err| {
            NoSnapshot::Unsupported(wasmtime::format_err!("reading {}: {err}", path.display()))
        })?;
        if hex::encode(Sha256::digest(&bytes)) != self.expected {
            return Err(NoSnapshot::Unsupported(wasmtime::format_err!(
                "{} changed since it was compiled; the next reload loads the new one",
                path.display()
            )));
        }
        Ok(bytes)
    }

    /// Instantiate the instrumented component and `configure` it with the
    /// route's config, within the plugin's deadline.
    fn configure(
        &self,
        handle: &Handle,
        store: &mut Store<HostState>,
        pre: &InstancePre<HostState>,
    ) -> Result<ComponentInstance, NoSnapshot> {
        let configure = async {
            let instance = pre.instantiate_async(&mut *store).await?;
            let guest = Guest::of_instance(self.version, &mut *store, &instance)?;
            let answer = guest
                .configure(&mut *store, &self.config_json)
                .await?
                .map(|_| ());
            wasmtime::Result::Ok((instance, answer))
        };
        let deadline = self.deadline;
        match handle.block_on(
            self.policy
                .bounded(std::time::Instant::now(), deadline, configure),
        ) {
            Ok(Ok((instance, Ok(())))) => Ok(instance),
            Ok(Ok((_, Err(message)))) => Err(NoSnapshot::Inconsistent(message)),
            // The epoch interrupts a guest that computes past its
            // deadline; the timer one that waits on the host past it:
            // both are the same failure.
            Ok(Err(err)) if is_interrupt(&err) => Err(NoSnapshot::Deadline(deadline)),
            Ok(Err(err)) => Err(NoSnapshot::Configure(err)),
            Err(_) => Err(NoSnapshot::Deadline(deadline)),
        }
    }
}

/// wizer reads the configured `instance`'s memories and globals through
/// the accessors its instrumentation exported: the snapshot's bytes.
fn read_state(
    handle: &Handle,
    wizer: &Wizer,
    cx: &ComponentContext<'_>,
    store: &mut Store<HostState>,
    instance: ComponentInstance,
) -> Result<Vec<u8>, NoSnapshot> {
    let mut access = Access {
        store,
        instance,
        error: None,
    };
    let snapshot = handle.block_on(wizer.snapshot_component(cx, &mut access));
    disarm(access.store);
    match access.error {
        Some(err) => Err(NoSnapshot::Unsupported(err)),
        None => snapshot.map_err(NoSnapshot::Unsupported),
    }
}

/// Whether `err` is the epoch's interrupt (the deadline passed while the
/// guest computed).
fn is_interrupt(err: &wasmtime::Error) -> bool {
    err.downcast_ref::<Trap>() == Some(&Trap::Interrupt)
}

/// What a snapshot is cached under: a hash of everything that decides what
/// `configure` sees and may do (the component's own hash, the config, the
/// plugin's name, which prefixes its kv keys, its grants and memory cap).
/// The engine's compatibility is part of every cache entry's name.
pub(crate) struct SnapshotKey([u8; 32]);

impl SnapshotKey {
    fn new(
        compiled: &CompiledPlugin,
        ctx: &GuestContext,
        policy: &CallPolicy,
        config_json: &str,
    ) -> Self {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(b"pylon snapshot 1");
        field(compiled.sha256_hex().as_bytes());
        field(config_json.as_bytes());
        field(ctx.plugin.as_bytes());
        field(format!("{:?}", ctx.grants).as_bytes());
        field(&(policy.memory_limit as u64).to_le_bytes());
        Self(h.finalize().into())
    }
}

/// Pre-instantiate a compiled snapshot for serving.
fn ready(
    linker: &Linker<HostState>,
    version: ContractVersion,
    component: Arc<CachedComponent>,
) -> Result<Snapshot, NoSnapshot> {
    let pre = linker
        .instantiate_pre(&component.component)
        .map_err(NoSnapshot::Compile)?;
    let pre = GuestPre::new(version, pre).map_err(NoSnapshot::Compile)?;
    Ok(Snapshot {
        pre,
        _component: component,
    })
}

async fn compile(
    cache: &Arc<ComponentCache>,
    key: SnapshotKey,
    bytes: Vec<u8>,
) -> Result<Arc<CachedComponent>, NoSnapshot> {
    let cache = cache.clone();
    blocking(move || {
        reclaim::compile(move || {
            let compiled = cache.get_or_compile(&key.0, &bytes);
            drop(bytes);
            compiled
        })
        .map(|(component, _)| component)
        .map_err(|failure| failure.0)
    })
    .await
    .map_err(NoSnapshot::Compile)
}

/// Run CPU-heavy load work off the async threads.
async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> wasmtime::Result<R> + Send + 'static,
) -> wasmtime::Result<R> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join| wasmtime::format_err!("snapshot task failed: {join}"))?
}

/// wizer's view of the configured instance: calls the accessor functions
/// its instrumentation exported. The trait cannot fail, so a failure is
/// kept in `error` (and a default value returned) for the caller to check.
struct Access<'a> {
    store: &'a mut Store<HostState>,
    instance: ComponentInstance,
    error: Option<wasmtime::Error>,
}

impl Access<'_> {
    async fn call<R: Lift + Send + Sync + 'static>(
        &mut self,
        interface: &str,
        func: &str,
    ) -> Option<R> {
        if self.error.is_some() {
            return None;
        }
        let result = async {
            let iface = self
                .instance
                .get_export_index(&mut *self.store, None, interface)
                .ok_or_else(|| wasmtime::format_err!("no export `{interface}`"))?;
            let index = self
                .instance
                .get_export_index(&mut *self.store, Some(&iface), func)
                .ok_or_else(|| wasmtime::format_err!("no export `{interface}#{func}`"))?;
            let func = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, index)?;
            Ok(func.call_async(&mut *self.store, ()).await?.0)
        }
        .await;
        match result {
            Ok(r) => Some(r),
            Err(err) => {
                self.error = Some(err);
                None
            }
        }
    }
}

impl ComponentInstanceState for Access<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        debug_assert_eq!(instance, ACCESS_EXPORT);
        match self.call::<WasmList<u8>>(instance, func).await {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func)
            .await
            .map_or(0, f32::to_bits)
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func)
            .await
            .map_or(0, f64::to_bits)
    }
}
