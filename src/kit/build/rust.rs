//! Rust projects: `cargo build --release --target wasm32-wasip2` (adding
//! the target with rustup when missing); the artifact is found in cargo's
//! JSON messages, wherever the target dir is.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use super::{
    RUST_TARGET,
    tools::{command_line, missing, run, which},
};
use crate::kit::{KitError, Lang, Manifest};

pub(super) fn build(dir: &Path, manifest: &Manifest, tmp: &Path) -> Result<(), KitError> {
    if which("rustup").is_some() {
        let installed = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .current_dir(dir)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l == RUST_TARGET)
            })
            .unwrap_or(false);
        if !installed {
            run(Command::new("rustup")
                .args(["target", "add", RUST_TARGET])
                .current_dir(dir))?;
        }
    }
    if which("cargo").is_none() {
        return Err(missing(
            "cargo",
            Lang::Rust,
            "install Rust with rustup (https://rustup.rs)",
        ));
    }
    // Cargo names the artifact it built (wherever a config or the
    // environment put the target dir) in its JSON messages on stdout.
    let mut cargo = Command::new("cargo");
    cargo
        .args([
            "build",
            "--release",
            "--target",
            RUST_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(dir);
    let line = command_line(&cargo);
    eprintln!("$ {line}");
    let out = cargo
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|source| KitError::Spawn {
            command: line.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(KitError::StepFailed {
            command: line,
            status: out.status.to_string(),
        });
    }
    let crate_name = manifest.name.replace('-', "_");
    let artifact = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<CargoMessage>(l).ok())
        .filter(|m| m.reason == "compiler-artifact" && m.target.name == crate_name)
        .flat_map(|m| m.filenames)
        .rfind(|f| f.extension() == Some(OsStr::new("wasm")))
        .ok_or_else(|| KitError::StepFailed {
            command: line,
            status: format!("it reported no {crate_name}.wasm (is the [lib] a cdylib?)"),
        })?;
    std::fs::copy(&artifact, tmp).map_err(|source| KitError::Io {
        path: artifact,
        source,
    })?;
    Ok(())
}

/// The part of cargo's `--message-format=json` lines the build reads.
#[derive(serde::Deserialize)]
struct CargoMessage {
    reason: String,
    #[serde(default)]
    target: CargoTarget,
    #[serde(default)]
    filenames: Vec<PathBuf>,
}

#[derive(serde::Deserialize, Default)]
struct CargoTarget {
    #[serde(default)]
    name: String,
}
