//! Time from the host (`pylon:plugin/clock`). Needs the `clock` capability:
//! an ungranted call traps.

use crate::bindings::pylon::plugin::clock as imp;

/// Milliseconds since the Unix epoch (wall clock; may jump).
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// Nanoseconds from an arbitrary fixed point; never goes backwards. Use it to
/// measure durations.
pub fn monotonic_ns() -> u64 {
    imp::monotonic_ns()
}
