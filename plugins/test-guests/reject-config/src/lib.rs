//! Test guest `reject-config`: `configure` always fails with
//! `this plugin rejects every config: got <config>`, where `<config>` is the
//! config re-serialised as compact JSON (`{}` for none), or
//! `not JSON (<parse error>)` when it does not parse.

use pylon_plugin_sdk::{Needs, Plugin, export_plugin};

struct RejectConfig;

impl Plugin for RejectConfig {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let detail = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => format!("got {value}"),
            Err(e) => format!("not JSON ({e})"),
        };
        Err(format!("this plugin rejects every config: {detail}"))
    }
}

export_plugin!(RejectConfig);
