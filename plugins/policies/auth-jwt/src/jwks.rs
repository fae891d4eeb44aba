//! The JWK Set fetched from a named upstream, cached in two places:
//!
//! - in the key-value store under `jwks` (shared by every instance and, with
//!   Redis, every gateway), as `{"fetched-at": ms, "jwks": {...}}` with the
//!   cache TTL as expiry;
//! - in the instance, parsed, so a pooled instance verifies without a store
//!   round trip while its copy is fresh.
//!
//! A set is loaded when neither copy is fresh. A token whose `kid` no cached
//! key has triggers a refresh, at most one per `min-refresh-interval` across
//! all instances: the first `incr` of `jwks:refresh-gate` in an interval wins
//! (the key expires after the interval). A failed fetch is remembered under
//! `jwks:failed` for the same interval so a down identity provider is not
//! hammered; meanwhile a stale set, if the instance has one, still serves.
//! Without the `kv` capability both caches and both bounds are per instance.

use pylon_plugin_sdk::http::{self, OutboundRequest};
use pylon_plugin_sdk::{kv, log};
use serde_json::{Value, json};

use crate::config::JwksConfig;
use crate::keys::{self, Key};

const KV_SET: &str = "jwks";
const KV_GATE: &str = "jwks:refresh-gate";
const KV_FAILED: &str = "jwks:failed";
/// Larger JWKS documents are refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

struct Cached {
    keys: Vec<Key>,
    fetched_at_ms: u64,
}

/// The JWKS source of one plugin instance.
pub(crate) struct Jwks {
    config: JwksConfig,
    cached: Option<Cached>,
    /// Bounds used when the store is unavailable.
    local_refresh_ms: Option<u64>,
    local_failure_ms: Option<u64>,
}

/// No key set could be had: never fetched successfully and the last attempt
/// failed (or is still being backed off).
pub(crate) struct Unavailable;

impl Jwks {
    pub(crate) fn new(config: JwksConfig) -> Self {
        Jwks {
            config,
            cached: None,
            local_refresh_ms: None,
            local_failure_ms: None,
        }
    }

    /// The current keys for a token naming `kid` (or none), loading or
    /// refreshing the set when needed.
    pub(crate) fn keys(&mut self, kid: Option<&str>, now_ms: u64) -> Result<&[Key], Unavailable> {
        let mut attempted = false;
        if !self.fresh(now_ms) {
            self.adopt_stored();
            if !self.fresh(now_ms) && !self.failed_recently(now_ms) {
                attempted = true;
                self.fetch(now_ms);
            }
        }
        // Refresh only a set we have: without one, the load above decides.
        if let Some(kid) = kid
            && !attempted
            && self.cached.is_some()
            && !self.knows(kid)
        {
            // Another instance may have refreshed already.
            self.adopt_stored();
            if !self.knows(kid) && !self.failed_recently(now_ms) && self.may_refresh(now_ms) {
                self.fetch(now_ms);
            }
        }
        self.cached
            .as_ref()
            .map(|c| c.keys.as_slice())
            .ok_or(Unavailable)
    }

    fn fresh(&self, now_ms: u64) -> bool {
        self.cached
            .as_ref()
            .is_some_and(|c| now_ms.saturating_sub(c.fetched_at_ms) < self.config.cache_ttl_ms)
    }

    fn knows(&self, kid: &str) -> bool {
        self.cached
            .as_ref()
            .is_some_and(|c| c.keys.iter().any(|k| k.kid.as_deref() == Some(kid)))
    }

    /// Take the store's copy when it is newer than ours.
    fn adopt_stored(&mut self) {
        let Ok(Some(bytes)) = kv::get(KV_SET) else {
            return;
        };
        let Ok(stored) = serde_json::from_slice::<Value>(&bytes) else {
            return;
        };
        let Some(fetched_at_ms) = stored.get("fetched-at").and_then(Value::as_u64) else {
            return;
        };
        if self
            .cached
            .as_ref()
            .is_some_and(|c| c.fetched_at_ms >= fetched_at_ms)
        {
            return;
        }
        if let Some(Ok((keys, _))) = stored.get("jwks").map(keys::keys_from_jwks) {
            self.cached = Some(Cached {
                keys,
                fetched_at_ms,
            });
        }
    }

    fn failed_recently(&self, now_ms: u64) -> bool {
        match kv::get(KV_FAILED) {
            Ok(found) => found.is_some(),
            Err(_) => self
                .local_failure_ms
                .is_some_and(|t| now_ms.saturating_sub(t) < self.config.min_refresh_interval_ms),
        }
    }

    /// Whether this instance may refresh now: the first in the interval.
    fn may_refresh(&mut self, now_ms: u64) -> bool {
        let interval = self.config.min_refresh_interval_ms;
        if interval == 0 {
            return true;
        }
        match kv::incr(KV_GATE, 1, Some(interval)) {
            Ok(n) => n == 1,
            Err(_) => {
                let allowed = self
                    .local_refresh_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= interval);
                if allowed {
                    self.local_refresh_ms = Some(now_ms);
                }
                allowed
            }
        }
    }

    /// Fetch the set and cache it, or remember the failure.
    fn fetch(&mut self, now_ms: u64) {
        match self.download() {
            Ok((doc, keys, skipped)) => {
                let stored = json!({ "fetched-at": now_ms, "jwks": doc });
                // A store failure only costs sharing; this instance still has the keys.
                let _ = kv::set(
                    KV_SET,
                    stored.to_string().as_bytes(),
                    Some(self.config.cache_ttl_ms),
                );
                self.cached = Some(Cached {
                    keys,
                    fetched_at_ms: now_ms,
                });
                // Logged last: an ungranted `log` traps, and the set must be cached by then.
                for problem in &skipped {
                    log::warn!("auth-jwt: JWKS key skipped: {problem}");
                }
            }
            Err(problem) => {
                // Recorded before logging: an ungranted `log` traps, and the
                // back-off must hold even then.
                self.local_failure_ms = Some(now_ms);
                let interval = self.config.min_refresh_interval_ms;
                if interval > 0 {
                    let _ = kv::set(KV_FAILED, b"1", Some(interval));
                }
                log::warn!(
                    "auth-jwt: JWKS from upstream {} at {} unavailable: {problem}",
                    self.config.upstream,
                    self.config.path
                );
            }
        }
    }

    /// The document, its usable keys, and why the others were skipped.
    fn download(&self) -> Result<(Value, Vec<Key>, Vec<String>), String> {
        let request = OutboundRequest::get(&self.config.upstream, &self.config.path)
            .with_header("accept", "application/json")
            .with_timeout_ms(self.config.timeout_ms);
        let response = http::send(&request).map_err(|e| format!("{e:?}"))?;
        if response.status != 200 {
            return Err(format!("status {}", response.status));
        }
        let body = response.body.unwrap_or_default();
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("document of {} bytes is too large", body.len()));
        }
        let doc: Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        let (keys, skipped) = keys::keys_from_jwks(&doc)?;
        if keys.is_empty() {
            return Err(format!(
                "no usable signing key in the set ({})",
                skipped.join("; ")
            ));
        }
        Ok((doc, keys, skipped))
    }
}
