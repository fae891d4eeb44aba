//! `pylon:plugin/clock`: wall time in milliseconds and a monotonic clock in
//! nanoseconds (from a process-wide origin, so it never goes backwards even
//! across instances). Serves the current contract's `clock`; older
//! versions adapt onto it in `contract`.

use std::{
    sync::OnceLock,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use wasmtime::component::{HasData, Linker};

use super::CapabilityDenied;
use crate::plugin::{
    contract::current::pylon::plugin::clock,
    state::{GuestContext, HostState},
};

/// What `clock` sees of the store.
pub(crate) struct ClockView<'a> {
    ctx: &'a GuestContext,
}

pub(crate) struct ClockData;

impl HasData for ClockData {
    type Data<'a> = ClockView<'a>;
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    clock::add_to_linker::<HostState, ClockData>(linker, view)
}

/// What `clock` of every contract version sees of `s`.
pub(crate) fn view(s: &mut HostState) -> ClockView<'_> {
    ClockView { ctx: &s.ctx }
}

impl ClockView<'_> {
    fn check(&self) -> wasmtime::Result<()> {
        if self.ctx.grants.clock {
            Ok(())
        } else {
            Err(wasmtime::Error::new(CapabilityDenied {
                plugin: self.ctx.plugin.to_string(),
                route: self.ctx.route.to_string(),
                capability: "pylon:plugin/clock",
            }))
        }
    }

    /// `now-ms`, whatever the contract version.
    fn wall_ms(&self) -> wasmtime::Result<u64> {
        self.check()?;
        if let crate::plugin::WallClock::Fixed(ms) = self.ctx.services.clock {
            return Ok(ms);
        }
        // A clock before 1970 reads as 0 rather than failing the plugin.
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Ok(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// `monotonic-ns`, whatever the contract version.
    fn monotonic(&self) -> wasmtime::Result<u64> {
        self.check()?;
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let ns = ORIGIN.get_or_init(Instant::now).elapsed().as_nanos();
        Ok(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// `clock` of one version: the shapes never changed.
macro_rules! serve_clock {
    ($clock:ident) => {
        impl $clock::Host for ClockView<'_> {
            fn now_ms(&mut self) -> wasmtime::Result<u64> {
                self.wall_ms()
            }

            fn monotonic_ns(&mut self) -> wasmtime::Result<u64> {
                self.monotonic()
            }
        }
    };
}

serve_clock!(clock);
