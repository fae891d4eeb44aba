//! Active HTTP health checks: every `interval`, each target of an upstream
//! is sent the configured request (over the upstream's own connections and
//! protocol, TLS included) and its status compared with the expected ones;
//! the thresholds turn passes and failures into the target's health
//! ([`super::target::TargetState::check_result`]); a passed check also
//! ends an outlier ejection (Envoy's default).
//!
//! One task per upstream (started by [`super::set`], holding only a weak
//! reference): when a reload replaces the configuration and the old
//! upstream is dropped, its checks stop at the next tick; while it drains,
//! it leaves the targets the new configuration took over (their state is
//! shared) to the new one's checks. The first round runs at once, so a
//! target that is down at start is found within `unhealthy-threshold`
//! rounds.

use std::sync::Arc;

use http::{HeaderValue, Request, header};

use super::{UpstreamPool, members::Members, policy::HealthCheck};
use crate::body;

/// Check every endpoint once, concurrently.
pub(super) async fn round(pool: &Arc<UpstreamPool>, hc: &HealthCheck) {
    let members = pool.members.load_full();
    let members = &members;
    let checks = (0..members.states.len()).map(|i| async move {
        let state = &members.states[i];
        // A newer configuration lists this target and checks it itself.
        if !state.owned_by(pool.id) {
            return;
        }
        let passed = check(pool, members, hc, i).await;
        if let Some(m) = pool.metrics.get() {
            m.health_check(passed);
        }
        let events = state.check_result(
            passed,
            (hc.healthy_threshold, hc.unhealthy_threshold),
            tokio::time::Instant::now(),
        );
        pool.emit(&state.name, &events);
    });
    futures::future::join_all(checks).await;
}

async fn check(pool: &UpstreamPool, members: &Members, hc: &HealthCheck, i: usize) -> bool {
    let mut req = Request::new(body::empty());
    *req.method_mut() = hc.method.clone();
    let Ok(uri) = hc.path.parse() else {
        return false;
    };
    *req.uri_mut() = uri;
    let target = members.endpoints[i].target;
    let host = hc.host.as_deref().unwrap_or(&pool.config.targets[target]);
    if let Ok(v) = HeaderValue::from_str(host) {
        req.headers_mut().insert(header::HOST, v);
    }
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("pylon-health-check"),
    );
    let sent =
        tokio::time::timeout(hc.timeout, pool.send_to(members, i, req, hc.timeout, None)).await;
    // The response body is dropped unread: the pool drains it (bounded)
    // in the background and reuses the connection.
    matches!(sent, Ok(Ok(resp)) if hc.healthy_status(resp.status().as_u16()))
}
