//! [`PluginRuntime`]: the engine, linkers, compile caches and stats shared
//! by every plugin of the process; [`CompiledPlugin`]: one plugin definition
//! compiled and pre-instantiated, ready to be configured on routes.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, SystemTime},
};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, component::Linker};

use super::{
    PluginLoadError,
    contract::{self, ContractVersion, GuestPre},
    engine::{self, CachedComponent, CompileFailure, CompileOrigin, ComponentCache, EpochTicker},
    instance::{CallPolicy, Instance, Ready, WasmPlugin},
    reclaim, snapshot,
    state::{GuestContext, HostState},
    stats::{PluginStats, PluginStatsSnapshot},
};
use crate::{
    config::{Isolation, PluginDef, ProcessSettings},
    pipeline::Plugin,
    sync::lock,
};

/// Calls at load time (instantiate + `configure`) get at least this long:
/// the first instantiation of a large component touches cold pages.
const LOAD_DEADLINE_FLOOR: Duration = Duration::from_secs(1);

/// The Wasm side of the gateway: one per process, shared by every
/// configuration (reloads reuse its engine and caches). Cheap to clone.
#[derive(Clone)]
pub struct PluginRuntime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    /// Linker for components that import nothing but `pylon:plugin` (of
    /// every contract version served).
    plain: Arc<Linker<HostState>>,
    /// The same plus WASI, for components that import `wasi:*`.
    with_wasi: Arc<Linker<HostState>>,
    cache: Arc<ComponentCache>,
    stats: Mutex<BTreeMap<String, Arc<PluginStats>>>,
    /// Data-plane worker threads: pooled plugins keep idle instances per worker.
    workers: usize,
    /// Shared with every compiled plugin: deadlines keep working as long as
    /// any plugin can still run, even after the runtime itself is dropped.
    ticker: Arc<EpochTicker>,
}

/// Where the compile caches answered from, since the runtime started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Components compiled by Cranelift.
    pub compiled: u64,
    /// Components loaded precompiled from the disk cache.
    pub disk_hits: u64,
    /// Components found already compiled in memory.
    pub memory_hits: u64,
}

/// The services the host capabilities use, shared by all plugins.
#[derive(Clone)]
pub struct HostServices {
    /// Backs `pylon:plugin/kv` (keys are namespaced per plugin).
    pub kv: Arc<dyn crate::kv::KvStore>,
    /// Backs `pylon:plugin/http-client`.
    pub http: Arc<dyn super::OutboundHttp>,
    /// Backs `pylon:plugin/clock.now-ms`.
    pub clock: WallClock,
}

/// The wall clock plugins read (`pylon:plugin/clock.now-ms`); the
/// monotonic clock is always the system's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WallClock {
    /// The system clock: what the gateway uses.
    #[default]
    System,
    /// Always this many milliseconds since the Unix epoch: `pylon plugin
    /// test` cases that check time windows (a signature's age, an expiry).
    Fixed(u64),
}

/// A plugin definition compiled and pre-instantiated (imports resolved),
/// ready to be configured on routes with [`PluginRuntime::configure`].
pub struct CompiledPlugin {
    def: PluginDef,
    name: Arc<str>,
    sha256_hex: String,
    loaded_at: SystemTime,
    origin: CompileOrigin,
    uses_wasi: bool,
    pre: GuestPre,
    /// The routes whose snapshot was taken (instrumented, configured and
    /// compiled) when this plugin was configured on them, rather than found
    /// in the caches: what a load or reload really compiled.
    snapshots_taken: Mutex<Vec<String>>,
    stats: Arc<PluginStats>,
    /// `max-concurrency`, shared by every route the plugin is on.
    calls: Arc<tokio::sync::Semaphore>,
    /// One CPU-bound (long) call per worker at a time.
    cpu: Arc<tokio::sync::Semaphore>,
    // Keeps the in-memory cache entry alive while this plugin is loaded.
    _component: Arc<CachedComponent>,
    // Keeps the epoch ticker alive while this plugin can run; its calls
    // register with it.
    ticker: Arc<EpochTicker>,
}

