//! What a plugin's `Store` holds: the context of the route plugin it serves
//! (shared, immutable), the memory limiter, the request and response lent
//! to the current hook call, and — only for components that import WASI,
//! created on first use — the WASI context.
//!
//! Host capability implementations never see this struct whole; each gets
//! a small view (`crate::plugin::host::*View`) with just what it needs.

use std::{sync::Arc, time::Instant};

use wasmtime::ResourceLimiter;

use super::{
    HostServices,
    host::{exchange::Exchange, wasi::WasiState},
};
use crate::config::Grants;

/// The route plugin a store serves: fixed when the plugin is configured on
/// a route, shared by all its instances.
pub(crate) struct GuestContext {
    /// The plugin's name.
    pub(crate) plugin: Arc<str>,
    /// The route's id.
    pub(crate) route: Arc<str>,
    /// Granted capabilities.
    pub(crate) grants: Grants,
    /// `<plugin>:`, prepended to every kv key.
    pub(crate) kv_prefix: String,
    /// The gateway's kv store and outbound HTTP.
    pub(crate) services: HostServices,
    /// The largest value the plugin may store (`kv-max-value-size`).
    pub(crate) kv_max_value: usize,
    /// The plugin's counters (kv refusals are counted there).
    pub(crate) stats: Arc<super::stats::PluginStats>,
}

/// The data of one plugin instance's `Store`.
pub(crate) struct HostState {
    pub(crate) ctx: Arc<GuestContext>,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) wasi: Option<Box<WasiState>>,
    /// The request (and response) lent to the guest during a hook call.
    pub(crate) exchange: Exchange,
    /// When the current call must end: checked at every epoch tick, where
    /// a call that still has time yields to the worker's other tasks and
    /// one past it traps (`Trap::Interrupt`). `None`: no limit.
    pub(crate) call_until: Option<Instant>,
    /// Held while the current call has run through an epoch tick: the
    /// ticker then ticks faster, so long calls yield more often.
    pub(crate) long_call: Option<super::engine::LongCall>,
}

impl HostState {
    pub(crate) fn new(ctx: Arc<GuestContext>, memory_limit: usize) -> Self {
        Self {
            exchange: Exchange::new(ctx.route.clone()),
            ctx,
            limiter: MemoryLimiter::new(memory_limit),
            wasi: None,
            call_until: None,
            long_call: None,
        }
    }
}

/// Caps the total linear memory of one instance (all its memories
/// together) and remembers whether it refused a growth, so a trap that
/// follows is reported as a memory failure rather than a plain trap.
pub(crate) struct MemoryLimiter {
    limit: usize,
    in_use: usize,
    /// The last growth allowed, taken back if it then fails.
    last_growth: usize,
    denied: bool,
}

impl MemoryLimiter {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            in_use: 0,
            last_growth: 0,
            denied: false,
        }
    }

    /// Whether a growth was refused since the last [`reset_denied`](Self::reset_denied).
    pub(crate) fn denied(&self) -> bool {
        self.denied
    }

    /// Forget earlier refusals (before each call).
    pub(crate) fn reset_denied(&mut self) {
        self.denied = false;
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Memories never shrink, so summing growths (creation counts as
        // growth from 0) tracks the instance's total.
        let growth = desired.saturating_sub(current);
        match self.in_use.checked_add(growth) {
            Some(total) if total <= self.limit => {
                self.in_use = total;
                self.last_growth = growth;
                Ok(true)
            }
            _ => {
                self.denied = true;
                Ok(false)
            }
        }
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Growth allowed here but refused by the pool (past its slot size):
        // the same failure for the plugin. The error is wasmtime's own
        // bookkeeping; the guest sees `memory.grow` return -1.
        self.in_use -= std::mem::take(&mut self.last_growth);
        self.denied = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Bounded by the pool's `table_elements`.
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_the_sum_of_all_memories() {
        let mut l = MemoryLimiter::new(10);
        assert!(l.memory_growing(0, 4, None).unwrap());
        assert!(l.memory_growing(0, 4, None).unwrap());
        assert!(!l.denied());
        assert!(!l.memory_growing(4, 7, None).unwrap());
        assert!(l.denied());
        l.reset_denied();
        assert!(l.memory_growing(4, 6, None).unwrap());
        assert!(!l.denied());
    }
}
