//! Test guest `memo`: counts the requests its instance has served, in
//! instance memory, and answers `200` with that count as the body. A fresh
//! instance per request always answers `1`; a pooled instance counts up.
//! With `{"trap-at": N}` it traps on its N-th request, so a test can check
//! that a trapped pooled instance is discarded (the next count restarts).
//! With `{"leak-kib": N}` every request also keeps N KiB it never frees
//! (written, so committed): a heap that only grows, like an interpreter's,
//! for the tests of pooled-instance recycling.
//! Config: `{}`, `{"trap-at": N}`, `{"leak-kib": N}` or both.

use pylon_plugin_sdk::{Needs, Plugin, Request, RequestAction, Response, export_plugin};

struct Memo {
    served: u64,
    trap_at: Option<u64>,
    leak_kib: u64,
    leaked: Vec<Vec<u8>>,
}

impl Plugin for Memo {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("invalid memo config: {e}"))?;
        let obj = v
            .as_object()
            .ok_or("invalid memo config: expected an object")?;
        let mut trap_at = None;
        let mut leak_kib = 0;
        for (k, v) in obj {
            match (k.as_str(), v.as_u64()) {
                ("trap-at", Some(n)) if n > 0 => trap_at = Some(n),
                ("leak-kib", Some(n)) if n <= 1 << 20 => leak_kib = n,
                _ => {
                    return Err(format!(
                        "invalid memo config: unexpected key or value {k:?}"
                    ));
                }
            }
        }
        let memo = Memo {
            served: 0,
            trap_at,
            leak_kib,
            leaked: Vec::new(),
        };
        Ok((memo, Needs::none()))
    }

    fn on_request(&mut self, _req: &Request) -> RequestAction {
        self.served += 1;
        if self.trap_at == Some(self.served) {
            panic!("memo guest: deliberate trap at request {}", self.served);
        }
        if self.leak_kib > 0 {
            let mut block = vec![0u8; (self.leak_kib as usize) << 10];
            for i in (0..block.len()).step_by(4096) {
                block[i] = 1;
            }
            self.leaked.push(std::hint::black_box(block));
        }
        Response::text(200, self.served.to_string()).into()
    }
}

export_plugin!(Memo);
