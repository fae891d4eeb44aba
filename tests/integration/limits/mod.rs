//! Connection and HTTP/2 limits (issues 15 and 22): silent and idle
//! connections, the connection cap, the in-flight limit, requests per
//! connection, paced rapid reset, control-frame floods, streams that never
//! finish and clients that never read. Timeouts are short here and every
//! assertion leaves a wide margin.

mod connections;
mod streams;

use std::net::SocketAddr;

use pylon::{Gateway, config::Config};

use crate::harness::parse;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A gateway proxying every path to `up`, with an admin listener; `tune`
/// adjusts the configuration (the limits) before it starts.
async fn gateway(up: SocketAddr, tune: impl FnOnce(&mut Config)) -> Gateway {
    let mut config = parse(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n[upstreams.u]\ntargets = [\"{up}\"]\n\
         [[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n"
    ))
    .unwrap();
    tune(&mut config);
    Gateway::start(config).await.unwrap()
}

/// The value of one `pylon_connections_closed_total` series.
fn closed(gw: &Gateway, reason: &str) -> u64 {
    metric(
        gw,
        &format!("pylon_connections_closed_total{{reason=\"{reason}\"}}"),
    )
}

fn metric(gw: &Gateway, series: &str) -> u64 {
    let text = gw.metrics().encode();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
