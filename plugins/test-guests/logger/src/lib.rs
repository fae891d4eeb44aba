//! Test guest `logger`: on each request logs one event at every level
//! (`trace` to `error`, message `logger: <level> <method> <path>`), reads both
//! clocks, and continues with two request headers: `x-logger-now-ms` (wall
//! clock, ms since the epoch) and `x-logger-elapsed-ns` (monotonic time spent
//! logging). Needs the `log` and `clock` capabilities. Config: `{}`.

use pylon_plugin_sdk::log::{self, Level};
use pylon_plugin_sdk::{
    Needs, Plugin, Request, RequestAction, RequestEdits, clock, config, export_plugin,
};

struct Logger;

impl Plugin for Logger {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let config::Empty {} = config::parse(text)?;
        Ok((Logger, Needs::none()))
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        // Each accessor asks the host: read once, before the timed part.
        let (method, path) = (req.method(), req.path());
        let start = clock::monotonic_ns();
        let levels = [
            (Level::Trace, "trace"),
            (Level::Debug, "debug"),
            (Level::Info, "info"),
            (Level::Warn, "warn"),
            (Level::Error, "error"),
        ];
        for (level, name) in levels {
            log::log(level, &format!("logger: {name} {method} {path}"));
        }
        let now = clock::now_ms();
        let elapsed = clock::monotonic_ns().saturating_sub(start);
        RequestEdits::new()
            .set_header("x-logger-now-ms", now.to_string())
            .set_header("x-logger-elapsed-ns", elapsed.to_string())
            .into()
    }
}

export_plugin!(Logger);
