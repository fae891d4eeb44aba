//! Upstream connections: refused and reset upstreams get 502, a slow one
//! past the route timeout 504, and kept-alive connections are reused, an
//! upstream closing idle ones costing no failed request.

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{TestGateway, Upstream, client, status_of};

use super::proxy_to;

#[tokio::test]
async fn refused_upstream_gets_502() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = proxy_to(closed).await;
    let r = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("127.0.0.1"),
        "error body leaks internals: {body}"
    );
}

#[tokio::test]
async fn upstream_that_resets_gets_502() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let gw = proxy_to(addr).await;
    assert_eq!(status_of(client().get(gw.url("/"))).await, 502);
}

/// A raw HTTP/1.1 upstream that counts its connections and answers every
/// request with `ok`; with `close_after_answer` it closes each connection
/// right after its first answer, without saying so (as an upstream whose
/// keep-alive timeout just passed does).
async fn counting_upstream(
    close_after_answer: bool,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                        if close_after_answer {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (addr, conns) = counting_upstream(false).await;
    let gw = proxy_to(addr).await;
    let c = client();
    for _ in 0..5 {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    // One client connection lands on one worker, which reuses its one
    // upstream connection for every request.
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_costs_no_failed_request() {
    let (addr, conns) = counting_upstream(true).await;
    let gw = proxy_to(addr).await;
    let c = client();
    for i in 0..5 {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.text().await.unwrap(), "ok");
        // Whether or not pylon has seen the close yet, the next request
        // must get a fresh connection, not a 502.
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[tokio::test]
async fn slow_upstream_past_route_timeout_gets_504() {
    let up = Upstream::with(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(Full::new(Bytes::from_static(b"late")))
    })
    .await;
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\ntimeout = \"200ms\"\n",
        up.addr
    ))
    .await;
    let started = std::time::Instant::now();
    assert_eq!(status_of(client().get(gw.url("/"))).await, 504);
    assert!(started.elapsed() < Duration::from_secs(3));
}
