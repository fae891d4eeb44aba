//! The process's open-file limit: raised at start to what the system
//! allows, and compared with what the configured limits may hold open, so
//! that running out of file descriptors (which fails every accept, the
//! admin API's included, and every upstream connect) is a warning at start
//! rather than an outage under load.
//!
//! Not a limit itself: the per-listener caps in [`super::conn`] are.

use crate::config::Config;

/// Descriptors kept for everything that is not a client connection or an
/// upstream connection: the admin API and its clients, the configuration
/// and component files, the access log, the epoch ticker, Redis.
const RESERVED_FDS: u64 = 256;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit and log the result.
/// Returns the soft limit now in force, if it could be read.
pub fn raise_nofile_limit() -> Option<u64> {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => {
            tracing::info!(
                before = before.map(|(soft, _)| soft),
                now,
                "open-file limit raised to the hard limit"
            );
            Some(now)
        }
        Err(err) => {
            tracing::warn!(
                error = %err,
                soft = before.map(|(soft, _)| soft),
                "cannot raise the open-file limit"
            );
            before.map(|(soft, _)| soft)
        }
    }
}

/// How many descriptors `config`'s limits let the gateway hold at once:
/// every listener's connections, one upstream connection per request in
/// flight, idle upstream connections, and [`RESERVED_FDS`].
pub fn descriptors_needed(config: &Config) -> u64 {
    let listeners: u64 = config
        .listeners
        .iter()
        .map(|l| (l.limits.max_connections + l.limits.max_requests_in_flight) as u64)
        .sum();
    let idle_upstream: u64 = config
        .upstreams
        .values()
        .map(|u| (u.targets.len() * u.max_idle_per_target) as u64)
        .sum();
    listeners
        .saturating_add(idle_upstream)
        .saturating_add(RESERVED_FDS)
}

/// Warn when the configured limits can hold more descriptors open than the
/// process may have.
pub(super) fn check_budget(config: &Config) {
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return;
    };
    let needed = descriptors_needed(config);
    if needed > soft {
        tracing::warn!(
            needed,
            limit = soft,
            "the listeners' max-connections and max-requests-in-flight (plus upstream \
             connections) allow more open files than the process may have: under load, \
             accepts (the admin API's too) and upstream connects would fail; lower those \
             limits or raise the open-file limit (ulimit -n, LimitNOFILE=)"
        );
    }
}
