//! Test guest `kv-counter`: each request does `kv.incr("hits", 1)` and is
//! answered `200` with the new count as a decimal body (`text/plain`). A kv
//! error answers `500` with body `kv error: denied`,
//! `kv error: unavailable: <detail>` or `kv error: not-a-number`.
//! Config: `{}`.

use pylon_plugin_sdk::kv::{self, KvError};
use pylon_plugin_sdk::{Needs, Plugin, Request, RequestAction, Response, config, export_plugin};

struct KvCounter;

impl Plugin for KvCounter {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let config::Empty {} = config::parse(text)?;
        Ok((KvCounter, Needs::none()))
    }

    fn on_request(&mut self, _req: &Request) -> RequestAction {
        match kv::incr("hits", 1, None) {
            Ok(n) => Response::text(200, n.to_string()).into(),
            Err(e) => {
                let detail = match e {
                    KvError::Denied => "denied".to_string(),
                    KvError::Unavailable(why) => format!("unavailable: {why}"),
                    KvError::NotANumber => "not-a-number".to_string(),
                };
                Response::text(500, format!("kv error: {detail}")).into()
            }
        }
    }
}

export_plugin!(KvCounter);
