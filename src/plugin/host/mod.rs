//! The host side of the plugin world's imports, one file per WIT interface
//! (`log`, `clock`, `kv`, `http-client`), the `types` resources a hook reads
//! the request and response through (`exchange`), plus WASI for components
//! that import it. Every capability is denied unless the plugin's grants say
//! otherwise: `kv` and `http-client` answer `denied`, ungranted `log`
//! lines are dropped, and `clock` traps with [`CapabilityDenied`].
//!
//! Each file serves its interface of the current contract: one
//! implementation, behind which `crate::plugin::contract` adapts every
//! older version served.

pub(crate) mod clock;
pub(crate) mod exchange;
pub(crate) mod http;
pub(crate) mod kv;
pub(crate) mod log;
pub(crate) mod wasi;

use wasmtime::component::{HasSelf, Linker};

use super::{
    contract::current::pylon::plugin::types,
    state::{Exchange, HostState},
};

/// A plugin called a trapping capability (`clock`) it was not granted.
#[derive(Debug, thiserror::Error)]
#[error("plugin \"{plugin}\" on route \"{route}\" called `{capability}` without that grant")]
pub struct CapabilityDenied {
    /// The plugin's name.
    pub plugin: String,
    /// The route it served.
    pub route: String,
    /// The WIT interface, e.g. `pylon:plugin/log`.
    pub capability: &'static str,
}

/// Add the current contract's `pylon:plugin` imports (all of them: grants
/// are checked per call, so one linker serves every plugin).
pub(crate) fn add_plugin_imports(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    types::add_to_linker::<HostState, HasSelf<Exchange>>(linker, |s| &mut s.exchange)?;
    log::add_to_linker(linker)?;
    clock::add_to_linker(linker)?;
    kv::add_to_linker(linker)?;
    http::add_to_linker(linker)?;
    Ok(())
}
