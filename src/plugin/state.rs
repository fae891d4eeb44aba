//! What a plugin's `Store` holds: the context of the route plugin it serves
//! (shared, immutable), the memory limiter, the request and response lent
//! to the current hook call, and — only for components that import WASI,
//! created on first use — the WASI context.
//!
//! Host capability implementations never see this struct whole; each gets
//! a small view (`crate::plugin::host::*View`, the [`Exchange`], the WASI
//! context) with just what it needs. This module names nothing of `host`:
//! the capabilities look down at the data, never the other way.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use wasmtime::{
    ResourceLimiter,
    component::{Resource, ResourceTable},
};
use wasmtime_wasi::WasiCtx;

use super::{
    contract::current::pylon::plugin::types::{Request, ResponseView},
    services::HostServices,
};
use crate::{
    config::Grants,
    pipeline::{PluginRequest, PluginResponse},
};

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
    pub(crate) long_call: Option<super::ticker::LongCall>,
    /// A CPU slot the current call took before it started (one that waited
    /// for a slot rather than hold an instance while waiting, see
    /// `instance`): its first tick keeps this one instead of waiting again.
    pub(crate) cpu_slot: Option<tokio::sync::OwnedSemaphorePermit>,
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
            cpu_slot: None,
        }
    }
}

/// The handle rep of the one request (or response) a store can hold.
const REP: u32 = 0;

/// What a store lends its guest during a hook call.
pub(crate) struct Exchange {
    request: PluginRequest,
    response: PluginResponse,
    request_lent: bool,
    response_lent: bool,
    request_body: bool,
    response_body: bool,
}

/// A handle lent to an accessor outside any hook call: a host bug, turned
/// into a trap of that call rather than a panic.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` used outside the hook call it was lent to")]
pub(crate) struct NotLent(&'static str);

impl Exchange {
    /// An empty exchange for a store serving `route`.
    pub(crate) fn new(route: Arc<str>) -> Self {
        Self {
            request: empty_request(route),
            response: PluginResponse::new(StatusCode::OK),
            request_lent: false,
            response_lent: false,
            request_body: false,
            response_body: false,
        }
    }

    /// Take `req` in for a call and return the guest's handle to it; the body
    /// is visible only `with_body`. [`Self::give_back`] must follow.
    pub(crate) fn lend_request(
        &mut self,
        req: &mut PluginRequest,
        with_body: bool,
    ) -> Resource<Request> {
        std::mem::swap(&mut self.request, req);
        self.request_lent = true;
        self.request_body = with_body;
        Resource::new_borrow(REP)
    }

    /// Take `resp` in for a call, as [`Self::lend_request`] does.
    pub(crate) fn lend_response(
        &mut self,
        resp: &mut PluginResponse,
        with_body: bool,
    ) -> Resource<ResponseView> {
        std::mem::swap(&mut self.response, resp);
        self.response_lent = true;
        self.response_body = with_body;
        Resource::new_borrow(REP)
    }

    /// Hand back whatever was lent, after the call (also after a failed one).
    pub(crate) fn give_back(&mut self, req: &mut PluginRequest, resp: Option<&mut PluginResponse>) {
        if std::mem::take(&mut self.request_lent) {
            std::mem::swap(&mut self.request, req);
        }
        if let Some(resp) = resp
            && std::mem::take(&mut self.response_lent)
        {
            std::mem::swap(&mut self.response, resp);
        }
    }

    /// The request lent to the current call; a trap outside one.
    pub(crate) fn request(&self) -> wasmtime::Result<&PluginRequest> {
        if self.request_lent {
            Ok(&self.request)
        } else {
            Err(wasmtime::Error::new(NotLent("request")))
        }
    }

    /// The response lent to the current call; a trap outside one.
    pub(crate) fn response(&self) -> wasmtime::Result<&PluginResponse> {
        if self.response_lent {
            Ok(&self.response)
        } else {
            Err(wasmtime::Error::new(NotLent("response-view")))
        }
    }

    /// The lent request's buffered body, only when the plugin asked for it.
    pub(crate) fn request_body(&self) -> wasmtime::Result<Option<&Bytes>> {
        let body = self.request()?.body.as_ref();
        Ok(body.filter(|_| self.request_body))
    }

    /// The lent response's buffered body, only when the plugin asked for it.
    pub(crate) fn response_body(&self) -> wasmtime::Result<Option<&Bytes>> {
        let body = self.response()?.body.as_ref();
        Ok(body.filter(|_| self.response_body))
    }
}

/// A placeholder request for `route`, in an exchange while nothing is lent.
pub(crate) fn empty_request(route: Arc<str>) -> PluginRequest {
    PluginRequest {
        route,
        method: Method::GET,
        path: String::new(),
        query: None,
        headers: HeaderMap::new(),
        client_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        scheme: "http",
        client_identity: None,
        params: Vec::new(),
        body: None,
    }
}

/// A store's WASI context and resource table (made by `host::wasi` on the
/// store's first WASI call).
pub(crate) struct WasiState {
    pub(crate) ctx: WasiCtx,
    pub(crate) table: ResourceTable,
}

impl WasiState {
    /// Whether no WASI resource (stream, pollable, ...) is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
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

    /// Bytes of linear memory the instance holds (all its memories).
    pub(crate) fn in_use(&self) -> usize {
        self.in_use
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
