//! Test guest `inspector`: shows what a plugin sees.
//!
//! Config (all optional): `{"respond": true, "want-body": false,
//! "uppercase-response-body": false, "allow-client-dns": [..]}`.
//!
//! - `respond: true` (default): answers `200` (`application/json`) with
//!   `{"route", "method", "path", "query", "headers": [[name, value], ..],
//!   "client_addr", "scheme", "client_identity", "params": [[name, value],
//!   ..], "body_len", "body"}`. A header value (and the body) is a JSON
//!   string when it is UTF-8, else `{"base64": "..."}`. `client_identity`
//!   is `null` or `{"subject", "dns_names", "uris", "sha256",
//!   "not_after"}` (the client certificate). `body_len` is the body's
//!   length or `null` when the host passed none; `body` is present only
//!   with `want-body: true` (which also asks the host for the request body).
//! - `allow-client-dns: [names]`: an authorization decision on the client
//!   certificate first: a request whose certificate has none of these DNS
//!   names (or that came without one) is answered `403`, body
//!   `client certificate not allowed`, whatever `respond` says.
//! - `respond: false`: continues unchanged, and in the response phase sets
//!   `x-inspector-saw-status: <upstream status>` and
//!   `x-inspector-saw-path: <path?query as sent upstream>`; with
//!   `uppercase-response-body: true` it also asks for the response body and
//!   replaces it with its ASCII-uppercase form.

use pylon_plugin_sdk::{
    Needs, Plugin, ReadRequest, Request, RequestAction, Response, ResponseEdits, ResponseView,
    config, export_plugin,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    #[serde(default = "yes")]
    respond: bool,
    #[serde(default)]
    want_body: bool,
    #[serde(default)]
    uppercase_response_body: bool,
    allow_client_dns: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

struct Inspector(Config);

impl Plugin for Inspector {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let config: Config = config::parse(text)?;
        if config.respond && config.uppercase_response_body {
            return Err(
                "invalid inspector config: `uppercase-response-body` needs `respond: false` \
                 (a plugin that responds sees no upstream response)"
                    .to_string(),
            );
        }
        let mut needs = Needs::none();
        if config.want_body {
            needs = needs.with_request_body();
        }
        if !config.respond {
            needs = needs.with_response_phase();
        }
        if config.uppercase_response_body {
            needs = needs.with_response_body();
        }
        Ok((Inspector(config), needs))
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        if let Some(allowed) = &self.0.allow_client_dns {
            let ok = req
                .client_identity()
                .is_some_and(|id| id.dns_names.iter().any(|n| allowed.contains(n)));
            if !ok {
                return Response::text(403, "client certificate not allowed").into();
            }
        }
        if !self.0.respond {
            return RequestAction::proceed();
        }
        Response::json(200, &describe(req, self.0.want_body)).into()
    }

    fn on_response(&mut self, req: &Request, resp: &ResponseView) -> ResponseEdits {
        let mut edits = ResponseEdits::new()
            .set_header("x-inspector-saw-status", resp.status().to_string())
            .set_header("x-inspector-saw-path", req.path_and_query());
        // Fetch the body only when rewriting it (without `response-body`
        // the host hands none anyway).
        if self.0.uppercase_response_body
            && let Some(body) = resp.body()
        {
            edits = edits.with_body(body.to_ascii_uppercase());
        }
        edits
    }
}

export_plugin!(Inspector);

/// Reads every part of the request once, through the accessors.
fn describe(req: &Request, want_body: bool) -> Value {
    let headers: Vec<Value> = req
        .headers()
        .iter()
        .map(|h| json!([h.name, bytes(&h.value)]))
        .collect();
    let params: Vec<Value> = req.params().iter().map(|(k, v)| json!([k, v])).collect();
    let body = req.body();
    let mut out = Map::new();
    out.insert("route".into(), json!(req.route()));
    out.insert("method".into(), json!(req.method()));
    out.insert("path".into(), json!(req.path()));
    out.insert("query".into(), json!(req.query()));
    out.insert("headers".into(), Value::Array(headers));
    out.insert("client_addr".into(), json!(req.client_addr()));
    out.insert("scheme".into(), json!(req.scheme()));
    out.insert(
        "client_identity".into(),
        req.client_identity().map_or(Value::Null, |id| {
            json!({
                "subject": id.subject,
                "dns_names": id.dns_names,
                "uris": id.uris,
                "sha256": id.sha256,
                "not_after": id.not_after,
            })
        }),
    );
    out.insert("params".into(), Value::Array(params));
    out.insert("body_len".into(), json!(body.as_ref().map(Vec::len)));
    if want_body {
        out.insert("body".into(), body.as_deref().map_or(Value::Null, bytes));
    }
    Value::Object(out)
}

/// A JSON string when `b` is UTF-8, else `{"base64": "..."}`.
fn bytes(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => json!(s),
        Err(_) => json!({ "base64": base64(b) }),
    }
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
