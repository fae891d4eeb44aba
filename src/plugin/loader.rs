//! [`PluginLoader`]: loads plugins — compiles a plugin definition through
//! the engine's caches into a [`CompiledPlugin`] (pre-instantiated, ready to
//! be configured on routes), then configures it on a route into a
//! [`WasmPlugin`] — and keeps what every plugin of the process shares: the
//! engine, the linkers, the compile caches, the epoch ticker and the stats.
//!
//! Not here: the calls themselves (`instance`, `call`), snapshots
//! (`snapshot`), the caches' workings (`engine`).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, SystemTime},
};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, component::Linker};

use super::{
    PluginLoadError,
    cache::{CompileFailure, ComponentCache},
    call::CallPolicy,
    compiled::CompiledPlugin,
    contract::{self, ContractVersion, GuestPre},
    engine,
    instance::{Instance, Ready, WasmPlugin},
    reclaim,
    services::HostServices,
    snapshot,
    state::{GuestContext, HostState},
    stats::{PluginStats, PluginStatsSnapshot},
    ticker::EpochTicker,
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
pub struct PluginLoader {
    shared: Arc<Shared>,
}

struct Shared {
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
    /// any plugin can still run, even after the loader itself is dropped.
    ticker: Arc<EpochTicker>,
}

/// Where the compile caches answered from, since the loader started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Components compiled by Cranelift.
    pub compiled: u64,
    /// Components loaded precompiled from the disk cache.
    pub disk_hits: u64,
    /// Components found already compiled in memory.
    pub memory_hits: u64,
}

impl PluginLoader {
    /// Create the engine (pooling allocator sized from `settings`), start
    /// its epoch ticker, and open the disk cache if one is configured.
    pub fn new(settings: &ProcessSettings) -> Result<Self, PluginLoadError> {
        let engine_err = |source: wasmtime::Error| PluginLoadError::Engine {
            source: source.into_boxed_dyn_error(),
        };
        let (engine, compiler) = engine::build_engine(settings).map_err(engine_err)?;
        let mut plain = Linker::new(&engine);
        contract::add_to_linker(&mut plain).map_err(engine_err)?;
        let mut with_wasi = plain.clone();
        wasmtime_wasi::p2::add_to_linker_async(&mut with_wasi).map_err(engine_err)?;
        let cache = ComponentCache::new(&engine, compiler, settings.cache_dir.clone()).map_err(
            |source| PluginLoadError::CacheDir {
                path: settings.cache_dir.clone().unwrap_or_default(),
                source,
            },
        )?;
        let ticker = EpochTicker::start(&engine).map_err(|e| PluginLoadError::Engine {
            source: Box::new(e),
        })?;
        Ok(Self {
            shared: Arc::new(Shared {
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
        &self.shared.engine
    }

    /// Compile (or fetch from the memory or disk cache) a plugin
    /// definition's component, check that it is a pylon plugin, and
    /// pre-instantiate it. Blocking CPU work (seconds for a large
    /// component): call it from `spawn_blocking`.
    pub fn compile(&self, def: &PluginDef) -> Result<Arc<CompiledPlugin>, PluginLoadError> {
        let shared = &self.shared;
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
            let compiled = shared.cache.get_or_compile(&sha256, &bytes);
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

        let version = served_version(component, &shared.engine, def)?;

        let uses_wasi = ty
            .imports(&shared.engine)
            .any(|(name, _)| name.starts_with("wasi:"));
        let linker = if uses_wasi {
            &shared.with_wasi
        } else {
            &shared.plain
        };
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
            cpu: Arc::new(tokio::sync::Semaphore::new(shared.workers.max(1))),
            _component: cached,
            ticker: shared.ticker.clone(),
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
        let ctx = compiled.route_context(route, host);
        let policy = compiled.call_policy();
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
                workers: self.shared.workers,
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
            &self.shared.with_wasi
        } else {
            &self.shared.plain
        };
        snapshot::take(
            &self.shared.cache,
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
        let stats = lock(&self.shared.stats);
        stats
            .iter()
            .map(|(name, s)| (name.clone(), s.snapshot()))
            .collect()
    }

    /// How the compile caches answered so far.
    pub fn cache_stats(&self) -> CacheStats {
        let c = self.shared.cache.counters();
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
        self.shared.cache.cache_path(&sha256)
    }

    fn stats_for(&self, plugin: &str) -> Arc<PluginStats> {
        lock(&self.shared.stats)
            .entry(plugin.to_owned())
            .or_default()
            .clone()
    }
}

/// The contract version `component` is served under: the newest served
/// whose `guest` interface it exports. Else it is refused, naming the
/// versions to rebuild against when it is a plugin of another version.
fn served_version(
    component: &wasmtime::component::Component,
    engine: &Engine,
    def: &PluginDef,
) -> Result<ContractVersion, PluginLoadError> {
    if let Some(version) = ContractVersion::served_for(engine, component) {
        return Ok(version);
    }
    let ty = component.component_type();
    if let Some(found) = ty
        .exports(engine)
        .find_map(|(name, _)| name.strip_prefix("pylon:plugin/guest@"))
    {
        return Err(PluginLoadError::UnsupportedContract {
            plugin: def.name.clone(),
            path: def.component.clone(),
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
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    Err(PluginLoadError::NotAPlugin {
        plugin: def.name.clone(),
        path: def.component.clone(),
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
    })
}
