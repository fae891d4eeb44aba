//! The gateway's key-value store (`pylon:plugin/kv`).
//!
//! Keys are namespaced per plugin by the host. Without the `kv` capability
//! every call returns [`KvError::Denied`].

use crate::bindings::pylon::plugin::kv as imp;

pub use imp::KvError;

/// The value under `key`, if any and not expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    imp::get(key)
}

/// Store `value` under `key`; with `ttl_ms` it expires after that many
/// milliseconds.
pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError> {
    imp::set(key, value, ttl_ms)
}

/// Remove `key`; `true` when it existed.
pub fn delete(key: &str) -> Result<bool, KvError> {
    imp::delete(key)
}

/// Atomically add `delta` to the integer under `key` (missing counts as 0)
/// and return the new value. `ttl_ms` applies only when the key is created.
pub fn incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
    imp::incr(key, delta, ttl_ms)
}
