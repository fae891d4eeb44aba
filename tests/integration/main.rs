//! pylon's integration tests: one binary, one harness (real servers on
//! ephemeral ports, real compiled plugins, the real `pylon` binary).

mod harness;

mod access_log;
mod admin;
mod bodies;
mod cli;
mod config_ui;
mod grpc;
mod language_plugins;
mod limits;
mod paths;
mod plugin_kit;
mod plugin_runtime;
mod plugins;
mod policies;
mod proxy;
mod reload;
mod routing;
mod shutdown;
mod tls;
mod traces;
mod upstream_limits;
mod upstreams;
mod websocket;
