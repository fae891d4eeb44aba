//! The plugin kit as an author uses it: `pylon plugin new` in each
//! language, then `build` and `test` on the project exactly as generated
//! (it must pass its own cases unchanged); a failing case's diff and exit
//! status; a component built against a contract this pylon does not serve;
//! and `test COMPONENT CASES` with mocked kv and outbound HTTP, a looping
//! plugin and a memory bomb, against the repository's test guests.
//!
//! The kit installs its pinned tools (componentize-py, componentize-js,
//! wasm-tools) into `build/kit-tools` here, once; Rust projects build into
//! `target/plugin-kit` so later runs are incremental.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::harness::{plugin, root};

fn pylon() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pylon"));
    c.env("PYLON_KIT_TOOLS", root().join("build/kit-tools"))
        .env("CARGO_TARGET_DIR", kit_target_dir())
        .env("RUST_LOG", "warn");
    c
}

/// Beside the test binaries: the generated Rust projects share one target
/// dir, so only the first run compiles wit-bindgen.
fn kit_target_dir() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_pylon"));
    exe.parent()
        .and_then(Path::parent)
        .map_or_else(|| root().join("target"), Path::to_owned)
        .join("plugin-kit")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("pylon runs");
    eprintln!(
        "{cmd:?}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `new` + `build` + `test` for one language; returns the project folder.
fn new_build_test(tmp: &Path, lang: &str) -> PathBuf {
    let name = format!("tenant-tier-{lang}");
    let out = run(pylon()
        .args(["plugin", "new", &name, "--lang", lang])
        .current_dir(tmp));
    assert!(out.status.success(), "new failed");
    let dir = tmp.join(&name);
    for file in [
        "README.md",
        "cases.toml",
        "wit/plugin.wit",
        "pylon-plugin.toml",
    ] {
        assert!(dir.join(file).is_file(), "new wrote no {file}");
    }

    let out = run(pylon().args(["plugin", "build"]).current_dir(&dir));
    assert!(out.status.success(), "build failed");
    assert!(
        stdout(&out).contains("loads as pylon:plugin@0.4.1"),
        "{}",
        stdout(&out)
    );
    assert!(dir.join(format!("build/{name}.wasm")).is_file());

    let out = run(pylon().args(["plugin", "test"]).current_dir(&dir));
    let text = stdout(&out);
    assert!(out.status.success(), "the generated cases fail: {text}");
    assert!(text.contains("5 passed, 0 failed"), "{text}");
    assert!(
        text.contains("ok   answers 401 to a request without x-tenant"),
        "{text}"
    );
    dir
}

#[test]
fn rust_plugin_from_new_builds_and_passes_its_cases_and_a_wrong_case_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_build_test(tmp.path(), "rust");

    // A wrong expectation: exit status 1, and the case says what differed.
    let cases = std::fs::read_to_string(dir.join("cases.toml")).unwrap();
    let wrong = cases.replacen(
        "headers = { x-tier = \"gold\", x-tenant = \"acme\" }",
        "headers = { x-tier = \"platinum\", x-tenant = \"acme\" }",
        1,
    );
    assert_ne!(wrong, cases, "the template's first case changed");
    std::fs::write(dir.join("cases.toml"), wrong).unwrap();
    let out = run(pylon().args(["plugin", "test"]).current_dir(&dir));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL tags a request that names its tenant")
            && text.contains(r#"request header x-tier: expected ["platinum"], got ["gold"]"#)
            && text.contains("4 passed, 1 failed"),
        "{text}"
    );

    // Built against a contract version this pylon does not serve: the build
    // fails and says which version it was built against and which to use.
    let wit = std::fs::read_to_string(dir.join("wit/plugin.wit")).unwrap();
    std::fs::write(
        dir.join("wit/plugin.wit"),
        wit.replace("package pylon:plugin@0.4.1;", "package pylon:plugin@0.9.0;"),
    )
    .unwrap();
    let out = run(pylon().args(["plugin", "build"]).current_dir(&dir));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("built against pylon:plugin@0.9.0, this pylon serves 0.4.1"),
        "{err}"
    );
}

#[test]
fn python_plugin_from_new_builds_and_passes_its_cases() {
    let tmp = tempfile::tempdir().unwrap();
    new_build_test(tmp.path(), "python");
}

#[test]
fn js_plugin_from_new_builds_and_passes_its_cases() {
    let tmp = tempfile::tempdir().unwrap();
    new_build_test(tmp.path(), "js");
}

