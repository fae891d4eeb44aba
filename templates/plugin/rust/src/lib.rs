//! {{name}}: a pylon plugin.
//!
//! Answers 401 to a request without an `x-tenant` header, and tags every
//! other request with `x-tier: <tier>` from the config before it goes on.
//!
//! Config (JSON, from the gateway's TOML): `{"tier": "gold"}`; `tier` is
//! optional (default `free`), any other key rejects the config, so a typo
//! is caught when the gateway loads, not on the first request.

wit_bindgen::generate!({ path: "wit", world: "plugin" });

use std::cell::RefCell;

use exports::pylon::plugin::guest::Guest;
use pylon::plugin::types::{
    Header, HeaderOp, Needs, Request, RequestAction, RequestEdits, Response, ResponseEdits,
    ResponseView,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_tier")]
    tier: String,
}

fn default_tier() -> String {
    "free".to_owned()
}

thread_local! {
    // One instance serves one request at a time; `configure` runs first.
    static TIER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct Plugin;

impl Guest for Plugin {
    fn configure(config: String) -> Result<Needs, String> {
        let text = if config.trim().is_empty() { "{}" } else { config.as_str() };
        let config: Config =
            serde_json::from_str(text).map_err(|e| format!("invalid config: {e}"))?;
        if config.tier.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err("invalid config: `tier` contains a control character".to_owned());
        }
        TIER.with(|t| *t.borrow_mut() = config.tier.into_bytes());
        Ok(Needs {
            request_phase: true,
            request_body: false,
            response_phase: false,
            response_body: false,
            fixed_request_headers: Vec::new(),
            fixed_response_headers: Vec::new(),
        })
    }

    fn on_request(request: &Request) -> RequestAction {
        if request.header("x-tenant").is_none() {
            return RequestAction::Respond(Response {
                status: 401,
                headers: vec![Header {
                    name: "content-type".to_owned(),
                    value: b"text/plain".to_vec(),
                }],
                body: Some(b"missing x-tenant header\n".to_vec()),
            });
        }
        let tier = TIER.with(|t| t.borrow().clone());
        RequestAction::Continue(RequestEdits {
            headers: vec![HeaderOp::Set(Header {
                name: "x-tier".to_owned(),
                value: tier,
            })],
            path: None,
            query: None,
            upstream: None,
            body: None,
            response_headers: Vec::new(),
        })
    }

    fn on_response(_request: &Request, _response: &ResponseView) -> ResponseEdits {
        ResponseEdits {
            status: None,
            headers: Vec::new(),
            body: None,
        }
    }
}

export!(Plugin);
