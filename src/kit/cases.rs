//! `pylon plugin test`: run a plugin's test cases (`cases.toml`) through the
//! gateway's own plugin runtime, without a gateway: each case configures a
//! new instance, sends a request (and optionally a response) through the
//! hooks with mocked capabilities (kv contents, canned outbound HTTP
//! answers), and compares the decision with what the case expects.
//!
//! The edits a plugin returns are applied the way the pipeline applies
//! them (fixed edits first, then the hook's), so a case states the request
//! or response as it leaves the plugin, not the list of edits.

mod canned;
mod compare;
mod report;
mod spec;
#[cfg(test)]
mod tests;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use bytes::Bytes;

use self::{
    canned::CannedHttp,
    compare::{body_text, check_unused, compare_headers, compare_response, differ},
    spec::{Action, Case, PluginSection, ROUTE, load_cases, request, response},
};
pub use self::{
    report::{CaseResult, Report},
    spec::MAX_CASES,
};
use super::{KitError, build};
use crate::{
    config::{Grants, Isolation, PluginDef, parse_duration, parse_size},
    error::ErrorChain,
    kv::{KvStore, MemoryKv},
    pipeline::{
        HeaderOp, Needs, Plugin, PluginRequest, PluginSession, RequestAction, RequestEdits,
    },
    plugin::{HostServices, PluginLoadError, PluginLoader, WallClock},
};

// ---------------------------------------------------------------- run

/// Turn the `[plugin]` section into a plugin definition for `component`.
fn plugin_def(
    name: &str,
    component: &Path,
    section: &PluginSection,
    cases: &Path,
) -> Result<PluginDef, KitError> {
    let bad = |message: String| KitError::Cases {
        path: cases.to_owned(),
        message: format!("[plugin]: {message}"),
    };
    let mut def = build::plugin_def(name, component);
    def.isolation = match section.isolation.as_deref() {
        None | Some("pooled") => Isolation::Pooled { max_idle: 1 },
        Some("fresh") => Isolation::Fresh,
        Some(other) => {
            return Err(bad(format!(
                "isolation {other:?}: expected \"pooled\" or \"fresh\""
            )));
        }
    };
    let mut grants = Grants::default();
    for cap in &section.capabilities {
        match cap.as_str() {
            "log" => grants.log = true,
            "clock" => grants.clock = true,
            "kv" => grants.kv = true,
            "http" => {}
            other => {
                return Err(bad(format!(
                    "unknown capability {other:?}: expected \"log\", \"clock\", \"kv\" or \"http\""
                )));
            }
        }
    }
    if section.capabilities.iter().any(|c| c == "http") {
        grants.http_upstreams = section.http_upstreams.clone();
    } else if !section.http_upstreams.is_empty() {
        return Err(bad(
            "http-upstreams needs the \"http\" capability".to_owned()
        ));
    }
    def.grants = grants;
    if let Some(d) = &section.deadline {
        def.deadline = parse_duration(d).map_err(|e| bad(format!("deadline: {e}")))?;
    }
    if let Some(m) = &section.memory {
        def.memory_limit_bytes = parse_size(m).map_err(|e| bad(format!("memory: {e}")))?;
        if def.memory_limit_bytes > 1 << 30 {
            return Err(bad("memory: at most 1GiB".to_owned()));
        }
    }
    Ok(def)
}

/// Run every case of `cases` against `component` (plugin `name`), compiling
/// with a disk cache in `cache_dir`.
pub async fn run(
    name: &str,
    component: &Path,
    cases: &Path,
    cache_dir: &Path,
) -> Result<Report, KitError> {
    let file = load_cases(cases)?;
    let def = plugin_def(name, component, &file.plugin, cases)?;
    let started = Instant::now();
    let (rt, compiled) = {
        let (def, cache_dir) = (def.clone(), cache_dir.to_owned());
        tokio::task::spawn_blocking(move || {
            let rt = build::runtime(&cache_dir)?;
            let compiled = build::compile(&rt, &def)?;
            Ok::<_, KitError>((rt, compiled))
        })
        .await
        .map_err(|e| KitError::Runtime(e.to_string()))??
    };
    let compile_time = started.elapsed();
    let mut results = Vec::with_capacity(file.cases.len());
    for case in &file.cases {
        let clock = case
            .now_ms
            .or(file.plugin.now_ms)
            .map_or(WallClock::System, WallClock::Fixed);
        results.push(run_case(&rt, &compiled, &def, case, clock).await);
    }
    Ok(Report {
        cases: results,
        compile_time,
    })
}

async fn run_case(
    rt: &PluginLoader,
    compiled: &Arc<crate::plugin::CompiledPlugin>,
    def: &PluginDef,
    case: &Case,
    clock: WallClock,
) -> CaseResult {
    let mut result = CaseResult {
        name: case.name.clone(),
        failures: Vec::new(),
        calls: Vec::new(),
    };
    if let Err(problem) = run_case_inner(rt, compiled, def, case, clock, &mut result).await {
        result.failures.push(problem);
    }
    result
}

