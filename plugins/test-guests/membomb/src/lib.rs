//! Test guest `membomb`: `on-request` allocates 1 MiB blocks and writes to
//! every page of each, so the memory is really committed.
//!
//! Config: `{"mib": N}` stops after N MiB and answers `200` with body
//! `allocated N MiB`; without `mib` it never stops, so only the host's
//! memory limit ends it (an allocation failure aborts, which traps).

use pylon_plugin_sdk::{Needs, Plugin, Request, RequestAction, Response, config, export_plugin};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    mib: Option<u64>,
}

struct Membomb {
    mib: Option<u64>,
}

const MIB: usize = 1 << 20;

impl Plugin for Membomb {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let Config { mib } = config::parse(text)?;
        Ok((Membomb { mib }, Needs::none()))
    }

    fn on_request(&mut self, _req: &Request) -> RequestAction {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        while self.mib.is_none_or(|limit| (blocks.len() as u64) < limit) {
            let mut block = vec![0u8; MIB];
            // Fresh pages may be zero already and never written by the
            // allocator: one write per 4 KiB page commits the whole block.
            for i in (0..MIB).step_by(4096) {
                block[i] = (blocks.len() as u8).wrapping_add(1);
            }
            blocks.push(std::hint::black_box(block));
        }
        let n = std::hint::black_box(&blocks).len();
        Response::text(200, format!("allocated {n} MiB")).into()
    }
}

export_plugin!(Membomb);
