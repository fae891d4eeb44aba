//! Observability: logging setup (`tracing` to stderr, human-readable or
//! JSON, filtered by `RUST_LOG`, default `info` with rustls at `error`) here, and in submodules
//! the Prometheus [`metrics`], the JSON [`access_log`], W3C trace context
//! and OTLP spans ([`trace`]), the per-request [`observe`] scope that
//! feeds all three, and [`throttle`] for log lines a peer can repeat at will.

pub mod access_log;
pub mod metrics;
pub mod observe;
pub mod throttle;
pub mod trace;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the global subscriber. Safe to call more than once (later calls
/// are ignored), so tests can call it too.
pub fn init(format: LogFormat) {
    // rustls warns about what a peer sent (an IP address as SNI, which
    // every client connecting to https://127.0.0.1 sends), once per
    // handshake: a log line any client can make pylon write at will.
    // Failed handshakes are counted in `pylon_tls_handshakes_total`.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
}
