//! `pylon:plugin/kv`: the gateway's [`KvStore`] with every key prefixed by
//! `<plugin>:`, so plugins never see each other's keys. A value over the
//! plugin's `kv-max-value-size` is refused here, whatever the backend;
//! refusals reach the guest as `unavailable` with the reason, and are
//! counted in the plugin's `kv_refusals`. Serves the current contract's
//! `kv`; older versions adapt onto it in `contract`.

use std::time::Duration;

use bytes::Bytes;
use wasmtime::component::{HasData, Linker};

use crate::{
    error::ErrorChain,
    kv::{KvError, KvStore},
    plugin::{
        contract::current::pylon::plugin::kv::{self, KvError as WitKvError},
        state::HostState,
    },
};

/// What `kv` sees of the store.
pub(crate) struct KvView<'a> {
    granted: bool,
    prefix: &'a str,
    store: &'a dyn KvStore,
    max_value: usize,
    stats: &'a crate::plugin::stats::PluginStats,
}

pub(crate) struct KvData;

impl HasData for KvData {
    type Data<'a> = KvView<'a>;
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    kv::add_to_linker::<HostState, KvData>(linker, view)
}

/// The view of `s` every version's import functions get.
pub(crate) fn view(s: &mut HostState) -> KvView<'_> {
    KvView {
        granted: s.ctx.grants.kv,
        prefix: &s.ctx.kv_prefix,
        store: &*s.ctx.services.kv,
        max_value: s.ctx.kv_max_value,
        stats: &s.ctx.stats,
    }
}

impl KvView<'_> {
    fn key(&self, key: &str) -> Result<String, WitKvError> {
        if !self.granted {
            return Err(WitKvError::Denied);
        }
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(self.prefix);
        full.push_str(key);
        Ok(full)
    }
}

fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

fn to_wit(err: KvError) -> WitKvError {
    match err {
        KvError::NotANumber { .. } | KvError::Overflow { .. } => WitKvError::NotANumber,
        KvError::Unavailable { .. } | KvError::QuotaExceeded { .. } => {
            WitKvError::Unavailable(ErrorChain(&err).to_string())
        }
    }
}

/// The operations, whatever the contract version.
impl KvView<'_> {
    async fn get_value(&self, key: String) -> Result<Option<Vec<u8>>, WitKvError> {
        let key = self.key(&key)?;
        let value = self.store.get(&key).await.map_err(to_wit)?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn set_value(
        &self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), WitKvError> {
        let key = self.key(&key)?;
        if value.len() > self.max_value {
            self.stats.record_kv_refusal();
            return Err(WitKvError::Unavailable(format!(
                "value of {} bytes refused: the plugin's kv-max-value-size is {} bytes",
                value.len(),
                self.max_value
            )));
        }
        self.store
            .set(&key, Bytes::from(value), ttl(ttl_ms))
            .await
            .map_err(|e| self.refused(e))
    }

    /// Count a refusal at the quota, then convert.
    fn refused(&self, err: KvError) -> WitKvError {
        if matches!(err, KvError::QuotaExceeded { .. }) {
            self.stats.record_kv_refusal();
        }
        to_wit(err)
    }

    async fn delete_key(&self, key: String) -> Result<bool, WitKvError> {
        let key = self.key(&key)?;
        self.store.delete(&key).await.map_err(to_wit)
    }

    async fn add(&self, key: String, delta: i64, ttl_ms: Option<u64>) -> Result<i64, WitKvError> {
        let key = self.key(&key)?;
        self.store
            .incr(&key, delta, ttl(ttl_ms))
            .await
            .map_err(|e| self.refused(e))
    }
}

impl kv::Host for KvView<'_> {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, WitKvError> {
        self.get_value(key).await
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), WitKvError> {
        self.set_value(key, value, ttl_ms).await
    }

    async fn delete(&mut self, key: String) -> Result<bool, WitKvError> {
        self.delete_key(key).await
    }

    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, WitKvError> {
        self.add(key, delta, ttl_ms).await
    }
}
