//! `aggregate`: answers a request itself by calling several named upstreams
//! at once (through the host's `http-client.send-all`) and merging their
//! JSON answers — under one key per call (`merge = "keys"`) or deep-merged
//! into one object (`merge = "deep"`). Steps in `then` run after the first
//! group, concurrently among themselves, and may use values from the first
//! group's answers. See `README.md` beside this crate for the config.
//!
//! A call fails when the host reports an error (timeout, refused, ...), the
//! upstream answers a status outside 200-299, or its body is not JSON (not
//! a JSON object, with `merge = "deep"`). Then `on-failure = "fail"` answers
//! `502` for the whole request and `"omit"` leaves the call out, lists it in
//! `"_partial"` and sets `x-aggregate-partial: true`.
//!
//! The plugin always responds in the request phase, so its route needs no
//! upstream, and it needs no body, no response phase and no per-request
//! state.

mod template;

use std::collections::{BTreeMap, HashMap};

use pylon_plugin_sdk::http::{self, HttpError, OutboundRequest};
use pylon_plugin_sdk::{
    Needs, Plugin, ReadRequest, Request, RequestAction, Response, config, export_plugin,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::template::{Missing, Reads, Template};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    calls: Vec<RawCall>,
    #[serde(default)]
    then: Vec<RawCall>,
    #[serde(default)]
    merge: Merge,
    #[serde(default)]
    on_failure: OnFailure,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCall {
    key: String,
    upstream: String,
    path: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    timeout: Option<config::DurationOrNumber>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// How answers are combined.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Merge {
    /// `{ "<key>": <answer>, ... }`.
    #[default]
    Keys,
    /// Every answer (a JSON object) merged into one object, later calls
    /// winning on conflicts.
    Deep,
}

/// What a failed call does to the whole response.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum OnFailure {
    /// `502` for the whole request.
    #[default]
    Fail,
    /// Leave the call out and mark the response partial.
    Omit,
}

/// Most calls in one group: the host's limit for one `send-all`.
const MAX_GROUP: usize = 64;

/// Used when a call sets no `timeout`.
const DEFAULT_TIMEOUT_MS: u32 = 1000;

/// One validated call.
struct Call {
    key: String,
    upstream: String,
    method: String,
    path: Template,
    headers: Vec<(String, Template)>,
    timeout_ms: u32,
}

/// The validated plugin.
struct Aggregate {
    calls: Vec<Call>,
    then: Vec<Call>,
    merge: Merge,
    on_failure: OnFailure,
    /// What the templates of every call read from the client's request.
    reads: Reads,
}

