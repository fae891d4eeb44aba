//! `pylon plugin test`: run a plugin's test cases (`cases.toml`) through the
//! gateway's own plugin runtime, without a gateway: each case configures a
//! new instance, sends a request (and optionally a response) through the
//! hooks with mocked capabilities (kv contents, canned outbound HTTP
//! answers), and compares the decision with what the case expects.
//!
//! The edits a plugin returns are applied the way the pipeline applies
//! them (fixed edits first, then the hook's), so a case states the request
//! or response as it leaves the plugin, not the list of edits.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;

use super::{KitError, build};
use crate::{
    config::{Grants, Isolation, PluginDef, parse_duration, parse_size},
    error::ErrorChain,
    kv::{KvStore, MemoryKv},
    pipeline::{Plugin, PluginRequest, PluginResponse, RequestAction},
    plugin::{HostServices, OutboundError, OutboundHttp, PluginLoadError, PluginRuntime},
};

/// The most cases one file may hold: a case file is input like any other.
pub const MAX_CASES: usize = 10_000;

/// The route id plugins see in a case.
const ROUTE: &str = "test";

// ------------------------------------------------------------- the file

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    plugin: PluginSection,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PluginSection {
    isolation: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    http_upstreams: Vec<String>,
    deadline: Option<String>,
    memory: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    config: Option<toml::Value>,
    #[serde(default)]
    request: RequestSpec,
    #[serde(default)]
    kv: BTreeMap<String, String>,
    #[serde(default)]
    http: Vec<Canned>,
    response: Option<ResponseSpec>,
    expect: Expect,
    expect_response: Option<ExpectResponse>,
    #[serde(default)]
    expect_kv: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    #[serde(default = "get")]
    method: String,
    #[serde(default = "root")]
    path: String,
    query: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, OneOrMany>,
    body: Option<String>,
    #[serde(default = "client")]
    client: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    https: bool,
}

impl Default for RequestSpec {
    fn default() -> Self {
        Self {
            method: get(),
            path: root(),
            query: None,
            headers: BTreeMap::new(),
            body: None,
            client: client(),
            params: BTreeMap::new(),
            https: false,
        }
    }
}

fn get() -> String {
    "GET".to_owned()
}
fn root() -> String {
    "/".to_owned()
}
fn client() -> String {
    "127.0.0.1:40000".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseSpec {
    #[serde(default = "ok")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, OneOrMany>,
    body: Option<String>,
}

fn ok() -> u16 {
    200
}

/// A canned answer to an outbound request: matched by upstream and
/// path-and-query (and method when given).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Canned {
    upstream: String,
    path: String,
    method: Option<String>,
    #[serde(default = "ok")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    action: Action,
    status: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    absent: Vec<String>,
    body: Option<String>,
    path: Option<String>,
    query: Option<String>,
    upstream: Option<String>,
    message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Action {
    Continue,
    Respond,
    RejectConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectResponse {
    status: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    absent: Vec<String>,
    body: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(vs) => vs.iter().map(String::as_str).collect(),
        }
    }
}

// ----------------------------------------------------------- the result

/// What one case did.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Every difference from what was expected (empty: passed).
    pub failures: Vec<String>,
    /// The time of each hook call made, in order (`configure` first).
    pub calls: Vec<(&'static str, Duration)>,
}

impl CaseResult {
    /// True when nothing differed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What a whole case file did.
#[derive(Debug)]
pub struct Report {
    /// One result per case, in file order.
    pub cases: Vec<CaseResult>,
    /// How long loading (compiling, or the disk cache) took.
    pub compile_time: Duration,
}

impl Report {
    /// The cases that failed.
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed()).count()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for case in &self.cases {
            let calls = case
                .calls
                .iter()
                .map(|(hook, t)| format!("{hook} {}", micros(*t)))
                .collect::<Vec<_>>()
                .join(", ");
            let verdict = if case.passed() { "ok  " } else { "FAIL" };
            writeln!(f, "{verdict} {}  ({calls})", case.name)?;
            for failure in &case.failures {
                writeln!(f, "       {failure}")?;
            }
        }
        let failed = self.failed();
        writeln!(
            f,
            "{} passed, {failed} failed  (loaded in {} ms)",
            self.cases.len() - failed,
            self.compile_time.as_millis()
        )
    }
}

fn micros(d: Duration) -> String {
    if d >= Duration::from_millis(10) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} µs", d.as_micros())
    }
}

// ---------------------------------------------------------------- run

