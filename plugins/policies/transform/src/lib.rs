//! `transform`: edits requests on their way upstream and responses on their
//! way back — headers (remove, rename, set, add), the path (regex with
//! captures), query parameters (remove, rename, set, add), JSON bodies
//! (remove, rename, move, set, add by JSON pointer) and the status code
//! (`status-map`). See `README.md` beside this crate for the config.
//!
//! What it asks of the host follows the config: the request body only with
//! `request.json` edits, the response phase only with response edits, the
//! response body only with `response.json` edits. A direction whose edits are
//! only header removes, sets and adds is declared as fixed edits instead, and
//! the host applies it without calling the plugin.
//!
//! Bodies are edited only when their `content-type` is JSON
//! (`application/json` or `application/*+json`) and they carry no
//! `content-encoding`. Any other non-empty body, or malformed JSON, passes
//! through unchanged with a warning in the log — except a request body when
//! `strict-json = true`: then the client gets `415` (not JSON) or `400`
//! (malformed) and the upstream is not called. An empty body is left alone.

mod config;
mod json;
mod query;

use pylon_plugin_sdk::{
    HeaderOp, Needs, Plugin, Request, RequestAction, RequestEdits, Response, ResponseEdits,
    ResponseView, export_plugin, log, serde_json,
};

use crate::config::{HeaderEdits, Rules};
use crate::json::Json;

/// The validated plugin: its rules, the same for every request.
struct Transform(Rules);

impl Plugin for Transform {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let mut rules = config::validate(pylon_plugin_sdk::config::parse(text)?)?;
        let mut needs = Needs::none();
        // A direction whose only edits are header removes, sets and adds
        // (no renames: those read the message) is the same for every
        // request: the host applies it, without a call.
        let request_fixed = rules.request_headers.rename.is_empty()
            && rules.path.is_none()
            && rules.query.is_empty()
            && rules.request_json.is_empty();
        if request_fixed {
            let ops = header_ops(&std::mem::take(&mut rules.request_headers), |_| Vec::new());
            needs = needs
                .without_request_phase()
                .with_fixed_request_headers(ops);
        }
        if !rules.request_json.is_empty() {
            needs = needs.with_request_body();
        }
        let response_fixed = rules.response_headers.rename.is_empty()
            && rules.status_map.is_empty()
            && rules.response_json.is_empty();
        if response_fixed {
            let ops = header_ops(&std::mem::take(&mut rules.response_headers), |_| Vec::new());
            needs = needs.with_fixed_response_headers(ops);
        } else {
            needs = needs.with_response_phase();
        }
        if !rules.response_json.is_empty() {
            needs = needs.with_response_body();
        }
        Ok((Transform(rules), needs))
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        let rules = &self.0;
        let mut edits = RequestEdits {
            headers: header_ops(&rules.request_headers, |name| req.header_all(name)),
            ..RequestEdits::default()
        };
        if let Some(rewrite) = &rules.path {
            let path = req.path();
            if let std::borrow::Cow::Owned(path) =
                rewrite.pattern.replace(&path, rewrite.replace.as_str())
            {
                edits.path = Some(path);
            }
        }
        if !rules.query.is_empty() {
            let old = req.query();
            let query = rules.query.apply(old.as_deref());
            if old.as_deref().unwrap_or_default() != query {
                edits.query = Some(query);
            }
        }
        if !rules.request_json.is_empty() {
            let body = req.body();
            match edit_json(
                &rules.request_json,
                |name| req.header(name),
                body.as_deref(),
            ) {
                Ok(body) => edits.body = body,
                Err(skip) if rules.strict_json => {
                    let status = match skip {
                        Skip::NotJson(_) | Skip::Encoded(_) => 415,
                        Skip::Malformed(_) => 400,
                    };
                    let error = format!("request body {}", skip.describe());
                    return Response::json(status, &serde_json::json!({ "error": error })).into();
                }
                Err(skip) => log::warn!(
                    "transform: request body {}; passed through unchanged",
                    skip.describe()
                ),
            }
        }
        edits.into()
    }

    fn on_response(&mut self, _req: &Request, resp: &ResponseView) -> ResponseEdits {
        let rules = &self.0;
        let mut edits = ResponseEdits {
            headers: header_ops(&rules.response_headers, |name| resp.header_all(name)),
            ..ResponseEdits::default()
        };
        // Read once for the status map; without one, only for a warning.
        let status = (!rules.status_map.is_empty()).then(|| resp.status());
        if let Some(status) = status
            && let Some(&(_, to)) = rules.status_map.iter().find(|(from, _)| *from == status)
        {
            edits.status = Some(to);
        }
        if !rules.response_json.is_empty() {
            let body = resp.body();
            match edit_json(
                &rules.response_json,
                |name| resp.header(name),
                body.as_deref(),
            ) {
                Ok(body) => edits.body = body,
                Err(skip) => log::warn!(
                    "transform: response body (status {}) {}; passed through unchanged",
                    status.unwrap_or_else(|| resp.status()),
                    skip.describe()
                ),
            }
        }
        edits
    }
}

