//! pylon: a programmable API gateway whose every policy is a sandboxed
//! WebAssembly component plugin.
//!
//! The request path, in the order of the modules below: [`server`] accepts
//! connections, [`router`] matches a route, [`pipeline`] runs the route's
//! plugins ([`plugin`] is their Wasm implementation), [`upstream`] forwards
//! to the backend, and [`error`] is the one place failures become statuses.
//! [`config`] reads and validates TOML; [`generation`] makes a configuration
//! live and is swapped atomically on reload ([`reload`]); [`admin`] and
//! [`telemetry`] are the operations side (admin API, metrics, access log,
//! traces). [`kit`] is not on the request path: it backs the `pylon plugin`
//! commands that start, build and test plugins.

pub mod admin;
pub mod body;
mod chain;
pub mod config;
pub mod demo;
pub mod error;
pub mod generation;
pub mod kit;
pub mod kv;
pub mod pipeline;
pub mod plugin;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
mod sync;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod workers;

pub use server::Gateway;
