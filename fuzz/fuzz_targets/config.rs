//! Fuzz the configuration parser: any text gives a configuration or a list
//! of problems, never a panic, and an accepted configuration builds a
//! router that routes.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pylon::{config, router::Router};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = config::parse(text, Path::new("fuzz.toml"), Path::new(".")) {
        let router = Router::new(&cfg.routes);
        let _ = router.route(Some("a.example.com"), &http::Method::GET, "/admin/x");
    }
});