/// Read the case file at `path` (checked whole before anything runs).
fn load_cases(path: &Path) -> Result<CaseFile, KitError> {
    let bad = |message: String| KitError::Cases {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| KitError::Io {
        path: path.to_owned(),
        source,
    })?;
    let file: CaseFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if file.cases.is_empty() {
        return Err(bad("no [[case]] in the file".to_owned()));
    }
    if file.cases.len() > MAX_CASES {
        return Err(bad(format!("more than {MAX_CASES} cases")));
    }
    Ok(file)
}

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
        results.push(run_case(&rt, &compiled, &def, case).await);
    }
    Ok(Report {
        cases: results,
        compile_time,
    })
}

async fn run_case(
    rt: &PluginRuntime,
    compiled: &Arc<crate::plugin::CompiledPlugin>,
    def: &PluginDef,
    case: &Case,
) -> CaseResult {
    let mut result = CaseResult {
        name: case.name.clone(),
        failures: Vec::new(),
        calls: Vec::new(),
    };
    if let Err(problem) = run_case_inner(rt, compiled, def, case, &mut result).await {
        result.failures.push(problem);
    }
    result
}

/// Run one case, recording differences in `result`; an `Err` is a failure
/// that stops the case (a trap, a malformed case).
async fn run_case_inner(
    rt: &PluginRuntime,
    compiled: &Arc<crate::plugin::CompiledPlugin>,
    def: &PluginDef,
    case: &Case,
    result: &mut CaseResult,
) -> Result<(), String> {
    let config = match &case.config {
        None => "{}".to_owned(),
        Some(value) => serde_json::to_string(value).map_err(|e| format!("config: {e}"))?,
    };
    let kv = Arc::new(MemoryKv::new());
    let prefix = format!("{}:", def.name);
    for (key, value) in &case.kv {
        kv.set(
            &format!("{prefix}{key}"),
            Bytes::from(value.clone().into_bytes()),
            None,
        )
        .await
        .map_err(|e| format!("kv: {}", ErrorChain(&e)))?;
    }
    let canned = Arc::new(CannedHttp::new(&case.http)?);
    let host = HostServices {
        kv: kv.clone(),
        http: canned.clone(),
    };
    let mut request = request(&case.request)?;

    let t = Instant::now();
    let configured = rt.configure(compiled, ROUTE, &config, host).await;
    result.calls.push(("configure", t.elapsed()));
    let plugin: Arc<dyn Plugin> = match (configured, case.expect.action) {
        (Err(PluginLoadError::ConfigRejected { message, .. }), Action::RejectConfig) => {
            if let Some(want) = &case.expect.message
                && !message.contains(want.as_str())
            {
                result.failures.push(format!(
                    "config rejected with {message:?}, which does not contain {want:?}"
                ));
            }
            return Ok(());
        }
        (Err(PluginLoadError::ConfigRejected { message, .. }), _) => {
            return Err(format!("config rejected: {message}"));
        }
        (Err(err), _) => return Err(format!("cannot configure: {}", ErrorChain(&err))),
        (Ok(_), Action::RejectConfig) => {
            return Err(format!(
                "config {config} was accepted, expected a rejection"
            ));
        }
        (Ok(plugin), _) => plugin,
    };

    let needs = plugin.needs();
    let fixed = plugin.fixed().clone();
    let mut session = plugin
        .start()
        .await
        .map_err(|e| format!("cannot start an instance: {}", ErrorChain(&e)))?;
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

    let expect = &case.expect;
    let mut response_edits = fixed.response.clone();
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
            if let Some(spec) = &case.response {
                let mut resp = response(spec)?;
                for op in &response_edits {
                    op.apply(&mut resp.headers).map_err(|e| e.to_string())?;
                }
                if needs.response_phase {
                    let t = Instant::now();
                    let edits = session.on_response(&mut request, &mut resp).await;
                    result.calls.push(("on-response", t.elapsed()));
                    let edits =
                        edits.map_err(|e| format!("on-response failed: {}", ErrorChain(&e)))?;
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
        }
        (RequestAction::Continue(edits), _) => {
            return Err(format!("expected respond, got continue with {edits:?}"));
        }
    }
    drop(session);

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
    if let Some(unmatched) = canned.unmatched() {
        result.failures.push(unmatched);
    }
    Ok(())
}

fn check_unused(expect: &Expect, fields: &[&str], failures: &mut Vec<String>) {
    let set = [
        ("path", expect.path.is_some()),
        ("query", expect.query.is_some()),
        ("upstream", expect.upstream.is_some()),
    ];
    for (field, is_set) in set {
        if is_set && fields.contains(&field) {
            failures.push(format!(
                "`{field}` is only checked for action = \"continue\""
            ));
        }
    }
}

