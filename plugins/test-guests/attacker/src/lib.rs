//! Test guest `attacker`: one hostile behaviour per config, written against
//! `wit/plugin.wit` directly (wit-bindgen, no SDK), for the tests and the
//! attack benchmark (`benches/attacks`). Each must fail only the request it
//! serves. Config: `{"attack": "<name>", "n": N}`:
//!
//! - `none`: continues without edits (a control);
//! - `configure-loop`: `configure` never returns;
//! - `configure-later`: `configure` counts its calls in kv (key
//!   `configures`, needs `kv`) and never returns once they pass `n`
//!   (default 2: what a load makes); `on-request` continues with
//!   `x-configures: <the count>`. A host that configures on the request
//!   path times out every request;
//! - `spin`: `on-request` never returns;
//! - `busy`: `on-request` busy-waits `n` ms (default 40; needs `clock`),
//!   then continues;
//! - `membomb`: `on-request` allocates and touches memory until refused;
//! - `recurse`: `on-request` recurses without end (stack overflow);
//! - `big-response`: responds `200` with a body of `n` MiB (default 40);
//! - `header-flood`: continues with `n` appended request headers
//!   (default 100,000);
//! - `respond-headers`: responds with `n` headers (default 100,000);
//! - `response-header-flood`: `on-response` returns `n` header edits;
//! - `trap-response`: `on-request` continues, `on-response` traps;
//! - `kv-flood`: each request writes `n` (default 8) values of 1 MiB under
//!   keys new to the instance (needs `kv`; use `pooled`), then continues
//!   with `x-kv-refused: <count of refused writes>`.

#[allow(missing_docs, unreachable_pub)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "plugin",
    });
}

use std::cell::RefCell;

use bindings::exports::pylon::plugin::guest::Guest;
use bindings::pylon::plugin::{
    clock, kv,
    types::{
        Header, HeaderOp, Needs, Request, RequestAction, RequestEdits, Response, ResponseEdits,
        ResponseView,
    },
};
use serde::Deserialize;

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    attack: String,
    n: Option<u64>,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
    static WRITES: RefCell<u64> = const { RefCell::new(0) };
}

struct Attacker;

fn config() -> Config {
    CONFIG.with(|c| c.borrow().clone())
}

fn header(name: String, value: &[u8]) -> Header {
    Header {
        name,
        value: value.to_vec(),
    }
}

fn edits(headers: Vec<HeaderOp>) -> RequestEdits {
    RequestEdits {
        headers,
        path: None,
        query: None,
        upstream: None,
        body: None,
        response_headers: vec![],
    }
}

fn flood(n: u64) -> Vec<HeaderOp> {
    (0..n)
        .map(|i| HeaderOp::Append(header(format!("x-flood-{}", i % 64), b"v")))
        .collect()
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, buf: &mut [u8; 64]) -> u64 {
    buf[(depth % 64) as usize] = depth as u8;
    let mut local = *buf;
    std::hint::black_box(&mut local);
    recurse(depth + 1, &mut local) + u64::from(local[0])
}

impl Guest for Attacker {
    fn configure(text: String) -> Result<Needs, String> {
        let parsed: Config =
            serde_json::from_str(&text).map_err(|e| format!("invalid attacker config: {e}"))?;
        let attack = parsed.attack.clone();
        CONFIG.with(|c| *c.borrow_mut() = parsed);
        let later = attack == "configure-later"
            && kv::incr("configures", 1, None).map_err(|e| format!("kv: {e:?}"))?
                > i64::try_from(CONFIG.with(|c| c.borrow().n).unwrap_or(2)).unwrap_or(i64::MAX);
        if attack == "configure-loop" || later {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        let response_phase = matches!(attack.as_str(), "trap-response" | "response-header-flood");
        Ok(Needs {
            request_phase: true,
            request_body: false,
            response_phase,
            response_body: false,
            fixed_request_headers: vec![],
            fixed_response_headers: vec![],
        })
    }

    fn on_request(_request: &Request) -> RequestAction {
        let c = config();
        match c.attack.as_str() {
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "busy" => {
                let until = clock::monotonic_ns() + c.n.unwrap_or(40) * 1_000_000;
                while clock::monotonic_ns() < until {
                    for _ in 0..1000 {
                        std::hint::black_box(0u64);
                    }
                }
                RequestAction::Continue(edits(vec![]))
            }
            "membomb" => {
                let mut blocks: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut block = vec![0u8; 1 << 20];
                    for i in (0..block.len()).step_by(4096) {
                        block[i] = 1;
                    }
                    blocks.push(std::hint::black_box(block));
                }
            }
            "recurse" => {
                let mut buf = [0u8; 64];
                let n = recurse(0, &mut buf);
                RequestAction::Continue(edits(vec![HeaderOp::Set(header(
                    "x-depth".into(),
                    n.to_string().as_bytes(),
                ))]))
            }
            "big-response" => RequestAction::Respond(Response {
                status: 200,
                headers: vec![],
                body: Some(vec![b'x'; (c.n.unwrap_or(40) << 20) as usize]),
            }),
            "header-flood" => RequestAction::Continue(edits(flood(c.n.unwrap_or(100_000)))),
            "respond-headers" => RequestAction::Respond(Response {
                status: 200,
                headers: (0..c.n.unwrap_or(100_000))
                    .map(|i| header(format!("x-flood-{}", i % 64), b"v"))
                    .collect(),
                body: None,
            }),
            "kv-flood" => {
                let value = vec![7u8; 1 << 20];
                let mut refused = 0;
                for _ in 0..c.n.unwrap_or(8) {
                    let key = WRITES.with(|w| {
                        *w.borrow_mut() += 1;
                        format!("flood-{}", *w.borrow())
                    });
                    if kv::set(&key, &value, None).is_err() {
                        refused += 1;
                    }
                }
                RequestAction::Continue(edits(vec![HeaderOp::Set(header(
                    "x-kv-refused".into(),
                    refused.to_string().as_bytes(),
                ))]))
            }
            "configure-later" => {
                let count = match kv::get("configures") {
                    Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
                    _ => "?".to_owned(),
                };
                RequestAction::Continue(edits(vec![HeaderOp::Set(header(
                    "x-configures".into(),
                    count.as_bytes(),
                ))]))
            }
            _ => RequestAction::Continue(edits(vec![])),
        }
    }

    fn on_response(_request: &Request, _response: &ResponseView) -> ResponseEdits {
        let c = config();
        match c.attack.as_str() {
            "trap-response" => panic!("attacker: trap in the response phase"),
            "response-header-flood" => ResponseEdits {
                status: None,
                headers: flood(c.n.unwrap_or(100_000)),
                body: None,
            },
            _ => ResponseEdits {
                status: None,
                headers: vec![],
                body: None,
            },
        }
    }
}

bindings::export!(Attacker with_types_in bindings);
