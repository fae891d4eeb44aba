//! `pylon:plugin/log`: guest log lines become `tracing` events with `route`
//! and `plugin` fields, under the target `pylon::plugin::guest`. Without the
//! `log` grant, lines are dropped (a log line never fails a request).
//! Serves `log` of every contract version the host serves (0.4.0, 0.3.0).

use wasmtime::component::{HasData, Linker};

use crate::plugin::{
    bindings::pylon::plugin::log::{self, Level},
    bindings_v0_3::pylon::plugin::log as log_v0_3,
    state::{GuestContext, HostState},
};

/// Longest message kept; longer ones are cut (at a character boundary) so a
/// plugin cannot flood the log pipeline with one call.
const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// What `log` sees of the store.
pub(crate) struct LogView<'a> {
    ctx: &'a GuestContext,
}

struct LogData;

impl HasData for LogData {
    type Data<'a> = LogView<'a>;
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    log::add_to_linker::<HostState, LogData>(linker, |s| LogView { ctx: &s.ctx })?;
    log_v0_3::add_to_linker::<HostState, LogData>(linker, |s| LogView { ctx: &s.ctx })
}

impl log::Host for LogView<'_> {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.emit(level, &message);
        Ok(())
    }
}

/// An older version's `log`: its level converted.
macro_rules! serve_older_log {
    ($log:ident) => {
        impl $log::Host for LogView<'_> {
            fn log(&mut self, level: $log::Level, message: String) -> wasmtime::Result<()> {
                self.emit(level.into(), &message);
                Ok(())
            }
        }
    };
}

serve_older_log!(log_v0_3);

impl LogView<'_> {
    /// One `log` call, whatever the contract version.
    fn emit(&self, level: Level, message: &str) {
        let ctx = self.ctx;
        if !ctx.grants.log {
            // Dropped rather than trapped: a log line is never worth failing
            // a request for, and a plugin cannot know its grants.
            tracing::trace!(
                route = &*ctx.route,
                plugin = &*ctx.plugin,
                "log call dropped: `log` capability not granted"
            );
            return;
        }
        let message = truncate(message, MAX_MESSAGE_BYTES);
        let (route, plugin) = (&*ctx.route, &*ctx.plugin);
        match level {
            Level::Trace => {
                tracing::trace!(target: "pylon::plugin::guest", route, plugin, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "pylon::plugin::guest", route, plugin, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "pylon::plugin::guest", route, plugin, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "pylon::plugin::guest", route, plugin, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "pylon::plugin::guest", route, plugin, "{message}")
            }
        }
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
