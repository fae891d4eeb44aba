//! Forwarding: routing by host, method and path, round robin over targets,
//! hop-by-hop and forwarding headers, HTTP/2 cleartext clients, and large
//! bodies streamed both ways.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::Response;
use http_body_util::Full;

use crate::harness::{TestGateway, Upstream, client};

use super::{proxy_to, route};

#[tokio::test]
async fn routes_by_host_method_and_path_in_order() {
    let a = Upstream::named("a").await;
    let b = Upstream::named("b").await;
    let c = Upstream::named("c").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.a]
targets = ["{a}"]
[upstreams.b]
targets = ["{b}"]
[upstreams.c]
targets = ["{c}"]

[[routes]]
id = "exact"
path = "/users/me"
upstream = "a"

[[routes]]
id = "param"
methods = ["GET"]
path = "/users/{{id}}"
rewrite = "/v2/users/{{id}}"
upstream = "b"

[[routes]]
id = "host"
host = "*.example.test"
path-prefix = "/"
upstream = "c"
"#,
        a = a.addr,
        b = b.addr,
        c = c.addr
    ))
    .await;
    let http = client();
    let get = |p: &str| http.get(gw.url(p)).send();
    assert_eq!(get("/users/me").await.unwrap().text().await.unwrap(), "a");
    assert_eq!(
        get("/users/42?x=1").await.unwrap().text().await.unwrap(),
        "b"
    );
    assert_eq!(b.last().uri, "/v2/users/42?x=1");
    let r = http
        .post(gw.url("/users/42"))
        .header("host", "api.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "c");

    let r = get("/nothing").await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["status"], 404);
}

#[tokio::test]
async fn round_robin_spreads_requests_over_targets() {
    let a = Upstream::named("a").await;
    let b = Upstream::named("b").await;
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\", \"{}\"]\n{}",
        a.addr,
        b.addr,
        route("r", "/", "u")
    ))
    .await;
    let http = client();
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(
            http.get(gw.url("/"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    assert_eq!(bodies.iter().filter(|b| *b == "a").count(), 2, "{bodies:?}");
    assert_eq!(bodies.iter().filter(|b| *b == "b").count(), 2, "{bodies:?}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let up = Upstream::with(|_| async {
        Response::builder()
            .header("connection", "x-up-secret")
            .header("x-up-secret", "1")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap()
    })
    .await;
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n{}",
        up.addr,
        route("r", "/", "u")
    ))
    .await;
    let r = client()
        .get(gw.url("/p"))
        .header("connection", "x-client-secret")
        .header("x-client-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic eA==")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header(
            "x-bytes",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert!(r.headers().get("x-up-secret").is_none());
    assert_eq!(r.headers()["via"], "1.1 pylon");

    let seen = up.last();
    for h in [
        "x-client-secret",
        "keep-alive",
        "proxy-authorization",
        "connection",
    ] {
        assert!(seen.headers.get(h).is_none(), "{h} leaked upstream");
    }
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], gw.addr.to_string());
    assert_eq!(seen.headers["host"], gw.addr.to_string());
    assert_eq!(seen.headers["via"], "1.1 pylon");
    let multi: Vec<_> = seen.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
    assert_eq!(seen.headers["x-bytes"].as_bytes(), b"caf\xe9");
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let up = Upstream::named("h2 ok").await;
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n{}",
        up.addr,
        route("r", "/", "u")
    ))
    .await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "h2 ok");
    assert_eq!(up.last().headers["via"], "2 pylon");
}

/// A 100 MiB upload and download stream through without being held: each
/// side waits for the other end to see the first megabyte before sending
/// the rest, which deadlocks (and times out) if the gateway buffers.
#[tokio::test]
async fn large_bodies_stream_in_both_directions() {
    use sha2::{Digest, Sha256};
    use tokio::sync::{mpsc, oneshot};

    const TOTAL: usize = 100 << 20;
    const CHUNK: usize = 1 << 20;

    // Upstream: signals when it has 1 MiB, counts and hashes everything,
    // then streams 100 MiB back, pausing after the first MiB until the
    // client says it received it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let (first_mib_tx, first_mib_rx) = oneshot::channel::<()>();
    let (client_got_tx, client_got_rx) = oneshot::channel::<()>();
    let (digest_tx, digest_rx) = oneshot::channel::<(usize, Vec<u8>)>();
    let state = std::sync::Arc::new(std::sync::Mutex::new(Some((
        first_mib_tx,
        client_got_rx,
        digest_tx,
    ))));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let state = state.clone();
            async move {
                use http_body_util::BodyExt;
                let (first_tx, client_got, digest_tx) = state.lock().unwrap().take().unwrap();
                let mut body = req.into_body();
                let mut n = 0;
                let mut h = Sha256::new();
                let mut first_tx = Some(first_tx);
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        n += data.len();
                        h.update(&data);
                        if n >= CHUNK
                            && let Some(tx) = first_tx.take()
                        {
                            let _ = tx.send(());
                        }
                    }
                }
                let _ = digest_tx.send((n, h.finalize().to_vec()));
                let (tx, rx) = mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(4);
                tokio::spawn(async move {
                    tx.send(Ok(http_body::Frame::data(Bytes::from(vec![7u8; CHUNK]))))
                        .await
                        .unwrap();
                    client_got.await.unwrap();
                    for _ in 1..TOTAL / CHUNK {
                        if tx
                            .send(Ok(http_body::Frame::data(Bytes::from(vec![7u8; CHUNK]))))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await
            .unwrap();
    });

    let gw = proxy_to(up_addr).await;

    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let sender = tokio::spawn(async move {
        let mut h = Sha256::new();
        let chunk = |i: usize| {
            Bytes::from(
                (0..CHUNK)
                    .map(|j| ((i * 31 + j) % 251) as u8)
                    .collect::<Vec<u8>>(),
            )
        };
        let first = chunk(0);
        h.update(&first);
        body_tx.send(Ok(first)).await.unwrap();
        first_mib_rx
            .await
            .expect("upstream saw the first MiB before the upload finished");
        for i in 1..TOTAL / CHUNK {
            let c = chunk(i);
            h.update(&c);
            body_tx.send(Ok(c)).await.unwrap();
        }
        h.finalize().to_vec()
    });
    let resp = tokio::time::timeout(
        Duration::from_secs(60),
        client()
            .post(gw.url("/upload"))
            .body(reqwest::Body::wrap_stream(tokio_stream_from(body_rx)))
            .send(),
    )
    .await
    .expect("upload streamed (a buffering gateway deadlocks here)")
    .unwrap();
    let sent_digest = sender.await.unwrap();
    let (n, up_digest) = digest_rx.await.unwrap();
    assert_eq!(n, TOTAL);
    assert_eq!(up_digest, sent_digest, "upload altered in transit");

    let mut stream = resp.bytes_stream();
    let mut received = 0usize;
    let mut client_got_tx = Some(client_got_tx);
    let download = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.iter().all(|b| *b == 7));
            received += chunk.len();
            if received >= CHUNK
                && let Some(tx) = client_got_tx.take()
            {
                let _ = tx.send(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), download)
        .await
        .expect("download streamed (a buffering gateway deadlocks here)");
    assert_eq!(received, TOTAL);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
