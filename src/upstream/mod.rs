//! Upstreams: named groups of targets with a pooled HTTP client each,
//! round-robin balancing, a connection budget per target (`max-connections`
//! with a bounded queue, see [`h1`]), connect and response timeouts, and the
//! error classification the proxy maps to statuses (refused/reset → 502,
//! timeout → 504, no connection to be had → 503).
//!
//! The response-head timeout counts from the end of the request body, as
//! Envoy's route timeout does: an upload takes as long as the client needs
//! (each chunk within the route's `request-body-timeout`), and an upstream
//! that stops taking the body for that long is a timeout too.
//!
//! An upstream with `tls` speaks HTTP/1.1 over TLS (protocol `http1`) or
//! HTTP/2 agreed by ALPN (protocol `h2`, gRPC over TLS), verifying the
//! targets against the system and webpki roots plus its `ca` ([`tls`]).
//!
//! This module forwards requests it is given; header hygiene is done by
//! [`headers`] and called by the proxy.

mod h1;
pub mod headers;
mod outbound;
mod tls;
mod tunnel;

pub use h1::{DRAIN_MAX_BYTES, DRAIN_TIMEOUT};
pub use outbound::MAX_OUTBOUND_BODY;
pub use tunnel::TunnelConn;

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
    body::{Body, BoxError, RequestBodyState},
    config::{ConfigError, Diagnostic, Upstream as UpstreamConfig, UpstreamProtocol},
    telemetry::metrics::UpstreamErrorKind,
    workers,
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
    /// No response head within the route's timeout (or the upstream
    /// stopped taking the request body for the request-body timeout).
    #[error("upstream `{upstream}` did not answer within {timeout:?}")]
    Timeout {
        /// Upstream name.
        upstream: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The response body stalled for the route's response-body timeout.
    #[error("upstream `{upstream}` response body idle for {timeout:?}")]
    BodyTimeout {
        /// Upstream name.
        upstream: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// Every connection the target may have (`max-connections`) was busy
    /// and the request could not wait for one.
    #[error("upstream `{upstream}` ({target}) is busy: {reason}")]
    Overflow {
        /// Upstream name.
        upstream: String,
        /// The target tried.
        target: String,
        /// Queue full, or waited past `queue-timeout`.
        reason: &'static str,
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
            UpstreamError::Timeout { .. } | UpstreamError::BodyTimeout { .. } => {
                UpstreamErrorKind::Timeout
            }
            UpstreamError::Connect { .. } => UpstreamErrorKind::Connect,
            UpstreamError::Overflow { .. } => UpstreamErrorKind::Overflow,
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
    /// No connection free and no room or time to wait for one.
    Overflow(&'static str),
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
    /// Each target's connection budget, shared by all workers.
    limits: Vec<Arc<h1::TargetLimit>>,
    tls: Option<tls::UpstreamTls>,
    next: AtomicUsize,
}

/// How one worker reaches the upstream's targets.
enum Transport {
    /// HTTP/1.1: pylon's pool per target (`None` for an unparsable target).
    Http1(Vec<Option<Arc<h1::TargetPool>>>),
    /// h2c: hyper-util's client, which multiplexes one connection per target.
    H2c(Box<Client<HttpConnector, Body>>),
    /// h2 over TLS: the same, with the TLS handshake in its connector.
    H2(Box<Client<tls::H2Connector, Body>>),
}

impl UpstreamPool {
    fn new(config: UpstreamConfig, workers: usize, tls: Option<tls::UpstreamTls>) -> Self {
        Self {
            tls,
            transports: (0..=workers.max(1)).map(|_| OnceLock::new()).collect(),
            authorities: config
                .targets
                .iter()
                .map(|t| Authority::try_from(t.as_str()).ok())
                .collect(),
            limits: config
                .targets
                .iter()
                .map(|_| {
                    Arc::new(h1::TargetLimit::new(
                        config.max_connections,
                        config.max_pending,
                        config.queue_timeout,
                    ))
                })
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
                    .zip(&self.limits)
                    .map(|(a, limit)| {
                        a.clone().map(|a| {
                            h1::TargetPool::new(
                                a,
                                self.tls.clone(),
                                self.config.connect_timeout,
                                self.config.max_idle_per_target,
                                limit.clone(),
                            )
                        })
                    })
                    .collect(),
            ),
            UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(self.config.connect_timeout));
                connector.set_nodelay(true);
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(self.config.max_idle_per_target)
                    .http2_only(true);
                match &self.tls {
                    // Validation allows h2 only with tls, h2c only without.
                    Some(tls) => {
                        connector.enforce_http(false);
                        Transport::H2(Box::new(builder.build(tls::H2Connector {
                            tcp: connector,
                            tls: tls.clone(),
                        })))
                    }
                    None => {
                        connector.enforce_http(true);
                        Transport::H2c(Box::new(builder.build(connector)))
                    }
                }
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
    /// for each of `workers` data-plane threads. An upstream whose TLS
    /// files do not load is left out (logged; calls to it fail as to an
    /// unknown upstream, never in cleartext): [`Upstreams::try_new`]
    /// reports it instead.
    pub fn new(configs: &BTreeMap<String, UpstreamConfig>, workers: usize) -> Self {
        let mut pools = BTreeMap::new();
        for (name, c) in configs {
            match upstream_tls(c) {
                Ok(tls) => {
                    pools.insert(
                        name.clone(),
                        Arc::new(UpstreamPool::new(c.clone(), workers, tls)),
                    );
                }
                Err(err) => {
                    tracing::error!(upstream = %name, error = %crate::chain::ErrorChain(&err), "upstream left out: its TLS settings do not load");
                }
            }
        }
        Self { pools }
    }

    /// [`Upstreams::new`], reporting every upstream whose TLS files (CA
    /// bundle, client certificate and key) do not load.
    pub fn try_new(
        configs: &BTreeMap<String, UpstreamConfig>,
        workers: usize,
    ) -> Result<Self, ConfigError> {
        let mut pools = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, c) in configs {
            match upstream_tls(c) {
                Ok(tls) => {
                    pools.insert(
                        name.clone(),
                        Arc::new(UpstreamPool::new(c.clone(), workers, tls)),
                    );
                }
                Err(err) => problems.push(Diagnostic {
                    location: None,
                    subject: Some(format!("upstream \"{name}\"")),
                    message: crate::chain::ErrorChain(&err).to_string(),
                }),
            }
        }
        if problems.is_empty() {
            Ok(Self { pools })
        } else {
            Err(ConfigError {
                diagnostics: problems,
            })
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
    /// `upstream`, waiting at most `timeout` for the response head after
    /// the request body (whose progress `body` reports, for a streamed
    /// one) has been sent.
    pub async fn forward(
        &self,
        upstream: &str,
        mut req: Request<Body>,
        timeout: Duration,
        body: Option<&RequestBodyState>,
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
        if let Some(b) = body {
            b.touch();
        }
        let deadline = head_deadline(timeout, body);
        let sent = match pool.transport() {
            Transport::Http1(targets) => {
                let target_pool = targets[n].as_ref().ok_or_else(invalid_target)?;
                *req.version_mut() = http::Version::HTTP_11;
                tokio::select! {
                    sent = target_pool.send(req) => Ok(sent),
                    () = deadline => Err(()),
                }
            }
            Transport::H2c(_) | Transport::H2(_) => {
                let mut uri = std::mem::take(req.uri_mut()).into_parts();
                uri.scheme = Some(match pool.tls {
                    Some(_) => Scheme::HTTPS,
                    None => Scheme::HTTP,
                });
                uri.authority = Some(pool.authorities[n].clone().ok_or_else(invalid_target)?);
                *req.uri_mut() =
                    Uri::from_parts(uri).map_err(|e| UpstreamError::InvalidRequest {
                        upstream: upstream.to_string(),
                        detail: format!("{e}"),
                    })?;
                *req.version_mut() = http::Version::HTTP_2;
                let send = async {
                    match pool.transport() {
                        Transport::H2(client) => client.request(req).await,
                        Transport::H2c(client) => client.request(req).await,
                        Transport::Http1(_) => unreachable!("matched above"),
                    }
                    .map(|resp| resp.map(crate::body::boxed))
                    .map_err(|err| {
                        if err.is_connect() {
                            SendError::Connect(Box::new(err))
                        } else {
                            SendError::Failed(Box::new(err))
                        }
                    })
                };
                tokio::select! {
                    sent = send => Ok(sent),
                    () = deadline => Err(()),
                }
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
            Ok(Err(SendError::Overflow(reason))) => Err(UpstreamError::Overflow {
                upstream: upstream.to_string(),
                target: target.clone(),
                reason,
            }),
        }
    }
}

/// The TLS an upstream speaks, if any, with its config loaded and the
/// ALPN its protocol needs.
fn upstream_tls(c: &UpstreamConfig) -> Result<Option<tls::UpstreamTls>, crate::tls::TlsError> {
    let Some(settings) = &c.tls else {
        return Ok(None);
    };
    let alpn: &[&[u8]] = match c.protocol {
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => &[b"h2"],
        UpstreamProtocol::Http1 => &[b"http/1.1"],
    };
    let config = crate::tls::client::client_config(settings, alpn)?;
    if settings.insecure_skip_verify {
        tracing::warn!(
            upstream = %c.name,
            "insecure-skip-verify: the certificates of this upstream's targets are NOT verified; \
             anyone on the path can impersonate them"
        );
    }
    let name = match &settings.server_name {
        Some(n) => Some(crate::tls::client::server_name(settings, n)?),
        None => None,
    };
    Ok(Some(tls::UpstreamTls::new(config, name)))
}

/// Completes when the response head is late: `timeout` after the request
/// body was sent, or when the upstream has not taken any of the body for
/// the body's idle timeout. While the client is the one awaited, its own
/// idle timeout ([`crate::body::ClientBody`]) applies instead.
async fn head_deadline(timeout: Duration, body: Option<&RequestBodyState>) {
    if let Some(b) = body {
        loop {
            let finished = b.finished();
            tokio::pin!(finished);
            let idle_until = b.last_progress() + b.idle_timeout();
            let wait = if b.waiting_on_client() {
                tokio::time::Instant::now() + b.idle_timeout()
            } else if std::time::Instant::now() >= idle_until {
                return;
            } else {
                idle_until.into()
            };
            tokio::select! {
                () = &mut finished => break,
                () = tokio::time::sleep_until(wait) => {}
            }
        }
    }
    tokio::time::sleep(timeout).await;
}
