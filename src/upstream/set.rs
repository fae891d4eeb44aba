//! All upstreams of one configuration ([`Upstreams`]): built from the
//! validated configuration (TLS files loaded, target state carried over
//! from earlier configurations), looked up by name, and the one-attempt
//! forwarding plugins' outbound calls use. Attempts, retries and target
//! choice are the pools' ([`super::UpstreamPool`]).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use http::{Request, Response};

use super::{Outcome, TargetRegistry, UpstreamError, UpstreamPool, health, resolve, tls};
use crate::{
    body::{Body, RequestBodyState},
    config::{ConfigError, Diagnostic, Upstream as UpstreamConfig, UpstreamProtocol},
};

/// The pools of a configuration, by upstream name.
type Pools = BTreeMap<String, Arc<UpstreamPool>>;

/// All upstreams of a configuration.
#[derive(Default)]
pub struct Upstreams {
    pools: Pools,
}

impl Upstreams {
    /// Build a pool per configured upstream, with connections kept apart
    /// for each of `workers` data-plane threads and no target state from
    /// earlier configurations. An upstream whose TLS
    /// files do not load is left out (logged; calls to it fail as to an
    /// unknown upstream, never in cleartext): [`Upstreams::try_new`]
    /// reports it instead.
    pub fn new(configs: &BTreeMap<String, UpstreamConfig>, workers: usize) -> Self {
        let (pools, failed) = Self::pools(configs, workers, &TargetRegistry::new());
        for (name, err) in failed {
            tracing::error!(upstream = %name, error = %err, "upstream left out: its TLS settings do not load");
        }
        Self { pools }
    }

    /// [`Upstreams::new`], with each target's state taken from `registry`
    /// (an earlier configuration's, when it listed the target), reporting
    /// every upstream whose TLS files (CA bundle, client certificate and
    /// key) do not load.
    pub fn try_new(
        configs: &BTreeMap<String, UpstreamConfig>,
        workers: usize,
        registry: &TargetRegistry,
    ) -> Result<Self, ConfigError> {
        let (pools, failed) = Self::pools(configs, workers, registry);
        if failed.is_empty() {
            return Ok(Self { pools });
        }
        Err(ConfigError {
            diagnostics: failed
                .into_iter()
                .map(|(name, message)| Diagnostic {
                    location: None,
                    subject: Some(format!("upstream \"{name}\"")),
                    message,
                })
                .collect(),
        })
    }

    /// A pool per upstream whose TLS settings load, and for each one whose
    /// settings do not, its name and why.
    fn pools(
        configs: &BTreeMap<String, UpstreamConfig>,
        workers: usize,
        registry: &TargetRegistry,
    ) -> (Pools, Vec<(String, String)>) {
        let mut pools = BTreeMap::new();
        let mut failed = Vec::new();
        for (name, c) in configs {
            match upstream_tls(c) {
                Ok(tls) => {
                    pools.insert(
                        name.clone(),
                        Arc::new(UpstreamPool::new(c.clone(), workers, tls, registry)),
                    );
                }
                Err(err) => failed.push((name.clone(), crate::chain::ErrorChain(&err).to_string())),
            }
        }
        (pools, failed)
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
    /// `upstream`, once (no retry), waiting at most `timeout` for the
    /// response head after the request body (whose progress `body`
    /// reports, for a streamed one) has been sent. Plugins' outbound calls
    /// come this way.
    pub async fn forward(
        &self,
        upstream: &str,
        req: Request<Body>,
        timeout: Duration,
        body: Option<&RequestBodyState>,
    ) -> Result<Response<Body>, UpstreamError> {
        let pool = self
            .pools
            .get(upstream)
            .ok_or_else(|| UpstreamError::Unknown(upstream.to_string()))?;
        let attempt = pool
            .admit(None, &[], false)
            .map_err(|_| UpstreamError::Shed {
                upstream: upstream.to_string(),
                reason: "max-requests",
            })?;
        let start = tokio::time::Instant::now();
        let result = pool.send(&attempt, req, timeout, body).await;
        match &result {
            Ok(resp) => attempt.report(
                if resp.status().is_server_error() {
                    Outcome::Failure
                } else {
                    Outcome::Success
                },
                Some(start.elapsed()),
            ),
            Err(e) => attempt.report(e.error.outcome(), None),
        }
        result.map_err(|e| e.error)
    }

    /// Start the active health checks of every upstream that has them, on
    /// the current tokio runtime; each stops when its upstream is dropped
    /// (the configuration was replaced).
    pub fn start_health_checks(&self) {
        for pool in self.pools.values() {
            if let Some(hc) = &pool.resilience.health_check {
                let hc = Arc::new(hc.clone());
                every(pool, hc.interval, move |pool| {
                    let hc = hc.clone();
                    async move { health::round(&pool, &hc).await }
                });
            }
        }
    }
}

impl Upstreams {
    /// Start re-resolving the host-name targets of every upstream that has
    /// some, every `dns-refresh`, on the current tokio runtime; each stops
    /// when its upstream is dropped.
    pub fn start_resolving(&self) {
        for pool in self.pools.values() {
            let names = &pool.config.targets;
            if names.iter().any(|t| resolve::host_name(t).is_some()) {
                every(pool, pool.config.dns_refresh, |pool| async move {
                    resolve::refresh(&pool, &resolve::System).await
                });
            }
        }
    }
}

/// Run `task` on `pool` every `interval`, the first time at once, on the
/// current tokio runtime (a tick late rather than two at once after a long
/// one), until the pool is dropped: its configuration was replaced.
fn every<F, Fut>(pool: &Arc<UpstreamPool>, interval: Duration, mut task: F)
where
    F: FnMut(Arc<UpstreamPool>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let pool = Arc::downgrade(pool);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else {
                return;
            };
            task(pool).await;
        }
    });
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
