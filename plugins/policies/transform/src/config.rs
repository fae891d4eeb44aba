//! The raw config (serde, unknown keys rejected) and its validation into
//! the [`Transform`](crate::Transform) rules. Every problem is collected and
//! reported in one `invalid transform config: ...` message that names the
//! key, e.g. `request.path.match: invalid regex ...`.

use std::collections::BTreeMap;

use pylon_plugin_sdk::config::OneOrMany;
use regex_lite::Regex;
use serde::Deserialize;

use crate::json::{self, Json, Pointer};
use crate::query;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawConfig {
    #[serde(default)]
    request: RawRequest,
    #[serde(default)]
    response: RawResponse,
    #[serde(default)]
    strict_json: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRequest {
    #[serde(default)]
    headers: RawNamed,
    #[serde(default)]
    path: Option<RawPath>,
    #[serde(default)]
    query: RawNamed,
    #[serde(default)]
    json: RawJson,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawResponse {
    #[serde(default)]
    headers: RawNamed,
    #[serde(default)]
    json: RawJson,
    #[serde(default)]
    status_map: BTreeMap<String, u16>,
}

/// Header or query edits: both are named, possibly repeated, string values.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNamed {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, OneOrMany<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    #[serde(rename = "match")]
    pattern: String,
    replace: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJson {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default, rename = "move")]
    moves: Vec<RawMove>,
    #[serde(default)]
    set: BTreeMap<String, Json>,
    #[serde(default)]
    add: BTreeMap<String, Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMove {
    from: String,
    to: String,
}

/// Header edits, validated (names lowercased), applied in this order:
/// remove, rename, set, add.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderEdits {
    pub(crate) remove: Vec<String>,
    pub(crate) rename: Vec<(String, String)>,
    pub(crate) set: Vec<(String, String)>,
    pub(crate) add: Vec<(String, String)>,
}

impl HeaderEdits {
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }
}

/// A path rewrite: the first match of `pattern` is replaced by `replace`
/// (`$name`, `${name}`, `$1` refer to capture groups).
#[derive(Debug, Clone)]
pub(crate) struct PathRewrite {
    pub(crate) pattern: Regex,
    pub(crate) replace: String,
}

/// The validated config.
pub(crate) struct Rules {
    pub(crate) request_headers: HeaderEdits,
    pub(crate) path: Option<PathRewrite>,
    pub(crate) query: query::Edits,
    pub(crate) request_json: json::Edits,
    pub(crate) response_headers: HeaderEdits,
    pub(crate) response_json: json::Edits,
    pub(crate) status_map: Vec<(u16, u16)>,
    pub(crate) strict_json: bool,
}

/// Validate `raw`; `Err` carries every problem found.
pub(crate) fn validate(raw: RawConfig) -> Result<Rules, String> {
    let mut problems = Vec::new();
    let p = &mut problems;
    let rules = Rules {
        request_headers: headers("request.headers", raw.request.headers, p),
        path: raw.request.path.and_then(|r| path("request.path", r, p)),
        query: query("request.query", raw.request.query, p),
        request_json: json("request.json", raw.request.json, p),
        response_headers: headers("response.headers", raw.response.headers, p),
        response_json: json("response.json", raw.response.json, p),
        status_map: status_map("response.status-map", raw.response.status_map, p),
        strict_json: raw.strict_json,
    };
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(format!("invalid transform config: {}", problems.join("; ")))
    }
}

fn headers(at: &str, raw: RawNamed, problems: &mut Vec<String>) -> HeaderEdits {
    let mut name = |op: &str, n: &str| -> Option<String> {
        let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if !n.is_empty() && n.bytes().all(is_tchar) {
            Some(n.to_ascii_lowercase())
        } else {
            problems.push(format!(
                "{at}.{op}: {n:?} is not a valid header name \
                 (letters, digits and !#$%&'*+-.^_`|~ only, not empty)"
            ));
            None
        }
    };
    let remove: Vec<_> = raw
        .remove
        .iter()
        .filter_map(|n| name("remove", n))
        .collect();
    let rename: Vec<_> = raw
        .rename
        .iter()
        .filter_map(|(from, to)| Some((name("rename", from)?, name("rename", to)?)))
        .collect();
    let set: Vec<_> = raw
        .set
        .into_iter()
        .filter_map(|(n, v)| Some((name("set", &n)?, v)))
        .collect();
    let add: Vec<_> = raw
        .add
        .into_iter()
        .filter_map(|(n, vs)| Some((name("add", &n)?, vs)))
        .flat_map(|(n, vs)| vs.into_vec().into_iter().map(move |v| (n.clone(), v)))
        .collect();
    for (op, (n, v)) in set
        .iter()
        .map(|e| ("set", e))
        .chain(add.iter().map(|e| ("add", e)))
    {
        if let Some(problem) = bad_value(v) {
            problems.push(format!("{at}.{op}: value of {n:?} {problem}"));
        }
    }
    HeaderEdits {
        remove,
        rename,
        set,
        add,
    }
}