export_plugin!(Transform);

/// The header ops for one direction. `values(name)` gives every value of a
/// header of the message (`header_all`). Renames need the current values,
/// so the edits run over a model of the headers to see what each step
/// leaves; only the names renames read are fetched, each at most once.
fn header_ops(edits: &HeaderEdits, mut values: impl FnMut(&str) -> Vec<Vec<u8>>) -> Vec<HeaderOp> {
    if edits.is_empty() {
        return Vec::new();
    }
    /// The entry of `name` in `now`, added empty when missing.
    fn slot<'a, 'n>(
        now: &'a mut Vec<(&'n str, Vec<Vec<u8>>)>,
        name: &'n str,
    ) -> &'a mut Vec<Vec<u8>> {
        let i = match now.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                now.push((name, Vec::new()));
                now.len() - 1
            }
        };
        &mut now[i].1
    }
    let mut ops = Vec::new();
    // The values each name has after the steps so far, for names a step
    // touched or a rename read; a name not listed still has its original
    // values. Config names are lowercase, so they compare exactly.
    let mut now: Vec<(&str, Vec<Vec<u8>>)> = Vec::new();
    for name in &edits.remove {
        slot(&mut now, name).clear();
        ops.push(HeaderOp::remove(name.as_str()));
    }
    for (from, to) in &edits.rename {
        let current = match now.iter().find(|(n, _)| *n == from.as_str()) {
            Some((_, current)) => current.clone(),
            None => {
                let original = values(from);
                now.push((from.as_str(), original.clone()));
                original
            }
        };
        if current.is_empty() || from == to {
            continue;
        }
        slot(&mut now, from).clear();
        ops.push(HeaderOp::remove(from.as_str()));
        ops.push(HeaderOp::remove(to.as_str()));
        for value in &current {
            ops.push(HeaderOp::append(to.as_str(), value));
        }
        *slot(&mut now, to) = current;
    }
    for (name, value) in &edits.set {
        ops.push(HeaderOp::set(name.as_str(), value.as_str()));
    }
    for (name, value) in &edits.add {
        ops.push(HeaderOp::append(name.as_str(), value.as_str()));
    }
    ops
}

/// Why a body was not edited.
enum Skip {
    /// Its `content-type` (shown) is not JSON.
    NotJson(String),
    /// It has a `content-encoding` (shown) other than `identity`.
    Encoded(String),
    /// It does not parse (the parser's message).
    Malformed(String),
}

impl Skip {
    fn describe(&self) -> String {
        match self {
            Skip::NotJson(ct) => format!("is not JSON (content-type: {ct})"),
            Skip::Encoded(ce) => {
                format!("is encoded (content-encoding: {ce}) and cannot be edited")
            }
            Skip::Malformed(e) => format!("is not valid JSON: {e}"),
        }
    }
}

/// The edited body (`None`: nothing to edit, the body is absent or empty).
/// `header(name)` gives the first value of a header of the message; it is
/// asked for `content-type` and `content-encoding` only when there is a body.
fn edit_json(
    edits: &json::Edits,
    header: impl Fn(&str) -> Option<Vec<u8>>,
    body: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, Skip> {
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return Ok(None);
    };
    let header = |name: &str| header(name).map(|v| String::from_utf8_lossy(&v).into_owned());
    let content_type = header("content-type");
    if !content_type.as_deref().is_some_and(is_json_type) {
        return Err(Skip::NotJson(content_type.unwrap_or_else(|| "none".into())));
    }
    if let Some(ce) = header("content-encoding")
        && !ce.trim().eq_ignore_ascii_case("identity")
    {
        return Err(Skip::Encoded(ce));
    }
    let mut doc: Json = serde_json::from_slice(body).map_err(|e| Skip::Malformed(e.to_string()))?;
    edits.apply(&mut doc);
    // Serialising an in-memory value with string keys cannot fail.
    Ok(serde_json::to_vec(&doc).ok())
}

