//! A generation is one configuration made live: compiled route table,
//! upstream pools and configured plugin pipelines. Reload builds a new one
//! beside the old and swaps it in; requests in flight keep the one they
//! started with (they hold an `Arc`).
//!
//! Process-wide things that outlive reloads (the Wasm engine with its
//! compile caches, the key-value store, the metrics, the upstream targets'
//! health and load) live in [`Shared`].

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use crate::{
    config::{Config, ConfigError, Diagnostic, KvBackend, Route},
    error::ErrorChain,
    kv::{KvStore, MemoryKv},
    pipeline::{Pipeline, PipelineEntry},
    plugin::{CompiledPlugin, HostServices, PluginLoadError, PluginLoader},
    router::Router,
    telemetry::metrics::{GenerationsAlive, Metrics, RouteMetrics, UpstreamMetrics},
    upstream::{TargetRegistry, Upstreams},
};

/// What outlives reloads: the plugin engine and caches, the KV store and
/// the metrics.
pub struct Shared {
    /// The Wasm engine, compile caches and per-plugin stats.
    pub plugins: PluginLoader,
    /// The key-value store behind the `kv` capability.
    pub kv: Arc<dyn KvStore>,
    /// The metrics registry (plugin series read from `plugins`).
    pub metrics: Arc<Metrics>,
    /// The upstream targets' states, kept across reloads.
    pub upstream_targets: TargetRegistry,
}

impl Shared {
    /// Create the process-wide state from the first configuration's
    /// `[runtime]` section (changing it later needs a restart).
    pub async fn new(config: &Config) -> Result<Self, ConfigError> {
        let plugins = PluginLoader::new(&config.runtime).map_err(|e| single(None, &e))?;
        let kv: Arc<dyn KvStore> = match &config.runtime.kv {
            KvBackend::Memory => Arc::new(MemoryKv::new()),
            KvBackend::Redis { url } => Arc::new(
                crate::kv::RedisKv::connect(url)
                    .await
                    .map_err(|e| single(None, &e))?,
            ),
        };
        let metrics = Arc::new(Metrics::new(plugins.clone()));
        Ok(Self {
            plugins,
            kv,
            metrics,
            upstream_targets: TargetRegistry::new(),
        })
    }
}

/// One route made live.
pub struct LiveRoute {
    /// The route's id.
    pub id: Arc<str>,
    /// Its configuration.
    pub config: Route,
    /// Its plugins.
    pub pipeline: Pipeline,
    /// The largest request body buffered for its plugins.
    pub request_body_limit: usize,
    /// The largest response body buffered for its plugins.
    pub response_body_limit: usize,
    /// Its request metrics.
    pub metrics: Arc<RouteMetrics>,
}

/// A configuration made live.
pub struct Generation {
    config: Arc<Config>,
    router: Router,
    routes: Vec<LiveRoute>,
    upstreams: Arc<Upstreams>,
    components: Vec<Arc<CompiledPlugin>>,
    upstream_metrics: BTreeMap<String, (Arc<str>, Arc<UpstreamMetrics>)>,
    loaded_at: SystemTime,
    _alive: GenerationsAlive,
}