impl Plugin for Aggregate {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let raw: RawConfig = config::parse(text)?;
        let mut problems = Vec::new();
        if raw.calls.is_empty() {
            problems.push("calls: at least one call is needed".to_string());
        }
        for (list, n) in [("calls", raw.calls.len()), ("then", raw.then.len())] {
            if n > MAX_GROUP {
                problems.push(format!(
                    "{list}: {n} calls, but the host sends at most {MAX_GROUP} at once"
                ));
            }
        }
        let calls = validate_calls("calls", raw.calls, &mut problems);
        let then = validate_calls("then", raw.then, &mut problems);
        let mut seen = BTreeMap::new();
        for (at, call) in located("calls", &calls).chain(located("then", &then)) {
            if let Some(first) = seen.insert(call.key.as_str(), at.clone()) {
                problems.push(format!(
                    "{at}.key: {:?} is already the key of {first}",
                    call.key
                ));
            }
        }
        for (at, call) in located("calls", &calls) {
            for (key, text) in call.templates().flat_map(Template::value_refs) {
                problems.push(format!(
                    "{at}: {{{text}}} reads the answer of {key:?}, but calls run at once; \
                     move this call to `then`"
                ));
            }
        }
        for (at, call) in located("then", &then) {
            for (key, text) in call.templates().flat_map(Template::value_refs) {
                if !calls.iter().any(|c| c.key == key) {
                    problems.push(format!(
                        "{at}: {{{text}}} reads the answer of {key:?}, which is no key in `calls` \
                         (steps in `then` run at once and cannot read each other)"
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(format!("invalid aggregate config: {}", problems.join("; ")));
        }
        let mut reads = Reads::default();
        for call in calls.iter().chain(&then) {
            call.templates().for_each(|t| reads.add(t));
        }
        let plugin = Aggregate {
            calls,
            then,
            merge: raw.merge,
            on_failure: raw.on_failure,
            reads,
        };
        Ok((plugin, Needs::none()))
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        // Every template is checked and rendered against this copy, so each
        // part of the request is read from the host once.
        let req = self.reads.snapshot(req);
        for call in self.calls.iter().chain(&self.then) {
            for template in call.templates() {
                match template.check(&req) {
                    Ok(()) => {}
                    Err(Missing::Client(why)) => {
                        let error = format!("{why}, needed by call {:?}", call.key);
                        return Response::json(400, &json!({ "error": error })).into();
                    }
                    Err(Missing::Config(why)) => {
                        let error = format!("aggregate misconfigured: {why} (call {:?})", call.key);
                        return Response::json(500, &json!({ "error": error })).into();
                    }
                }
            }
        }
        let mut answers: HashMap<&str, Value> = HashMap::new();
        let mut failed: Vec<&str> = Vec::new();
        for group in [&self.calls, &self.then] {
            let outcomes = self.run(group, &req, &answers);
            for (call, outcome) in group.iter().zip(outcomes) {
                match outcome {
                    Ok(answer) => {
                        answers.insert(&call.key, answer);
                    }
                    Err(why) if self.on_failure == OnFailure::Fail => {
                        let error = format!("call {:?} failed: {why}", call.key);
                        let body = json!({ "error": error, "call": call.key });
                        return Response::json(502, &body).into();
                    }
                    Err(_) => failed.push(&call.key),
                }
            }
        }
        let mut out = Map::new();
        for call in self.calls.iter().chain(&self.then) {
            let Some(answer) = answers.remove(call.key.as_str()) else {
                continue;
            };
            match self.merge {
                Merge::Keys => {
                    out.insert(call.key.clone(), answer);
                }
                Merge::Deep => {
                    if let Value::Object(members) = answer {
                        deep_merge(&mut out, members);
                    }
                }
            }
        }
        if failed.is_empty() {
            return Response::json(200, &out).into();
        }
        out.insert("_partial".to_string(), json!(failed));
        Response::json(200, &out)
            .with_header("x-aggregate-partial", "true")
            .into()
    }
}

export_plugin!(Aggregate);

impl Aggregate {
    /// Send every call of `group` that can be built at once; one outcome
    /// per call, in order: its JSON answer or why it failed.
    fn run(
        &self,
        group: &[Call],
        req: &impl ReadRequest,
        answers: &HashMap<&str, Value>,
    ) -> Vec<Result<Value, String>> {
        if group.is_empty() {
            return Vec::new();
        }
        let built: Vec<Result<OutboundRequest, String>> =
            group.iter().map(|c| c.build(req, answers)).collect();
        let to_send: Vec<OutboundRequest> = built
            .iter()
            .filter_map(|b| b.as_ref().ok().cloned())
            .collect();
        let mut results = http::send_all(&to_send).into_iter();
        group
            .iter()
            .zip(built)
            .map(|(call, built)| {
                built?;
                let result = results.next().unwrap_or_else(|| {
                    Err(HttpError::Failed(
                        "the host returned too few results".into(),
                    ))
                });
                call.answer(result, self.merge)
            })
            .collect()
    }
}

impl Call {
    fn templates(&self) -> impl Iterator<Item = &Template> {
        std::iter::once(&self.path).chain(self.headers.iter().map(|(_, t)| t))
    }

    fn build(
        &self,
        req: &impl ReadRequest,
        answers: &HashMap<&str, Value>,
    ) -> Result<OutboundRequest, String> {
        let path = self.path.render(req, answers, true)?;
        // Literals are checked ASCII and substitutions percent-encoded.
        let path = String::from_utf8_lossy(&path).into_owned();
        let mut out = OutboundRequest::new(self.method.as_str(), self.upstream.as_str(), path)
            .with_timeout_ms(self.timeout_ms);
        for (name, value) in &self.headers {
            out = out.with_header(name.as_str(), value.render(req, answers, false)?);
        }
        Ok(out)
    }

    fn answer(&self, result: Result<Response, HttpError>, merge: Merge) -> Result<Value, String> {
        let resp = result.map_err(|e| match e {
            HttpError::Timeout => format!("timed out after {}ms", self.timeout_ms),
            HttpError::Failed(m) => format!("request failed: {m}"),
            HttpError::Denied(u) => {
                format!("upstream {u:?} is not granted to the plugin (http-upstreams)")
            }
            HttpError::UnknownUpstream(u) => format!("no upstream named {u:?}"),
            HttpError::Invalid(m) => format!("invalid request: {m}"),
        })?;
        if !(200..300).contains(&resp.status) {
            return Err(format!("upstream answered {}", resp.status));
        }
        let value: Value = serde_json::from_slice(resp.body.as_deref().unwrap_or_default())
            .map_err(|e| format!("the answer is not JSON: {e}"))?;
        if merge == Merge::Deep && !value.is_object() {
            return Err(
                "the answer is not a JSON object, which merge = \"deep\" needs".to_string(),
            );
        }
        Ok(value)
    }
}

/// Merge `from` into `into`: objects member by member, anything else
/// replaced by the later value.
fn deep_merge(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => deep_merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn located<'c>(list: &'static str, calls: &'c [Call]) -> impl Iterator<Item = (String, &'c Call)> {
    calls
        .iter()
        .enumerate()
        .map(move |(i, c)| (format!("{list}[{i}] ({:?})", c.key), c))
}

fn validate_calls(list: &str, raw: Vec<RawCall>, problems: &mut Vec<String>) -> Vec<Call> {
    let mut calls = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let at = format!("{list}[{i}]");
        let before = problems.len();
        let key_ok = !raw.key.is_empty()
            && raw
                .key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !key_ok {
            problems.push(format!(
                "{at}.key: {:?} must be non-empty letters, digits, '_' or '-'",
                raw.key
            ));
        } else if matches!(raw.key.as_str(), "query" | "header" | "_partial") {
            problems.push(format!("{at}.key: {:?} is reserved", raw.key));
        }
        if raw.upstream.is_empty() {
            problems.push(format!("{at}.upstream: must name an upstream"));
        }
        let method = raw.method.unwrap_or_else(|| "GET".to_string());
        if method.is_empty() || !method.bytes().all(is_tchar) {
            problems.push(format!("{at}.method: {method:?} is not an HTTP method"));
        }
        let path = match Template::parse(&raw.path) {
            Ok(t) => {
                let bad = t
                    .literals()
                    .flat_map(str::chars)
                    .find(|c| !c.is_ascii_graphic() || *c == '#');
                if !raw.path.starts_with('/') {
                    problems.push(format!("{at}.path: {:?} must start with '/'", raw.path));
                } else if let Some(c) = bad {
                    problems.push(format!(
                        "{at}.path: {:?} contains {c:?} (write it percent-encoded)",
                        raw.path
                    ));
                }
                Some(t)
            }
            Err(e) => {
                problems.push(format!("{at}.path: {e}"));
                None
            }
        };
        let timeout_ms = match raw.timeout.as_ref().map(timeout_ms).transpose() {
            Ok(ms) => Some(ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
            Err(e) => {
                problems.push(format!("{at}.timeout: not a positive duration: {e}"));
                None
            }
        };
        let mut headers = Vec::new();
        for (name, value) in raw.headers {
            if name.is_empty() || !name.bytes().all(is_tchar) {
                problems.push(format!("{at}.headers: {name:?} is not a valid header name"));
            }
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                problems.push(format!(
                    "{at}.headers: value of {name:?} contains a control character"
                ));
            }
            match Template::parse(&value) {
                Ok(t) => headers.push((name.to_ascii_lowercase(), t)),
                Err(e) => problems.push(format!("{at}.headers.{name}: {e}")),
            }
        }
        if problems.len() == before
            && let (Some(path), Some(timeout_ms)) = (path, timeout_ms)
        {
            calls.push(Call {
                key: raw.key,
                upstream: raw.upstream,
                method,
                path,
                headers,
                timeout_ms,
            });
        }
    }
    calls
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A call's timeout in milliseconds: a duration (`"250ms"`, `"2s"`,
/// `"1m"`, see the SDK) or a bare number of milliseconds; more than 0 and
/// at most `u32::MAX` ms (what the host's `timeout-ms` takes).
fn timeout_ms(value: &config::DurationOrNumber) -> Result<u32, String> {
    let d = value.to_duration(std::time::Duration::from_millis(1))?;
    match u32::try_from(d.as_millis()) {
        Ok(0) => Err("it is 0".to_owned()),
        Ok(ms) => Ok(ms),
        Err(_) => Err(format!("{}ms is too long", d.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Aggregate::configure(text) {
            Ok(_) => panic!("accepted {text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_configs_name_the_key() {
        let e = err(r#"{"calls": []}"#);
        assert!(e.contains("calls: at least one call"), "{e}");
        let e = err(
            r#"{"calls": [{"key": "user", "upstream": "u", "path": "users/{id}", "timeout": "soon"},
                          {"key": "user", "upstream": "u", "path": "/x/{user.id}", "method": "G T"}],
                "then": [{"key": "query", "upstream": "u", "path": "/o?u={other.id}", "headers": {"bad name": "v"}}]}"#,
        );
        for needle in [
            "calls[0].path: \"users/{id}\" must start with '/'",
            "calls[0].timeout: not a positive duration",
            "calls[1].method: \"G T\" is not an HTTP method",
            "then[0].key: \"query\" is reserved",
            "then[0].headers: \"bad name\" is not a valid header name",
        ] {
            assert!(e.contains(needle), "{needle:?} missing from {e}");
        }
        let e = err(
            r#"{"calls": [{"key": "a", "upstream": "u", "path": "/a"}, {"key": "b", "upstream": "u", "path": "/b/{a.id}"}],
                "then": [{"key": "a", "upstream": "u", "path": "/c"}, {"key": "d", "upstream": "u", "path": "/d/{c.id}"}]}"#,
        );
        assert!(
            e.contains("then[0] (\"a\").key: \"a\" is already the key of calls[0] (\"a\")"),
            "{e}"
        );
        assert!(
            e.contains("calls[1] (\"b\"): {a.id} reads the answer of \"a\", but calls run at once"),
            "{e}"
        );
        assert!(
            e.contains(
                "then[1] (\"d\"): {c.id} reads the answer of \"c\", which is no key in `calls`"
            ),
            "{e}"
        );
        let e =
            err(r#"{"calls": [{"key": "a", "upstream": "u", "path": "/a"}], "merge": "shallow"}"#);
        assert!(e.contains("unknown variant `shallow`"), "{e}");
    }

    #[test]
    fn durations() {
        use config::DurationOrNumber::{Number, Text};
        let ms = |text: &str| timeout_ms(&Text(text.to_owned())).ok();
        assert_eq!(ms("500ms"), Some(500));
        assert_eq!(ms("2s"), Some(2000));
        assert_eq!(ms("1.5s"), None);
        // Since the SDK's durations: minutes (and compounds) too.
        assert_eq!(ms("5m"), Some(300_000));
        assert_eq!(ms("1m30s"), Some(90_000));
        assert_eq!(ms("0s"), None);
        assert_eq!(ms("50d"), None);
        assert_eq!(timeout_ms(&Number(250)), Ok(250));
        assert!(timeout_ms(&Number(0)).is_err());
    }

    #[test]
    fn deep_merge_merges_objects_and_replaces_the_rest() {
        let mut a = json!({"u": {"name": "a", "tags": [1]}, "k": 1})
            .as_object()
            .unwrap()
            .clone();
        let b = json!({"u": {"age": 3, "tags": [2]}, "k": {"x": 1}})
            .as_object()
            .unwrap()
            .clone();
        deep_merge(&mut a, b);
        assert_eq!(
            Value::Object(a),
            json!({"u": {"name": "a", "age": 3, "tags": [2]}, "k": {"x": 1}})
        );
    }
}
