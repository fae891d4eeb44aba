//! Host-name targets re-resolved on a timer: every `dns-refresh` (5 s by
//! default, Envoy's `dns_refresh_rate`) each target given by host name is
//! looked up again and the upstream's endpoints ([`super::members`]) follow
//! the answer. A lookup that fails (or answers no address) keeps the last
//! good addresses: a resolver hiccup must not empty an upstream. Failures
//! are logged (rate-limited) and counted
//! (`pylon_upstream_resolutions{result="fail"}`).
//!
//! The lookup is behind [`Resolve`] so unit tests can change the answer;
//! the gateway uses [`System`] (`tokio::net::lookup_host`, the system
//! resolver and its caching).
//!
//! Also here: [`Pinned`], the resolver of hyper-util's connector that
//! makes an HTTP/2 endpoint connect to its own address while the request
//! still names the target's host.
//!
//! Not here: building and swapping the endpoint set.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use hyper_util::client::legacy::connect::dns::Name;

use super::UpstreamPool;
use crate::telemetry::throttle::LogThrottle;

static RESOLVE_FAILED: LogThrottle = LogThrottle::new(
    "upstream target resolution failed",
    5,
    Duration::from_secs(60),
);

/// Looks host names up.
pub(super) trait Resolve: Send + Sync + 'static {
    /// The addresses of `host`, each with `port`.
    fn lookup(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (`getaddrinfo` on tokio's blocking pool).
pub(super) struct System;

impl Resolve for System {
    fn lookup(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_string();
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Look every host-name target up once and swap in the endpoints the
/// answers give (when they changed).
pub(super) async fn refresh(pool: &UpstreamPool, resolver: &impl Resolve) {
    let mut answers = Vec::new();
    for (i, target) in pool.config.targets.iter().enumerate() {
        let Some((host, port)) = host_name(target) else {
            continue;
        };
        let answer = match resolver.lookup(host, port).await {
            Ok(addrs) if !addrs.is_empty() => Ok(addrs),
            Ok(_) => Err(io::Error::new(io::ErrorKind::NotFound, "no address")),
            Err(e) => Err(e),
        };
        let result = match &answer {
            Ok(_) => "ok",
            Err(_) => "fail",
        };
        if let Some(m) = pool.metrics.get() {
            m.resolution(result);
        }
        match answer {
            Ok(addrs) => answers.push((i, addrs)),
            Err(error) => {
                if RESOLVE_FAILED.admit() {
                    tracing::warn!(upstream = %pool.config.name, %target, %error, "resolving the target failed: its last addresses stay in use");
                }
            }
        }
    }
    pool.resolved(answers);
}

/// `(host, port)` of a target given by host name; `None` for an IP
/// address (nothing to resolve) or what does not parse.
pub(super) fn host_name(target: &str) -> Option<(&str, u16)> {
    if target.parse::<SocketAddr>().is_ok() {
        return None;
    }
    let (host, port) = target.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

/// hyper-util's resolver for one endpoint: its own address, or (not yet
/// resolved) the system's answer for the name.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pinned(pub(super) Option<SocketAddr>);

impl tower_service::Service<Name> for Pinned {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let pinned = self.0;
        Box::pin(async move {
            match pinned {
                Some(addr) => Ok(vec![addr].into_iter()),
                // hyper-util sets the URI's port on what comes back.
                None => Ok(tokio::net::lookup_host((name.as_str(), 0))
                    .await?
                    .collect::<Vec<_>>()
                    .into_iter()),
            }
        })
    }
}

#[cfg(test)]
mod tests;
