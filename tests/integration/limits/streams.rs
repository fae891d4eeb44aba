//! Abusive and stalled streams: paced HTTP/2 rapid reset and ping floods
//! close the connection, a stream that never ends its body gets 408, and a
//! client that never reads its response is closed after the send timeout.

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
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::harness::{Upstream, client, status_of};

use super::{H2_PREFACE, closed, gateway, metric};

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
