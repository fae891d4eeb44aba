//! pylon's integration tests: one binary, one harness (real servers on
//! ephemeral ports, real compiled plugins, the real `pylon` binary).

mod harness;

mod bodies;
mod cli;
mod config_ui;
mod limits;
mod ops;
mod paths;
mod plugin_kit;
mod plugin_runtime;
mod plugins;
mod policies;
mod proxy;
mod upstream_limits;
