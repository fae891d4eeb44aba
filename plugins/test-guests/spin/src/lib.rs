//! Test guest `spin`: `on-request` never returns, so only the host's
//! deadline (epoch interruption) can stop it. Config: `{}`.

use pylon_plugin_sdk::{Needs, Plugin, Request, RequestAction, config, export_plugin};

struct Spin;

impl Plugin for Spin {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let config::Empty {} = config::parse(text)?;
        Ok((Spin, Needs::none()))
    }

    fn on_request(&mut self, _req: &Request) -> RequestAction {
        let mut n: u64 = 0;
        loop {
            // black_box keeps the loop from being folded away.
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export_plugin!(Spin);
