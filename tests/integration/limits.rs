//! Connection and HTTP/2 limits (issues 15 and 22): silent and idle
//! connections, the connection cap, the in-flight limit, requests per
//! connection, paced rapid reset, control-frame floods, streams that never
//! finish and clients that never read. Timeouts are short here and every
//! assertion leaves a wide margin.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use pylon::{Gateway, config::Config};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::harness::{Upstream, client, parse, status_of};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A gateway proxying every path to `up`, with an admin listener; `tune`
/// adjusts the configuration (the limits) before it starts.
async fn gateway(up: SocketAddr, tune: impl FnOnce(&mut Config)) -> Gateway {
    let mut config = parse(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n[upstreams.u]\ntargets = [\"{up}\"]\n\
         [[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n"
    ))
    .unwrap();
    tune(&mut config);
    Gateway::start(config).await.unwrap()
}

/// The value of one `pylon_connections_closed_total` series.
fn closed(gw: &Gateway, reason: &str) -> u64 {
    metric(
        gw,
        &format!("pylon_connections_closed_total{{reason=\"{reason}\"}}"),
    )
}

fn metric(gw: &Gateway, series: &str) -> u64 {
    let text = gw.metrics().encode();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

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

/// An upstream that counts the connections made to it and answers every
/// request after `delay`, without reading its body.
struct CountingUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingUpstream {
    async fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn paced_rapid_reset_closes_the_connection_after_its_budget() {
    let up = CountingUpstream::start(Duration::from_millis(300)).await;
    let gw = gateway(up.addr, |c| {
        let l = &mut c.listeners[0].limits;
        l.http2_max_resets = 50;
        l.http2_max_resets_per_second = 10_000;
    })
    .await;
    let addr = gw.local_addrs()[0];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut resets = 0usize;
    let deadline = Instant::now() + Duration::from_secs(20);
    // Batches of 5 (under h2's pending-reset limit of 20), each reset once
    // the gateway has dispatched it: what hyper's own defence lets through.
    'attack: while resets < 2000 && Instant::now() < deadline {
        let mut batch = Vec::new();
        for _ in 0..5 {
            send = match tokio::time::timeout(Duration::from_secs(5), send.ready()).await {
                Ok(Ok(s)) => s,
                _ => break 'attack,
            };
            let req = Request::post(format!("http://{addr}/")).body(()).unwrap();
            match send.send_request(req, false) {
                Ok((_, stream)) => batch.push(stream),
                Err(_) => break 'attack,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        for mut stream in batch {
            stream.send_reset(h2::Reason::CANCEL);
            resets += 1;
        }
    }
    assert!(
        resets < 500,
        "the connection took {resets} resets (budget 50)"
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "the connection stayed open past its reset budget"
    );
    assert!(closed(&gw, "reset_budget") >= 1);
    let upstream_conns = up.connections.load(Ordering::Relaxed);
    assert!(
        upstream_conns < 500,
        "the upstream saw {upstream_conns} connections"
    );
    // Other clients are served.
    let r = client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_ping_flood_that_never_reads_the_acks_is_closed() {
    let up = Upstream::named("ok").await;
    let gw = gateway(up.addr, |c| {
        c.listeners[0].limits.send_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = gw.local_addrs()[0];
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // Small buffers: the gateway's acknowledgements back up quickly.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(H2_PREFACE).await.unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    // One request first, so the connection is past its first-request deadline
    // and only the flood can end it.
    let headers = [
        0x82, // :method GET
        0x86, // :scheme http
        0x84, // :path /
        0x41, 0x01, b'x', // :authority x
    ];
    let mut frame = vec![0, 0, headers.len() as u8, 1, 0x05, 0, 0, 0, 1];
    frame.extend_from_slice(&headers);
    s.write_all(&frame).await.unwrap();
    let mut batch = Vec::new();
    for i in 0..1000u64 {
        batch.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
        batch.extend_from_slice(&i.to_be_bytes());
    }
    let started = Instant::now();
    let mut sent = 0usize;
    let closed_by_gateway = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.write_all(&batch)).await {
            Ok(Ok(())) => sent += 1000,
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "flood never stopped"
        );
    };
    assert!(
        closed_by_gateway,
        "the gateway stopped reading but kept the connection ({sent} PINGs)"
    );
    assert!(closed(&gw, "send_timeout") >= 1);
    assert_eq!(
        status_of(client().get(format!("http://{addr}/"))).await,
        200
    );
}

#[tokio::test]
async fn a_stream_that_never_ends_its_body_gets_408_after_the_stream_idle_timeout() {
    let up = Upstream::echo_body().await;
    let gw = gateway(up.addr, |c| {
        c.listeners[0].limits.stream_idle_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = gw.local_addrs()[0];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = Request::post(format!("http://{addr}/")).body(()).unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"part"), false).unwrap();
    let started = Instant::now();
    // Meanwhile another client is served.
    assert_eq!(
        status_of(client().get(format!("http://{addr}/"))).await,
        200
    );
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("answered within 10 s")
        .unwrap();
    assert_eq!(resp.status(), 408);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(metric(&gw, "pylon_stream_idle_timeouts_total") >= 1);
}

#[tokio::test]
async fn a_client_that_never_reads_its_response_is_closed_after_the_send_timeout() {
    let big = Bytes::from(vec![b'x'; 16 << 20]);
    let up = Upstream::with(move |_| {
        let big = big.clone();
        async move { Response::new(Full::new(big)) }
    })
    .await;
    let gw = gateway(up.addr, |c| {
        c.listeners[0].limits.send_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = gw.local_addrs()[0];
    // HTTP/2 with a stream window of 0: the response head arrives, its body
    // never can, while the connection itself stays healthy.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = Request::get(format!("http://{addr}/")).body(()).unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("response head")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        status_of(client().get(format!("http://{addr}/"))).await,
        200
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "a response stalled on a closed window kept its connection"
    );
    assert!(closed(&gw, "stalled_reader") >= 1);

    // HTTP/1.1: a client that stops reading a large response.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = s.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    let before = closed(&gw, "send_timeout") + closed(&gw, "stalled_reader");
    let deadline = Instant::now() + Duration::from_secs(10);
    while closed(&gw, "send_timeout") + closed(&gw, "stalled_reader") == before {
        assert!(
            Instant::now() < deadline,
            "a client that stopped reading kept its connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
