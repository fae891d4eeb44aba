//! The proxy core without plugins: routing, header hygiene, streaming, and
//! upstream failure statuses.

mod client_errors;
mod forwarding;
mod upstream_connections;

use crate::harness::TestGateway;

/// A gateway whose one route "r" sends everything to the upstream at `addr`.
async fn proxy_to(addr: std::net::SocketAddr) -> TestGateway {
    TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{addr}\"]\n{}",
        route("r", "/", "u")
    ))
    .await
}

fn route(id: &str, path: &str, upstream: &str) -> String {
    format!("[[routes]]\nid = \"{id}\"\npath-prefix = \"{path}\"\nupstream = \"{upstream}\"\n")
}
