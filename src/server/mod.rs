//! Client-facing listeners and the running gateway.
//!
//! A [`Gateway`] binds every listener (a socket per worker), serves HTTP/1.1
//! and HTTP/2 (h2c) on each connection from its [`workers`], hands each request the generation in
//! force when it arrived, swaps generations on reload, and drains connections
//! on shutdown. What one client may hold (connections, requests, time) is
//! bounded per listener in [`conn`].
//!
//! Here: [`Gateway`] (start, reload, shutdown). One worker's accept loop and
//! the HTTP serving of a connection are `accept`; `redirect-to-https` is
//! `redirect`.

mod accept;
mod conn;
pub mod fds;
mod redirect;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use conn::{LimitCounters, ListenerShared};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use crate::{
    config::{self, AccessLogTarget, Admin, Config, ConfigError, Listener},
    generation::{Generation, Shared},
    reload::{FileWatcher, ReloadReport, Reloader, TlsListener},
    telemetry::{
        access_log::AccessLog,
        metrics::Metrics,
        observe::Observability,
        trace::{Tracing, TracingError},
    },
    tls::server::ServerTls,
    workers::Workers,
};

/// How long shutdown waits for buffered access log lines and spans.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration (or a plugin it names) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The worker threads could not be started.
    #[error("cannot start the worker threads")]
    Workers(#[source] std::io::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The access log file could not be opened.
    #[error("cannot open the access log {path}")]
    AccessLog {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The OTLP exporter could not be set up.
    #[error(transparent)]
    Tracing(#[from] TracingError),
    /// The configuration file and components cannot be watched for changes.
    #[error("cannot watch the configuration for changes")]
    Watch(#[source] notify::Error),
}

/// A running gateway.
pub struct Gateway {
    reloader: Arc<Reloader>,
    addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
    watcher: Option<FileWatcher>,
    // Last: dropped after the tasks on it have drained.
    workers: Workers,
}

impl Gateway {
    /// Load the configuration file, build the generation, bind the listeners,
    /// start serving, and reload whenever the file or a component it names
    /// changes.
    pub async fn start_from_file(path: PathBuf) -> Result<Gateway, StartError> {
        let config = config::load(&path)?;
        let mut gw = Self::start_with(config, Some(path)).await?;
        gw.watcher = Some(FileWatcher::start(&gw.reloader).map_err(StartError::Watch)?);
        Ok(gw)
    }

    /// Build the generation for `config`, bind its listeners and start serving.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Self::start_with(config, None).await
    }

    async fn start_with(config: Config, path: Option<PathBuf>) -> Result<Gateway, StartError> {
        let shared = Arc::new(Shared::new(&config).await?);
        fds::check_budget(&config);
        let obs = Arc::new(observability(&config, &shared.metrics)?);
        let listeners = config.listeners.clone();
        let tls = crate::tls::listeners(&config)?;
        let worker_count = config.runtime.worker_count();
        let admin = config.admin.clone();
        let generation = Generation::build(config, &shared).await?;
        let current = Arc::new(ArcSwap::from_pointee(generation));
        let reloader = Arc::new(Reloader::new(shared, current.clone(), path, obs.clone()));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let workers = Workers::start(worker_count).map_err(StartError::Workers)?;
        let mut tasks = JoinSet::new();
        let serving = Serving {
            current,
            obs,
            shutdown: shutdown_rx.clone(),
        };
        let (addrs, tls_listeners) = listen(listeners, tls, &workers, &serving, &mut tasks)?;
        reloader.set_tls_listeners(tls_listeners);
        let admin_addr = match admin {
            Some(admin) => Some(serve_admin(admin, &reloader, shutdown_rx, &mut tasks).await?),
            None => None,
        };
        reloader.set_ready(true);
        Ok(Gateway {
            reloader,
            addrs,
            admin_addr,
            shutdown_tx,
            tasks,
            watcher: None,
            workers,
        })
    }

    /// The bound listener addresses, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// How many data-plane worker threads serve the listeners.
    pub fn worker_count(&self) -> usize {
        self.workers.handles().len()
    }

    /// The admin API's bound address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The generation in force.
    pub fn generation(&self) -> Arc<Generation> {
        self.reloader.generation()
    }

    /// Process-wide state (plugin engine, KV store, metrics).
    pub fn shared(&self) -> &Arc<Shared> {
        self.reloader.shared()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.reloader.shared().metrics
    }

    /// The reloader (shared with the admin API and the file watcher).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// The configuration file, when started from one.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.reloader.config_path()
    }

    /// Re-read the configuration file and swap in the new generation. On any
    /// error the old generation keeps serving.
    pub async fn reload(&self) -> Result<ReloadReport, ConfigError> {
        self.reloader.reload().await
    }

    /// Build a generation for `config` beside the current one and swap it in.
    /// Settings that need a restart are kept and reported as warnings.
    pub async fn reload_with(&self, config: Config) -> Result<ReloadReport, ConfigError> {
        self.reloader.reload_with(config).await
    }

    /// Stop accepting (listeners close at once), let in-flight requests
    /// finish for up to `grace`, close what is left, and flush the access
    /// log and the span queue.
    pub async fn shutdown(mut self, grace: Duration) {
        self.reloader.set_ready(false);
        self.watcher = None;
        let _ = self.shutdown_tx.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(?grace, "grace period over; closing remaining connections");
            self.tasks.abort_all();
        }
        self.reloader.observability().flush(FLUSH_TIMEOUT).await;
    }
}