impl CompiledPlugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition it was compiled from.
    pub fn def(&self) -> &PluginDef {
        &self.def
    }

    /// The SHA-256 of the component file, in lowercase hex.
    pub fn sha256_hex(&self) -> &str {
        &self.sha256_hex
    }

    /// When it was loaded (compiled or fetched from a cache).
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Whether it was compiled now or came from a cache.
    pub fn origin(&self) -> CompileOrigin {
        self.origin
    }

    /// Whether the component imports WASI (and is linked with it).
    pub fn uses_wasi(&self) -> bool {
        self.uses_wasi
    }

    /// The routes on which configuring this plugin took a new snapshot
    /// (see `snapshot`); empty when every snapshot came from a cache.
    pub fn snapshots_taken(&self) -> Vec<String> {
        lock(&self.snapshots_taken).clone()
    }

    /// The contract version it is served under.
    pub fn contract(&self) -> ContractVersion {
        self.pre.version()
    }

    pub(crate) fn engine(&self) -> &Engine {
        self.pre.engine()
    }

    pub(crate) fn pre(&self) -> &GuestPre {
        &self.pre
    }
}

impl std::fmt::Debug for CompiledPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPlugin")
            .field("name", &self.name)
            .field("sha256", &self.sha256_hex)
            .field("origin", &self.origin)
            .field("uses_wasi", &self.uses_wasi)
            .field("contract", &self.contract())
            .finish_non_exhaustive()
    }
}