#[test]
fn c_plugin_from_new_builds_and_passes_its_cases_without_importing_wasi() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_build_test(tmp.path(), "c");
    // Nothing in the template needs WASI, so the component imports none
    // (the reactor adapter is only linked in for what the code uses).
    let out = run(pylon().args(["plugin", "build"]).current_dir(&dir));
    assert!(out.status.success());
    assert!(!stdout(&out).contains("imports WASI"), "{}", stdout(&out));

    // The committed bindings are the served contract's: a C plugin can
    // read the client certificate (here a DNS name `tenant.test` stands in
    // for the x-tenant header).
    let source = std::fs::read_to_string(dir.join("src/plugin.c")).unwrap();
    let patched = source.replacen(
        "  if (has_tenant) plugin_list_u8_free(&tenant);\n",
        "  if (has_tenant) plugin_list_u8_free(&tenant);\n\
         \x20 pylon_plugin_types_client_identity_t id;\n\
         \x20 if (!has_tenant && pylon_plugin_types_method_request_client_identity(request, &id)) {\n\
         \x20   has_tenant = id.dns_names.len > 0 && id.dns_names.ptr[0].len == 11 &&\n\
         \x20                memcmp(id.dns_names.ptr[0].ptr, \"tenant.test\", 11) == 0;\n\
         \x20   pylon_plugin_types_client_identity_free(&id);\n\
         \x20 }\n",
        1,
    );
    assert_ne!(patched, source, "the template's on-request changed");
    std::fs::write(dir.join("src/plugin.c"), patched).unwrap();
    let mut cases = std::fs::read_to_string(dir.join("cases.toml")).unwrap();
    cases.push_str(
        r#"
[[case]]
name = "a client certificate for tenant.test stands for x-tenant"
request = { path = "/orders", client-identity = { subject = "CN=t", dns-names = ["tenant.test"] } }
expect = { action = "continue", headers = { x-tier = "free" } }

[[case]]
name = "a client certificate for another name does not"
request = { path = "/orders", client-identity = { subject = "CN=t", dns-names = ["tenant.tesT"] } }
expect = { action = "respond", status = 401 }
"#,
    );
    std::fs::write(dir.join("cases.toml"), cases).unwrap();
    let out = run(pylon().args(["plugin", "build"]).current_dir(&dir));
    assert!(out.status.success(), "{}", stdout(&out));
    let out = run(pylon().args(["plugin", "test"]).current_dir(&dir));
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("7 passed, 0 failed"), "{text}");
}

