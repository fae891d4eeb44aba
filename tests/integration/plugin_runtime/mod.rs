//! The plugin runtime against real guest components (`build/plugins/*.wasm`,
//! built once per run by `scripts/build-plugins`): deadlines, memory
//! caps, traps, config rejection, compile caches, isolation, capability
//! grants, logging, concurrent outbound HTTP, and the refusal of plugins
//! built against a dropped contract. The shared helpers are in
//! `harness/runtime.rs`.

mod calls;
mod host;
mod instances;
mod loading;
mod sandbox;
