//! Property tests of the path normaliser and the router (issue 15): the
//! normaliser never panics, is idempotent and borrows exactly the paths it
//! leaves unchanged; no accepted path routes differently once an upstream
//! applies its own, more lenient, normalisation; the router never panics;
//! the most specific route wins whatever the file order, and it matches
//! the request on its own (issue 19.9, in `ranking`).
//! Failures are kept in `proptest-regressions/` and replayed first.

use std::{borrow::Cow, path::Path};

use http::Method;
use proptest::prelude::*;

use super::{
    Router,
    path::{PathNormalization, SlashAction, normalize},
};
use crate::config;

mod ranking;

/// `default_cases` cases, or `PROPTEST_CASES` when set (for longer runs).
pub(crate) fn cases(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn any_action() -> impl Strategy<Value = SlashAction> {
    prop_oneof![
        Just(SlashAction::Keep),
        Just(SlashAction::Reject),
        Just(SlashAction::Decode)
    ]
}

fn any_opts() -> impl Strategy<Value = PathNormalization> {
    (any::<bool>(), any::<bool>(), any_action(), any_action()).prop_map(
        |(normalize, merge_slashes, escaped_slashes, backslashes)| PathNormalization {
            normalize,
            merge_slashes,
            escaped_slashes,
            backslashes,
        },
    )
}

/// Pieces an attacker spells paths with.
const PIECES: &[&str] = &[
    "/",
    "//",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2e%2E",
    ".%2e",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "%61",
    "%61dmin",
    "adm%69n",
    "%41",
    "%7e",
    "%25",
    "%252e",
    "%2561dmin",
    "%",
    "%z",
    "%4",
    "%00",
    "%C3%A9",
    "é",
    "admin",
    "public",
    "users",
    "a",
    " ",
    "?",
    "#",
    ";",
    "~",
    "v1",
    "files",
    "x",
    "api",
    "exact",
    "/v1/bob/files",
    "[::1]",
];

fn pathish() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        proptest::collection::vec(proptest::sample::select(PIECES), 0..12),
    )
        .prop_map(|(slash, pieces)| {
            let mut s = if slash {
                String::from("/")
            } else {
                String::new()
            };
            for p in pieces {
                s.push_str(p);
            }
            s
        })
}

/// Segments for paths an upstream could resolve to `/admin/...`.
const SEGMENTS: &[&str] = &[
    "admin",
    "public",
    "users",
    "",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    ".%2e",
    "%2e.",
    "%61",
    "%61dmin",
    "adm%69n",
    "%2f",
    "%2F",
    "admin%2fusers",
    "%5c",
    "\\",
    "admin\\users",
    "%252e%252e",
    "%2561dmin",
    "%2e%2e%2fadmin",
    "x",
];

fn segmented() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(SEGMENTS), 1..8).prop_map(|segs| {
        let mut s = String::new();
        for seg in segs {
            s.push('/');
            s.push_str(seg);
        }
        s
    })
}

fn check_normalizer(input: &str, opts: &PathNormalization) -> Result<(), TestCaseError> {
    match normalize(input, opts) {
        Err(_) => {}
        Ok(Cow::Borrowed(n)) => prop_assert_eq!(n, input),
        Ok(Cow::Owned(n)) => {
            // Only a path that changes is copied.
            prop_assert_ne!(&n, input);
            prop_assert!(n.len() <= input.len(), "{n:?} longer than {input:?}");
            prop_assert!(n.starts_with('/'));
            let again = normalize(&n, opts);
            prop_assert!(
                matches!(again, Ok(Cow::Borrowed(_))),
                "not idempotent: {input:?} -> {n:?} -> {again:?}"
            );
        }
    }
    Ok(())
}

