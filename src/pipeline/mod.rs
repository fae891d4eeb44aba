//! The per-route plugin pipeline: the narrow phase traits every plugin
//! implements (Wasm components and native test doubles alike), the request
//! and response models they see, and the runner that drives them in order.
//!
//! This module knows nothing about wasmtime; `crate::plugin` provides the
//! Wasm implementation of [`Plugin`]. It also knows nothing about sockets:
//! `crate::proxy` feeds it requests and forwards what it decides.

mod run;
mod types;

pub use run::{Pipeline, PipelineEntry, RequestOutcome, Sessions};
pub use types::{
    FixedEdits, HeaderLimit, HeaderOp, MAX_MESSAGE_HEADERS, Needs, PluginError, PluginRequest,
    PluginResponse, RequestAction, RequestEdits, ResponseEdits,
};

use async_trait::async_trait;

/// A configured plugin instance on one route: the plugin's code plus the
/// per-route configuration it accepted at load.
///
/// `start` is called once per request that reaches this plugin and yields
/// the [`PluginSession`] that serves both phases of that request.
/// Starting takes nothing yet: what a call needs (an instance, a place under
/// the plugin's limits) is the session's to take when its first call runs,
/// so `start` is synchronous and a plugin call pays no future for it.
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's id as configured (used in logs, metrics and errors).
    fn id(&self) -> &str;

    /// What the plugin declared when it accepted its configuration.
    fn needs(&self) -> Needs;

    /// The header edits it declared for every request, which the pipeline
    /// applies itself. Default: none.
    fn fixed(&self) -> &FixedEdits {
        FixedEdits::none()
    }

    /// A session for one request; its first call takes an instance (fresh
    /// or from a pool).
    fn start(&self) -> Box<dyn PluginSession>;

    /// Count a failure the pipeline found in what the plugin returned (edits
    /// that do not fit the message) in the plugin's own metrics. Default:
    /// nothing to count.
    fn record_failure(&self, _err: &PluginError) {}
}

/// One plugin instance serving one request.
///
/// The pipeline calls [`on_request`](PluginSession::on_request) once, then,
/// if the plugin asked for the response phase and the request got a
/// response, [`on_response`](PluginSession::on_response) once. Dropping the
/// session releases the instance (back to its pool unless it failed).
///
/// The request and response are lent mutably so that a session can move
/// them where its plugin reads them (a Wasm session swaps them into the
/// instance's store for the call); a session returns them as it got them
/// and reports its changes as edits, which the pipeline applies.
#[async_trait]
pub trait PluginSession: Send {
    /// The request phase. Default: continue without edits.
    async fn on_request(&mut self, _req: &mut PluginRequest) -> Result<RequestAction, PluginError> {
        Ok(RequestAction::Continue(RequestEdits::default()))
    }

    /// The response phase. Default: no edits.
    async fn on_response(
        &mut self,
        _req: &mut PluginRequest,
        _resp: &mut PluginResponse,
    ) -> Result<ResponseEdits, PluginError> {
        Ok(ResponseEdits::default())
    }
}
