//! WebSocket passthrough (issue 19.7) with a real WebSocket server
//! (tokio-tungstenite) behind the gateway and a real client in front:
//! messages both ways, the route's plugins refusing the upgrade before any
//! upstream connection, the idle and stalled-reader limits, the tunnel
//! holding its listener connection slot, and the upgrades that must not be
//! tunnelled (route without `websocket`, `h2c`, an upstream answering
//! without 101).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use pylon::{Gateway, config::Config};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{
        Message,
        handshake::server::{Request, Response},
    },
};

use crate::harness::{Upstream, parse, plugin};

/// A WebSocket server: echoes every message; on the text `flood` it sends
/// 64 KiB binary messages until its peer stops taking them. Counts the
/// TCP connections it accepted and keeps the handshake headers it saw.
struct WsUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    headers: Arc<Mutex<Vec<http::HeaderMap>>>,
    /// Set when a flood ended because the peer stopped reading (a write
    /// failed).
    flood_ended: Arc<AtomicUsize>,
}

impl WsUpstream {
    async fn start() -> WsUpstream {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let flood_ended = Arc::new(AtomicUsize::new(0));
        let (a, h, f) = (accepted.clone(), headers.clone(), flood_ended.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = tcp.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (h, f) = (h.clone(), f.clone());
                tokio::spawn(async move {
                    // The callback's signature (and its large error) is tungstenite's.
                    #[allow(clippy::result_large_err)]
                    let record = |req: &Request, resp: Response| {
                        h.lock().unwrap().push(req.headers().clone());
                        Ok(resp)
                    };
                    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                        return;
                    };
                    serve_ws(ws, f).await;
                });
            }
        });
        WsUpstream {
            addr,
            accepted,
            headers,
            flood_ended,
        }
    }
}