fn differ(what: &str, want: Option<&str>, got: Option<&str>, failures: &mut Vec<String>) {
    if let Some(want) = want
        && got != Some(want)
    {
        failures.push(format!(
            "{what}: expected {want:?}, got {:?}",
            got.unwrap_or("")
        ));
    }
}

fn compare_response(
    resp: &PluginResponse,
    status: Option<u16>,
    headers: &BTreeMap<String, OneOrMany>,
    absent: &[String],
    body: &Option<String>,
    failures: &mut Vec<String>,
) {
    if let Some(want) = status
        && resp.status.as_u16() != want
    {
        failures.push(format!(
            "status: expected {want}, got {}",
            resp.status.as_u16()
        ));
    }
    compare_headers("response", &resp.headers, headers, absent, failures);
    if let Some(want) = body {
        differ(
            "body",
            Some(want),
            Some(&body_text(resp.body.as_deref())),
            failures,
        );
    }
}

fn compare_headers(
    what: &str,
    got: &HeaderMap,
    want: &BTreeMap<String, OneOrMany>,
    absent: &[String],
    failures: &mut Vec<String>,
) {
    for (name, values) in want {
        let want: Vec<&str> = values.values();
        let have: Vec<String> = got
            .get_all(name.to_ascii_lowercase().as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if have != want {
            failures.push(format!(
                "{what} header {name}: expected {want:?}, got {}",
                if have.is_empty() {
                    "none".to_owned()
                } else {
                    format!("{have:?}")
                }
            ));
        }
    }
    for name in absent {
        if let Some(v) = got.get(name.to_ascii_lowercase().as_str()) {
            failures.push(format!(
                "{what} header {name}: expected none, got {:?}",
                String::from_utf8_lossy(v.as_bytes())
            ));
        }
    }
}

fn body_text(body: Option<&[u8]>) -> String {
    String::from_utf8_lossy(body.unwrap_or_default()).into_owned()
}

fn header_map(headers: &BTreeMap<String, OneOrMany>, what: &str) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, values) in headers {
        let name = HeaderName::try_from(name.to_ascii_lowercase())
            .map_err(|e| format!("{what} header name {name:?}: {e}"))?;
        for value in values.values() {
            let value = HeaderValue::try_from(value)
                .map_err(|e| format!("{what} header {name} value {value:?}: {e}"))?;
            map.append(name.clone(), value);
        }
    }
    Ok(map)
}

fn request(spec: &RequestSpec) -> Result<PluginRequest, String> {
    let method = Method::from_bytes(spec.method.as_bytes())
        .map_err(|e| format!("request method {:?}: {e}", spec.method))?;
    if !spec.path.starts_with('/') {
        return Err(format!("request path {:?} must start with `/`", spec.path));
    }
    let client_addr: SocketAddr = spec
        .client
        .parse()
        .map_err(|e| format!("request client {:?} (ip:port): {e}", spec.client))?;
    let mut headers = header_map(&spec.headers, "request")?;
    if !headers.contains_key(http::header::HOST) {
        headers.insert(http::header::HOST, HeaderValue::from_static("example.test"));
    }
    Ok(PluginRequest {
        route: Arc::from(ROUTE),
        method,
        path: spec.path.clone(),
        query: spec.query.clone(),
        headers,
        client_addr,
        scheme: if spec.https { "https" } else { "http" },
        params: spec
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        body: spec.body.clone().map(Bytes::from),
    })
}

fn response(spec: &ResponseSpec) -> Result<PluginResponse, String> {
    let status = StatusCode::from_u16(spec.status)
        .map_err(|e| format!("response status {}: {e}", spec.status))?;
    let mut resp = PluginResponse::new(status);
    resp.headers = header_map(&spec.headers, "response")?;
    resp.body = spec.body.clone().map(Bytes::from);
    Ok(resp)
}

// ------------------------------------------------------ outbound HTTP mock

/// Answers outbound requests from a case's canned list; a request that
/// matches none gets an unknown-upstream error (as an unconfigured
/// upstream would) and is reported as a failure of the case.
struct CannedHttp {
    answers: Vec<(String, String, Option<Method>, http::Response<Bytes>)>,
    unmatched: Mutex<Vec<String>>,
}

