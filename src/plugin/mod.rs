//! WebAssembly component plugins: the Wasm implementation of
//! [`crate::pipeline::Plugin`].
//!
//! The files, from the top down (each names only files below it):
//! - `loader`: [`PluginLoader`] — compiles plugin definitions into
//!   [`CompiledPlugin`]s and configures them on routes; owns what every
//!   plugin shares (engine, linkers, caches, ticker, stats);
//! - `compiled`: [`CompiledPlugin`], and what a route it is configured on
//!   gets from it (context, call policy);
//! - `snapshot`: `fresh` and `pooled` plugins pre-initialised with their
//!   route's config (wasmtime-wizer), so a new instance needs no
//!   `configure` call;
//! - `instance`: [`WasmPlugin`](crate::pipeline::Plugin), its sessions and
//!   instances' hook calls; `pool`: the idle instances of a pooled plugin;
//! - `call`: the call policy — store creation, deadline, memory cap, CPU
//!   slots, and the classification of a call's failure;
//! - `offload`: the low-priority thread pool where calls that run long
//!   (CPU-bound guest code) finish, away from the data-plane workers;
//! - `contract`: every version of the `pylon:plugin` WIT contract served
//!   (the only module that names one): the current contract's types, the
//!   one model the rest uses, and each older version bound and converted
//!   onto it;
//! - `host`: the capabilities plugins import (`log`, `clock`, `kv`,
//!   `http-client`, the `types` resources, WASI), each denied unless
//!   granted, each implemented on a view of the store's data;
//! - `state`: the store's data (the route plugin's context, the memory
//!   limiter, the lent request and response, the WASI context);
//!   `services`: the kv store and outbound HTTP the capabilities use;
//! - `engine`: the one `Engine` (pooling allocator); `ticker`: the epoch
//!   ticker; `cache`: the compile caches (memory and disk);
//! - `convert`: host model ⇄ WIT types, validating what guests return;
//!   `stats`, `error`;
//! - `reclaim`: load-time work (compiles, snapshots) that gives its memory
//!   back to the system when it ends.
//!
//! Loading is `compile` (blocking, once per component, cached) then
//! `configure` per route (instantiates and asks the plugin to accept its
//! config). Nothing is compiled or linked on the request path: a request
//! only instantiates from the pre-instantiated component, or reuses an
//! instance from the pool.

mod cache;
mod call;
mod compiled;
mod contract;
mod convert;
mod engine;
mod error;
mod host;
mod instance;
mod loader;
mod offload;
mod pool;
mod reclaim;
mod services;
mod snapshot;
mod state;
mod stats;
mod ticker;

pub use cache::CompileOrigin;
pub use compiled::CompiledPlugin;
pub use contract::ContractVersion;
pub use error::PluginLoadError;
pub use host::{CapabilityDenied, http::MAX_SEND_ALL};
pub use loader::{CacheStats, PluginLoader};
pub use services::{HostServices, OutboundError, OutboundHttp, WallClock};
pub use stats::{LATENCY_BUCKETS_US, PluginStatsSnapshot};
