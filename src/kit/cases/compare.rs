//! Judging a case: what the plugin did against what the case expects,
//! each difference one line of the case's failures.

use std::collections::BTreeMap;

use http::HeaderMap;

use super::spec::{Expect, OneOrMany};
use crate::pipeline::PluginResponse;

pub(super) fn check_unused(expect: &Expect, fields: &[&str], failures: &mut Vec<String>) {
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

pub(super) fn differ(
    what: &str,
    want: Option<&str>,
    got: Option<&str>,
    failures: &mut Vec<String>,
) {
    if let Some(want) = want
        && got != Some(want)
    {
        failures.push(format!(
            "{what}: expected {want:?}, got {:?}",
            got.unwrap_or("")
        ));
    }
}

pub(super) fn compare_response(
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

pub(super) fn compare_headers(
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

pub(super) fn body_text(body: Option<&[u8]>) -> String {
    String::from_utf8_lossy(body.unwrap_or_default()).into_owned()
}
