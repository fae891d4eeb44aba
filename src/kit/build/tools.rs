//! What every toolchain step shares: installing the kit's pinned tools
//! into its tool folder (under a lock), finding programs on `PATH`, and
//! running a step with its output on stderr.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::kit::{KitError, Lang, tools_dir};

/// Held while tools are checked and installed: two builds at once (two
/// terminals, parallel tests) must not install into one folder together.
pub(super) fn lock_tools() -> Result<std::fs::File, KitError> {
    let dir = tools_dir();
    mkdir(&dir)?;
    let path = dir.join(".lock");
    let io = |source| KitError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::create(&path).map_err(io)?;
    file.lock().map_err(io)?;
    Ok(file)
}

/// The kit's Python venv (componentize-py, wasm-tools), created on first use.
pub(super) fn ensure_venv(lang: Lang) -> Result<PathBuf, KitError> {
    let venv = tools_dir().join("venv");
    if venv.join("bin/python").is_file() {
        return Ok(venv);
    }
    let Some(python) = which("python3") else {
        return Err(missing(
            "python3",
            lang,
            "install Python 3 with venv (Debian: `apt-get install python3 python3-venv`)",
        ));
    };
    mkdir(&tools_dir())?;
    run(Command::new(python).args(["-m", "venv"]).arg(&venv))?;
    Ok(venv)
}

/// `venv/bin/<exe>` from PyPI package `pkg` at `version`, installed unless
/// that version is there.
pub(super) fn ensure_pip_tool(
    venv: &Path,
    pkg: &str,
    version: &str,
    exe: &str,
) -> Result<PathBuf, KitError> {
    let tool = venv.join("bin").join(exe);
    let dist_info = format!("{}-{version}.dist-info", pkg.replace('-', "_"));
    let installed = std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .any(|py| py.path().join("site-packages").join(&dist_info).is_dir());
    if !(installed && tool.is_file()) {
        run(Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .arg(format!("{pkg}=={version}")))?;
    }
    Ok(tool)
}

/// The WASI preview-1 reactor adapter (shipped inside pylon, matching its
/// wasmtime), written to the tool folder under a name keyed by its hash.
pub(super) fn ensure_adapter() -> Result<PathBuf, KitError> {
    use sha2::{Digest, Sha256};
    let bytes = wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER;
    let hash = hex::encode(&Sha256::digest(bytes)[..8]);
    let path = tools_dir().join(format!("wasi_snapshot_preview1.reactor.{hash}.wasm"));
    if !path.is_file() {
        mkdir(&tools_dir())?;
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        let io = |source| KitError::Io {
            path: path.clone(),
            source,
        };
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
    }
    Ok(path)
}

pub(super) fn mkdir(dir: &Path) -> Result<(), KitError> {
    std::fs::create_dir_all(dir).map_err(|source| KitError::Io {
        path: dir.to_owned(),
        source,
    })
}

pub(super) fn missing(tool: &'static str, lang: Lang, hint: &str) -> KitError {
    KitError::ToolMissing {
        tool,
        lang: lang.as_str(),
        hint: hint.to_owned(),
    }
}

/// The first `name` on `PATH`.
pub(super) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub(super) fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run a step, its output going to ours; announce it first.
pub(super) fn run(cmd: &mut Command) -> Result<(), KitError> {
    let line = command_line(cmd);
    eprintln!("$ {line}");
    // The tools' progress belongs on stderr: stdout carries the results.
    let status = cmd
        .stdout(std::io::stderr())
        .status()
        .map_err(|source| KitError::Spawn {
            command: line.clone(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(KitError::StepFailed {
            command: line,
            status: status.to_string(),
        })
    }
}
