//! Graceful shutdown of the real binary on SIGTERM and SIGINT.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use crate::harness::{Upstream, client};

/// The real binary: SIGTERM while a slow request (the upstream takes 1s)
/// is in flight. New connections are refused at once, the slow request
/// still completes with 200, and the process exits 0.
#[test]
fn sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_zero() {
    drains_on_signal("TERM");
}

/// The same for SIGINT (Ctrl-C).
#[test]
fn sigint_drains_in_flight_requests_and_exits_zero() {
    drains_on_signal("INT");
}

fn drains_on_signal(signal: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let tx = std::sync::Mutex::new(tx);
    let up = rt.block_on(Upstream::with(move |_| {
        let _ = tx.lock().unwrap().send(());
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Response::new(Full::new(Bytes::from_static(b"slow but done")))
        }
    }));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pylon.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\ncache-dir = \"\"\n[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
            up.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pylon"))
        .env("RUST_LOG", "info")
        .args(["run", "--grace", "10s", "--config"])
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (ltx, lrx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = ltx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = lrx
            .recv_timeout(deadline - Instant::now())
            .expect("pylon never said it was listening");
        if line.contains("listening") {
            break;
        }
    }
    let url = format!("http://127.0.0.1:{port}/slow");
    let slow = rt.spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the slow request never reached the upstream");
    let sent_at = Instant::now();
    let ok = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());

    // The listener closes while the slow request is still in flight.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(
                    sent_at.elapsed() < Duration::from_millis(800),
                    "still accepting after SIG{signal}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    if slow.is_finished() {
        let early = rt.block_on(slow).unwrap();
        let exit = child.wait();
        let log: Vec<String> =
            std::iter::from_fn(|| lrx.recv_timeout(Duration::from_secs(2)).ok()).collect();
        panic!(
            "the slow request ended before the listener closed: {early:?}\nexit: {exit:?}\n{}",
            log.join("\n")
        );
    }

    let status = rt
        .block_on(slow)
        .unwrap()
        .expect("in-flight request failed during shutdown");
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "pylon did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}
