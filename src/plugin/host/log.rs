//! `pylon:plugin/log`: guest log lines become `tracing` events with `route`
//! and `plugin` fields, under the target `pylon::plugin::guest`. Without the
//! `log` grant, lines are dropped (a log line never fails a request).
//! Serves the current contract's `log`; older versions adapt onto it in
//! `contract`.

use wasmtime::component::{HasData, Linker};

use crate::plugin::{
    contract::current::pylon::plugin::log::{self, Level},
    state::{GuestContext, HostState},
};

/// Longest message kept; longer ones are cut (at a character boundary) so a
/// plugin cannot flood the log pipeline with one call.
const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// What `log` sees of the store.
pub(crate) struct LogView<'a> {
    ctx: &'a GuestContext,
}

pub(crate) struct LogData;

impl HasData for LogData {
    type Data<'a> = LogView<'a>;
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    log::add_to_linker::<HostState, LogData>(linker, view)
}

/// What `log` of every contract version sees of `s`.
pub(crate) fn view(s: &mut HostState) -> LogView<'_> {
    LogView { ctx: &s.ctx }
}

impl log::Host for LogView<'_> {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.emit(level, &message);
        Ok(())
    }
}

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