async fn serve_ws(mut ws: WebSocketStream<TcpStream>, flood_ended: Arc<AtomicUsize>) {
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(t) if t.as_str() == "flood" => {
                let chunk = vec![7u8; 64 << 10];
                while ws.send(Message::binary(chunk.clone())).await.is_ok() {}
                flood_ended.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Message::Text(_) | Message::Binary(_) => {
                let Ok(()) = ws.send(msg).await else {
                    return;
                };
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}

/// A gateway with route `r` on `/ws` to `up` (`route_extra` lines in the
/// route, `top` TOML before it), tuned by `tune`.
async fn gateway(
    up: SocketAddr,
    top: &str,
    route_extra: &str,
    tune: impl FnOnce(&mut Config),
) -> Gateway {
    let mut config = parse(&format!(
        "{top}\n[upstreams.u]\ntargets = [\"{up}\"]\n\
         [[routes]]\nid = \"r\"\npath-prefix = \"/ws\"\nupstream = \"u\"\n{route_extra}\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    tune(&mut config);
    Gateway::start(config).await.unwrap()
}

async fn connect(
    gw: &Gateway,
    path: &str,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let addr = gw.local_addrs()[0];
    let tcp = TcpStream::connect(addr).await.unwrap();
    client_async(format!("ws://{addr}{path}"), tcp)
        .await
        .map(|(ws, _)| ws)
}

fn metric(gw: &Gateway, series: &str) -> u64 {
    let text = gw.metrics().encode();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Wait (up to 20 s) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn messages_flow_both_ways_and_the_tunnel_is_counted() {
    let up = WsUpstream::start().await;
    let gw = gateway(up.addr, "", "websocket = true", |_| {}).await;
    let mut ws = connect(&gw, "/ws/chat?room=1").await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    // A message far larger than a copy buffer, both ways.
    let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    assert_eq!(
        metric(&gw, "pylon_tunnels_open{route=\"r\"}"),
        1,
        "one tunnel open"
    );
    assert_eq!(metric(&gw, "pylon_tunnels_total{route=\"r\"}"), 1);
    let seen = up.headers.lock().unwrap()[0].clone();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert!(seen.contains_key("sec-websocket-key"));
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    eventually("the tunnel to close", || {
        metric(&gw, "pylon_tunnels_open{route=\"r\"}") == 0
    })
    .await;
    assert_eq!(
        metric(
            &gw,
            "pylon_tunnels_closed_total{route=\"r\",reason=\"upstream_closed\"}"
        ) + metric(
            &gw,
            "pylon_tunnels_closed_total{route=\"r\",reason=\"client_closed\"}"
        ),
        1
    );
}

#[tokio::test]
async fn a_plugin_refuses_the_upgrade_before_any_upstream_connection() {
    let up = WsUpstream::start().await;
    let top = format!("[plugins.auth-key]\ncomponent = {:?}\n", plugin("auth-key"));
    // The key's SHA-256 is configured; the client sends none.
    let route = "websocket = true\n[[routes.plugins]]\nplugin = \"auth-key\"\n\
                 [routes.plugins.config]\nkeys = [{ consumer = \"a\", sha256 = \"\
                 0000000000000000000000000000000000000000000000000000000000000000\" }]\n";
    let gw = gateway(up.addr, &top, route, |_| {}).await;
    let err = connect(&gw, "/ws").await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected an HTTP 401, got {other:?}"),
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        0,
        "no upstream connection"
    );
    assert_eq!(metric(&gw, "pylon_tunnels_total{route=\"r\"}"), 0);
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let up = WsUpstream::start().await;
    let gw = gateway(
        up.addr,
        "",
        "websocket = true\ntunnel-idle-timeout = \"1s\"",
        |_| {},
    )
    .await;
    let mut ws = connect(&gw, "/ws").await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    let quiet = Instant::now();
    // Nothing is sent: the gateway closes the connection.
    let end = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("closed within 20 s");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    eventually("the idle close to be counted", || {
        metric(
            &gw,
            "pylon_tunnels_closed_total{route=\"r\",reason=\"idle\"}",
        ) == 1
    })
    .await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_after_the_send_timeout() {
    let up = WsUpstream::start().await;
    let gw = gateway(up.addr, "", "websocket = true", |c| {
        c.listeners[0].limits.send_timeout = Duration::from_secs(1);
    })
    .await;
    let mut ws = connect(&gw, "/ws").await.unwrap();
    ws.send(Message::text("flood")).await.unwrap();
    // The client never reads again: the upstream's messages pile up until
    // the gateway's writes to the client stop making progress.
    eventually("the stalled tunnel to be closed", || {
        metric(
            &gw,
            "pylon_tunnels_closed_total{route=\"r\",reason=\"stalled\"}",
        ) == 1
    })
    .await;
    eventually("the upstream's flood to fail", || {
        up.flood_ended.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(metric(&gw, "pylon_tunnels_open{route=\"r\"}"), 0);
    drop(ws);
}

#[tokio::test]
async fn a_tunnel_holds_its_listener_connection_slot() {
    let up = WsUpstream::start().await;
    let gw = gateway(up.addr, "", "websocket = true", |c| {
        c.listeners[0].limits.max_connections = 1;
    })
    .await;
    let mut ws = connect(&gw, "/ws").await.unwrap();
    ws.send(Message::text("a")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("a"));
    // The only slot is the tunnel's: another connection is closed unread.
    let mut other = TcpStream::connect(gw.local_addrs()[0]).await.unwrap();
    let _ = other
        .write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(20), other.read(&mut buf))
        .await
        .expect("closed within 20 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "refused at capacity");
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    // Once the tunnel is gone, its slot is free again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut ws) = connect(&gw, "/ws").await {
            ws.send(Message::text("b")).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("b"));
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send `head` (and what follows it) raw and return everything read until
/// the gateway closes or 2 s pass without a byte.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn upgrades_that_must_not_tunnel_go_as_plain_requests() {
    let up = Upstream::named("plain").await;
    // A route without `websocket`: the upgrade headers are dropped.
    let gw = gateway(up.addr, "", "", |_| {}).await;
    let resp = raw_exchange(
        gw.local_addrs()[0],
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.last();
    assert!(!seen.headers.contains_key("upgrade"), "{:?}", seen.headers);
    assert!(!seen.headers.contains_key("connection"));

    // h2c on a WebSocket route: neither `Upgrade` nor `HTTP2-Settings`
    // reaches the upstream, and no 101 the client.
    let gw = gateway(up.addr, "", "websocket = true", |_| {}).await;
    let resp = raw_exchange(
        gw.local_addrs()[0],
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\n\
          upgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.last();
    assert!(!seen.headers.contains_key("upgrade"), "{:?}", seen.headers);
    assert!(!seen.headers.contains_key("http2-settings"));
}

#[tokio::test]
async fn an_upstream_that_does_not_switch_opens_no_tunnel() {
    // The upstream answers the upgrade with an ordinary 200. Whatever the
    // client sends next is HTTP again, routed and policed as any request:
    // here a path no route serves, so 404 from the gateway, never a raw
    // tunnel to the upstream.
    let up = Upstream::named("not a websocket").await;
    let gw = gateway(up.addr, "", "websocket = true", |_| {}).await;
    let resp = raw_exchange(
        gw.local_addrs()[0],
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
          GET /internal/secret HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("not a websocket"), "{resp}");
    assert!(
        resp.contains("HTTP/1.1 404"),
        "the smuggled request was routed: {resp}"
    );
    assert!(
        up.seen().iter().all(|s| s.uri.path() != "/internal/secret"),
        "the smuggled request reached the upstream"
    );
    assert_eq!(metric(&gw, "pylon_tunnels_total{route=\"r\"}"), 0);
}

#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    use http_body_util::Empty;
    use hyper::{client::conn::http2, ext::Protocol};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::protocol::Role;

    let up = WsUpstream::start().await;
    let gw = gateway(up.addr, "", "websocket = true", |_| {}).await;
    let addr = gw.local_addrs()[0];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    // An ordinary request first, so the server's SETTINGS (with
    // ENABLE_CONNECT_PROTOCOL) have arrived before the CONNECT.
    let warm = http::Request::get(format!("http://{addr}/elsewhere"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let _ = sender.send_request(warm).await.unwrap();
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{addr}/ws"))
        .header("sec-websocket-version", "13")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(Protocol::from_static("websocket"));
    let mut resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("sec-websocket-accept"));
    let io = hyper::upgrade::on(&mut resp).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Client, None).await;
    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over h2"));
    assert_eq!(metric(&gw, "pylon_tunnels_open{route=\"r\"}"), 1);
    // The upstream got an HTTP/1.1 upgrade with a key of pylon's own.
    let seen = up.headers.lock().unwrap()[0].clone();
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["sec-websocket-key"].len(), 24);
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    eventually("the tunnel to close", || {
        metric(&gw, "pylon_tunnels_open{route=\"r\"}") == 0
    })
    .await;
}

#[test]
fn websocket_needs_an_http1_upstream() {
    let err = parse(
        "[upstreams.g]\ntargets = [\"127.0.0.1:1\"]\nprotocol = \"h2c\"\n\
         [[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"g\"\nwebsocket = true\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("websocket needs an http1 upstream"), "{err}");
}

#[tokio::test]
async fn a_tunnel_is_drained_on_shutdown_and_closed_after_the_grace_period() {
    let up = WsUpstream::start().await;
    let gw = gateway(up.addr, "", "websocket = true", |_| {}).await;
    let addr = gw.local_addrs()[0];
    let mut ws = connect(&gw, "/ws").await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
    let grace = Duration::from_secs(3);
    let begun = Instant::now();
    let shutdown = tokio::spawn(gw.shutdown(grace));
    // The shutdown has begun once the listener takes no new connection.
    eventually_async("the listener to stop accepting", async || {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    // Within the grace period the tunnel still carries messages, and the
    // shutdown waits for it.
    ws.send(Message::text("draining")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("draining"));
    // Then the gateway closes it.
    let end = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("closed within 20 s");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
    assert!(
        begun.elapsed() >= grace - Duration::from_millis(500),
        "closed after {:?}, before the grace period ended",
        begun.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(20), shutdown)
        .await
        .expect("shutdown ended")
        .unwrap();
}

/// Wait (up to 20 s) until `f` holds.
async fn eventually_async(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
