//! Drives a route's plugins through the request phase (in order) and the
//! response phase (in reverse), applying each plugin's edits and its
//! failure policy.
//!
//! At each plugin's place, in either direction, the edits it declared at
//! configure ([`FixedEdits`](super::FixedEdits)) go first, then (on the way
//! back) the response edits it gave in the request phase, then whatever its
//! hook returns; the hook sees the message with the earlier edits applied.

use std::sync::Arc;

use crate::telemetry::observe;

use http::HeaderMap;

use super::{
    HeaderOp, Needs, Plugin, PluginError, PluginRequest, PluginResponse, PluginSession,
    RequestAction, RequestEdits,
};
use crate::config::FailurePolicy;

/// Apply `ops` of `plugin` to `headers`, all or none: edits that would take
/// the message past [`super::MAX_MESSAGE_HEADERS`] are the plugin's failure
/// (counted in its metrics), and leave the message as it was.
fn apply_edits(
    plugin: &dyn Plugin,
    ops: &[HeaderOp],
    headers: &mut HeaderMap,
) -> Result<(), PluginError> {
    HeaderOp::fit(headers, ops).map_err(|limit| over_limit(plugin, limit))?;
    for op in ops {
        op.apply(headers)
            .map_err(|limit| over_limit(plugin, limit))?;
    }
    Ok(())
}

/// [`apply_edits`] for edits used once, moved into the map.
fn apply_owned_edits(
    plugin: &dyn Plugin,
    ops: Vec<HeaderOp>,
    headers: &mut HeaderMap,
) -> Result<(), PluginError> {
    HeaderOp::fit(headers, &ops).map_err(|limit| over_limit(plugin, limit))?;
    for op in ops {
        op.apply_owned(headers)
            .map_err(|limit| over_limit(plugin, limit))?;
    }
    Ok(())
}

fn check_growth(
    plugin: &dyn Plugin,
    headers: &HeaderMap,
    growth: usize,
) -> Result<(), PluginError> {
    let would_have = headers.len().saturating_add(growth);
    if would_have > super::MAX_MESSAGE_HEADERS {
        return Err(over_limit(plugin, super::HeaderLimit { would_have }));
    }
    Ok(())
}

fn over_limit(plugin: &dyn Plugin, limit: super::HeaderLimit) -> PluginError {
    let err = PluginError::InvalidOutput {
        plugin: plugin.id().into(),
        what: "header edits",
        detail: limit.to_string(),
    };
    plugin.record_failure(&err);
    err
}

/// One plugin on a route, with the route's failure policy for it.
pub struct PipelineEntry {
    /// The configured plugin.
    pub plugin: Arc<dyn Plugin>,
    /// What happens when it fails.
    pub on_error: FailurePolicy,
}

/// The ordered plugins of one route.
#[derive(Default)]
pub struct Pipeline {
    entries: Vec<PipelineEntry>,
    needs: Needs,
}

/// How the request phase ended.
#[derive(Debug)]
pub enum RequestOutcome {
    /// Every plugin continued; send upstream (to the named upstream if a
    /// plugin chose one).
    Forward {
        /// An upstream chosen by a plugin, overriding the route's.
        upstream: Option<String>,
    },
    /// A plugin answered; skip the upstream.
    Respond(PluginResponse),
}

/// What the response phase owes each plugin that continued: its session
/// (when it has a response phase), and the response edits it declared at
/// configure and gave in the request phase.
#[derive(Default)]
pub struct Sessions {
    active: Vec<Pending>,
}

struct Pending {
    index: usize,
    /// `None` when the plugin has no response phase, or skipped the request
    /// phase (its instance is then taken when the response phase needs it).
    session: Option<Box<dyn PluginSession>>,
    /// Call its response phase: false when it has none, or when its request
    /// phase failed open (then only its fixed edits apply).
    call: bool,
    response_headers: Vec<super::HeaderOp>,
}

impl Pipeline {
    /// A pipeline of these entries, in order.
    pub fn new(entries: Vec<PipelineEntry>) -> Self {
        let needs = entries
            .iter()
            .fold(Needs::default(), |n, e| n.union(e.plugin.needs()));
        Self { entries, needs }
    }

    /// True when the route has no plugins (the proxy then streams straight through).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The union of every plugin's needs.
    pub fn needs(&self) -> Needs {
        self.needs
    }

    /// The plugins, in order.
    pub fn entries(&self) -> &[PipelineEntry] {
        &self.entries
    }

    /// True when some plugin that takes part in the response phase wants the body.
    pub fn wants_response_body(&self) -> bool {
        self.needs.response_body
    }

