//! Plugins through the running gateway: each decision of the contract,
//! failure policies, the sandbox limits, a non-Rust plugin, plugins built
//! against the previous contract, and adversarial plugins.
//!
//! This file holds the gateways and plugin definitions the tests below share.

mod guests;
mod host_calls;
mod hostile;
mod instances;
mod phases;

use crate::harness::{TestGateway, Upstream, plugin};

/// A gateway with one upstream and one route "r" on `/` whose pipeline is
/// the given `[[routes.plugins]]` entries; `defs` are `[plugins.*]` tables.
async fn gateway(up: &Upstream, defs: &str, refs: &str) -> TestGateway {
    TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n\n{defs}\n\n[[routes]]\nid = \"r\"\npath = \"/items/{{id}}\"\nupstream = \"u\"\n\n{refs}",
        up.addr
    ))
    .await
}

fn def(name: &str, component: &str, extra: &str) -> String {
    format!(
        "[plugins.{name}]\ncomponent = {:?}\n{extra}\n",
        plugin(component)
    )
}

/// Counters of plugin `name` (all routes together).
fn plugin_stats(gw: &TestGateway, name: &str) -> pylon::plugin::PluginStatsSnapshot {
    gw.gateway
        .shared()
        .plugins
        .stats()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
        .unwrap_or_default()
}
