//! The endpoints an upstream sends to now ([`Members`]): one per address a
//! target stands for. A target given as `ip:port` is one endpoint for
//! good; one given by host name stands for every address it resolves to
//! ([`super::resolve`]), each an endpoint with its own connections,
//! connection budget and state (health, ejection, breaker, load, latency),
//! balanced as configured targets are, with the target's weight. Until its
//! first resolution a host name is one endpoint that resolves the name on
//! each new connection.
//!
//! A changed answer builds a new set beside the old one, swapped in whole:
//! attempts in flight finish on the endpoint they hold; an address that
//! stays keeps its endpoint (connections, state); the balancer (Maglev
//! table, weighted schedule) is built anew for the new set.
//!
//! Not here: when to resolve ([`super::resolve`]), picking
//! ([`super::balance`]).

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use http::uri::Authority;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use super::{UpstreamPool, balance::Balancer, h1, resolve::Pinned, target::TargetState, tls};
use crate::{body::Body, config::UpstreamProtocol};

/// One address of a target, and how to reach it.
pub(super) struct Endpoint {
    /// Unique within its upstream and never reused: what a request's list
    /// of tried targets holds, so it survives a swap.
    pub(super) id: usize,
    /// The configured target it stands for (index in the configuration).
    pub(super) target: usize,
    /// The address connected to; `None`: the target's host name, not
    /// resolved yet, is looked up for each new connection.
    pub(super) addr: Option<SocketAddr>,
    /// The configured `host:port`: the `Host` (`:authority`) sent and the
    /// name TLS verifies. `None` only for a target that does not parse.
    pub(super) authority: Option<Authority>,
    /// Its connection budget, shared by all workers.
    pub(super) limit: Arc<h1::TargetLimit>,
    /// Connections per worker thread (slot 0 for everything off the data
    /// plane, then one per worker): a connection's task runs on the thread
    /// that opened it, so sharing connections across workers would wake
    /// another thread on every request.
    transports: Box<[OnceLock<Transport>]>,
}

/// How one worker reaches an endpoint.
pub(super) enum Transport {
    /// HTTP/1.1: pylon's pool.
    Http1(Arc<h1::TargetPool>),
    /// h2c: hyper-util's client, which multiplexes one connection.
    H2c(Box<Client<HttpConnector<Pinned>, Body>>),
    /// h2 over TLS: the same, with the TLS handshake in its connector.
    H2(Box<Client<tls::H2Connector, Body>>),
}

/// The endpoints of an upstream at one moment, and the balancer over them
/// (`states[i]` is `endpoints[i]`'s state).
pub(super) struct Members {
    pub(super) states: Vec<TargetState>,
    pub(super) endpoints: Vec<Arc<Endpoint>>,
    pub(super) balancer: Balancer,
}

impl Members {
    /// No endpoint (only while the pool is built).
    pub(super) fn empty(balance: &super::policy::Balance) -> Self {
        Self {
            states: Vec::new(),
            endpoints: Vec::new(),
            balancer: Balancer::new(balance, &[]),
        }
    }

    /// The index of the endpoints whose ids are in `ids`.
    pub(super) fn indices_of(&self, ids: &[usize]) -> Vec<usize> {
        if ids.is_empty() {
            return Vec::new();
        }
        (0..self.endpoints.len())
            .filter(|&i| ids.contains(&self.endpoints[i].id))
            .collect()
    }
}

impl UpstreamPool {
    /// The endpoints for `wanted` (configured target, address) pairs, in
    /// that order: those `old` already has keep their endpoint and state,
    /// the others get new ones, whose state comes from the gateway's
    /// registry (an earlier configuration's, when it had the address).
    pub(super) fn build_members(
        &self,
        wanted: &[(usize, Option<SocketAddr>)],
        old: Option<&Members>,
    ) -> Members {
        let checked = self.resilience.health_check.is_some();
        let mut states = Vec::with_capacity(wanted.len());
        let mut endpoints = Vec::with_capacity(wanted.len());
        for &(target, addr) in wanted {
            let kept = old.and_then(|m| {
                (0..m.endpoints.len())
                    .find(|&i| m.endpoints[i].target == target && m.endpoints[i].addr == addr)
                    .map(|i| (m.states[i].clone(), m.endpoints[i].clone()))
            });
            let (state, endpoint) = kept.unwrap_or_else(|| {
                let configured = &self.config.targets[target];
                let name = endpoint_name(configured, addr);
                let state = TargetState::with_live(
                    name.clone(),
                    self.resilience.weights.get(target).copied().unwrap_or(1),
                    self.registry.live(&self.config.name, &name),
                );
                state.claim(self.id, checked);
                (state, Arc::new(self.endpoint(target, addr)))
            });
            states.push(state);
            endpoints.push(endpoint);
        }
        Members {
            balancer: Balancer::new(&self.resilience.balance, &states),
            states,
            endpoints,
        }
    }

