//! Bodies that fail or stall, in both directions: a client's malformed or
//! stalled request body is the client's error (400/408) and aborts the
//! half-sent upstream request; an upstream's stalled response body is cut.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use crate::harness::TestGateway;

/// What a raw upstream connection received, reported when it closes.
#[derive(Debug)]
struct Closed {
    bytes: Vec<u8>,
}

/// A raw upstream that never answers: it reports when a connection has
/// received `marker`, and everything a connection received once it closes.
async fn recording_upstream(
    marker: &'static [u8],
) -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<()>,
    mpsc::UnboundedReceiver<Closed>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let (closed_tx, closed_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let seen_tx = seen_tx.clone();
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                let mut buf = [0u8; 4096];
                let mut reported = false;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    }
                    if !reported && bytes.windows(marker.len()).any(|w| w == marker) {
                        reported = true;
                        let _ = seen_tx.send(());
                    }
                }
                let _ = closed_tx.send(Closed { bytes });
            });
        }
    });
    (addr, seen_rx, closed_rx)
}

fn gateway_toml(up: std::net::SocketAddr, route_extra: &str) -> String {
    format!(
        "[upstreams.u]\ntargets = [\"{up}\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n{route_extra}\n"
    )
}

/// The value of the first metric line starting with `prefix`.
pub(crate) fn metric(gw: &TestGateway, prefix: &str) -> f64 {
    let text = gw.gateway.metrics().encode();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix} in\n{text}"))
}