    /// Run the request phase. Edits are applied to `req` as they come.
    pub async fn on_request(
        &self,
        req: &mut PluginRequest,
        sessions: &mut Sessions,
    ) -> Result<RequestOutcome, PluginError> {
        let mut upstream = None;
        for (index, entry) in self.entries.iter().enumerate() {
            let needs = entry.plugin.needs();
            let fixed = entry.plugin.fixed();
            if let Err(err) = apply_edits(&*entry.plugin, &fixed.request, &mut req.headers) {
                match entry.on_error {
                    FailurePolicy::FailClosed => return Err(err),
                    FailurePolicy::FailOpen => {
                        tracing::warn!(route = %req.route, plugin = entry.plugin.id(), error = %err, "plugin failed; fail-open skips it");
                        continue;
                    }
                }
            }
            let fixed_response = !fixed.response.is_empty();
            if !needs.request_phase {
                if needs.response_phase || fixed_response {
                    sessions.active.push(Pending {
                        index,
                        session: None,
                        call: needs.response_phase,
                        response_headers: Vec::new(),
                    });
                }
                continue;
            }
            let (session, action) = match request_phase(entry, req).await {
                Ok(ok) => ok,
                Err(err) => match entry.on_error {
                    FailurePolicy::FailClosed => return Err(err),
                    FailurePolicy::FailOpen => {
                        tracing::warn!(route = %req.route, plugin = entry.plugin.id(), error = %err, "plugin failed; fail-open skips it");
                        // Its hooks are skipped; what the host applies for it is not.
                        if fixed_response {
                            sessions.active.push(Pending {
                                index,
                                session: None,
                                call: false,
                                response_headers: Vec::new(),
                            });
                        }
                        continue;
                    }
                },
            };
            match action {
                RequestAction::Continue(mut edits) => {
                    let response_headers = std::mem::take(&mut edits.response_headers);
                    apply_continue(entry, needs, edits, req, &mut upstream)?;
                    if needs.response_phase || fixed_response || !response_headers.is_empty() {
                        sessions.active.push(Pending {
                            index,
                            session: needs.response_phase.then_some(session),
                            call: needs.response_phase,
                            response_headers,
                        });
                    }
                }
                RequestAction::Respond(resp) => return Ok(RequestOutcome::Respond(resp)),
            }
        }
        Ok(RequestOutcome::Forward { upstream })
    }

    /// Run the response phase over the sessions that continued, in reverse.
    pub async fn on_response(
        &self,
        req: &mut PluginRequest,
        sessions: &mut Sessions,
        resp: &mut PluginResponse,
    ) -> Result<(), PluginError> {
        while let Some(pending) = sessions.active.pop() {
            let entry = &self.entries[pending.index];
            let needs = entry.plugin.needs();
            let early = check_growth(
                &*entry.plugin,
                &resp.headers,
                entry.plugin.fixed().response.len() + pending.response_headers.len(),
            )
            .and_then(|()| {
                apply_edits(
                    &*entry.plugin,
                    &entry.plugin.fixed().response,
                    &mut resp.headers,
                )
            })
            .and_then(|()| {
                apply_owned_edits(&*entry.plugin, pending.response_headers, &mut resp.headers)
            });
            if let Err(err) = early {
                match entry.on_error {
                    FailurePolicy::FailClosed => return Err(err),
                    FailurePolicy::FailOpen => {
                        tracing::warn!(route = %req.route, plugin = entry.plugin.id(), error = %err, "plugin failed in the response phase; fail-open skips it");
                        continue;
                    }
                }
            }
            if !pending.call {
                continue;
            }
            let mut call = observe::plugin_call(entry.plugin.id(), "on-response");
            let mut session = pending.session.unwrap_or_else(|| entry.plugin.start());
            let result = session.on_response(req, resp).await.and_then(|edits| {
                HeaderOp::fit(&resp.headers, &edits.headers)
                    .map(|()| edits)
                    .map_err(|limit| over_limit(&*entry.plugin, limit))
            });
            if let Err(err) = &result {
                call.fail(err);
            }
            drop(call);
            let edits = match result {
                Ok(edits) => edits,
                Err(err) => match entry.on_error {
                    FailurePolicy::FailClosed => return Err(err),
                    FailurePolicy::FailOpen => {
                        tracing::warn!(route = %req.route, plugin = entry.plugin.id(), error = %err, "plugin failed in the response phase; fail-open skips it");
                        continue;
                    }
                },
            };
            if let Some(status) = edits.status {
                resp.status = status;
            }
            apply_owned_edits(&*entry.plugin, edits.headers, &mut resp.headers)?;
            if needs.response_body
                && let Some(body) = edits.body
            {
                resp.body = Some(body);
            }
        }
        Ok(())
    }
}

impl Sessions {
    /// True when no plugin waits for the response phase.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// True when a plugin's response phase will be called (and will read
    /// the request); false when the response phase only applies edits.
    pub fn calls_response_phase(&self) -> bool {
        self.active.iter().any(|p| p.call)
    }
}

/// One plugin's request hook: a session started and called, its header
/// edits checked to fit the request, the call observed (a failure counted
/// before any failure policy applies).
async fn request_phase(
    entry: &PipelineEntry,
    req: &mut PluginRequest,
) -> Result<(Box<dyn PluginSession>, RequestAction), PluginError> {
    let mut call = observe::plugin_call(entry.plugin.id(), "on-request");
    let mut session = entry.plugin.start();
    let result = match session.on_request(req).await {
        Ok(RequestAction::Continue(edits)) => match HeaderOp::fit(&req.headers, &edits.headers) {
            Ok(()) => Ok((session, RequestAction::Continue(edits))),
            Err(limit) => Err(over_limit(&*entry.plugin, limit)),
        },
        Ok(action) => Ok((session, action)),
        Err(e) => Err(e),
    };
    if let Err(err) = &result {
        call.fail(err);
    }
    result
}

/// Apply what a plugin that continued asked of the request (its response
/// header edits are the caller's, kept for the response phase).
fn apply_continue(
    entry: &PipelineEntry,
    needs: Needs,
    mut edits: RequestEdits,
    req: &mut PluginRequest,
    upstream: &mut Option<String>,
) -> Result<(), PluginError> {
    // Fits: checked in `request_phase`, before the failure policy.
    apply_owned_edits(
        &*entry.plugin,
        std::mem::take(&mut edits.headers),
        &mut req.headers,
    )?;
    if let Some(path) = edits.path {
        req.path = path;
    }
    if let Some(query) = edits.query {
        req.query = (!query.is_empty()).then_some(query);
    }
    if edits.upstream.is_some() {
        *upstream = edits.upstream;
    }
    if needs.request_body
        && let Some(body) = edits.body
    {
        req.body = Some(body);
    }
    Ok(())
}
