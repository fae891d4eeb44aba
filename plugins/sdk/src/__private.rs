//! Support for [`export_plugin!`](crate::export_plugin): not a public API.

use std::cell::RefCell;

use crate::{Needs, Plugin, Request, RequestAction, ResponseEdits, ResponseView};

pub use crate::bindings;
pub use crate::bindings::exports::pylon::plugin::guest::Guest;

/// The instance's plugin value. Wasm instances are single-threaded and the
/// component model forbids re-entering an instance from its own imports, so a
/// `RefCell` borrow can never overlap another call.
pub struct Slot<P>(RefCell<Option<P>>);

impl<P: Plugin> Slot<P> {
    /// An empty slot: no `configure` yet.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Slot(RefCell::new(None))
    }

    /// Run `P::configure`; on success the new value replaces any earlier one.
    pub fn configure(&self, config: &str) -> Result<Needs, String> {
        let (plugin, needs) = P::configure(config)?;
        *self.0.borrow_mut() = Some(plugin);
        Ok(needs)
    }

    /// Run `P::on_request` on the configured value.
    pub fn on_request(&self, request: &Request) -> RequestAction {
        self.with_plugin("on-request", |p| p.on_request(request))
    }

    /// Run `P::on_response` on the configured value.
    pub fn on_response(&self, request: &Request, response: &ResponseView) -> ResponseEdits {
        self.with_plugin("on-response", |p| p.on_response(request, response))
    }

    fn with_plugin<R>(&self, phase: &str, f: impl FnOnce(&mut P) -> R) -> R {
        let mut slot = self.0.borrow_mut();
        match slot.as_mut() {
            Some(plugin) => f(plugin),
            // A host bug, not a plugin one: trap loudly rather than guess.
            None => panic!(
                "pylon plugin `{}`: {phase} called before a successful configure",
                std::any::type_name::<P>()
            ),
        }
    }
}