    fn endpoint(&self, target: usize, addr: Option<SocketAddr>) -> Endpoint {
        Endpoint {
            id: self
                .next_endpoint
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            target,
            addr,
            authority: Authority::try_from(self.config.targets[target].as_str()).ok(),
            limit: Arc::new(h1::TargetLimit::new(
                self.config.max_connections,
                self.config.max_pending,
                self.config.queue_timeout,
            )),
            transports: (0..=self.workers.max(1)).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Take the addresses resolved for some host-name targets (`answers`:
    /// target index, its addresses); the other targets keep theirs. Swaps
    /// the endpoint set in when it changed.
    pub(super) fn resolved(&self, answers: Vec<(usize, Vec<SocketAddr>)>) {
        let old = self.members.load_full();
        let mut wanted = Vec::new();
        for target in 0..self.config.targets.len() {
            match answers.iter().find(|(i, _)| *i == target) {
                Some((_, addrs)) => {
                    let mut addrs = addrs.clone();
                    addrs.sort();
                    addrs.dedup();
                    wanted.extend(addrs.into_iter().map(|a| (target, Some(a))));
                }
                None => wanted.extend(
                    old.endpoints
                        .iter()
                        .filter(|e| e.target == target)
                        .map(|e| (target, e.addr)),
                ),
            }
        }
        let same = wanted.len() == old.endpoints.len()
            && wanted
                .iter()
                .zip(&old.endpoints)
                .all(|(&(t, a), e)| e.target == t && e.addr == a);
        if same {
            return;
        }
        let new = self.build_members(&wanted, Some(&old));
        let names: Vec<&str> = new.states.iter().map(|s| s.name.as_str()).collect();
        tracing::info!(upstream = %self.config.name, endpoints = ?names, "targets resolved to other addresses: balancing over the new set");
        if let Some(m) = self.metrics.get() {
            m.resolution("changed");
        }
        self.members.store(Arc::new(new));
    }
}

/// What an endpoint is called (admin API, logs, access log, the state
/// registry): the target as configured, with the address it resolved to.
fn endpoint_name(target: &str, addr: Option<SocketAddr>) -> String {
    match addr {
        Some(a) if target.parse::<SocketAddr>().is_err() => format!("{target} ({a})"),
        _ => target.to_string(),
    }
}

impl Endpoint {
    /// This worker's transport to the endpoint.
    pub(super) fn transport(&self, pool: &UpstreamPool, authority: &Authority) -> &Transport {
        let slot = crate::workers::current().map_or(0, |w| 1 + w % (self.transports.len() - 1));
        self.transports[slot].get_or_init(|| {
            let config = &pool.config;
            match config.protocol {
                UpstreamProtocol::Http1 => Transport::Http1(h1::TargetPool::new(
                    authority.clone(),
                    self.addr,
                    pool.tls.clone(),
                    config.connect_timeout,
                    config.max_idle_per_target,
                    self.limit.clone(),
                )),
                UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                    let mut connector = HttpConnector::new_with_resolver(Pinned(self.addr));
                    connector.set_connect_timeout(Some(config.connect_timeout));
                    connector.set_nodelay(true);
                    let mut builder = Client::builder(TokioExecutor::new());
                    builder
                        .timer(TokioTimer::new())
                        .pool_timer(TokioTimer::new())
                        .pool_idle_timeout(Duration::from_secs(90))
                        .pool_max_idle_per_host(config.max_idle_per_target)
                        .http2_only(true);
                    match &pool.tls {
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
            }
        })
    }
}
