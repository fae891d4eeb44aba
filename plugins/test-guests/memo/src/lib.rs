//! Test guest `memo`: counts the requests its instance has served, in
//! instance memory, and answers `200` with that count as the body. A fresh
//! instance per request always answers `1`; a pooled instance counts up.
//! With `{"trap-at": N}` it traps on its N-th request, so a test can check
//! that a trapped pooled instance is discarded (the next count restarts).
//! Config: `{}` or `{"trap-at": N}`.

use pylon_plugin_sdk::{Needs, Plugin, Request, RequestAction, Response, export_plugin};

struct Memo {
    served: u64,
    trap_at: Option<u64>,
}

impl Plugin for Memo {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("invalid memo config: {e}"))?;
        let obj = v
            .as_object()
            .ok_or("invalid memo config: expected an object")?;
        let mut trap_at = None;
        for (k, v) in obj {
            match (k.as_str(), v.as_u64()) {
                ("trap-at", Some(n)) if n > 0 => trap_at = Some(n),
                _ => {
                    return Err(format!(
                        "invalid memo config: unexpected key or value {k:?}"
                    ));
                }
            }
        }
        Ok((Memo { served: 0, trap_at }, Needs::none()))
    }

    fn on_request(&mut self, _req: &Request) -> RequestAction {
        self.served += 1;
        if self.trap_at == Some(self.served) {
            panic!("memo guest: deliberate trap at request {}", self.served);
        }
        Response::text(200, self.served.to_string()).into()
    }
}

export_plugin!(Memo);