/// Why `value` is not a valid header field value, if it is not: control
/// characters, or whitespace at either end.
fn bad_value(value: &str) -> Option<String> {
    if let Some(b) = value
        .bytes()
        .find(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        Some(format!("contains the control character 0x{b:02x}"))
    } else if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        Some("has leading or trailing whitespace".to_string())
    } else {
        None
    }
}

fn path(at: &str, raw: RawPath, problems: &mut Vec<String>) -> Option<PathRewrite> {
    let pattern = match Regex::new(&raw.pattern) {
        Ok(re) => Some(re),
        Err(e) => {
            let e = e.to_string().replace('\n', " ");
            problems.push(format!("{at}.match: invalid regex {:?}: {e}", raw.pattern));
            None
        }
    };
    let replace_ok = if !raw.replace.starts_with('/') {
        problems.push(format!(
            "{at}.replace: {:?} must start with '/'",
            raw.replace
        ));
        false
    } else if let Some(c) = raw
        .replace
        .chars()
        .find(|c| c.is_ascii_control() || *c == ' ' || *c == '?' || *c == '#')
    {
        problems.push(format!(
            "{at}.replace: {:?} contains {c:?}, which cannot appear in a path \
             (query edits go under request.query)",
            raw.replace
        ));
        false
    } else {
        true
    };
    let pattern = pattern?;
    let mut refs_ok = true;
    for group in group_refs(&raw.replace) {
        let known = match group.parse::<usize>() {
            Ok(i) => i < pattern.captures_len(),
            Err(_) => pattern.capture_names().flatten().any(|n| n == group),
        };
        if !known {
            problems.push(format!(
                "{at}.replace: ${group} names no capture group of {:?}",
                raw.pattern
            ));
            refs_ok = false;
        }
    }
    (replace_ok && refs_ok).then_some(PathRewrite {
        pattern,
        replace: raw.replace,
    })
}

/// The capture group references in a replacement template, with the
/// `regex` crates' rules: `$$` is a literal `$`, `${name}` is braced,
/// `$name` takes the longest run of `[_0-9A-Za-z]`.
fn group_refs(template: &str) -> Vec<&str> {
    let mut refs = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            rest = after;
        } else if let Some(braced) = rest.strip_prefix('{') {
            if let Some(end) = braced.find('}') {
                refs.push(&braced[..end]);
                rest = &braced[end + 1..];
            }
        } else {
            let end = rest
                .find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
                .unwrap_or(rest.len());
            if end > 0 {
                refs.push(&rest[..end]);
            }
            rest = &rest[end..];
        }
    }
    refs
}

fn query(at: &str, raw: RawNamed, problems: &mut Vec<String>) -> query::Edits {
    let mut name = |op: &str, n: String| {
        if n.is_empty() {
            problems.push(format!("{at}.{op}: a parameter name cannot be empty"));
            None
        } else {
            Some(n)
        }
    };
    query::Edits {
        remove: raw
            .remove
            .into_iter()
            .filter_map(|n| name("remove", n))
            .collect(),
        rename: raw
            .rename
            .into_iter()
            .filter_map(|(from, to)| Some((name("rename", from)?, name("rename", to)?)))
            .collect(),
        set: raw
            .set
            .into_iter()
            .filter_map(|(n, v)| Some((name("set", n)?, v)))
            .collect(),
        add: raw
            .add
            .into_iter()
            .filter_map(|(n, vs)| Some((name("add", n)?, vs)))
            .flat_map(|(n, vs)| vs.into_vec().into_iter().map(move |v| (n.clone(), v)))
            .collect(),
    }
}