#[test]
fn new_refuses_a_bad_name_and_an_existing_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(pylon()
        .args(["plugin", "new", "../escape", "--lang", "rust"])
        .current_dir(tmp.path()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid plugin name"));
    assert!(!tmp.path().parent().unwrap().join("escape").exists());

    std::fs::create_dir(tmp.path().join("taken")).unwrap();
    std::fs::write(tmp.path().join("taken/keep"), "x").unwrap();
    let out = run(pylon()
        .args(["plugin", "new", "taken", "--lang", "python"])
        .current_dir(tmp.path()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

/// `pylon plugin test COMPONENT CASES` with a case file written here.
fn test_component(guest: &str, cases: &str) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cases.toml");
    std::fs::write(&file, cases).unwrap();
    run(pylon().args(["plugin", "test", &plugin(guest)]).arg(&file))
}

#[test]
fn test_cases_see_mocked_kv_and_record_its_writes() {
    let out = test_component(
        "kv-counter",
        r#"
[plugin]
capabilities = ["kv"]

[[case]]
name = "counts on from the stored value"
kv = { hits = "41" }
expect = { action = "respond", status = 200, body = "42" }
expect_kv = { hits = "42" }

[[case]]
name = "each case starts from its own store"
expect = { action = "respond", status = 200, body = "1" }
expect_kv = { hits = "1" }

[[case]]
name = "a wrong expected write fails"
expect = { action = "respond", status = 200 }
expect_kv = { hits = "7" }
"#,
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("ok   counts on from the stored value"),
        "{text}"
    );
    assert!(
        text.contains("ok   each case starts from its own store"),
        "{text}"
    );
    assert!(
        text.contains(r#"kv "hits": expected "7", got Some("1")"#),
        "{text}"
    );
    assert!(text.contains("2 passed, 1 failed"), "{text}");
}

#[test]
fn test_cases_answer_outbound_http_from_canned_responses() {
    let out = test_component(
        "fanout",
        r#"
[plugin]
capabilities = ["http"]
http-upstreams = ["users", "orders"]

[[case]]
name = "both upstreams answered from the case"
config = { upstreams = ["users", "orders"], path = "/7" }
http = [
  { upstream = "users", path = "/7", body = "ann" },
  { upstream = "orders", path = "/7", status = 404, body = "none" },
]
expect = { action = "respond", status = 200, body = '[["users",200,"ann"],["orders",404,"none"]]' }

[[case]]
name = "a call with no canned answer fails the case"
config = { upstreams = ["users"], path = "/unlisted" }
expect = { action = "respond", status = 200 }
"#,
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("ok   both upstreams answered from the case"),
        "{text}"
    );
    assert!(
        text.contains("outbound requests with no canned answer in `http`: GET users/unlisted"),
        "{text}"
    );
}

#[test]
fn a_looping_or_memory_hungry_plugin_fails_its_case_and_the_run_goes_on() {
    let out = test_component(
        "spin",
        r#"
[plugin]
deadline = "100ms"

[[case]]
name = "loops"
expect = { action = "continue" }

[[case]]
name = "loops again"
expect = { action = "continue" }
"#,
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("exceeded its deadline"), "{text}");
    assert!(text.contains("0 passed, 2 failed"), "{text}");

    let out = test_component(
        "membomb",
        r#"
[plugin]
memory = "8MiB"

[[case]]
name = "allocates without end"
expect = { action = "respond", status = 200 }
"#,
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL allocates without end"), "{text}");
    assert!(text.contains("0 passed, 1 failed"), "{text}");
}

#[test]
fn a_malformed_case_file_is_refused_with_its_path() {
    let out = test_component(
        "headers",
        "[[case]]\nname = \"x\"\nexpect = { action = \"continue\", heders = {} }\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cases.toml") && err.contains("heders"),
        "{err}"
    );
}

#[test]
fn a_case_gives_the_request_a_client_identity_a_plugin_decides_on() {
    let sha = "ab".repeat(32);
    let out = test_component(
        "inspector",
        &format!(
            r#"
[[case]]
name = "an allowed client certificate goes on"
config = {{ respond = false, allow-client-dns = ["alice.test"] }}
request = {{ client-identity = {{ subject = "CN=alice,O=Acme", dns-names = ["alice.example", "alice.test"] }} }}
expect = {{ action = "continue" }}

[[case]]
name = "a certificate without an allowed name is refused"
config = {{ respond = false, allow-client-dns = ["alice.test"] }}
request = {{ client-identity = {{ subject = "CN=bob", dns-names = ["bob.test"] }} }}
expect = {{ action = "respond", status = 403, body = "client certificate not allowed" }}

[[case]]
name = "no certificate is refused"
config = {{ respond = false, allow-client-dns = ["alice.test"] }}
request = {{ https = true }}
expect = {{ action = "respond", status = 403 }}

[[case]]
name = "shows what it read"
request = {{ client-identity = {{ subject = "CN=alice,O=Acme", dns-names = ["alice.test"], uris = ["spiffe://acme/alice"], sha256 = "{sha}", not-after = 2208988800 }} }}
expect = {{ action = "respond", status = 200, body = "(in the failure)" }}

[[case]]
name = "a certificate only comes over TLS"
request = {{ https = false, client-identity = {{ subject = "CN=alice" }} }}
expect = {{ action = "respond", status = 200 }}
"#
        ),
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for line in [
        "ok   an allowed client certificate goes on",
        "ok   a certificate without an allowed name is refused",
        "ok   no certificate is refused",
        "FAIL shows what it read",
        "FAIL a certificate only comes over TLS",
        "a client certificate comes only over TLS",
        "3 passed, 2 failed",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    // The failing case prints the inspector's JSON: every field as given.
    let expected = format!(
        r#"\"client_identity\":{{\"dns_names\":[\"alice.test\"],\"not_after\":2208988800,\"sha256\":\"{sha}\",\"subject\":\"CN=alice,O=Acme\",\"uris\":[\"spiffe://acme/alice\"]}}"#
    );
    assert!(text.contains(&expected), "{expected} in:\n{text}");
    assert!(text.contains(r#"\"scheme\":\"https\""#), "{text}");
}