/// Run one case, recording differences in `result`; an `Err` is a failure
/// that stops the case (a trap, a malformed case).
async fn run_case_inner(
    rt: &PluginLoader,
    compiled: &Arc<crate::plugin::CompiledPlugin>,
    def: &PluginDef,
    case: &Case,
    clock: WallClock,
    result: &mut CaseResult,
) -> Result<(), String> {
    let config = match &case.config {
        None => "{}".to_owned(),
        Some(value) => serde_json::to_string(value).map_err(|e| format!("config: {e}"))?,
    };
    let prefix = format!("{}:", def.name);
    let kv = seeded_kv(&prefix, case).await?;
    let canned = Arc::new(CannedHttp::new(&case.http)?);
    let host = HostServices {
        kv: kv.clone(),
        http: canned.clone(),
        clock,
    };
    let mut request = request(&case.request)?;

    let Some(plugin) = configure(rt, compiled, &config, host, case, result).await? else {
        return Ok(());
    };
    let needs = plugin.needs();
    let fixed = plugin.fixed().clone();
    let mut session = plugin.start();
    for op in &fixed.request {
        op.apply(&mut request.headers).map_err(|e| e.to_string())?;
    }
    let action = if needs.request_phase {
        let t = Instant::now();
        let action = session.on_request(&mut request).await;
        result.calls.push(("on-request", t.elapsed()));
        action.map_err(|e| format!("on-request failed: {}", ErrorChain(&e)))?
    } else {
        RequestAction::Continue(Default::default())
    };

    let phase = Continued {
        case,
        needs,
        request: &mut request,
    };
    check_action(action, phase, &fixed.response, &mut *session, result).await?;
    drop(session);

    check_kv(&kv, &prefix, case, result).await?;
    if let Some(unmatched) = canned.unmatched() {
        result.failures.push(unmatched);
    }
    Ok(())
}

/// The request phase's `action` against the case's: a direct response
/// compared with the expected one, or the continued request through
/// [`Continued::run`] (with the plugin's fixed `response_edits`); the other
/// action than expected fails the case.
async fn check_action(
    action: RequestAction,
    phase: Continued<'_>,
    response_edits: &[HeaderOp],
    session: &mut (dyn PluginSession + 'static),
    result: &mut CaseResult,
) -> Result<(), String> {
    let case = phase.case;
    let expect = &case.expect;
    match (action, expect.action) {
        (RequestAction::Respond(resp), Action::Respond) => {
            compare_response(
                &resp,
                expect.status,
                &expect.headers,
                &expect.absent,
                &expect.body,
                &mut result.failures,
            );
            check_unused(expect, &["path", "query", "upstream"], &mut result.failures);
        }
        (RequestAction::Respond(resp), _) => {
            return Err(format!(
                "expected continue, got respond {} with body {:?}",
                resp.status,
                body_text(resp.body.as_deref())
            ));
        }
        (RequestAction::Continue(edits), Action::Continue) => {
            let response_edits = response_edits.to_vec();
            phase.run(edits, response_edits, session, result).await?;
        }
        (RequestAction::Continue(edits), _) => {
            return Err(format!("expected respond, got continue with {edits:?}"));
        }
    }
    Ok(())
}

/// The case's kv store: its `kv` entries under the plugin's prefix.
async fn seeded_kv(prefix: &str, case: &Case) -> Result<Arc<MemoryKv>, String> {
    let kv = Arc::new(MemoryKv::new());
    for (key, value) in &case.kv {
        kv.set(
            &format!("{prefix}{key}"),
            Bytes::from(value.clone().into_bytes()),
            None,
        )
        .await
        .map_err(|e| format!("kv: {}", ErrorChain(&e)))?;
    }
    Ok(kv)
}

/// Configure the plugin for the case: `None` when the case expected the
/// rejection it got, so there is nothing more to run.
async fn configure(
    rt: &PluginLoader,
    compiled: &Arc<crate::plugin::CompiledPlugin>,
    config: &str,
    host: HostServices,
    case: &Case,
    result: &mut CaseResult,
) -> Result<Option<Arc<dyn Plugin>>, String> {
    let t = Instant::now();
    let configured = rt.configure(compiled, ROUTE, config, host).await;
    result.calls.push(("configure", t.elapsed()));
    match (configured, case.expect.action) {
        (Err(PluginLoadError::ConfigRejected { message, .. }), Action::RejectConfig) => {
            if let Some(want) = &case.expect.message
                && !message.contains(want.as_str())
            {
                result.failures.push(format!(
                    "config rejected with {message:?}, which does not contain {want:?}"
                ));
            }
            Ok(None)
        }
        (Err(PluginLoadError::ConfigRejected { message, .. }), _) => {
            Err(format!("config rejected: {message}"))
        }
        (Err(err), _) => Err(format!("cannot configure: {}", ErrorChain(&err))),
        (Ok(_), Action::RejectConfig) => Err(format!(
            "config {config} was accepted, expected a rejection"
        )),
        (Ok(plugin), _) => Ok(Some(plugin)),
    }
}

/// A request the plugin let through (`action = "continue"` expected).
struct Continued<'a> {
    case: &'a Case,
    needs: Needs,
    request: &'a mut PluginRequest,
}

