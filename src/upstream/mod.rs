//! Upstreams: named groups of targets with a pooled HTTP client each,
//! round-robin balancing, connect and response timeouts, and the error
//! classification the proxy maps to statuses (refused/reset → 502,
//! timeout → 504).
//!
//! This module forwards requests it is given; header hygiene is done by
//! [`headers`] and called by the proxy.

mod h1;
pub mod headers;
mod outbound;

pub use outbound::MAX_OUTBOUND_BODY;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{
    Request, Response, Uri,
    uri::{Authority, Scheme},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use crate::{
    body::{Body, BoxError},
    config::{Upstream as UpstreamConfig, UpstreamProtocol},
    server::workers,
    telemetry::metrics::UpstreamErrorKind,
};

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No upstream has that name.
    #[error("no upstream named `{0}`")]
    Unknown(String),
    /// The target refused or could not be reached in time.
    #[error("upstream `{upstream}` ({target}) could not be reached")]
    Connect {
        /// Upstream name.
        upstream: String,
        /// The target tried.
        target: String,
        /// The connect error.
        #[source]
        source: BoxError,
    },
    /// The connection failed after it was made (reset, protocol error).
    #[error("upstream `{upstream}` ({target}) failed")]
    Failed {
        /// Upstream name.
        upstream: String,
        /// The target tried.
        target: String,
        /// The error.
        #[source]
        source: BoxError,
    },
    /// No response head within the route's timeout.
    #[error("upstream `{upstream}` did not answer within {timeout:?}")]
    Timeout {
        /// Upstream name.
        upstream: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The request could not be formed (bad path from a plugin, ...).
    #[error("invalid request for upstream `{upstream}`: {detail}")]
    InvalidRequest {
        /// Upstream name.
        upstream: String,
        /// What was wrong.
        detail: String,
    },
}

impl UpstreamError {
    /// The class recorded in metrics and spans.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Timeout { .. } => UpstreamErrorKind::Timeout,
            UpstreamError::Connect { .. } => UpstreamErrorKind::Connect,
            _ => UpstreamErrorKind::Failed,
        }
    }
}

/// Why a transport got no response head (mapped to [`UpstreamError`] with
/// the upstream's name in [`Upstreams::forward`]).
#[derive(Debug)]
enum SendError {
    /// No connection could be made (refused, unreachable, timed out).
    Connect(BoxError),
    /// The connection failed while the request was sent or answered.
    Failed(BoxError),
}

/// One upstream at run time.
pub struct UpstreamPool {
    config: UpstreamConfig,
    /// Connections per worker thread (slot 0 for everything off the data
    /// plane, then one per worker): a connection's task runs on the thread
    /// that opened it, so sharing connections across workers would wake
    /// another thread on every request.
    transports: Box<[OnceLock<Transport>]>,
    /// The targets, parsed once (validation rejects what does not parse).
    authorities: Vec<Option<Authority>>,
    next: AtomicUsize,
}

/// How one worker reaches the upstream's targets.
enum Transport {
    /// HTTP/1.1: pylon's pool per target (`None` for an unparsable target).
    Http1(Vec<Option<Arc<h1::TargetPool>>>),
    /// h2c: hyper-util's client, which multiplexes one connection per target.
    H2c(Box<Client<HttpConnector, Body>>),
}

impl UpstreamPool {
    fn new(config: UpstreamConfig, workers: usize) -> Self {
        Self {
            transports: (0..=workers.max(1)).map(|_| OnceLock::new()).collect(),
            authorities: config
                .targets
                .iter()
                .map(|t| Authority::try_from(t.as_str()).ok())
                .collect(),
            config,
            next: AtomicUsize::new(0),
        }
    }

    fn transport(&self) -> &Transport {
        let slot = workers::current().map_or(0, |w| 1 + w % (self.transports.len() - 1));
        self.transports[slot].get_or_init(|| match self.config.protocol {
            UpstreamProtocol::Http1 => Transport::Http1(
                self.authorities
                    .iter()
                    .map(|a| {
                        a.clone().map(|a| {
                            Arc::new(h1::TargetPool::new(
                                a,
                                self.config.connect_timeout,
                                self.config.max_idle_per_target,
                            ))
                        })
                    })
                    .collect(),
            ),
            UpstreamProtocol::H2c => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(self.config.connect_timeout));
                connector.set_nodelay(true);
                connector.enforce_http(true);
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(self.config.max_idle_per_target)
                    .http2_only(true);
                Transport::H2c(Box::new(builder.build(connector)))
            }
        })
    }

    /// The upstream's configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.config.targets.len()
    }
}

/// All upstreams of a configuration.
#[derive(Default)]
pub struct Upstreams {
    pools: BTreeMap<String, Arc<UpstreamPool>>,
}

impl Upstreams {
    /// Build a pool per configured upstream, with connections kept apart
    /// for each of `workers` data-plane threads.
    pub fn new(configs: &BTreeMap<String, UpstreamConfig>, workers: usize) -> Self {
        Self {
            pools: configs
                .iter()
                .map(|(name, c)| {
                    (
                        name.clone(),
                        Arc::new(UpstreamPool::new(c.clone(), workers)),
                    )
                })
                .collect(),
        }
    }

    /// The upstream with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<UpstreamPool>> {
        self.pools.get(name)
    }

    /// All upstreams by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<UpstreamPool>)> {
        self.pools.iter()
    }

    /// Send `req` (whose URI carries only path and query) to a target of
    /// `upstream`, waiting at most `timeout` for the response head.
    pub async fn forward(
        &self,
        upstream: &str,
        mut req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        let pool = self
            .pools
            .get(upstream)
            .ok_or_else(|| UpstreamError::Unknown(upstream.to_string()))?;
        let n = pool.pick();
        let target = &pool.config.targets[n];
        let invalid_target = || UpstreamError::InvalidRequest {
            upstream: upstream.to_string(),
            detail: format!("invalid target {target:?}"),
        };
        let timed_out = || UpstreamError::Timeout {
            upstream: upstream.to_string(),
            timeout,
        };
        if req.uri().path_and_query().is_none() {
            *req.uri_mut() = Uri::from_static("/");
        }
        let sent = match pool.transport() {
            Transport::Http1(targets) => {
                let target_pool = targets[n].as_ref().ok_or_else(invalid_target)?;
                *req.version_mut() = http::Version::HTTP_11;
                tokio::time::timeout(timeout, target_pool.send(req)).await
            }
            Transport::H2c(client) => {
                let mut uri = std::mem::take(req.uri_mut()).into_parts();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(pool.authorities[n].clone().ok_or_else(invalid_target)?);
                *req.uri_mut() =
                    Uri::from_parts(uri).map_err(|e| UpstreamError::InvalidRequest {
                        upstream: upstream.to_string(),
                        detail: format!("{e}"),
                    })?;
                *req.version_mut() = http::Version::HTTP_2;
                let send = async {
                    client
                        .request(req)
                        .await
                        .map(|resp| resp.map(crate::body::boxed))
                        .map_err(|err| {
                            if err.is_connect() {
                                SendError::Connect(Box::new(err))
                            } else {
                                SendError::Failed(Box::new(err))
                            }
                        })
                };
                tokio::time::timeout(timeout, send).await
            }
        };
        match sent {
            Err(_) => Err(timed_out()),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(SendError::Connect(source))) => Err(UpstreamError::Connect {
                upstream: upstream.to_string(),
                target: target.clone(),
                source,
            }),
            Ok(Err(SendError::Failed(source))) => Err(UpstreamError::Failed {
                upstream: upstream.to_string(),
                target: target.clone(),
                source,
            }),
        }
    }
}