/// The access log and tracing the configuration asks for.
fn observability(config: &Config, metrics: &Arc<Metrics>) -> Result<Observability, StartError> {
    let access_log = match &config.access_log {
        None => None,
        Some(target) => Some(
            AccessLog::start(target, metrics.access_log_dropped().clone()).map_err(|source| {
                StartError::AccessLog {
                    path: match target {
                        AccessLogTarget::Stdout => PathBuf::from("-"),
                        AccessLogTarget::File(p) => p.clone(),
                    },
                    source,
                }
            })?,
        ),
    };
    let tracing = match &config.tracing {
        None => Tracing::disabled(),
        Some(t) => Tracing::otlp(&t.otlp_endpoint, &t.service_name)?,
    };
    Ok(Observability::new(metrics.clone(), access_log, tracing))
}

/// What every listener's accept loops share.
struct Serving {
    current: Arc<ArcSwap<Generation>>,
    obs: Arc<Observability>,
    shutdown: watch::Receiver<bool>,
}

/// Bind every listener (a socket per worker) and spawn its accept loops on
/// the workers: the bound addresses in configuration order, and the TLS
/// listeners whose certificates a reload swaps.
fn listen(
    listeners: Vec<Listener>,
    tls: Vec<Option<Arc<ServerTls>>>,
    workers: &Workers,
    serving: &Serving,
    tasks: &mut JoinSet<()>,
) -> Result<(Vec<SocketAddr>, Vec<TlsListener>), StartError> {
    let mut addrs = Vec::new();
    let mut tls_listeners = Vec::new();
    for (index, (l, tls)) in listeners.into_iter().zip(tls).enumerate() {
        let bind_err = |source| StartError::Bind {
            address: l.address,
            source,
        };
        let sockets =
            accept::bind_per_worker(l.address, workers.handles().len()).map_err(bind_err)?;
        let addr = sockets[0].local_addr().map_err(bind_err)?;
        let limits = ListenerShared::new(
            l.limits.clone(),
            l.header_timeout,
            LimitCounters::new(&serving.obs.metrics),
        );
        for (tcp, handle) in sockets.into_iter().zip(workers.handles()) {
            let serve = accept::serve(
                tcp,
                l.clone(),
                tls.clone(),
                limits.clone(),
                serving.current.clone(),
                serving.obs.clone(),
                serving.shutdown.clone(),
            );
            tasks.spawn_on(serve, handle);
        }
        tracing::info!(%addr, workers = workers.handles().len(), tls = tls.is_some(), "listening");
        if let Some(tls) = tls {
            tls_listeners.push(TlsListener {
                index,
                address: addr,
                tls,
            });
        }
        addrs.push(addr);
    }
    Ok((addrs, tls_listeners))
}

/// Bind the admin API and spawn it; its bound address.
async fn serve_admin(
    admin: Admin,
    reloader: &Arc<Reloader>,
    shutdown: watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr, StartError> {
    let address = admin.address;
    let tcp = TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind { address, source })?;
    let addr = tcp
        .local_addr()
        .map_err(|source| StartError::Bind { address, source })?;
    tracing::info!(%addr, "admin API listening");
    tasks.spawn(crate::admin::serve(
        tcp,
        reloader.clone(),
        admin.token,
        shutdown,
    ));
    Ok(addr)
}
