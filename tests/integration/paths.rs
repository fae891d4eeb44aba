//! The path a route's policy sees is the path that goes upstream (issue 15):
//! spellings of a protected prefix (`..`, `%2e%2e`, `%61`, `//`, `%2f`, `\`)
//! are refused or routed to the protected route, never forwarded without
//! the key; the upstream, plugins and the access log get the normalised
//! path; a plugin's rewrite is normalised too; HTTP/1.1 without `Host` is
//! refused. Requests go over raw TCP: an HTTP client library would
//! normalise the paths itself before sending them.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{TestGateway, Upstream, plugin};

const KEY: &str = "admin-live-5e1f0c3a9b";

/// Upstream `u` at `up`; route `admin` on `/admin/` behind `auth-key`,
/// then a catch-all `all` without it. `extra` goes first (top-level tables).
fn admin_gateway_toml(up: &Upstream, extra: &str) -> String {
    format!(
        r#"{extra}
[upstreams.u]
targets = ["{up}"]

[plugins.auth-key]
component = {component:?}

[[routes]]
id = "admin"
path-prefix = "/admin/"
upstream = "u"

[[routes.plugins]]
plugin = "auth-key"
config = {{ keys = [{{ consumer = "ops", sha256 = "{hash}" }}] }}

[[routes]]
id = "all"
path-prefix = "/"
upstream = "u"
"#,
        up = up.addr,
        component = plugin("auth-key"),
        hash = hex::encode(Sha256::digest(KEY.as_bytes())),
    )
}