impl PluginRuntime {
    /// Create the engine (pooling allocator sized from `settings`), start
    /// its epoch ticker, and open the disk cache if one is configured.
    pub fn new(settings: &ProcessSettings) -> Result<Self, PluginLoadError> {
        let engine_err = |source: wasmtime::Error| PluginLoadError::Engine {
            source: source.into_boxed_dyn_error(),
        };
        let engine = engine::build_engine(settings).map_err(engine_err)?;
        let mut plain = Linker::new(&engine);
        contract::add_to_linker(&mut plain).map_err(engine_err)?;
        let mut with_wasi = plain.clone();
        wasmtime_wasi::p2::add_to_linker_async(&mut with_wasi).map_err(engine_err)?;
        let cache = ComponentCache::new(&engine, settings.cache_dir.clone()).map_err(|source| {
            PluginLoadError::CacheDir {
                path: settings.cache_dir.clone().unwrap_or_default(),
                source,
            }
        })?;
        let ticker = EpochTicker::start(&engine).map_err(|e| PluginLoadError::Engine {
            source: Box::new(e),
        })?;
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                plain: Arc::new(plain),
                with_wasi: Arc::new(with_wasi),
                cache: Arc::new(cache),
                workers: settings.worker_count(),
                stats: Mutex::new(BTreeMap::new()),
                ticker: Arc::new(ticker),
            }),
        })
    }

    /// The engine (for tools and tests; plugins never need it).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Compile (or fetch from the memory or disk cache) a plugin
    /// definition's component, check that it is a pylon plugin, and
    /// pre-instantiate it. Blocking CPU work (seconds for a large
    /// component): call it from `spawn_blocking`.
    pub fn compile(&self, def: &PluginDef) -> Result<Arc<CompiledPlugin>, PluginLoadError> {
        let rt = &self.inner;
        let plugin = || def.name.clone();
        let path = || def.component.clone();
        let bytes = std::fs::read(&def.component).map_err(|source| PluginLoadError::Read {
            plugin: plugin(),
            path: path(),
            source,
        })?;
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        // The bytes are not kept: a snapshot that is not cached reads the
        // file again (checking its hash), and a Python or JavaScript
        // component is tens of MiB.
        let (cached, origin) = reclaim::compile(|| {
            let compiled = rt.cache.get_or_compile(&sha256, &bytes);
            drop(bytes);
            compiled
        })
        .map_err(|CompileFailure(source)| PluginLoadError::Compile {
            plugin: plugin(),
            path: path(),
            source: source.into_boxed_dyn_error(),
        })?;
        let component = &cached.component;
        let ty = component.component_type();

        let version = ContractVersion::served_for(&rt.engine, component);
        let Some(version) = version else {
            if let Some(found) = ty
                .exports(&rt.engine)
                .find_map(|(name, _)| name.strip_prefix("pylon:plugin/guest@"))
            {
                return Err(PluginLoadError::UnsupportedContract {
                    plugin: plugin(),
                    path: path(),
                    found: found.to_owned(),
                    rebuild_against: ContractVersion::SUPPORTED
                        .iter()
                        .map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" or "),
                });
            }
            let supported: Vec<String> = ContractVersion::SUPPORTED
                .iter()
                .map(|v| format!("`{}`", v.guest_export()))
                .collect();
            let exports: Vec<&str> = ty.exports(&rt.engine).map(|(name, _)| name).collect();
            return Err(PluginLoadError::NotAPlugin {
                plugin: plugin(),
                path: path(),
                detail: format!(
                    "it exports neither {} (the contract versions this host serves); \
                     its exports: {}",
                    supported.join(" nor "),
                    if exports.is_empty() {
                        "none".to_owned()
                    } else {
                        exports.join(", ")
                    }
                ),
            });
        };

        let uses_wasi = ty
            .imports(&rt.engine)
            .any(|(name, _)| name.starts_with("wasi:"));
        let linker = if uses_wasi { &rt.with_wasi } else { &rt.plain };
        let pre = linker
            .instantiate_pre(component)
            .map_err(|source| PluginLoadError::Link {
                plugin: plugin(),
                source: source.into_boxed_dyn_error(),
            })?;
        let pre = GuestPre::new(version, pre).map_err(|err| PluginLoadError::NotAPlugin {
            plugin: plugin(),
            path: path(),
            detail: format!("{err:#}"),
        })?;
        tracing::info!(
            plugin = %def.name,
            component = %def.component.display(),
            contract = version.as_str(),
            "plugin component ready"
        );

        Ok(Arc::new(CompiledPlugin {
            def: def.clone(),
            name: def.name.as_str().into(),
            sha256_hex: hex::encode(sha256),
            loaded_at: SystemTime::now(),
            origin,
            uses_wasi,
            pre,
            snapshots_taken: Mutex::default(),
            stats: self.stats_for(&def.name),
            calls: Arc::new(tokio::sync::Semaphore::new(def.max_concurrency)),
            cpu: Arc::new(tokio::sync::Semaphore::new(rt.workers.max(1))),
            _component: cached,
            ticker: rt.ticker.clone(),
        }))
    }

    /// Configure a compiled plugin on one route: instantiate it, call
    /// `configure(config_json)`, and keep the [`Needs`](crate::pipeline::Needs)
    /// it declares. An `Err` from the plugin is
    /// [`PluginLoadError::ConfigRejected`]. For `pooled` isolation the
    /// configured instance becomes the pool's first.
    pub async fn configure(
        &self,
        compiled: &Arc<CompiledPlugin>,
        route: &str,
        config_json: &str,
        host: HostServices,
    ) -> Result<Arc<dyn Plugin>, PluginLoadError> {
        let def = &compiled.def;
        let ctx = Arc::new(GuestContext {
            plugin: compiled.name.clone(),
            route: route.into(),
            grants: def.grants.clone(),
            kv_prefix: format!("{}:", def.name),
            kv_max_value: def.kv.max_value_bytes,
            stats: compiled.stats.clone(),
            services: host,
        });
        if def.grants.kv {
            let usage = ctx.services.kv.set_quota(
                &def.name,
                crate::kv::KvQuota {
                    max_bytes: def.kv.max_bytes,
                    max_entries: def.kv.max_entries,
                },
            );
            compiled.stats.set_kv_usage(usage);
        }
        let policy = CallPolicy {
            plugin: compiled.name.clone(),
            ticker: compiled.ticker.clone(),
            deadline: def.deadline,
            memory_limit: def.memory_limit_bytes,
            max_body: def.max_body_bytes,
            stats: compiled.stats.clone(),
            calls: compiled.calls.clone(),
            max_concurrency: def.max_concurrency,
            cpu: compiled.cpu.clone(),
            placement: Default::default(),
        };
        let load_deadline = def.deadline.max(LOAD_DEADLINE_FLOOR);
        let mut instance = Instance::new(compiled.pre(), &ctx, &policy, load_deadline)
            .await
            .map_err(|source| PluginLoadError::Instantiate {
                route: route.to_owned(),
                plugin: def.name.clone(),
                source,
            })?;
        let needs = match instance
            .configure(&policy, load_deadline, config_json)
            .await
        {
            Ok(Ok(needs)) => needs,
            Ok(Err(message)) => {
                return Err(PluginLoadError::ConfigRejected {
                    route: route.to_owned(),
                    plugin: def.name.clone(),
                    message,
                });
            }
            Err(source) => {
                return Err(PluginLoadError::Configure {
                    route: route.to_owned(),
                    plugin: def.name.clone(),
                    source,
                });
            }
        };
        let (snapshot, taken) = self
            .snapshot(compiled, &ctx, &policy, load_deadline, config_json)
            .await
            .map_err(|why| PluginLoadError::NotConfigurableAtLoad {
                route: route.to_owned(),
                plugin: def.name.clone(),
                source: Box::new(why),
            })?;
        if taken {
            lock(&compiled.snapshots_taken).push(route.to_owned());
        }
        let ready = match def.isolation {
            Isolation::Pooled { max_idle } => Ready::Pooled {
                max_idle,
                workers: self.inner.workers,
                first: instance,
            },
            Isolation::Fresh => Ready::Fresh,
        };
        Ok(Arc::new(WasmPlugin::new(
            compiled.clone(),
            ctx,
            policy,
            needs,
            snapshot,
            ready,
        )))
    }

    /// The snapshot every new instance of `compiled` on a route starts
    /// from: `configure` ran at load and its state is captured, so no
    /// request ever pays for (or depends on) a `configure` call. Cached under
    /// what determines it (see `snapshot::SnapshotKey`).
    async fn snapshot(
        &self,
        compiled: &CompiledPlugin,
        ctx: &Arc<GuestContext>,
        policy: &CallPolicy,
        deadline: Duration,
        config_json: &str,
    ) -> Result<(snapshot::Snapshot, bool), snapshot::NoSnapshot> {
        let linker = if compiled.uses_wasi {
            &self.inner.with_wasi
        } else {
            &self.inner.plain
        };
        snapshot::take(
            &self.inner.cache,
            linker,
            compiled,
            (ctx, policy),
            deadline,
            config_json,
        )
        .await
    }

    /// Counters per plugin name (all routes and reloads together).
    pub fn stats(&self) -> Vec<(String, PluginStatsSnapshot)> {
        let stats = lock(&self.inner.stats);
        stats
            .iter()
            .map(|(name, s)| (name.clone(), s.snapshot()))
            .collect()
    }

    /// How the compile caches answered so far.
    pub fn cache_stats(&self) -> CacheStats {
        let c = self.inner.cache.counters();
        CacheStats {
            compiled: c.compiled.load(Ordering::Relaxed),
            disk_hits: c.disk_hits.load(Ordering::Relaxed),
            memory_hits: c.memory_hits.load(Ordering::Relaxed),
        }
    }

    /// The disk cache file a component with these bytes is (or would be)
    /// stored in; `None` without a cache directory.
    pub fn cache_path_for(&self, component_bytes: &[u8]) -> Option<std::path::PathBuf> {
        let sha256: [u8; 32] = Sha256::digest(component_bytes).into();
        self.inner.cache.cache_path(&sha256)
    }

    fn stats_for(&self, plugin: &str) -> Arc<PluginStats> {
        lock(&self.inner.stats)
            .entry(plugin.to_owned())
            .or_default()
            .clone()
    }
}
