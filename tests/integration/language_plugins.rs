//! The plugins written in Python, JavaScript and C (`plugins/python/
//! tenant-router`, `plugins/js/hmac-verify`, `plugins/c/header-guard`):
//! each one's own case file through `pylon plugin test`, then the component
//! loaded by a gateway and sent real traffic. They are built once per run
//! by `scripts/build-plugins` (through `pylon plugin build`), like every
//! plugin the tests use.
//!
//! One gateway config per plugin on purpose: every distinct route config
//! of a Python or JavaScript plugin is its own configured snapshot, which
//! compiles for seconds (the compile cache keeps it for later runs).

use std::{path::PathBuf, process::Command};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use sha2::{Digest, Sha256};

use crate::harness::{TestGateway, Upstream, client, plugin, root};

/// `pylon plugin test` on the project `plugins/<dir>`, after the build; the
/// case count must be the file's, so a file that runs nothing fails.
fn passes_its_cases(dir: &str, name: &str) {
    plugin(name);
    let project = root().join("plugins").join(dir);
    let cases = std::fs::read_to_string(project.join("cases.toml")).unwrap();
    let expected = cases.lines().filter(|l| l.trim() == "[[case]]").count();
    assert!(expected >= 10, "{dir}: only {expected} cases");
    let out = Command::new(env!("CARGO_BIN_EXE_pylon"))
        .args(["plugin", "test"])
        .arg(&project)
        .env("PYLON_KIT_TOOLS", root().join("build/kit-tools"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("pylon runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{dir}: cases failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{expected} passed, 0 failed")),
        "{dir}: {stdout}"
    );
}

#[test]
fn c_header_guard_passes_its_cases() {
    passes_its_cases("c/header-guard", "header-guard");
}

#[test]
fn python_tenant_router_passes_its_cases() {
    passes_its_cases("python/tenant-router", "tenant-router");
}

#[test]
fn js_hmac_verify_passes_its_cases() {
    passes_its_cases("js/hmac-verify", "hmac-verify");
}

/// The helper modules and the contract in the repository's plugins are the
/// ones `pylon plugin new` writes, so what the plugins prove holds for a new
/// project too.
#[test]
fn language_plugins_ship_the_templates_helpers_and_this_contract() {
    let same = |a: PathBuf, b: PathBuf| {
        assert_eq!(
            std::fs::read_to_string(&a).unwrap(),
            std::fs::read_to_string(&b).unwrap(),
            "{} differs from {}: copy it over",
            a.display(),
            b.display()
        );
    };
    let r = root();
    same(
        r.join("plugins/python/tenant-router/pylon_plugin.py"),
        r.join("templates/plugin/python/pylon_plugin.py"),
    );
    same(
        r.join("plugins/js/hmac-verify/pylon.js"),
        r.join("templates/plugin/js/pylon.js"),
    );
    for dir in ["python/tenant-router", "js/hmac-verify", "c/header-guard"] {
        same(
            r.join("plugins").join(dir).join("wit/plugin.wit"),
            r.join("wit/plugin.wit"),
        );
    }
    for file in ["plugin.c", "plugin.h"] {
        same(
            r.join("plugins/c/header-guard/gen").join(file),
            r.join("templates/plugin/c/gen").join(file),
        );
    }
}