/// Send `head` (a request head without the final blank line) with
/// `Connection: close` and return the status and the whole response.
async fn raw(gw: &TestGateway, head: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("the gateway answered within 20 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

async fn get(gw: &TestGateway, path: &str, extra_headers: &str) -> (u16, String) {
    raw(
        gw,
        &format!("GET {path} HTTP/1.1\r\nHost: gw.test{extra_headers}"),
    )
    .await
}

const BYPASSES: [&str; 7] = [
    "/public/../admin/users",
    "/public/%2e%2e/admin/users",
    "/public/%2E%2e/admin/users",
    "/%61dmin/users",
    "//admin/users",
    "/admin%2fusers",
    "/admin\\users",
];

#[tokio::test]
async fn path_spellings_of_a_protected_prefix_never_reach_the_upstream_without_the_key() {
    let up = Upstream::named("secret").await;
    let gw = TestGateway::start(&admin_gateway_toml(&up, "")).await;
    for path in BYPASSES {
        let (status, text) = get(&gw, path, "").await;
        assert!(
            status == 400 || status == 401,
            "{path} answered {status}: {text}"
        );
        assert!(!text.contains("secret"), "{path} reached the upstream");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    // Dot segments and unreserved escapes resolve to the admin route, where
    // the key lets them through as the normalised path.
    for path in &BYPASSES[..5] {
        let (status, _) = get(&gw, path, "").await;
        assert_eq!(status, 401, "{path} is routed to the protected route");
        let (status, _) = get(&gw, path, &format!("\r\nX-Api-Key: {KEY}")).await;
        assert_eq!(status, 200, "{path} with the key");
        assert_eq!(up.last().uri, "/admin/users", "{path}");
    }
    // Encoded slashes and backslashes are refused by default.
    for path in &BYPASSES[5..] {
        let (status, text) = get(&gw, path, &format!("\r\nX-Api-Key: {KEY}")).await;
        assert_eq!(status, 400, "{path}: {text}");
    }
}

#[tokio::test]
async fn decoded_slashes_route_to_the_protected_prefix() {
    let up = Upstream::named("secret").await;
    let gw = TestGateway::start(&admin_gateway_toml(
        &up,
        "[path-normalization]\nescaped-slashes = \"decode\"\nbackslashes = \"decode\"\n",
    ))
    .await;
    for (i, path) in ["/admin%2fusers", "/admin%5Cusers", "/admin\\users"]
        .into_iter()
        .enumerate()
    {
        assert_eq!(get(&gw, path, "").await.0, 401, "{path}");
        assert_eq!(
            up.seen().len(),
            i,
            "{path} reached the upstream without the key"
        );
        let (status, _) = get(&gw, path, &format!("\r\nX-Api-Key: {KEY}")).await;
        assert_eq!(status, 200, "{path} with the key");
        assert_eq!(up.last().uri, "/admin/users");
    }
}

#[tokio::test]
async fn upstream_receives_the_normalised_path_and_the_query_untouched() {
    let up = Upstream::named("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&admin_gateway_toml(
        &up,
        &format!("[access-log]\npath = {:?}\n", log.display().to_string()),
    ))
    .await;
    let cases = [
        (
            "/a/./b/../c//d%7e%2d?q=%2e%2e/%2f&x=..",
            "/a/c/d~-?q=%2e%2e/%2f&x=..",
        ),
        ("/caf%c3%a9/%2561", "/caf%C3%A9/%2561"),
        ("/x/.", "/x/"),
    ];
    for (sent, want) in cases {
        let (status, text) = get(&gw, sent, "").await;
        assert_eq!(status, 200, "{sent}: {text}");
        assert_eq!(up.last().uri, want, "{sent}");
    }
    let (status, _) = get(&gw, "/a/%zz", "").await;
    assert_eq!(status, 400, "invalid escape");
    let (status, _) = get(&gw, "/a/../../etc/passwd", "").await;
    assert_eq!(status, 400, "above the root");
    assert_eq!(up.seen().len(), cases.len());

    gw.gateway.shutdown(Duration::from_secs(5)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let paths: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        paths[0], "/a/c/d~-",
        "the access log shows the normalised path"
    );
    assert_eq!(paths[2], "/x/");
    // A refused path has no normal form: the log shows it as received.
    assert_eq!(paths[3], "/a/%zz");
}

#[tokio::test]
async fn route_strip_prefix_result_is_normalised_too() {
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"api\"\npath-prefix = \"/api\"\nstrip-prefix = true\nupstream = \"u\"\n",
        up.addr
    ))
    .await;
    assert_eq!(get(&gw, "/api/x/../y", "").await.0, 200);
    assert_eq!(up.last().uri, "/y");
    // `/api..` matches the byte prefix `/api`; what is left must not climb.
    let (status, _) = get(&gw, "/api../etc/passwd", "").await;
    assert_eq!(status, 400);
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn a_plugin_rewritten_path_is_normalised_before_it_goes_upstream() {
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{up}"]

[plugins.transform]
component = {component:?}

[[routes]]
id = "climb"
path-prefix = "/climb/"
upstream = "u"

[[routes.plugins]]
plugin = "transform"
config = {{ request = {{ path = {{ match = "^/climb/(?P<rest>.*)$", replace = "/../$rest" }} }} }}

[[routes]]
id = "r"
path-prefix = "/"
upstream = "u"

[[routes.plugins]]
plugin = "transform"
config = {{ request = {{ path = {{ match = "^/go/(?P<rest>.*)$", replace = "/public/../%61dmin//$rest" }} }} }}
"#,
        up = up.addr,
        component = plugin("transform"),
    ))
    .await;
    let (status, text) = get(&gw, "/go/users?x=1", "").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(up.last().uri, "/admin/users?x=1");
    // The plugin matches the normalised path: `/%67o` is `/go` to it.
    let (status, text) = get(&gw, "/%67o/./users", "").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(up.last().uri, "/admin/users");
    // The client's own path is checked first.
    let (status, text) = get(&gw, "/go/%2e%2e/%2e%2e/x", "").await;
    assert_eq!(status, 400, "{text}");
    // A rewrite that climbs above the root is the plugin's doing: 500, and
    // nothing goes upstream.
    let (status, text) = get(&gw, "/climb/etc/passwd", "").await;
    assert_eq!(status, 500, "{text}");
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn http11_without_host_is_400_and_http10_without_host_is_served() {
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&admin_gateway_toml(&up, "")).await;
    let (status, text) = raw(&gw, "GET /x HTTP/1.1").await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("missing Host header"), "{text}");
    assert!(up.seen().is_empty());
    let (status, text) = raw(&gw, "GET /x HTTP/1.0").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(up.last().uri, "/x");
    let (status, _) = raw(&gw, "GET /x HTTP/1.1\r\nHost: a.test").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn http2_requests_are_normalised_and_need_no_host_header() {
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&admin_gateway_toml(&up, "")).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // reqwest resolves `..` itself; `%61` and `//` it sends as they are.
    let r = h2.get(gw.url("/%61dmin//users")).send().await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 401);
    let r = h2.get(gw.url("//x/%7e")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().uri, "/x/~");
}
