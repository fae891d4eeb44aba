//! Misbehaving clients: malformed and oversized requests get 4xx, and a
//! client sending its headers too slowly is cut off.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{TestGateway, Upstream, client, status_of};

use super::route;

#[tokio::test]
async fn malformed_and_oversized_requests_get_4xx() {
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n{}",
        up.addr,
        route("r", "/", "u")
    ))
    .await;

    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GARBAGE \x01\x02 nonsense\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");

    let big = "x".repeat(100 * 1024);
    assert_eq!(
        status_of(client().get(gw.url("/")).header("x-big", big)).await,
        431
    );

    assert_eq!(
        status_of(
            client()
                .get(gw.url("/"))
                .header("host", "a.test")
                .header("host", "b.test")
        )
        .await,
        400
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn slow_client_sending_headers_is_cut_off() {
    let up = Upstream::named("ok").await;
    let cfg = format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n{}",
        up.addr,
        route("r", "/", "u")
    );
    let mut config = crate::harness::parse(&cfg).unwrap();
    config.listeners[0].header_timeout = Duration::from_millis(300);
    let gw = pylon::Gateway::start(config).await.unwrap();
    let addr = gw.local_addrs()[0];

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the gateway kept a slow client's connection open"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(up.seen().is_empty());
}