/// An upstream that answers with its own name and records what it saw.
async fn named(name: &'static str) -> Upstream {
    Upstream::named(name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_header_guard_cleans_and_blocks_real_requests() {
    let up = named("up").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{}"]

[plugins.header-guard]
component = {:?}

[[routes]]
id = "r"
path-prefix = "/"
upstream = "u"

[[routes.plugins]]
plugin = "header-guard"
config = {{ normalize = ["x-tenant"], drop = ["x-internal-*"], block = ["x-debug-*"], max-header-bytes = 1024 }}
"#,
        up.addr,
        plugin("header-guard")
    ))
    .await;
    let c = client();

    let r = c
        .get(gw.url("/orders"))
        .header("x-tenant", "  ACME ")
        .header("x-internal-user", "root")
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-tenant"], "acme");
    assert!(seen.headers.get("x-internal-user").is_none(), "{seen:?}");
    assert_eq!(seen.headers["accept"], "text/plain");

    let r = c
        .get(gw.url("/orders"))
        .header("X-Debug-Sql", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.text().await.unwrap(), "blocked header: x-debug-sql\n");

    let before = up.seen().len();
    let r = c
        .get(gw.url("/orders"))
        .header("x-junk", "a".repeat(4096))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(
        up.seen().len(),
        before,
        "a refused request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tenant_router_sends_each_tenant_to_its_upstream() {
    let (us, eu) = (named("us").await, named("eu").await);
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.orders-us]
targets = ["{}"]

[upstreams.orders-eu]
targets = ["{}"]

[plugins.tenant-router]
component = {:?}
capabilities = ["kv", "log"]
deadline = "2s"

[[routes]]
id = "orders"
path-prefix = "/orders"
upstream = "orders-us"

[[routes.plugins]]
plugin = "tenant-router"
config = {{ tenants = {{ acme = "orders-us", globex = "orders-eu" }}, upstream-header = "x-tenant-upstream" }}
"#,
        us.addr,
        eu.addr,
        plugin("tenant-router")
    ))
    .await;
    let c = client();

    let r = c
        .get(gw.url("/orders/1"))
        .header("x-tenant", "Globex")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "eu");
    let seen = eu.last();
    assert_eq!(seen.headers["x-tenant"], "globex");
    assert_eq!(seen.headers["x-tenant-upstream"], "orders-eu");

    let r = c
        .get(gw.url("/orders/2"))
        .header("x-tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "us");

    let r = c
        .get(gw.url("/orders/3"))
        .header("x-tenant", "umbrella")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.text().await.unwrap(), "unknown tenant: umbrella\n");
    let r = c.get(gw.url("/orders/4")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(us.seen().len(), 1, "a refused request reached an upstream");
    assert_eq!(eu.seen().len(), 1);
}

/// HMAC-SHA256, written out (RFC 2104) to check the plugin against an
/// implementation that is not its own.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn signature(secret: &str, method: &str, target: &str, ts: u64, body: &[u8]) -> String {
    let canonical = format!(
        "{method}\n{target}\n{ts}\n{}",
        hex::encode(Sha256::digest(body))
    );
    hex::encode(hmac_sha256(secret.as_bytes(), canonical.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_hmac_verify_accepts_signed_requests_once_and_refuses_the_rest() {
    const SECRET: &str = "partner-a-secret-0123456789";
    let up = Upstream::with(|seen| async move {
        Response::new(Full::new(Bytes::from(format!(
            "{} bytes, key {}",
            seen.body.len(),
            seen.headers
                .get("x-signature-verified")
                .map_or("-", |v| v.to_str().unwrap())
        ))))
    })
    .await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{}"]

[plugins.hmac-verify]
component = {:?}
capabilities = ["clock", "kv"]
deadline = "2s"

[[routes]]
id = "r"
path-prefix = "/"
upstream = "u"

[[routes.plugins]]
plugin = "hmac-verify"
config = {{ keys = {{ partner-a = "{SECRET}" }}, window = "5m", reject-replays = true }}
"#,
        up.addr,
        plugin("hmac-verify")
    ))
    .await;
    let c = client();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = br#"{"item":7}"#;
    let send = |ts: u64, sig: String, body: &'static [u8]| {
        c.post(gw.url("/orders?debug=0"))
            .header("x-signature-timestamp", ts.to_string())
            .header("x-signature", sig)
            .body(body)
            .send()
    };

    let sig = signature(SECRET, "POST", "/orders?debug=0", now, body);
    let r = send(now, sig.clone(), body).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "10 bytes, key partner-a");

    // The same request again: a replay.
    let r = send(now, sig, body).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.text().await.unwrap(), "replayed signature\n");

    // Signed over another body.
    let sig = signature(SECRET, "POST", "/orders?debug=0", now, b"{}");
    let r = send(now, sig, body).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.text().await.unwrap(), "bad signature\n");

    // Correctly signed an hour ago.
    let old = now - 3600;
    let sig = signature(SECRET, "POST", "/orders?debug=0", old, body);
    let r = send(old, sig, body).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.text().await.unwrap(), "signature expired\n");

    let r = c.get(gw.url("/orders")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(up.seen().len(), 1, "a refused request reached the upstream");
}
