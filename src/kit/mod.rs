//! The plugin kit behind `pylon plugin new|build|test`: start a plugin
//! project in Rust, Python, JavaScript or C from a template embedded in the
//! binary ([`new`]), build it into a component and check it against the
//! contract this pylon serves ([`build`]), and run its test cases through
//! the gateway's own plugin runtime without a gateway ([`cases`]).
//!
//! Not for the gateway itself: nothing on the request path uses this
//! module, and it uses only the public API of [`crate::plugin`].
//!
//! A project is a folder with a [`MANIFEST`] (`pylon-plugin.toml`: name and
//! language), `wit/plugin.wit`, the language's sources, and `cases.toml`.
//! `pylon plugin build` writes `build/<name>.wasm`.

pub mod build;
pub mod cases;
pub mod cli;
pub mod new;
mod templates;

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The manifest file every kit project has at its root.
pub const MANIFEST: &str = "pylon-plugin.toml";

/// The test-case file `pylon plugin test` reads by default.
pub const CASES: &str = "cases.toml";

/// A language the kit can start and build a plugin in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// Rust with wit-bindgen, built by cargo for `wasm32-wasip2`.
    Rust,
    /// Python, built by componentize-py.
    Python,
    /// JavaScript, built by componentize-js.
    Js,
    /// C, bindings from wit-bindgen, built by clang with wasi-libc and
    /// wrapped into a component by wasm-tools.
    C,
}

impl Lang {
    /// The name used on the command line and in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
        }
    }
}

/// `pylon-plugin.toml`: what `build` and `test` need to know of a project.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's name (also the component's file name).
    pub name: String,
    /// The language it is written in.
    pub lang: Lang,
}

impl Manifest {
    /// Read `DIR/pylon-plugin.toml`.
    pub fn load(dir: &Path) -> Result<Self, KitError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|source| KitError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| KitError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        check_name(&manifest.name).map_err(|message| KitError::Manifest { path, message })?;
        Ok(manifest)
    }

    /// Where `build` writes the component: `DIR/build/<name>.wasm`.
    pub fn component(&self, dir: &Path) -> PathBuf {
        dir.join("build").join(format!("{}.wasm", self.name))
    }
}

/// The longest plugin name: it becomes a folder, a crate and a file name.
const MAX_NAME: usize = 64;

/// A plugin name is a lowercase ASCII identifier with dashes: it names the
/// project folder, the Cargo crate, the npm package and the component file,
/// so it must be valid for all of them.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid plugin name {name:?}: use 1 to {MAX_NAME} lowercase letters, digits and \
             single dashes, starting with a letter (e.g. `tenant-tier`)"
        ))
    }
}

/// Where the kit installs the language tools it needs (componentize-py,
/// componentize-js, wasm-tools, the WASI adapter), shared by every project:
/// `$PYLON_KIT_TOOLS`, else `$XDG_CACHE_HOME/pylon/kit`, else
/// `~/.cache/pylon/kit`.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PYLON_KIT_TOOLS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("pylon").join("kit")
}

/// What can go wrong in the kit. Each variant names the file, tool or case
/// it concerns.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A plugin name that cannot name a project.
    #[error("{0}")]
    BadName(String),
    /// `new` would overwrite something.
    #[error("{} already exists; choose another name or remove it", path.display())]
    Exists {
        /// The folder.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The manifest is malformed.
    #[error("{}: {message}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tool the language needs is missing and the kit cannot install it.
    #[error("{tool} is needed to build {lang} plugins and was not found: {hint}")]
    ToolMissing {
        /// The tool.
        tool: &'static str,
        /// The language.
        lang: &'static str,
        /// How to get it.
        hint: String,
    },
    /// A build or install step failed (its output was shown).
    #[error("`{command}` failed ({status})")]
    StepFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
    },
    /// A build or install step could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The built component is not one this pylon can load.
    #[error("{}: does not fit the contract this pylon serves: {detail}", path.display())]
    Contract {
        /// The component.
        path: PathBuf,
        /// What is wrong, and what to do about it.
        detail: String,
    },
    /// The test-case file is malformed.
    #[error("{}: {message}", path.display())]
    Cases {
        /// The case file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The plugin runtime could not start.
    #[error("cannot start the plugin runtime: {0}")]
    Runtime(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_must_fit_every_ecosystem() {
        for good in ["a", "tenant-tier", "auth2", "x-1-y"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "Tenant", "1abc", "-a", "a-", "a--b", "a_b", "a.b", "../x", "a/b", "é",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"a".repeat(MAX_NAME + 1)).is_err());
    }

    #[test]
    fn manifest_rejects_unknown_keys_and_languages() {
        assert!(toml::from_str::<Manifest>("name = \"a\"\nlang = \"rust\"\n").is_ok());
        assert!(toml::from_str::<Manifest>("name = \"a\"\nlang = \"cobol\"\n").is_err());
        assert!(toml::from_str::<Manifest>("name = \"a\"\nlang = \"c\"\nx = 1\n").is_err());
    }
}
