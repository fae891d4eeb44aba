//! Test guest `fanout`: calls several upstreams at once with
//! `http-client.send-all` and answers `200` with a JSON array, one entry per
//! upstream in config order: `[upstream, status, body]` (body as UTF-8,
//! lossy), or `[upstream, null, "<error>"]` where `<error>` is `denied: ..`,
//! `unknown-upstream: ..`, `failed: ..`, `timeout` or `invalid: ..`.
//!
//! Config: `{"upstreams": ["a", "b"], "path": "/x", "timeout-ms": 500}`;
//! `upstreams` required, `path` defaults to `/`, `timeout-ms` to none.

use pylon_plugin_sdk::http::{self, HttpError, OutboundRequest};
use pylon_plugin_sdk::{Needs, Plugin, Request, RequestAction, Response, config, export_plugin};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    upstreams: Vec<String>,
    #[serde(default = "root")]
    path: String,
    #[serde(default)]
    timeout_ms: Option<u32>,
}

fn root() -> String {
    "/".to_string()
}

struct Fanout(Config);

impl Plugin for Fanout {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let config: Config = config::parse(text)?;
        if config.upstreams.is_empty() {
            return Err("invalid fanout config: `upstreams` is empty".to_string());
        }
        Ok((Fanout(config), Needs::none()))
    }

    fn on_request(&mut self, _req: &Request) -> RequestAction {
        let requests: Vec<OutboundRequest> = self
            .0
            .upstreams
            .iter()
            .map(|u| {
                let r = OutboundRequest::get(u.as_str(), self.0.path.as_str());
                match self.0.timeout_ms {
                    Some(ms) => r.with_timeout_ms(ms),
                    None => r,
                }
            })
            .collect();
        let results = http::send_all(&requests);
        let entries: Vec<Value> = self
            .0
            .upstreams
            .iter()
            .zip(results)
            .map(|(upstream, result)| match result {
                Ok(resp) => {
                    let body = String::from_utf8_lossy(resp.body.as_deref().unwrap_or_default());
                    json!([upstream, resp.status, body])
                }
                Err(e) => json!([upstream, null, describe(&e)]),
            })
            .collect();
        Response::json(200, &entries).into()
    }
}

fn describe(e: &HttpError) -> String {
    match e {
        HttpError::Denied(m) => format!("denied: {m}"),
        HttpError::UnknownUpstream(m) => format!("unknown-upstream: {m}"),
        HttpError::Failed(m) => format!("failed: {m}"),
        HttpError::Timeout => "timeout".to_string(),
        HttpError::Invalid(m) => format!("invalid: {m}"),
    }
}

export_plugin!(Fanout);