async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    // A complete JSON error body ends the response.
                    if out.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_chunked_request_bodies_are_client_errors_and_abort_the_upstream_request() {
    let (up, mut seen, mut closed) = recording_upstream(b"hello").await;
    let gw = TestGateway::start(&gateway_toml(up, "")).await;
    let cases: [(&str, &[u8]); 6] = [
        ("bad hex size", b"zz\r\nabc\r\n0\r\n\r\n"),
        ("missing CRLF after data", b"3\r\nabcXY0\r\n\r\n"),
        (
            "oversize chunk size",
            b"fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        ),
        ("LF inside a chunk extension", b"3;ext\nabc\r\n0\r\n\r\n"),
        ("bad trailer", b"0\r\nbad trailer\r\n\r\n"),
        ("truncated", b"a\r\nabc"),
    ];
    for (kind, bad) in cases {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
        // The upstream request is under way before the framing goes bad.
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .unwrap_or_else(|_| panic!("{kind}: the upstream never saw the first chunk"))
            .unwrap();
        s.write_all(bad).await.unwrap();
        if kind == "truncated" {
            s.shutdown().await.unwrap();
        }
        let resp = read_response(&mut s).await;
        if kind != "truncated" {
            // A client that half-closed may not be answered at all.
            assert!(resp.starts_with("HTTP/1.1 400"), "{kind}: {resp}");
        }
        let got = tokio::time::timeout(Duration::from_secs(10), closed.recv())
            .await
            .unwrap_or_else(|_| panic!("{kind}: the upstream connection was left open"))
            .unwrap();
        let text = String::from_utf8_lossy(&got.bytes);
        assert!(text.contains("hello"), "{kind}: {text}");
        assert!(
            !text.contains("\r\n0\r\n\r\n"),
            "{kind}: the upstream got a complete request: {text:?}"
        );
    }
    assert_eq!(
        metric(
            &gw,
            "pylon_client_body_errors_total{route=\"r\",kind=\"invalid\"}"
        ),
        6.0
    );
    for kind in ["failed", "connect", "timeout"] {
        assert_eq!(
            metric(
                &gw,
                &format!("pylon_upstream_errors_total{{upstream=\"u\",kind=\"{kind}\"}}")
            ),
            0.0,
            "a client's bad body counted against the upstream as {kind}"
        );
    }
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_gets_408_and_aborts_the_upstream_request() {
    let (up, mut seen, mut closed) = recording_upstream(b"abc").await;
    let gw = TestGateway::start(&gateway_toml(up, "request-body-timeout = \"300ms\"")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the upstream saw the first bytes")
        .unwrap();
    let resp = read_response(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    let got = tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the upstream connection was closed")
        .unwrap();
    let text = String::from_utf8_lossy(&got.bytes);
    assert!(
        text.contains("abc") && !text.contains("\r\n0\r\n\r\n"),
        "{text:?}"
    );
    assert_eq!(
        metric(
            &gw,
            "pylon_client_body_errors_total{route=\"r\",kind=\"timeout\"}"
        ),
        1.0
    );
}

/// An upstream that answers every request with a head announcing 100
/// bytes, sends 5, and stalls with the connection open.
async fn stalling_upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let held = held.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello")
                    .await;
                held.lock().unwrap().push(s);
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_stalled_upstream_response_body_is_cut_for_http1_and_http2_clients() {
    let up = stalling_upstream().await;
    let gw = TestGateway::start(&gateway_toml(up, "response-body-timeout = \"300ms\"")).await;

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the HTTP/1 client was held past the body timeout")
        .ok();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("hello"), "{text}");

    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes())
        .await
        .expect("the HTTP/2 client was held past the body timeout");
    assert!(body.is_err(), "a cut response must not look complete");

    assert_eq!(
        metric(
            &gw,
            "pylon_upstream_errors_total{upstream=\"u\",kind=\"body_timeout\"}"
        ),
        2.0
    );
}

/// A raw upstream that counts the connections it accepts and answers each
/// request head `ok` (bodies are ignored; only sizes below matter).
async fn counting_upstream() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_small_body_that_never_finishes_costs_no_upstream_connection() {
    let (up, accepted) = counting_upstream().await;
    let gw = TestGateway::start(&gateway_toml(up, "request-body-timeout = \"300ms\"")).await;
    // Ten requests declaring a small body and sending part of it.
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .unwrap();
        clients.push(s);
    }
    for mut s in clients {
        let resp = read_response(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(
        metric(
            &gw,
            "pylon_client_body_errors_total{route=\"r\",kind=\"timeout\"}"
        ),
        10.0
    );
}

#[tokio::test]
async fn a_declared_body_over_max_request_body_is_refused_before_it_is_read() {
    let (up, accepted) = counting_upstream().await;
    let gw = TestGateway::start(&gateway_toml(up, "max-request-body = \"1KiB\"")).await;
    // Only the head: a 413 that arrives proves the body was never awaited
    // (the route's request-body-timeout is 60 s, the read gives up at 10).
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 1025\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    // A body at the limit passes (the counting upstream takes it).
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut req = b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 1024\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'x'; 1024]);
    s.write_all(&req).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a body at the limit never went upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_chunked_body_growing_past_max_request_body_gets_413_and_aborts_the_upstream_request() {
    let (up, mut seen, mut closed) = recording_upstream(b"first").await;
    let gw = TestGateway::start(&gateway_toml(up, "max-request-body = \"1KiB\"")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut head =
        b"POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n200\r\nfirst"
            .to_vec();
    head.extend_from_slice(&[b'a'; 0x200 - 5]);
    head.extend_from_slice(b"\r\n");
    s.write_all(&head).await.unwrap();
    // The upstream request is under way (its head and first chunk sent).
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the upstream never saw the first chunk")
        .unwrap();
    // Two more chunks of 512 bytes: 1536 in all, past the 1024 limit.
    for _ in 0..2 {
        let mut chunk = b"200\r\n".to_vec();
        chunk.extend_from_slice(&[b'b'; 0x200]);
        chunk.extend_from_slice(b"\r\n");
        let _ = s.write_all(&chunk).await;
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let resp = read_response(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    let got = tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the upstream connection was left open")
        .unwrap();
    let text = String::from_utf8_lossy(&got.bytes);
    assert!(
        !text.contains("\r\n0\r\n\r\n"),
        "the upstream got a complete request: {text:?}"
    );
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let body_bytes = body.matches(['a', 'b']).count() + "first".len();
    assert!(
        body_bytes <= 1024,
        "{body_bytes} body bytes went upstream, past the limit"
    );
}

#[tokio::test]
async fn an_http2_body_longer_than_its_content_length_never_passes_the_limit() {
    let (up, mut seen, _closed) = recording_upstream(b"POST").await;
    let gw = TestGateway::start(&gateway_toml(up, "max-request-body = \"1KiB\"")).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    // Declares 10 bytes (under the limit, under request-buffer-size), sends 8 KiB.
    let req = http::Request::post(format!("http://{}/upload", gw.addr))
        .header("content-length", "10")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    let _ = body.send_data(bytes::Bytes::from(vec![b'x'; 8192]), true);
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("no answer or reset within 10 s");
    if let Ok(r) = &resp {
        assert!(
            r.status().is_client_error(),
            "a lying Content-Length got {}",
            r.status()
        );
    }
    assert!(
        seen.try_recv().is_err(),
        "the lying request reached the upstream"
    );
}
