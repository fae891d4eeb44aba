//! `headers`: sets, appends and removes request and response headers.
//!
//! Config (every key optional, unknown keys rejected):
//!
//! ```json
//! {
//!   "request":  { "remove": ["x-b"], "set": { "x-a": "1" }, "append": { "x-c": ["2", "3"] } },
//!   "response": { "remove": ["server"], "set": { "cache-control": "no-store" } }
//! }
//! ```
//!
//! Within a phase the edits apply in the order remove, set, append, so
//! `remove: ["x"]` with `append: {"x": "v"}` leaves exactly `x: v`. `append`
//! takes one value or a list. Names must be HTTP tokens and are lowercased;
//! values must be valid header values (no control characters, no leading or
//! trailing whitespace). Bodies are never touched.
//!
//! The edits are the same for every request, so `configure` hands them to
//! the host as fixed edits and asks for neither phase: the gateway applies
//! them itself and never calls this plugin per request.

use std::collections::BTreeMap;

use pylon_plugin_sdk::{HeaderOp, Needs, Plugin, config, export_plugin};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    request: RawEdits,
    #[serde(default)]
    response: RawEdits,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEdits {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    append: BTreeMap<String, config::OneOrMany<String>>,
}

/// The plugin: everything it does is declared at configure, so there is
/// nothing to keep.
struct Headers;

impl Plugin for Headers {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let raw: RawConfig = config::parse(text)?;
        let mut problems = Vec::new();
        let request = validate("request", raw.request, &mut problems);
        let response = validate("response", raw.response, &mut problems);
        if !problems.is_empty() {
            return Err(format!("invalid headers config: {}", problems.join("; ")));
        }
        let needs = Needs::none()
            .without_request_phase()
            .with_fixed_request_headers(request)
            .with_fixed_response_headers(response);
        Ok((Headers, needs))
    }
}

export_plugin!(Headers);

/// Turn one phase's raw edits into ops, recording every problem found.
fn validate(phase: &str, raw: RawEdits, problems: &mut Vec<String>) -> Vec<HeaderOp> {
    let mut ops = Vec::new();
    for name in raw.remove {
        if let Some(name) = check_name(phase, "remove", &name, problems) {
            ops.push(HeaderOp::remove(name));
        }
    }
    for (name, value) in raw.set {
        let checked_name = check_name(phase, "set", &name, problems);
        let value_ok = check_value(phase, "set", &name, &value, problems);
        if let (Some(name), true) = (checked_name, value_ok) {
            ops.push(HeaderOp::set(name, value));
        }
    }
    for (name, values) in raw.append {
        let values = values.into_vec();
        let checked_name = check_name(phase, "append", &name, problems);
        let mut values_ok = true;
        for value in &values {
            values_ok &= check_value(phase, "append", &name, value, problems);
        }
        if let (Some(name), true) = (checked_name, values_ok) {
            ops.extend(
                values
                    .into_iter()
                    .map(|v| HeaderOp::append(name.clone(), v)),
            );
        }
    }
    ops
}

/// The lowercased name when `name` is an HTTP token (RFC 9110 `tchar`s).
fn check_name(phase: &str, op: &str, name: &str, problems: &mut Vec<String>) -> Option<String> {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.is_empty() && name.bytes().all(is_tchar) {
        Some(name.to_ascii_lowercase())
    } else {
        problems.push(format!(
            "{phase}.{op}: {name:?} is not a valid header name \
             (letters, digits and !#$%&'*+-.^_`|~ only, not empty)"
        ));
        None
    }
}

/// Whether `value` is a valid field value: visible characters, spaces and
/// tabs (non-ASCII UTF-8 is allowed as obs-text), and no whitespace at
/// either end.
fn check_value(phase: &str, op: &str, name: &str, value: &str, problems: &mut Vec<String>) -> bool {
    let bad_char = value
        .bytes()
        .find(|&b| (b < 0x20 && b != b'\t') || b == 0x7f);
    let problem = if let Some(b) = bad_char {
        Some(format!("contains the control character 0x{b:02x}"))
    } else if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        Some("has leading or trailing whitespace".to_string())
    } else {
        None
    };
    match problem {
        Some(p) => {
            problems.push(format!("{phase}.{op}: value of {name:?} {p}"));
            false
        }
        None => true,
    }
}
