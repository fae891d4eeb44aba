//! Write [pylon](https://example.invalid/pylon) gateway plugins in Rust.
//!
//! A pylon plugin is a WebAssembly component exporting the
//! `pylon:plugin/guest@0.4.1` interface (see `wit/plugin.wit`). With this SDK
//! a plugin is a type plus an implementation of [`Plugin`], exported once with
//! [`export_plugin!`]:
//!
//! ```ignore
//! use pylon_plugin_sdk::{export_plugin, Needs, Plugin, Request, RequestAction, RequestEdits};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn configure(_config: &str) -> Result<(Self, Needs), String> {
//!         Ok((Hello, Needs::default()))
//!     }
//!
//!     fn on_request(&mut self, _req: &Request) -> RequestAction {
//!         RequestEdits::default().set_header("x-hello", "world").into()
//!     }
//! }
//!
//! export_plugin!(Hello);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`: the output
//! `.wasm` is already a component.
//!
//! What the SDK gives besides the trait:
//!
//! - the contract's types ([`Request`], [`Response`], [`RequestEdits`], ...)
//!   with small helpers (header lookup, builders), see [`types`]; the
//!   request and response a hook is handed are resources read on demand
//!   through [`ReadRequest`] / [`ReadResponse`];
//! - safe wrappers over the host imports: [`log`], [`clock`], [`kv`],
//!   [`http`];
//! - [`config::parse`] to turn the JSON config into a serde struct with a
//!   readable error.
//!
//! What it does not do: run anything natively. The imports exist only inside
//! the gateway, so plugin logic worth unit-testing natively should live in
//! plain functions that take `&impl ReadRequest` (tested with
//! [`RequestData`]) or `&impl ReadResponse` (tested with [`Response`]).

#![warn(missing_docs)]

#[doc(hidden)]
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod bindings;
pub mod clock;
pub mod config;
pub mod http;
pub mod kv;
pub mod log;
pub mod types;

#[doc(hidden)]
pub mod __private;

pub use types::{
    ClientIdentity, GrpcCode, Header, HeaderOp, Headers, Needs, ReadRequest, ReadResponse, Request,
    RequestAction, RequestData, RequestEdits, Response, ResponseEdits, ResponseView,
};

/// Re-exported so plugins can name serde without a direct dependency
/// (derives then need `#[serde(crate = "pylon_plugin_sdk::serde")]`).
pub use serde;
/// Re-exported for plugins that build or inspect JSON.
pub use serde_json;

/// A pylon plugin: one value of this type lives in each Wasm instance.
///
/// Phases and order, per instance:
///
/// 1. [`configure`](Plugin::configure) exactly once, before any request, with
///    the route's config for this plugin. Its [`Needs`] tell the host what to
///    buffer, whether to call each phase at all, and which header edits are
///    the same for every request (the host then applies them itself, see
///    [`Needs::with_fixed_request_headers`]).
/// 2. For each request: [`on_request`](Plugin::on_request) (unless
///    [`Needs::without_request_phase`] was asked for), then — only when
///    `Needs::response_phase` was set and the request reached the response
///    phase — [`on_response`](Plugin::on_response) on the same value.
///
/// In the gateway's `pooled` isolation mode the value is reused by later
/// requests (one at a time); in `fresh` mode every request gets a new instance
/// and so a freshly configured value. Do not rely on either.
///
/// A panic traps the instance: the host fails the request (or fails open, per
/// route) and discards the instance.
pub trait Plugin: Sized + 'static {
    /// Parse and validate the per-route config (JSON text, `"{}"` when the
    /// route gives none) and build the plugin.
    ///
    /// `Err(message)` rejects the config: the gateway refuses to load it and
    /// shows the message with the route and plugin names, so say what is
    /// wrong and where (see [`config::parse`]).
    fn configure(config: &str) -> Result<(Self, Needs), String>;

    /// The request phase. The default continues without edits.
    ///
    /// `req` is lent for this call only; every accessor asks the host, so
    /// read each part once.
    fn on_request(&mut self, req: &Request) -> RequestAction {
        let _ = req;
        RequestAction::Continue(RequestEdits::default())
    }

    /// The response phase, called only when `configure` returned
    /// `Needs { response_phase: true, .. }`. `req` is the request as it was
    /// sent upstream, after every plugin's edits; `resp.body()` is present
    /// only with `Needs::response_body`. The default changes nothing.
    fn on_response(&mut self, req: &Request, resp: &ResponseView) -> ResponseEdits {
        let _ = (req, resp);
        ResponseEdits::default()
    }
}

/// Export a [`Plugin`] type as this component's `pylon:plugin/guest`
/// implementation. Use it exactly once, in the plugin crate (a `cdylib` or a
/// `bin` built for `wasm32-wasip2`).
///
/// The value built by `configure` is kept in an instance-wide slot; calling
/// `on-request` or `on-response` before a successful `configure` traps with a
/// message naming the plugin type.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __PYLON_PLUGIN_SLOT: $crate::__private::Slot<$plugin> =
                    const { $crate::__private::Slot::new() };
            }

            struct __PylonGuest;

            impl $crate::__private::Guest for __PylonGuest {
                fn configure(
                    config: ::std::string::String,
                ) -> ::core::result::Result<$crate::Needs, ::std::string::String> {
                    __PYLON_PLUGIN_SLOT.with(|slot| slot.configure(&config))
                }

                fn on_request(request: &$crate::Request) -> $crate::RequestAction {
                    __PYLON_PLUGIN_SLOT.with(|slot| slot.on_request(request))
                }

                fn on_response(
                    request: &$crate::Request,
                    response: &$crate::ResponseView,
                ) -> $crate::ResponseEdits {
                    __PYLON_PLUGIN_SLOT.with(|slot| slot.on_response(request, response))
                }
            }

            $crate::__private::bindings::__pylon_export_guest!(
                __PylonGuest with_types_in $crate::__private::bindings
            );
        };
    };
}
