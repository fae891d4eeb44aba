//! Property test of the configuration parser (issue 15): whatever text it
//! is given, TOML-shaped or not, it answers with a configuration or a list
//! of problems, never a panic, and a configuration it accepts builds a
//! router. Failures are kept in `proptest-regressions/` and replayed first.

use std::path::Path;

use proptest::prelude::*;

/// Fragments of real configurations, including values at and past limits.
const PIECES: &[&str] = &[
    "[[listeners]]\n",
    "address = \"127.0.0.1:0\"\n",
    "address = \"[::1]:99999\"\n",
    "max-header-size = \"",
    "header-timeout = \"",
    "[[routes]]\n",
    "id = \"r\"\n",
    "id = \"R!\"\n",
    "path-prefix = \"",
    "path = \"",
    "/admin/",
    "/%61dmin",
    "/a/../b",
    "/{a}/{*b}",
    "/{*b}/x",
    "{",
    "}",
    "\"\n",
    "rewrite = \"/{a}\"\n",
    "strip-prefix = true\n",
    "host = \"*.example.com\"\n",
    "methods = [\"GET\", \"get\"]\n",
    "upstream = \"u\"\n",
    "timeout = \"",
    "1s",
    "0s",
    "18446744073709551615h",
    "99999999999999999999KiB",
    "1.5GiB",
    "-1",
    "[upstreams.u]\n",
    "targets = [\"127.0.0.1:1\"]\n",
    "targets = []\n",
    "[path-normalization]\n",
    "normalize = false\n",
    "merge-slashes = true\n",
    "escaped-slashes = \"",
    "backslashes = \"",
    "decode",
    "keep",
    "reject",
    "[plugins.p]\n",
    "component = \"p.wasm\"\n",
    "pool-size = 0\n",
    "recycle-memory-percent = 0\n",
    "memory = \"",
    "[[routes.plugins]]\n",
    "plugin = \"p\"\n",
    "config = { a = 1 }\n",
    "[runtime]\n",
    "max-instances = 0\n",
    "workers = 4096\n",
    "max-memory = \"",
    "[admin]\n",
    "token = \"short\"\n",
    "\n",
    "=",
    "\"",
    "é",
    "\u{0}",
];

fn tomlish() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(PIECES), 0..40).prop_map(|p| p.concat())
}

fn check(text: &str) {
    if let Ok(cfg) = super::parse(text, Path::new("p.toml"), Path::new(".")) {
        let router = crate::router::Router::new(&cfg.routes);
        let _ = router.route(Some("x.example.com"), &http::Method::GET, "/admin/x");
    }
}

proptest! {
    #![proptest_config(crate::router::properties::cases(2000))]

    #[test]
    fn config_parser_never_panics_on_tomlish_text(text in tomlish()) {
        check(&text);
    }

    #[test]
    fn config_parser_never_panics_on_any_text(text in any::<String>()) {
        check(&text);
    }
}

/// Every input of the committed fuzz corpus (`fuzz/corpus/config`) through
/// the `config` fuzz target's check: the short fuzz run of every test run.
#[test]
fn committed_fuzz_corpus_replays_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/config");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        if let Ok(text) = std::str::from_utf8(&data) {
            check(text);
        }
        inputs += 1;
    }
    assert!(inputs >= 100, "{inputs} inputs in {}", dir.display());
}
