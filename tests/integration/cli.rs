//! The real `pylon` binary, run the way a user runs it: `check`, `run`,
//! reload on SIGHUP, graceful exit on SIGTERM.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{Upstream, cache_dir, client, plugin, root};

fn pylon() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pylon"));
    c.env("RUST_LOG", "info");
    c
}

#[test]
fn help_explains_every_command_and_flag() {
    let out = pylon().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "check", "demo-upstream", "--log-format"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    let out = pylon().args(["check", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--config") && text.contains("64"), "{text}");
}

#[test]
fn check_accepts_the_example_config() {
    plugin("headers");
    let out = pylon()
        .args(["check", "--config"])
        .arg(root().join("examples/pylon.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_reports_plugin_config_rejection_with_route_and_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pylon.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[runtime]
cache-dir = {cache:?}

[[listeners]]
address = "127.0.0.1:0"

[upstreams.u]
targets = ["127.0.0.1:9"]

[plugins.picky]
component = {comp:?}

[plugins.headers]
component = {headers:?}

[[routes]]
id = "orders"
path-prefix = "/"
upstream = "u"

[[routes.plugins]]
plugin = "picky"
config = {{ level = "strict" }}

[[routes.plugins]]
plugin = "headers"
config = {{ request = {{ set = {{ "bad header" = "x" }} }} }}
"#,
            cache = cache_dir().display().to_string(),
            comp = plugin("reject-config"),
            headers = plugin("headers"),
        ),
    )
    .unwrap();
    let out = pylon()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = cfg.display().to_string();
    assert!(err.contains("2 problems"), "{err}");
    assert!(
        err.contains(&format!(
            "{file}:21:1: route \"orders\", plugin \"picky\": config rejected:"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{file}:25:1: route \"orders\", plugin \"headers\": config rejected:"
        )),
        "{err}"
    );
}

/// Start `pylon run`, serve, change the config, SIGHUP, see the new route,
/// break the config, SIGHUP, keep serving, then SIGTERM exits 0.
#[test]
fn run_serves_reloads_on_sighup_and_exits_on_sigterm() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up_a = rt.block_on(Upstream::named("first"));
    let up_b = rt.block_on(Upstream::named("second"));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pylon.toml");
    let write = |target: std::net::SocketAddr, extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[runtime]\ncache-dir = \"\"\n[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[upstreams.u]\ntargets = [\"{target}\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n{extra}"
            ),
        )
        .unwrap();
    };
    write(up_a.addr, "");
    let mut child = pylon()
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100))
                && line.contains(needle)
            {
                return;
            }
        }
        panic!("pylon never logged {needle:?}");
    };
    wait_for("listening");
    let url = format!("http://127.0.0.1:{port}/");
    let get = |url: &str| {
        rt.block_on(async {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    assert_eq!(get(&url), "first");

    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args(["-s", sig, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    write(up_b.addr, "");
    signal("HUP");
    wait_for("configuration reloaded");
    assert_eq!(get(&url), "second");

    write(
        up_a.addr,
        "[[routes]]\nid = \"broken\"\nupstream = \"nope\"\n",
    );
    signal("HUP");
    wait_for("reload failed");
    assert_eq!(get(&url), "second");

    signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "pylon did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
