//! [`CompiledPlugin`]: one plugin definition compiled and pre-instantiated
//! (imports resolved), ready to be configured on routes by the loader; and
//! what each route it is configured on gets from it (the guest context and
//! the call policy). Not here: compiling and configuring (`loader`).

use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use wasmtime::Engine;

use super::{
    cache::{CachedComponent, CompileOrigin},
    call::CallPolicy,
    contract::{ContractVersion, GuestPre},
    services::HostServices,
    state::GuestContext,
    stats::PluginStats,
    ticker::EpochTicker,
};
use crate::{config::PluginDef, sync::lock};

/// A plugin definition compiled and pre-instantiated (imports resolved),
/// ready to be configured on routes with [`PluginLoader::configure`](super::PluginLoader::configure).
pub struct CompiledPlugin {
    pub(super) def: PluginDef,
    pub(super) name: Arc<str>,
    pub(super) sha256_hex: String,
    pub(super) loaded_at: SystemTime,
    pub(super) origin: CompileOrigin,
    pub(super) uses_wasi: bool,
    pub(super) pre: GuestPre,
    /// The routes whose snapshot was taken (instrumented, configured and
    /// compiled) when this plugin was configured on them, rather than found
    /// in the caches: what a load or reload really compiled.
    pub(super) snapshots_taken: Mutex<Vec<String>>,
    pub(super) stats: Arc<PluginStats>,
    /// `max-concurrency`, shared by every route the plugin is on.
    pub(super) calls: Arc<tokio::sync::Semaphore>,
    /// One CPU-bound (long) call per worker at a time.
    pub(super) cpu: Arc<tokio::sync::Semaphore>,
    // Keeps the in-memory cache entry alive while this plugin is loaded.
    pub(super) _component: Arc<CachedComponent>,
    // Keeps the epoch ticker alive while this plugin can run; its calls
    // register with it.
    pub(super) ticker: Arc<EpochTicker>,
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

    /// The context of this plugin on `route`, shared by all its instances
    /// there; sets the plugin's kv quota when it is granted kv.
    pub(super) fn route_context(&self, route: &str, host: HostServices) -> Arc<GuestContext> {
        let def = &self.def;
        let ctx = Arc::new(GuestContext {
            plugin: self.name.clone(),
            route: route.into(),
            grants: def.grants.clone(),
            kv_prefix: format!("{}:", def.name),
            kv_max_value: def.kv.max_value_bytes,
            stats: self.stats.clone(),
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
            self.stats.set_kv_usage(usage);
        }
        ctx
    }

    /// How calls into this plugin's instances are bounded, on a new route
    /// (`max-concurrency` and the CPU slots are the plugin's, shared by its
    /// routes; where calls start is learnt per route).
    pub(super) fn call_policy(&self) -> CallPolicy {
        let def = &self.def;
        CallPolicy {
            plugin: self.name.clone(),
            ticker: self.ticker.clone(),
            deadline: def.deadline,
            memory_limit: def.memory_limit_bytes,
            max_body: def.max_body_bytes,
            stats: self.stats.clone(),
            calls: self.calls.clone(),
            max_concurrency: def.max_concurrency,
            cpu: self.cpu.clone(),
            placement: Default::default(),
        }
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
