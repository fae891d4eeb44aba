//! Test guest `trap`: traps in a chosen phase.
//!
//! Config: `{"phase": "request" | "response" | "configure", "how": "panic" | "unreachable"}`,
//! defaults `request` and `panic`. `panic` panics with the message
//! `trap guest: deliberate panic in <phase>` (printed to stderr, then the
//! abort traps); `unreachable` executes the Wasm `unreachable` instruction
//! directly. With `phase: "response"` the request phase continues and the
//! response phase is requested.

use pylon_plugin_sdk::{
    Needs, Plugin, Request, RequestAction, ResponseEdits, ResponseView, config, export_plugin,
};
use serde::Deserialize;

#[derive(Deserialize, Clone, Copy, PartialEq, Default)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Configure,
    #[default]
    Request,
    Response,
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "lowercase")]
enum How {
    #[default]
    Panic,
    Unreachable,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    phase: Phase,
    #[serde(default)]
    how: How,
}

struct Trap {
    phase: Phase,
    how: How,
}

fn trap(how: How, phase: &str) -> ! {
    match how {
        How::Panic => panic!("trap guest: deliberate panic in {phase}"),
        #[cfg(target_arch = "wasm32")]
        How::Unreachable => core::arch::wasm32::unreachable(),
        // Native builds exist only for the workspace's unit-test run.
        #[cfg(not(target_arch = "wasm32"))]
        How::Unreachable => std::process::abort(),
    }
}

impl Plugin for Trap {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let Config { phase, how } = config::parse(text)?;
        if phase == Phase::Configure {
            trap(how, "configure");
        }
        let mut needs = Needs::none();
        if phase == Phase::Response {
            needs = needs.with_response_phase();
        }
        Ok((Trap { phase, how }, needs))
    }

    fn on_request(&mut self, _req: &Request) -> RequestAction {
        if self.phase == Phase::Request {
            trap(self.how, "on-request");
        }
        RequestAction::proceed()
    }

    fn on_response(&mut self, _req: &Request, _resp: &ResponseView) -> ResponseEdits {
        trap(self.how, "on-response")
    }
}

export_plugin!(Trap);