impl Generation {
    /// Build a generation: compile every plugin (cached ones are reused), hand
    /// each route's plugins their config, and report every problem with its
    /// location, route and plugin.
    pub async fn build(config: Config, shared: &Shared) -> Result<Generation, ConfigError> {
        let mut problems = Vec::new();
        let upstreams = match Upstreams::try_new(
            &config.upstreams,
            config.runtime.worker_count(),
            &shared.upstream_targets,
        ) {
            Ok(u) => Arc::new(u),
            Err(err) => {
                problems.extend(err.diagnostics);
                Arc::new(Upstreams::default())
            }
        };
        let compiled = compile_plugins(&config, shared, &mut problems).await;
        let host = HostServices {
            kv: shared.kv.clone(),
            http: upstreams.clone(),
            clock: Default::default(),
        };
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            routes.push(
                configure_route(route, &config, &compiled, shared, &host, &mut problems).await,
            );
        }
        if !problems.is_empty() {
            return Err(ConfigError {
                diagnostics: problems,
            });
        }
        let upstream_metrics = config
            .upstreams
            .keys()
            .map(|name| {
                (
                    name.clone(),
                    (Arc::from(name.as_str()), shared.metrics.upstream(name)),
                )
            })
            .collect();
        for (name, pool) in upstreams.iter() {
            pool.attach_metrics(shared.metrics.upstream(name));
        }
        upstreams.start_health_checks();
        upstreams.start_resolving();
        Ok(Generation {
            router: Router::new(&config.routes),
            config: Arc::new(config),
            routes,
            upstreams,
            components: compiled.into_values().collect(),
            upstream_metrics,
            loaded_at: SystemTime::now(),
            _alive: GenerationsAlive::new(&shared.metrics),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The route table.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The route at `index` (as returned by the router).
    pub fn route(&self, index: usize) -> &LiveRoute {
        &self.routes[index]
    }

    /// All routes, in order.
    pub fn routes(&self) -> &[LiveRoute] {
        &self.routes
    }

    /// The upstream pools.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// The compiled plugin components in force.
    pub fn components(&self) -> &[Arc<CompiledPlugin>] {
        &self.components
    }

    /// The name and metric handles of an upstream, by name.
    pub fn upstream_metrics(&self, name: &str) -> Option<&(Arc<str>, Arc<UpstreamMetrics>)> {
        self.upstream_metrics.get(name)
    }

    /// When this generation was built.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }
}

fn diag(location: Option<crate::config::Location>, err: &PluginLoadError) -> Diagnostic {
    Diagnostic {
        location,
        subject: None,
        message: ErrorChain(err).to_string(),
    }
}

fn single(
    location: Option<crate::config::Location>,
    err: &(dyn std::error::Error + 'static),
) -> ConfigError {
    ConfigError::single(Diagnostic {
        location,
        subject: None,
        message: ErrorChain(err).to_string(),
    })
}

/// Compile every plugin definition, in parallel off the async workers; a
/// plugin that fails adds a problem naming its definition.
async fn compile_plugins(
    config: &Config,
    shared: &Shared,
    problems: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Arc<CompiledPlugin>> {
    let jobs: Vec<_> = config
        .plugins
        .values()
        .map(|def| {
            let rt = shared.plugins.clone();
            let for_task = def.clone();
            let job = tokio::task::spawn_blocking(move || rt.compile(&for_task));
            (def.clone(), job)
        })
        .collect();
    let mut compiled = BTreeMap::new();
    for (def, job) in jobs {
        // A panic in a compile (a wasmtime bug, a component that trips
        // one) fails this load like any bad plugin, never the process.
        let result = job
            .await
            .unwrap_or_else(|join| Err(PluginLoadError::compile_panicked(&def.name, join)));
        match result {
            Ok(c) => {
                compiled.insert(def.name.clone(), c);
            }
            Err(e) => problems.push(diag(Some(def.location.clone()), &e)),
        }
    }
    compiled
}

/// Configure `route`'s plugins (those that compiled) with their per-route
/// config; a plugin that refuses adds a problem naming route and plugin.
async fn configure_route(
    route: &Route,
    config: &Config,
    compiled: &BTreeMap<String, Arc<CompiledPlugin>>,
    shared: &Shared,
    host: &HostServices,
    problems: &mut Vec<Diagnostic>,
) -> LiveRoute {
    let mut entries = Vec::new();
    let mut request_body_limit = usize::MAX;
    let mut response_body_limit = usize::MAX;
    for pref in &route.plugins {
        let Some(c) = compiled.get(&pref.plugin) else {
            continue;
        };
        let def = &config.plugins[&pref.plugin];
        let json = pref.config.to_string();
        match shared
            .plugins
            .configure(c, &route.id, &json, host.clone())
            .await
        {
            Ok(plugin) => {
                let needs = plugin.needs();
                if needs.request_body {
                    request_body_limit = request_body_limit.min(def.max_body_bytes);
                }
                if needs.response_body {
                    response_body_limit = response_body_limit.min(def.max_body_bytes);
                }
                entries.push(PipelineEntry {
                    plugin,
                    on_error: pref.on_error,
                });
            }
            Err(e) => problems.push(diag(Some(pref.location.clone()), &e)),
        }
    }
    LiveRoute {
        id: route.id.as_str().into(),
        config: route.clone(),
        pipeline: Pipeline::new(entries),
        request_body_limit,
        response_body_limit,
        metrics: shared.metrics.route(&route.id),
    }
}