impl CannedHttp {
    fn new(canned: &[Canned]) -> Result<Self, String> {
        let mut answers = Vec::with_capacity(canned.len());
        for c in canned {
            let method = c
                .method
                .as_deref()
                .map(|m| {
                    Method::from_bytes(m.as_bytes()).map_err(|e| format!("http method {m:?}: {e}"))
                })
                .transpose()?;
            let status = StatusCode::from_u16(c.status)
                .map_err(|e| format!("http status {}: {e}", c.status))?;
            let mut resp = http::Response::new(Bytes::from(c.body.clone()));
            *resp.status_mut() = status;
            *resp.headers_mut() = header_map(&c.headers, "http")?;
            answers.push((c.upstream.clone(), c.path.clone(), method, resp));
        }
        Ok(Self {
            answers,
            unmatched: Mutex::new(Vec::new()),
        })
    }

    fn unmatched(&self) -> Option<String> {
        let unmatched = self.unmatched.lock().unwrap_or_else(|p| p.into_inner());
        (!unmatched.is_empty()).then(|| {
            format!(
                "outbound requests with no canned answer in `http`: {}",
                unmatched.join(", ")
            )
        })
    }
}

#[async_trait]
impl OutboundHttp for CannedHttp {
    async fn send(
        &self,
        upstream: &str,
        req: http::Request<Bytes>,
        _timeout: Option<Duration>,
    ) -> Result<http::Response<Bytes>, OutboundError> {
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
        let found = self.answers.iter().find(|(u, p, m, _)| {
            u == upstream && *p == target && m.as_ref().is_none_or(|m| m == req.method())
        });
        match found {
            Some((.., resp)) => Ok(resp.clone()),
            None => {
                self.unmatched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("{} {upstream}{target}", req.method()));
                Err(OutboundError::UnknownUpstream {
                    upstream: upstream.to_owned(),
                })
            }
        }
    }
}

/// Where `pylon plugin test DIR` finds the component and the cases.
pub fn project_paths(dir: &Path) -> Result<(String, PathBuf, PathBuf), KitError> {
    let manifest = super::Manifest::load(dir)?;
    let component = manifest.component(dir);
    Ok((manifest.name, component, dir.join(super::CASES)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_cases_parse() {
        let file: CaseFile =
            toml::from_str(include_str!("../../templates/plugin/common/cases.toml")).unwrap();
        assert_eq!(file.cases.len(), 5);
        assert_eq!(file.cases[3].expect.action, Action::RejectConfig);
    }

    #[test]
    fn unknown_keys_in_a_case_are_refused() {
        let text = "[[case]]\nname = \"x\"\nexpect = { action = \"continue\", header = {} }\n";
        assert!(toml::from_str::<CaseFile>(text).is_err());
        let text = "[[case]]\nname = \"x\"\nexpect = { action = \"maybe\" }\n";
        assert!(toml::from_str::<CaseFile>(text).is_err());
    }

    #[test]
    fn plugin_section_maps_to_grants_and_limits() {
        let section = PluginSection {
            isolation: Some("fresh".into()),
            capabilities: vec!["kv".into(), "http".into()],
            http_upstreams: vec!["users".into()],
            deadline: Some("250ms".into()),
            memory: Some("16MiB".into()),
        };
        let def = plugin_def("p", Path::new("p.wasm"), &section, Path::new("c.toml")).unwrap();
        assert_eq!(def.isolation, Isolation::Fresh);
        assert!(def.grants.kv && !def.grants.log);
        assert_eq!(def.grants.http_upstreams, vec!["users".to_owned()]);
        assert_eq!(def.deadline, Duration::from_millis(250));
        assert_eq!(def.memory_limit_bytes, 16 << 20);
        let bad = PluginSection {
            capabilities: vec!["fs".into()],
            ..Default::default()
        };
        assert!(plugin_def("p", Path::new("p.wasm"), &bad, Path::new("c.toml")).is_err());
    }

    #[test]
    fn a_malformed_request_is_a_case_failure_not_a_panic() {
        for spec in [
            RequestSpec {
                path: "no-slash".into(),
                ..Default::default()
            },
            RequestSpec {
                method: "G ET".into(),
                ..Default::default()
            },
            RequestSpec {
                client: "nowhere".into(),
                ..Default::default()
            },
            RequestSpec {
                headers: BTreeMap::from([("bad name".into(), OneOrMany::One("v".into()))]),
                ..Default::default()
            },
            RequestSpec {
                headers: BTreeMap::from([("x".into(), OneOrMany::One("a\nb".into()))]),
                ..Default::default()
            },
        ] {
            assert!(request(&spec).is_err(), "{spec:?}");
        }
    }
}