/// How a lenient upstream (nginx's `location` matching, or a server that
/// also splits on `\`) reads a path: every escape decoded once, `\` as `/`,
/// slashes merged, dot segments resolved. `None` where it would refuse.
fn upstream_view(p: &str) -> Option<String> {
    let b = p.as_bytes();
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            bytes.push(b[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(bytes).ok()?.replace('\\', "/");
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split('/').skip(1) {
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                stack.pop()?;
            }
            s => stack.push(s),
        }
    }
    let mut out = String::new();
    for s in &stack {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Some(out)
}

fn test_router(routes: &str) -> Router {
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n{routes}"
    );
    let cfg =
        config::parse(&text, Path::new("t.toml"), Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    Router::new(&cfg.routes)
}

/// A protected area under several kinds of match, and a catch-all.
fn admin_router() -> Router {
    test_router(
        "[[routes]]\nid = \"admin\"\npath-prefix = \"/admin/\"\nupstream = \"u\"\n\
         [[routes]]\nid = \"admin-exact\"\npath = \"/admin\"\nupstream = \"u\"\n\
         [[routes]]\nid = \"user\"\npath = \"/public/{name}/admin\"\nupstream = \"u\"\n\
         [[routes]]\nid = \"all\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
    )
}

/// Whether pylon and a lenient upstream agree on the route of `raw`.
fn same_route_upstream(
    router: &Router,
    raw: &str,
    opts: &PathNormalization,
) -> Result<(), TestCaseError> {
    let Ok(forwarded) = normalize(raw, opts) else {
        return Ok(());
    };
    let chosen = router
        .route(None, &Method::GET, &forwarded)
        .map(|m| m.index);
    if let Some(seen) = upstream_view(&forwarded) {
        let upstream_route = router.route(None, &Method::GET, &seen).map(|m| m.index);
        prop_assert_eq!(
            chosen,
            upstream_route,
            "{:?} routed as {:?}, but the upstream reads {:?}",
            raw,
            forwarded,
            seen
        );
    }
    Ok(())
}

const SAFE: [PathNormalization; 2] = [
    PathNormalization {
        normalize: true,
        merge_slashes: true,
        escaped_slashes: SlashAction::Reject,
        backslashes: SlashAction::Reject,
    },
    PathNormalization {
        normalize: true,
        merge_slashes: true,
        escaped_slashes: SlashAction::Decode,
        backslashes: SlashAction::Decode,
    },
];

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn normalizer_is_total_and_idempotent_on_any_string(s in any::<String>(), opts in any_opts()) {
        check_normalizer(&s, &opts)?;
    }

    #[test]
    fn normalizer_is_total_and_idempotent_on_any_bytes(
        b in proptest::collection::vec(any::<u8>(), 0..64),
        opts in any_opts(),
    ) {
        check_normalizer(&String::from_utf8_lossy(&b), &opts)?;
    }

    #[test]
    fn normalizer_is_total_and_idempotent_on_attack_paths(s in pathish(), opts in any_opts()) {
        check_normalizer(&s, &opts)?;
    }

    #[test]
    fn upstream_normalisation_never_changes_the_route(raw in segmented(), safe in 0..SAFE.len()) {
        thread_local!(static ROUTER: Router = admin_router());
        ROUTER.with(|r| same_route_upstream(r, &raw, &SAFE[safe]))?;
    }

    #[test]
    fn router_never_panics(
        host in proptest::option::of(any::<String>()),
        path in prop_oneof![any::<String>(), pathish(), segmented()],
    ) {
        thread_local!(static ROUTER: Router = test_router(
            "[[routes]]\nid = \"a\"\nhost = \"*.example.com\"\npath-prefix = \"/api\"\nstrip-prefix = true\nupstream = \"u\"\n\
             [[routes]]\nid = \"b\"\npath = \"/v1/{user}/files/{*rest}\"\nrewrite = \"/files/{user}/{rest}\"\nupstream = \"u\"\n\
             [[routes]]\nid = \"c\"\nhost = \"[::1]\"\npath = \"/x/{a}/{b}\"\nupstream = \"u\"\n\
             [[routes]]\nid = \"d\"\npath = \"/exact\"\nupstream = \"u\"\n",
        ));
        ROUTER.with(|r| {
            if let Some(m) = r.route(host.as_deref(), &Method::GET, &path) {
                assert!(m.index < 4);
            }
        });
    }
}

/// The property above can fail: with encoded slashes kept, a lenient
/// upstream reads `/admin%2Fusers` as `/admin/users` while pylon routed it
/// to the catch-all. That is why `keep` is not the default.
#[test]
fn keeping_encoded_slashes_lets_a_lenient_upstream_disagree() {
    let keep = PathNormalization {
        escaped_slashes: SlashAction::Keep,
        ..PathNormalization::default()
    };
    let router = admin_router();
    assert!(same_route_upstream(&router, "/admin%2fusers", &keep).is_err());
    for opts in &SAFE {
        assert!(same_route_upstream(&router, "/admin%2fusers", opts).is_ok());
    }
}

#[test]
fn upstream_view_reads_paths_like_nginx() {
    assert_eq!(
        upstream_view("/public/%2e%2e/%61dmin//users").as_deref(),
        Some("/admin/users")
    );
    assert_eq!(upstream_view("/a/%252e").as_deref(), Some("/a/%2e"));
    assert_eq!(upstream_view("/a/..").as_deref(), Some("/"));
    assert_eq!(upstream_view("/.."), None);
}

/// Every input of the committed fuzz corpus (`fuzz/corpus/path_router`,
/// read as the `path_router` fuzz target reads it) through the same
/// checks: the short fuzz run of every test run, on stable Rust.
#[test]
fn committed_fuzz_corpus_replays_clean() {
    fn action(bits: u8) -> SlashAction {
        match bits % 3 {
            0 => SlashAction::Reject,
            1 => SlashAction::Decode,
            _ => SlashAction::Keep,
        }
    }
    let router = test_router(
        "[[routes]]\nid = \"admin\"\npath-prefix = \"/admin/\"\nupstream = \"u\"\n\
         [[routes]]\nid = \"api\"\nhost = \"*.example.com\"\npath-prefix = \"/api\"\nstrip-prefix = true\nupstream = \"u\"\n\
         [[routes]]\nid = \"files\"\npath = \"/v1/{user}/files/{*rest}\"\nrewrite = \"/files/{user}/{rest}\"\nupstream = \"u\"\n\
         [[routes]]\nid = \"all\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/path_router");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let Some((&flags, rest)) = data.split_first() else {
            continue;
        };
        let opts = PathNormalization {
            normalize: flags & 1 == 0,
            merge_slashes: flags & 2 == 0,
            escaped_slashes: action(flags >> 2),
            backslashes: action(flags >> 4),
        };
        let input = String::from_utf8_lossy(rest);
        check_normalizer(&input, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Ok(p) = normalize(&input, &opts) {
            let host = (flags & 0x40 != 0).then_some("x.example.com:8080");
            if let Some(m) = router.route(host, &Method::GET, &p) {
                let _ = normalize(&m.upstream_path, &opts);
            }
        }
        inputs += 1;
    }
    assert!(inputs >= 100, "{inputs} inputs in {}", dir.display());
}
