//! Logging into the gateway's tracing (`pylon:plugin/log`); the host tags
//! every event with the route and plugin.
//!
//! Functions take a ready message; the macros of the same names format one:
//! `log::info!("saw {} headers", n)`. The `log` capability must be granted to
//! the plugin: an ungranted call traps.

pub use crate::bindings::pylon::plugin::log::Level;
pub use crate::{debug, error, info, trace, warn};

/// Emit one event at `level`.
pub fn log(level: Level, message: &str) {
    crate::bindings::pylon::plugin::log::log(level, message);
}

/// Emit at `trace` level.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Emit at `debug` level.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Emit at `info` level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Emit at `warn` level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Emit at `error` level.
pub fn error(message: &str) {
    log(Level::Error, message);
}

/// `trace!("fmt", args..)`: format and log at trace level.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log::trace(&::std::format!($($arg)+)) };
}

/// `debug!("fmt", args..)`: format and log at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log::debug(&::std::format!($($arg)+)) };
}

/// `info!("fmt", args..)`: format and log at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log::info(&::std::format!($($arg)+)) };
}

/// `warn!("fmt", args..)`: format and log at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log::warn(&::std::format!($($arg)+)) };
}

/// `error!("fmt", args..)`: format and log at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log::error(&::std::format!($($arg)+)) };
}
