//! The plugin project templates (`templates/plugin/` in the repository),
//! embedded in the binary so `pylon plugin new` works anywhere. Text files
//! have `{{name}}` (and the README its language's notes) filled in; the C
//! bindings are generated files and are copied as they are.

use super::Lang;

/// One file of a template.
pub(super) struct File {
    /// Where it goes, relative to the project folder.
    pub(super) path: &'static str,
    /// Its content.
    pub(super) content: Content,
}

/// Text gets placeholders filled in; bytes are copied as they are.
pub(super) enum Content {
    Text(&'static str),
    Bytes(&'static [u8]),
}

macro_rules! text {
    ($path:literal, $src:literal) => {
        File {
            path: $path,
            content: Content::Text(include_str!(concat!("../../templates/plugin/", $src))),
        }
    };
}

/// The contract every project builds against: this pylon's own.
pub(super) const WIT: &str = include_str!("../../wit/plugin.wit");

/// The files of a `lang` project, besides `wit/plugin.wit`, the manifest and
/// the README, which every project has.
pub(super) fn files(lang: Lang) -> Vec<File> {
    let mut files = vec![text!("cases.toml", "common/cases.toml")];
    match lang {
        Lang::Rust => files.extend([
            text!("Cargo.toml", "rust/Cargo.toml"),
            text!("src/lib.rs", "rust/src/lib.rs"),
            text!(".gitignore", "rust/gitignore"),
        ]),
        Lang::Python => files.extend([
            text!("app.py", "python/app.py"),
            text!("pylon_plugin.py", "python/pylon_plugin.py"),
            text!(".gitignore", "python/gitignore"),
        ]),
        Lang::Js => files.extend([
            text!("plugin.js", "js/plugin.js"),
            text!("pylon.js", "js/pylon.js"),
            text!("package.json", "js/package.json"),
            text!(".gitignore", "js/gitignore"),
        ]),
        Lang::C => files.extend([
            text!("src/plugin.c", "c/src/plugin.c"),
            text!(".gitignore", "c/gitignore"),
            text!("gen/plugin.c", "c/gen/plugin.c"),
            text!("gen/plugin.h", "c/gen/plugin.h"),
            File {
                path: "gen/plugin_component_type.o",
                content: Content::Bytes(include_bytes!(
                    "../../templates/plugin/c/gen/plugin_component_type.o"
                )),
            },
        ]),
    }
    files
}

/// The project README, shared by every language.
pub(super) const README: &str = include_str!("../../templates/plugin/common/README.md");

/// What the README says of one language.
pub(super) struct LangNotes {
    pub(super) lang_name: &'static str,
    pub(super) source: &'static str,
    pub(super) source_notes: &'static str,
    pub(super) toolchain: &'static str,
}

/// The README notes for `lang`.
pub(super) fn notes(lang: Lang) -> LangNotes {
    match lang {
        Lang::Rust => LangNotes {
            lang_name: "Rust",
            source: "src/lib.rs",
            source_notes: "`wit_bindgen::generate!` turns `wit/plugin.wit` into Rust types and \
                           the `Guest` trait the plugin implements.",
            toolchain: "The build runs `cargo build --release --target wasm32-wasip2` (it adds \
                        the target with `rustup` when missing) and copies the component to \
                        `build/`. `CARGO_TARGET_DIR` is honoured.",
        },
        Lang::Python => LangNotes {
            lang_name: "Python",
            source: "app.py",
            source_notes: "`wit_world` is generated from `wit/` by componentize-py at build \
                           time; records are dataclasses, variants are classes such as \
                           `RequestAction_Continue`, and raising `Err(message)` from \
                           `configure` refuses the config. `pylon_plugin.py` beside it \
                           has thin shortcuts over them (`parse_config`, `header`, \
                           `respond`, `proceed`, `set_header`, `kv_get`, `log`, ...).",
            toolchain: "The build runs componentize-py (pinned; installed on first use into a \
                        venv under the kit's tool folder, `~/.cache/pylon/kit` or \
                        `$PYLON_KIT_TOOLS`; needs `python3` with `venv`). A Python component \
                        is about 18 MB and takes seconds to compile on load; the compiled form \
                        is cached.",
        },
        Lang::Js => LangNotes {
            lang_name: "JavaScript",
            source: "plugin.js",
            source_notes: "An ES module exporting `guest` with `configure`, `onRequest` and \
                           `onResponse`; records are objects with camelCase fields, variants \
                           are `{tag, val}`, `list<u8>` is a `Uint8Array`, and throwing a \
                           string from `configure` refuses the config. `pylon.js` beside it \
                           has thin shortcuts over them (`parseConfig`, `parseDuration`, \
                           `header`, `respond`, `proceed`, `setHeader`, ...): \
                           `import { respond } from \"./pylon.js\"`.",
            toolchain: "The build runs componentize-js (pinned; installed on first use with \
                        `npm` into the kit's tool folder, `~/.cache/pylon/kit` or \
                        `$PYLON_KIT_TOOLS`; needs `node` and `npm`) with \
                        `--disable http fetch-event`, so the component imports no `wasi:http`, \
                        which pylon does not provide. A JavaScript component is about 12 MB \
                        and takes seconds to compile on load; the compiled form is cached. \
                        `npm test` builds and runs the cases.",
        },
        Lang::C => LangNotes {
            lang_name: "C",
            source: "src/plugin.c",
            source_notes: "`gen/` holds the bindings wit-bindgen generated from \
                           `wit/plugin.wit` (`wit-bindgen c wit --world plugin --out-dir gen` \
                           regenerates them). Borrowed handles (`request`, `response`) must be \
                           dropped before a hook returns, and every string or list the plugin \
                           returns must be allocated with `malloc`: the bindings free them.",
            toolchain: "The build runs `clang --target=wasm32-wasi -mexec-model=reactor` with \
                        wasi-libc (on Debian: `apt-get install clang lld wasi-libc \
                        libclang-rt-dev-wasm32`), then `wasm-tools component new` with the WASI \
                        preview-1 reactor adapter (wasm-tools is installed on first use into a \
                        venv under the kit's tool folder; the adapter ships inside pylon).",
        },
    }
}
