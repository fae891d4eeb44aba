//! Client-facing listeners and the running gateway.
//!
//! A [`Gateway`] binds every listener, serves HTTP/1.1 and HTTP/2 (h2c) on
//! each connection, hands each request the runtime in force when it
//! arrived, swaps runtimes on reload, and drains connections on shutdown.

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use crate::{
    config::{self, Config, ConfigError, Listener},
    proxy::{self, ConnInfo},
    runtime::{Runtime, Shared},
};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration (or a plugin it names) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    current: Arc<ArcSwap<Runtime>>,
    config_path: Option<PathBuf>,
    addrs: Vec<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
    reload_lock: tokio::sync::Mutex<()>,
}

impl Gateway {
    /// Load the configuration file, build the runtime, bind the listeners
    /// and start serving.
    pub async fn start_from_file(path: PathBuf) -> Result<Gateway, StartError> {
        let config = config::load(&path)?;
        let mut gw = Self::start(config).await?;
        gw.config_path = Some(path);
        Ok(gw)
    }

    /// Build the runtime for `config`, bind its listeners and start serving.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let shared = Arc::new(Shared::new(&config).await?);
        let listeners = config.listeners.clone();
        let runtime = Runtime::build(config, &shared).await?;
        let current = Arc::new(ArcSwap::from_pointee(runtime));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for l in listeners {
            let tcp = TcpListener::bind(l.address)
                .await
                .map_err(|source| StartError::Bind {
                    address: l.address,
                    source,
                })?;
            let addr = tcp.local_addr().map_err(|source| StartError::Bind {
                address: l.address,
                source,
            })?;
            tracing::info!(%addr, "listening");
            addrs.push(addr);
            tasks.spawn(serve(tcp, l, current.clone(), shutdown_rx.clone()));
        }
        Ok(Gateway {
            shared,
            current,
            config_path: None,
            addrs,
            shutdown_tx,
            tasks,
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The bound listener addresses, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The runtime in force.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Process-wide state (plugin engine, KV store).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The configuration file, when started from one.
    pub fn config_path(&self) -> Option<&PathBuf> {
        self.config_path.as_ref()
    }

    /// Re-read the configuration file and swap in the new runtime. On any
    /// error the old runtime keeps serving.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        let Some(path) = &self.config_path else {
            return Err(ConfigError::single(config::Diagnostic {
                location: None,
                subject: None,
                message: "gateway was not started from a file".into(),
            }));
        };
        let config = config::load(path)?;
        self.reload_with(config).await
    }

    /// Build a runtime for `config` beside the current one and swap it in.
    /// Listener changes need a restart and are ignored here.
    pub async fn reload_with(&self, config: Config) -> Result<(), ConfigError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let runtime = Runtime::build(config, &self.shared).await?;
        self.current.store(Arc::new(runtime));
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Stop accepting, let in-flight requests finish for up to `grace`,
    /// then close what is left.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.shutdown_tx.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(?grace, "grace period over; closing remaining connections");
            self.tasks.abort_all();
        }
    }
}

async fn serve(
    tcp: TcpListener,
    listener: Listener,
    current: Arc<ArcSwap<Runtime>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(listener.header_timeout)
        .max_buf_size(listener.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(listener.max_header_bytes).unwrap_or(u32::MAX));
    let builder = if listener.http2 {
        builder
    } else {
        builder.http1_only()
    };
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, client) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let current = current.clone();
        let info = ConnInfo {
            client,
            scheme: "http",
        };
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let rt = current.load_full();
            let req = req.map(crate::body::boxed);
            async move { Ok::<_, Infallible>(proxy::handle(rt, req, info).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%client, error = %err, "connection ended with an error");
            }
        });
    }
    drop(tcp);
    graceful.shutdown().await;
}
