//! TLS listeners: the certificate picked by SNI, HTTP/2 and HTTP/1.1 by
//! ALPN, unknown names refused, bad certificates refused at start, handshake
//! floods, and the real binary reached by curl.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use tokio::net::TcpStream;

use crate::harness::{Upstream, cache_dir, start_error};

use super::{
    Issued, Pki, certs_toml, client_config, connect, gateway, gateway_with, get, metric,
    served_names,
};

/// Wait (up to 10 s) until a series reaches `at_least`: the server counts
/// a failed handshake just after the client has seen it fail.
async fn wait_metric(gw: &pylon::Gateway, series: &str, at_least: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = metric(gw, series);
        if v >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} is {v}, expected at least {at_least}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tls_listener_picks_the_certificate_by_sni_and_speaks_h2_and_http1() {
    let up = Upstream::with(|seen| async move {
        let proto = seen.headers["x-forwarded-proto"]
            .to_str()
            .unwrap()
            .to_owned();
        http::Response::new(Full::new(Bytes::from(proto)))
    })
    .await;
    let pki = Pki::new("edge");
    let api = pki.issue("api", "api", &["api.test"], false);
    let wild = pki.issue("wild", "wild", &["*.apps.test"], false);
    let (gw, addr, _) = gateway(&certs_toml(&[&api, &wild]), up.addr).await;

    for (sni, expect) in [
        ("api.test", "api.test"),
        ("shop.apps.test", "*.apps.test"),
        ("SHOP.Apps.Test", "*.apps.test"),
    ] {
        let h2 = connect(addr, sni, client_config(&pki, &[b"h2", b"http/1.1"], None))
            .await
            .unwrap();
        assert_eq!(served_names(&h2), [expect], "{sni}");
        assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (status, body) = get(h2, sni, "/x").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"https"[..]));
    }
    let h1 = connect(addr, "api.test", client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = get(h1, "api.test", "/x").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"https"[..]));
    // An unknown name gets the first certificate (which this client then
    // refuses, as it should: the name is not on it).
    let err = connect(addr, "other.test", client_config(&pki, &[], None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // A wildcard covers one label only.
    let err = connect(addr, "a.b.apps.test", client_config(&pki, &[], None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unknown_sni_can_be_refused() {
    let up = Upstream::named("up").await;
    let pki = Pki::new("edge");
    let api = pki.issue("api", "api", &["api.test"], false);
    let tls = format!("{}\nunknown-sni = \"refuse\"", certs_toml(&[&api]));
    let (gw, addr, _) = gateway(&tls, up.addr).await;
    let ok = connect(addr, "api.test", client_config(&pki, &[], None)).await;
    assert!(ok.is_ok());
    let err = connect(addr, "other.test", client_config(&pki, &[], None))
        .await
        .unwrap_err();
    // rustls answers a ClientHello it has no certificate for with an
    // access_denied alert.
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    wait_metric(
        &gw,
        "pylon_tls_handshakes_total{result=\"unknown_sni\"}",
        1.0,
    )
    .await;
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_bad_certificate_is_refused_at_start_naming_file_and_listener() {
    let pki = Pki::new("edge");
    let good = pki.issue("good", "good", &["api.test"], false);
    let other = pki.issue("other", "other", &["api.test"], false);
    let expired = pki.issue_valid("old", "old", &["api.test"], false, Some((2001, 2002)));
    let missing = Issued {
        cert: pki.dir.path().join("nope.pem"),
        key: good.key.clone(),
    };
    let mismatched = Issued {
        cert: good.cert.clone(),
        key: other.key.clone(),
    };
    for (bad, expect) in [
        (&expired, "expired on 2002-01-01"),
        (&missing, "nope.pem"),
        (&mismatched, "other.key"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pylon.toml");
        std::fs::write(
            &file,
            format!(
                "[runtime]\ncache-dir = {:?}\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\n{}\n",
                cache_dir().display().to_string(),
                certs_toml(&[bad])
            ),
        )
        .unwrap();
        let config = pylon::config::load(&file).unwrap();
        let err = start_error(config)
            .await
            .unwrap_or_else(|| panic!("started with a bad certificate ({expect})"));
        assert!(err.contains(expect), "{err}");
        assert!(err.contains("127.0.0.1:0"), "names the listener: {err}");
    }
}

#[tokio::test]
async fn a_garbage_handshake_flood_does_not_stop_other_clients() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::named("up").await;
    let pki = Pki::new("edge");
    let api = pki.issue("api", "api", &["api.test"], false);
    let (gw, addr, _) =
        gateway_with("header-timeout = \"2s\"", &certs_toml(&[&api]), up.addr).await;

    // Clients that connect and never send a byte: held only until the
    // handshake timeout (the listener's header-timeout).
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // Clients that send garbage, reconnecting as fast as they can: not TLS
    // at all, and a TLS record header announcing a huge handshake.
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    for i in 0..16 {
        let stop = stop.clone();
        flood.push(tokio::spawn(async move {
            let garbage: Vec<u8> = if i % 2 == 0 {
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64)
            } else {
                let mut g = vec![0x16, 0x03, 0x01, 0xff, 0xff];
                g.extend((0..4096u32).map(|n| (n.wrapping_mul(2_654_435_761) >> 24) as u8));
                g
            };
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    continue;
                };
                let _ = s.write_all(&garbage).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                rounds += 1;
            }
            rounds
        }));
    }
    let client = client_config(&pki, &[b"h2", b"http/1.1"], None);
    for _ in 0..20 {
        let served = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let s = connect(addr, "api.test", client.clone()).await.unwrap();
            get(s, "api.test", "/").await
        })
        .await
        .expect("a real client was not served within 10 s during the flood");
        assert_eq!(served, (StatusCode::OK, Bytes::from_static(b"up")));
    }
    stop.store(true, Ordering::Relaxed);
    let mut rounds = 0;
    for f in flood {
        rounds += f.await.unwrap();
    }
    assert!(rounds >= 16, "the flood made only {rounds} connections");
    for mut s in silent {
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a silent connection outlived the handshake timeout by 8 s");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }
    wait_metric(
        &gw,
        "pylon_tls_handshakes_total{result=\"protocol_error\"}",
        16.0,
    )
    .await;
    wait_metric(&gw, "pylon_tls_handshakes_total{result=\"timeout\"}", 50.0).await;
    wait_metric(&gw, "pylon_tls_handshakes_total{result=\"success\"}", 20.0).await;
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

/// `pylon run` from the binary, reached with curl over HTTP/2 and HTTP/1.1,
/// verifying the certificate (`--cacert`) for a name pinned with `--resolve`.
#[test]
fn curl_reaches_the_real_binary_over_https_h2_and_http1() {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
        time::{Duration, Instant},
    };
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl is not installed: skipping (.ci/run installs it)");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::with(|seen| async move {
        let proto = seen.headers["x-forwarded-proto"]
            .to_str()
            .unwrap()
            .to_owned();
        http::Response::new(Full::new(Bytes::from(proto)))
    }));
    let pki = Pki::new("edge");
    let api = pki.issue("api", "api", &["api.test"], false);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = pki.dir.path().join("pylon.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\ncache-dir = \"\"\n[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[listeners.tls]\n{}\n\
             [upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
            certs_toml(&[&api]),
            up.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pylon"))
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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "pylon never logged \"listening\""
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100))
            && line.contains("listening")
        {
            break;
        }
    }
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--max-time",
                "20",
                flag,
                "--cacert",
            ])
            .arg(&pki.ca)
            .args(["--resolve", &format!("api.test:{port}:127.0.0.1")])
            .args(["--write-out", " %{http_version}"])
            .arg(format!("https://api.test:{port}/x"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("https {version}")
        );
    }
    // openssl's client: the chain verifies for the name, ALPN picks h2.
    if Command::new("openssl").arg("version").output().is_ok() {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "api.test", "-verify_hostname", "api.test"])
            .args(["-alpn", "h2,http/1.1", "-verify_return_error", "-CAfile"])
            .arg(&pki.ca)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Verify return code: 0 (ok)") && text.contains("ALPN protocol: h2"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