/// `application/json` or `application/<anything>+json`, parameters ignored.
fn is_json_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.strip_prefix("application/") {
        Some(sub) => sub == "json" || (sub.ends_with("+json") && sub.len() > "+json".len()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use pylon_plugin_sdk::{Header, ReadRequest, RequestData};

    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json_type("application/json"));
        assert!(is_json_type("Application/JSON; charset=utf-8"));
        assert!(is_json_type("application/problem+json"));
        assert!(!is_json_type("application/+json"));
        assert!(!is_json_type("text/json"));
        assert!(!is_json_type("application/jsonp"));
    }

    #[test]
    fn rename_keeps_every_value_in_order() {
        let req = RequestData::new("GET", "/")
            .with_header("x-old", "1")
            .with_header("x-keep", "k")
            .with_header("x-old", "2")
            .with_header("x-new", "stale");
        let edits = HeaderEdits {
            rename: vec![
                ("x-old".into(), "x-new".into()),
                ("x-absent".into(), "x-y".into()),
            ],
            ..HeaderEdits::default()
        };
        let ops = header_ops(&edits, |name| req.header_all(name));
        assert_eq!(
            ops,
            vec![
                HeaderOp::remove("x-old"),
                HeaderOp::remove("x-new"),
                HeaderOp::append("x-new", "1"),
                HeaderOp::append("x-new", "2"),
            ]
        );
    }

    /// The ops computed over the whole header list, as the plugin did when
    /// every header was copied in: the reference for the lazy model.
    fn reference_ops(edits: &HeaderEdits, headers: &[Header]) -> Vec<HeaderOp> {
        let mut ops = Vec::new();
        let mut now: Vec<Header> = headers.to_vec();
        for name in &edits.remove {
            now.retain(|h| !h.name.eq_ignore_ascii_case(name));
            ops.push(HeaderOp::remove(name.as_str()));
        }
        for (from, to) in &edits.rename {
            let values: Vec<Vec<u8>> = now
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(from))
                .map(|h| h.value.clone())
                .collect();
            if values.is_empty() || from == to {
                continue;
            }
            now.retain(|h| !h.name.eq_ignore_ascii_case(from) && !h.name.eq_ignore_ascii_case(to));
            ops.push(HeaderOp::remove(from.as_str()));
            ops.push(HeaderOp::remove(to.as_str()));
            for value in values {
                now.push(Header::new(to.as_str(), value.clone()));
                ops.push(HeaderOp::append(to.as_str(), value));
            }
        }
        for (name, value) in &edits.set {
            ops.push(HeaderOp::set(name.as_str(), value.as_str()));
        }
        for (name, value) in &edits.add {
            ops.push(HeaderOp::append(name.as_str(), value.as_str()));
        }
        ops
    }

    #[test]
    fn chained_renames_match_the_whole_list_model_and_fetch_each_name_once() {
        let req = RequestData::new("GET", "/")
            .with_header("a", "1")
            .with_header("b", "2")
            .with_header("c", "3")
            .with_header("a", "4")
            .with_header("d", "5");
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(f, t)| (f.to_string(), t.to_string()))
                .collect()
        };
        let cases: Vec<HeaderEdits> = vec![
            HeaderEdits {
                rename: pairs(&[("a", "b"), ("b", "c"), ("c", "a")]),
                ..HeaderEdits::default()
            },
            HeaderEdits {
                remove: vec!["a".into()],
                rename: pairs(&[("a", "b"), ("b", "b"), ("x", "d"), ("d", "x"), ("x", "a")]),
                set: pairs(&[("s", "v")]),
                add: pairs(&[("t", "w")]),
            },
            HeaderEdits {
                rename: pairs(&[("x", "a"), ("a", "x"), ("a", "y"), ("c", "a"), ("a", "c")]),
                ..HeaderEdits::default()
            },
            HeaderEdits {
                remove: vec!["z".into()],
                ..HeaderEdits::default()
            },
        ];
        for edits in cases {
            let mut fetched: Vec<String> = Vec::new();
            let ops = header_ops(&edits, |name| {
                assert!(!fetched.iter().any(|f| f == name), "{name} fetched twice");
                fetched.push(name.to_string());
                req.header_all(name)
            });
            assert_eq!(ops, reference_ops(&edits, &req.headers), "{edits:?}");
        }
    }
}