fn json(at: &str, raw: RawJson, problems: &mut Vec<String>) -> json::Edits {
    let mut ptr = |op: &str, text: &str| match Pointer::parse(text) {
        Ok(p) => Some(p),
        Err(e) => {
            problems.push(format!("{at}.{op}: {e}"));
            None
        }
    };
    let remove = raw.remove.iter().filter_map(|t| ptr("remove", t)).collect();
    let rename = raw
        .rename
        .into_iter()
        .filter_map(|(t, name)| Some((ptr("rename", &t)?, name)))
        .collect();
    let moves: Vec<(Pointer, Pointer)> = raw
        .moves
        .iter()
        .filter_map(|m| {
            let (from, to) = (ptr("move", &m.from), ptr("move", &m.to));
            Some((from?, to?))
        })
        .collect();
    let set = raw
        .set
        .into_iter()
        .filter_map(|(t, v)| Some((ptr("set", &t)?, v)))
        .collect();
    let add = raw
        .add
        .into_iter()
        .filter_map(|(t, v)| Some((ptr("add", &t)?, v)))
        .collect();
    for (from, to) in &moves {
        if to.is_inside(from) {
            problems.push(format!(
                "{at}.move: cannot move {:?} into itself ({:?})",
                from.as_str(),
                to.as_str()
            ));
        }
    }
    json::Edits {
        remove,
        rename,
        moves,
        set,
        add,
    }
}

fn status_map(at: &str, raw: BTreeMap<String, u16>, problems: &mut Vec<String>) -> Vec<(u16, u16)> {
    let mut map = Vec::new();
    for (from, to) in raw {
        let from_ok =
            from.len() == 3 && from.parse::<u16>().is_ok_and(|s| (100..=599).contains(&s));
        if !from_ok {
            problems.push(format!("{at}: key {from:?} is not a status code (100-599)"));
        }
        if !(100..=599).contains(&to) {
            problems.push(format!(
                "{at}: {from:?} maps to {to}, which is not a status code (100-599)"
            ));
        }
        if from_ok && (100..=599).contains(&to) {
            map.push((from.parse().unwrap_or_default(), to));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Rules, String> {
        validate(pylon_plugin_sdk::config::parse(text)?)
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let err = check(
            r#"{"request": {"headers": {"set": {"bad name": "v", "x-ok": " padded"}},
                "path": {"match": "^/old/(?P<id>[^/]+", "replace": "/new/$id"},
                "json": {"remove": ["a/b"], "move": [{"from": "/a", "to": "/a/b"}]}},
               "response": {"status-map": {"40x": 204, "500": 1000}, "json": {"set": {"/x~": 1}}}}"#,
        )
        .err()
        .unwrap();
        for needle in [
            "request.headers.set: \"bad name\" is not a valid header name",
            "request.headers.set: value of \"x-ok\" has leading or trailing whitespace",
            "request.path.match: invalid regex \"^/old/(?P<id>[^/]+\"",
            "request.json.remove: \"a/b\" is not a JSON pointer",
            "request.json.move: cannot move \"/a\" into itself",
            "response.status-map: key \"40x\" is not a status code",
            "response.status-map: \"500\" maps to 1000",
            "response.json.set: \"/x~\" is not a JSON pointer",
        ] {
            assert!(err.contains(needle), "{needle:?} missing from {err}");
        }
    }

    #[test]
    fn replacement_must_name_existing_groups() {
        let err = check(r#"{"request": {"path": {"match": "^/a/(?P<id>\\d+)$", "replace": "/b/$idx/${id}/$2"}}}"#)
            .err()
            .unwrap();
        assert!(err.contains("$idx names no capture group"), "{err}");
        assert!(err.contains("$2 names no capture group"), "{err}");
        assert!(!err.contains("$id names"), "{err}");
        assert!(
            check(r#"{"request": {"path": {"match": "^/a/(\\d+)$", "replace": "/b/$1/$$"}}}"#)
                .is_ok()
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = check(r#"{"request": {"header": {}}}"#).err().unwrap();
        assert!(err.contains("unknown field `header`"), "{err}");
    }
}
