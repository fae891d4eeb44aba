//! The plugins' own unit tests (token parsing, rate-limit algorithms, cache
//! policy, JSON edits, templates, ...), run natively in the `plugins/`
//! workspace, so that the one test command covers them too. Their
//! behaviour through the gateway is tested in `tests/integration`.
//!
//! The workspace builds for `wasm32-wasip2` by default; its unit tests run
//! on the host target instead (they never touch the host imports).

use std::{path::Path, process::Command};

#[test]
fn plugin_unit_tests_pass_natively() {
    let cargo = env!("CARGO");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    let version = String::from_utf8_lossy(&version.stdout);
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host target");
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    let out = Command::new(cargo)
        .current_dir(&plugins)
        .args(["test", "--workspace", "--quiet", "--target", host])
        // The gateway's own flags (e.g. from CI) are not meant for the plugins.
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "plugin unit tests failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let passed: usize = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    assert!(passed > 0, "no plugin unit test ran:\n{stdout}");
    println!("{passed} plugin unit tests passed");
}
