//! Test guest `legacy-v0-4-0`: a plugin built against `pylon:plugin@0.4.0`
//! (`wit/compat/0.4.0`, frozen), with no SDK, to prove the host serving
//! 0.4.1 still serves it unchanged: wasmtime matches its `@0.4.0` imports
//! and export to the host's `@0.4.1` definitions semver-compatibly. The
//! same behaviour as `legacy-v0-3` (one test drives both), plus a fixed
//! response header, which 0.4.0 introduced.
//!
//! Config (all optional): `{"fetch": "<upstream>"}`.
//!
//! - `configure`: declares the fixed response edit `x-legacy-fixed: 0.4.0`.
//! - `on-request`: logs `legacy-v0-4-0: <METHOD> <path>` at info. With a
//!   request header `x-legacy-respond` it responds `200`, `text/plain`, body
//!   `legacy-v0-4-0 answered <path>`. Otherwise it continues with request
//!   headers `x-legacy-path: <path>`, `x-legacy-agent: <user-agent bytes, or
//!   "-">`, `x-legacy-hits: <kv incr of "hits">` (or `x-legacy-kv-error`),
//!   with `fetch` also `x-legacy-fetch: <status of GET /legacy-fetch on that
//!   upstream, or the error kind>`; and the response edit `x-legacy-early: 1`
//!   (`request-edits.response-headers`).
//! - `on-response`: sets `x-legacy-status: <response status>` and
//!   `x-legacy-saw-path: <request path>`.

#[allow(missing_docs, unreachable_pub)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/compat/0.4.0",
        world: "plugin",
    });
}

use std::cell::RefCell;

use bindings::exports::pylon::plugin::guest::Guest;
use bindings::pylon::plugin::{
    http_client::{self, HttpError, OutboundRequest},
    kv::{self, KvError},
    log::{self, Level},
    types::{
        Header, HeaderOp, Needs, Request, RequestAction, RequestEdits, Response, ResponseEdits,
        ResponseView,
    },
};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    fetch: Option<String>,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

struct Legacy;

fn set(name: &str, value: impl Into<Vec<u8>>) -> HeaderOp {
    HeaderOp::Set(Header {
        name: name.to_owned(),
        value: value.into(),
    })
}

impl Guest for Legacy {
    fn configure(config: String) -> Result<Needs, String> {
        let parsed: Config =
            serde_json::from_str(&config).map_err(|e| format!("invalid plugin config: {e}"))?;
        CONFIG.with(|c| *c.borrow_mut() = parsed);
        Ok(Needs {
            request_phase: true,
            request_body: false,
            response_phase: true,
            response_body: false,
            fixed_request_headers: vec![],
            fixed_response_headers: vec![set("x-legacy-fixed", "0.4.0")],
        })
    }

    fn on_request(request: &Request) -> RequestAction {
        let path = request.path();
        log::log(
            Level::Info,
            &format!("legacy-v0-4-0: {} {path}", request.method()),
        );
        if request.header("x-legacy-respond").is_some() {
            return RequestAction::Respond(Response {
                status: 200,
                headers: vec![Header {
                    name: "content-type".into(),
                    value: b"text/plain".to_vec(),
                }],
                body: Some(format!("legacy-v0-4-0 answered {path}").into_bytes()),
            });
        }
        let mut headers = vec![
            set("x-legacy-path", path.as_str()),
            set(
                "x-legacy-agent",
                request
                    .header("user-agent")
                    .unwrap_or_else(|| b"-".to_vec()),
            ),
        ];
        headers.push(match kv::incr("hits", 1, None) {
            Ok(n) => set("x-legacy-hits", n.to_string()),
            Err(e) => set(
                "x-legacy-kv-error",
                match e {
                    KvError::Denied => "denied",
                    KvError::Unavailable(_) => "unavailable",
                    KvError::NotANumber => "not-a-number",
                },
            ),
        });
        CONFIG.with(|c| {
            if let Some(upstream) = &c.borrow().fetch {
                headers.push(set("x-legacy-fetch", fetch(upstream)));
            }
        });
        RequestAction::Continue(RequestEdits {
            headers,
            path: None,
            query: None,
            upstream: None,
            body: None,
            response_headers: vec![set("x-legacy-early", "1")],
        })
    }

    fn on_response(request: &Request, response: &ResponseView) -> ResponseEdits {
        ResponseEdits {
            status: None,
            headers: vec![
                set("x-legacy-status", response.status().to_string()),
                set("x-legacy-saw-path", request.path()),
            ],
            body: None,
        }
    }
}

/// `GET /legacy-fetch` on `upstream`: its status, or the error's kind.
fn fetch(upstream: &str) -> String {
    let request = OutboundRequest {
        upstream: upstream.to_owned(),
        method: "GET".into(),
        path_and_query: "/legacy-fetch".into(),
        headers: vec![],
        body: None,
        timeout_ms: Some(5_000),
    };
    match http_client::send(&request) {
        Ok(response) => response.status.to_string(),
        Err(HttpError::Denied(_)) => "denied".into(),
        Err(HttpError::UnknownUpstream(_)) => "unknown-upstream".into(),
        Err(HttpError::Failed(_)) => "failed".into(),
        Err(HttpError::Timeout) => "timeout".into(),
        Err(HttpError::Invalid(_)) => "invalid".into(),
    }
}

bindings::export!(Legacy with_types_in bindings);