impl Continued<'_> {
    /// Apply the plugin's edits the way the pipeline does, compare the
    /// request with the case, then run the response phase if the case
    /// sends a response.
    async fn run(
        self,
        edits: RequestEdits,
        mut response_edits: Vec<HeaderOp>,
        session: &mut (dyn PluginSession + 'static),
        result: &mut CaseResult,
    ) -> Result<(), String> {
        let Continued {
            case,
            needs,
            request,
        } = self;
        let expect = &case.expect;
        for op in edits.headers {
            op.apply_owned(&mut request.headers)
                .map_err(|e| e.to_string())?;
        }
        if let Some(path) = edits.path {
            request.path = path;
        }
        if let Some(query) = edits.query {
            request.query = (!query.is_empty()).then_some(query);
        }
        if edits.body.is_some() && needs.request_body {
            request.body = edits.body;
        }
        response_edits.extend(edits.response_headers);
        let failures = &mut result.failures;
        compare_headers(
            "request",
            &request.headers,
            &expect.headers,
            &expect.absent,
            failures,
        );
        differ(
            "path",
            expect.path.as_deref(),
            Some(&request.path),
            failures,
        );
        differ(
            "query",
            expect.query.as_deref(),
            Some(request.query.as_deref().unwrap_or("")),
            failures,
        );
        differ(
            "upstream",
            expect.upstream.as_deref(),
            edits.upstream.as_deref().or(Some("(the route's)")),
            failures,
        );
        if let Some(want) = &expect.body {
            differ(
                "body",
                Some(want),
                Some(&body_text(request.body.as_deref())),
                failures,
            );
        }
        if expect.status.is_some() {
            failures.push("`status` is only checked for action = \"respond\"".to_owned());
        }
        response_phase(case, needs, request, &response_edits, session, result).await
    }
}

/// The response phase of a case that continued: the case's `response`
/// with the fixed and request-phase response edits, then the hook's,
/// compared with `expect_response`.
async fn response_phase(
    case: &Case,
    needs: Needs,
    request: &mut PluginRequest,
    response_edits: &[HeaderOp],
    session: &mut (dyn PluginSession + 'static),
    result: &mut CaseResult,
) -> Result<(), String> {
    if let Some(spec) = &case.response {
        let mut resp = response(spec)?;
        for op in response_edits {
            op.apply(&mut resp.headers).map_err(|e| e.to_string())?;
        }
        if needs.response_phase {
            let t = Instant::now();
            let edits = session.on_response(request, &mut resp).await;
            result.calls.push(("on-response", t.elapsed()));
            let edits = edits.map_err(|e| format!("on-response failed: {}", ErrorChain(&e)))?;
            if let Some(status) = edits.status {
                resp.status = status;
            }
            for op in edits.headers {
                op.apply_owned(&mut resp.headers)
                    .map_err(|e| e.to_string())?;
            }
            if edits.body.is_some() && needs.response_body {
                resp.body = edits.body;
            }
        }
        if let Some(want) = &case.expect_response {
            compare_response(
                &resp,
                want.status,
                &want.headers,
                &want.absent,
                &want.body,
                &mut result.failures,
            );
        }
    } else if case.expect_response.is_some() {
        result
            .failures
            .push("expect_response needs a `response` to send".to_owned());
    }
    Ok(())
}

/// Compare the case's kv store with its `expect_kv`.
async fn check_kv(
    kv: &MemoryKv,
    prefix: &str,
    case: &Case,
    result: &mut CaseResult,
) -> Result<(), String> {
    for (key, want) in &case.expect_kv {
        let got = kv
            .get(&format!("{prefix}{key}"))
            .await
            .map_err(|e| format!("kv: {}", ErrorChain(&e)))?;
        let got = got.map(|b| body_text(Some(&b)));
        if got.as_deref() != Some(want.as_str()) {
            result
                .failures
                .push(format!("kv {key:?}: expected {want:?}, got {got:?}"));
        }
    }
    Ok(())
}

/// Where `pylon plugin test DIR` finds the component and the cases.
pub fn project_paths(dir: &Path) -> Result<(String, PathBuf, PathBuf), KitError> {
    let manifest = super::Manifest::load(dir)?;
    let component = manifest.component(dir);
    Ok((manifest.name, component, dir.join(super::CASES)))
}
