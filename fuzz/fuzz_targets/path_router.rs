//! Fuzz the path normaliser and the router: any bytes, any settings. The
//! normaliser must not panic, must be idempotent, must borrow exactly the
//! paths it leaves unchanged, and what it accepts must route without panic.

#![no_main]

use std::{borrow::Cow, path::Path, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use pylon::{
    config,
    router::{
        Router,
        path::{PathNormalization, SlashAction, normalize},
    },
};

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let text = "[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n\
            [[routes]]\nid = \"admin\"\npath-prefix = \"/admin/\"\nupstream = \"u\"\n\
            [[routes]]\nid = \"api\"\nhost = \"*.example.com\"\npath-prefix = \"/api\"\nstrip-prefix = true\nupstream = \"u\"\n\
            [[routes]]\nid = \"files\"\npath = \"/v1/{user}/files/{*rest}\"\nrewrite = \"/files/{user}/{rest}\"\nupstream = \"u\"\n\
            [[routes]]\nid = \"all\"\npath-prefix = \"/\"\nupstream = \"u\"\n";
        let cfg = config::parse(text, Path::new("fuzz.toml"), Path::new(".")).expect("valid");
        Router::new(&cfg.routes)
    })
}

fn action(bits: u8) -> SlashAction {
    match bits % 3 {
        0 => SlashAction::Reject,
        1 => SlashAction::Decode,
        _ => SlashAction::Keep,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let opts = PathNormalization {
        normalize: flags & 1 == 0,
        merge_slashes: flags & 2 == 0,
        escaped_slashes: action(flags >> 2),
        backslashes: action(flags >> 4),
    };
    let input = String::from_utf8_lossy(rest);
    let Ok(path) = normalize(&input, &opts) else {
        return;
    };
    if let Cow::Owned(n) = &path {
        assert_ne!(n, &input, "an unchanged path was copied");
        assert!(n.len() <= input.len());
        assert!(
            matches!(normalize(n, &opts), Ok(Cow::Borrowed(_))),
            "not idempotent: {input:?} -> {n:?}"
        );
    }
    let host = (flags & 0x40 != 0).then_some("x.example.com:8080");
    if let Some(m) = router().route(host, &http::Method::GET, &path) {
        let _ = normalize(&m.upstream_path, &opts);
    }
});
