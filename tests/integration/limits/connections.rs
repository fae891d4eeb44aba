//! Connection limits: silent connections cut at the header timeout, idle
//! keep-alive connections closed, the connection cap (admin and later
//! clients still served), the in-flight limit, and the last request of a
//! connection closing it gracefully.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::harness::{Upstream, client, status_of};

use super::{H2_PREFACE, closed, gateway, metric};

/// Read until the peer closes; `true` if it did within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// One HTTP/1.1 request on `s`, returning the response head and body as text
/// (the upstream answers with a short, sized body).
async fn h1_get(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("response within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text.into_owned();
            }
        }
    }
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_header_timeout() {
    let up = Upstream::named("ok").await;
    let gw = gateway(up.addr, |c| {
        c.listeners[0].header_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = gw.local_addrs()[0];
    // HTTP/2 is on: hyper alone would wait for the preface forever.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await);
    assert!(started.elapsed() >= Duration::from_millis(200));
    // The HTTP/2 preface and nothing more is no request either.
    let mut preface_only = TcpStream::connect(addr).await.unwrap();
    preface_only.write_all(H2_PREFACE).await.unwrap();
    preface_only
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    assert!(closed_within(&mut preface_only, Duration::from_secs(10)).await);
    assert!(closed(&gw, "no_request") >= 2);
    assert_eq!(
        status_of(client().get(format!("http://{addr}/"))).await,
        200
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let up = Upstream::named("ok").await;
    let gw = gateway(up.addr, |c| {
        c.listeners[0].limits.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let mut s = TcpStream::connect(gw.local_addrs()[0]).await.unwrap();
    let first = h1_get(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Still open well before the timeout: a second request is served.
    let second = h1_get(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    let idle_from = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
    assert!(idle_from.elapsed() >= Duration::from_millis(300));
    assert!(
        closed(&gw, "idle") >= 1,
        "{}",
        gw.metrics()
            .encode()
            .lines()
            .filter(|l| l.starts_with("pylon_connections_closed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn the_connection_cap_refuses_the_extra_while_admin_and_later_clients_are_served() {
    let up = Upstream::named("ok").await;
    let gw = gateway(up.addr, |c| {
        c.listeners[0].limits.max_connections = 3;
    })
    .await;
    let addr = gw.local_addrs()[0];
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(h1_get(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // At the cap: the next connection is closed without an answer, and the
    // upstream never hears of it.
    let seen_before = up.seen().len();
    for _ in 0..5 {
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), extra.read_to_end(&mut out))
            .await
            .expect("the extra connection is closed");
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }
    assert_eq!(up.seen().len(), seen_before);
    assert!(closed(&gw, "at_capacity") >= 5);
    // The admin API answers while the listener is full.
    let admin = gw.admin_addr().unwrap();
    let r = client()
        .get(format!("http://{admin}/admin/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A held connection keeps working; once one goes, a new client is served.
    assert!(h1_get(&mut held[0]).await.starts_with("HTTP/1.1 200"));
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = client().get(format!("http://{addr}/")).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no client served after a slot freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn requests_over_the_in_flight_limit_get_503_at_once() {
    let up = Upstream::with(|_| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Response::new(Full::new(Bytes::from_static(b"slow")))
    })
    .await;
    let gw = gateway(up.addr, |c| {
        c.listeners[0].limits.max_requests_in_flight = 2;
    })
    .await;
    let url = format!("http://{}/", gw.local_addrs()[0]);
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client().get(&url).send()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.seen().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the upstream never saw both requests"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(status_of(client().get(&url)).await, 200);
    assert!(metric(&gw, "pylon_requests_refused_total{reason=\"in_flight\"}") >= 1);
}

#[tokio::test]
async fn the_last_request_of_a_connection_closes_it_gracefully() {
    let up = Upstream::named("ok").await;
    let gw = gateway(up.addr, |c| {
        c.listeners[0].limits.max_requests_per_connection = 3;
    })
    .await;
    let addr = gw.local_addrs()[0];
    // HTTP/1.1: the third response says `Connection: close`, then EOF.
    let mut s = TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        let r = h1_get(&mut s).await;
        assert!(!r.to_ascii_lowercase().contains("connection: close"), "{r}");
    }
    let last = h1_get(&mut s).await;
    assert!(last.starts_with("HTTP/1.1 200"), "{last}");
    assert!(
        last.to_ascii_lowercase().contains("connection: close"),
        "{last}"
    );
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);

    // HTTP/2: three requests are answered, then GOAWAY ends the connection.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    for _ in 0..3 {
        send = send.ready().await.unwrap();
        let (resp, _) = send
            .send_request(
                Request::get(format!("http://{addr}/")).body(()).unwrap(),
                true,
            )
            .unwrap();
        assert_eq!(resp.await.unwrap().status(), 200);
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "the HTTP/2 connection stayed open after its last request"
    );
    assert!(closed(&gw, "request_limit") >= 2);
}
