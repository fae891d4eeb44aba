//! WebAssembly component plugins: the Wasm implementation of
//! [`crate::pipeline::Plugin`].
//!
//! - `contract`: every version of the `pylon:plugin` WIT contract served
//!   (the only module that names one): the current contract's types, the
//!   one model the rest uses, and each older version bound and converted
//!   onto it;
//! - `engine`: the one `Engine` (pooling allocator, epoch ticker) and the
//!   compile caches (memory and disk);
//! - `runtime`: [`PluginRuntime`] — compile, configure, stats;
//! - `instance`: [`WasmPlugin`](crate::pipeline::Plugin) and its guarded
//!   calls (deadline, memory cap, trap classification, pooling);
//! - `offload`: the low-priority thread pool where calls that run long
//!   (CPU-bound guest code) finish, away from the data-plane workers;
//! - `host`: the capabilities plugins import (`log`, `clock`, `kv`,
//!   `http-client`, WASI), each denied unless granted;
//! - `convert`: host model ⇄ WIT types, validating what guests return;
//! - `reclaim`: load-time work (compiles, snapshots) that gives its memory
//!   back to the system when it ends;
//! - `snapshot`: `fresh` plugins pre-initialised with their route's config
//!   (wasmtime-wizer), so a fresh instance needs no `configure` call.
//!
//! Loading is `compile` (blocking, once per component, cached) then
//! `configure` per route (instantiates and asks the plugin to accept its
//! config). Nothing is compiled or linked on the request path: a request
//! only instantiates from the pre-instantiated component, or reuses an
//! instance from the pool.

mod contract;
mod convert;
mod engine;
mod error;
mod host;
mod instance;
mod offload;
mod reclaim;
mod runtime;
mod snapshot;
mod state;
mod stats;

pub use contract::ContractVersion;
pub use engine::CompileOrigin;
pub use error::PluginLoadError;
pub use host::{
    CapabilityDenied,
    http::{MAX_SEND_ALL, OutboundError, OutboundHttp},
};
pub use runtime::{CacheStats, CompiledPlugin, HostServices, PluginRuntime, WallClock};
pub use stats::{LATENCY_BUCKETS_US, PluginStatsSnapshot};
