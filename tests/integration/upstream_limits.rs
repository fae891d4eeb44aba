//! Upstream connections are bounded per target (`max-connections`, with a
//! bounded queue and 503 beyond it) and reused after a client cancels.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::Semaphore,
};

use crate::{
    bodies::metric,
    harness::{TestGateway, client, status_of},
};

/// A raw HTTP/1.1 upstream: counts the connections it accepted and the
/// request heads it read, and answers each request `ok` once `gate` gives
/// it a permit (after `delay`).
struct GatedUpstream {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    heads: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl GatedUpstream {
    async fn start(open: bool, delay: Duration) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = GatedUpstream {
            addr: l.local_addr().unwrap(),
            accepted: Arc::default(),
            heads: Arc::default(),
            answered: Arc::default(),
            gate: Arc::new(Semaphore::new(if open {
                Semaphore::MAX_PERMITS
            } else {
                0
            })),
        };
        let (accepted, heads, answered, gate) = (
            up.accepted.clone(),
            up.heads.clone(),
            up.answered.clone(),
            up.gate.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                let (heads, answered, gate) = (heads.clone(), answered.clone(), gate.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            heads.fetch_add(1, Ordering::SeqCst);
                            gate.acquire().await.unwrap().forget();
                            tokio::time::sleep(delay).await;
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(ok).await.is_err() {
                                return;
                            }
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        up
    }
}

/// Wait (up to 10 s) until `counter` reaches `n`.
async fn reach(counter: &AtomicUsize, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while counter.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("counter stayed at {} < {n}", counter.load(Ordering::SeqCst)));
}

fn limited(up: std::net::SocketAddr, pending: usize) -> String {
    format!(
        "[upstreams.u]\ntargets = [\"{up}\"]\nmax-connections = 2\nmax-pending = {pending}\nqueue-timeout = \"10s\"\n\
         [[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n"
    )
}

/// `n` requests, each on its own client connection (spread over the
/// workers).
fn requests(gw: &TestGateway, n: usize) -> Vec<tokio::task::JoinHandle<u16>> {
    (0..n)
        .map(|_| {
            let url = gw.url("/slow");
            tokio::spawn(async move { status_of(client().get(url)).await.as_u16() })
        })
        .collect()
}

#[tokio::test]
async fn past_max_connections_and_an_empty_queue_a_request_gets_503() {
    let up = GatedUpstream::start(false, Duration::ZERO).await;
    let gw = TestGateway::start(&limited(up.addr, 0)).await;
    let first = requests(&gw, 2);
    reach(&up.heads, 2).await;
    let r = client().get(gw.url("/slow")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    up.gate.add_permits(100);
    for t in first {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(up.accepted.load(Ordering::SeqCst) <= 2);
    assert!(
        metric(
            &gw,
            "pylon_upstream_errors_total{upstream=\"u\",kind=\"overflow\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn past_max_connections_requests_queue_and_the_upstream_never_sees_more() {
    let up = GatedUpstream::start(false, Duration::ZERO).await;
    let gw = TestGateway::start(&limited(up.addr, 32)).await;
    let mut tasks = requests(&gw, 18);
    reach(&up.heads, 2).await;
    // Let the upstream answer one request at a time: the queued ones go
    // out on the connections the answered ones free.
    for n in 1..=18 {
        up.gate.add_permits(1);
        reach(&up.answered, n).await;
    }
    for t in tasks.drain(..) {
        assert_eq!(t.await.unwrap(), 200);
    }
    let accepted = up.accepted.load(Ordering::SeqCst);
    assert!(accepted <= 2, "the upstream saw {accepted} connections");
}

#[tokio::test]
async fn cancelled_requests_give_their_upstream_connection_back() {
    let up = GatedUpstream::start(true, Duration::from_millis(200)).await;
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
        up.addr
    ))
    .await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    const N: usize = 10;
    for i in 0..N {
        // Reset the stream while pylon awaits the upstream's answer.
        let r = h2
            .get(gw.url("/x"))
            .timeout(Duration::from_millis(50))
            .send()
            .await;
        assert!(r.is_err(), "request {i} was not cancelled");
        reach(&up.answered, i + 1).await;
        // The answer is read in the background and the connection checked
        // in right after; leave a wide margin for that.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accepted = up.accepted.load(Ordering::SeqCst);
    assert!(
        accepted <= 2,
        "{N} cancelled requests cost the upstream {accepted} connections"
    );
}

/// A client speaking only HTTP/1.1, or only h2 (prior knowledge), one
/// connection per client.
fn client_of(h2: bool) -> reqwest::Client {
    let b = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if h2 {
        b.http2_prior_knowledge()
    } else {
        b.http1_only()
    }
    .build()
    .unwrap()
}

/// The listener's `max-requests-in-flight`, over HTTP/1.1 and h2: while
/// one request is held by the upstream, a second one (on another
/// connection, a POST with a body) is answered 503 at once with the
/// reason; the first still gets its 200, and once it is done a new
/// request passes.
#[tokio::test]
async fn past_the_listeners_requests_in_flight_the_next_request_gets_503_at_once() {
    for h2 in [false, true] {
        let up = GatedUpstream::start(false, Duration::ZERO).await;
        let mut config = crate::harness::parse(&format!(
            "[upstreams.u]\ntargets = [\"{}\"]\n\
             [[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
            up.addr
        ))
        .unwrap();
        config.listeners[0].limits.max_requests_in_flight = 1;
        let gateway = pylon::Gateway::start(config).await.unwrap();
        let gw = TestGateway {
            addr: gateway.local_addrs()[0],
            gateway,
        };
        let url = gw.url("/slow");
        let first = tokio::spawn(client_of(h2).get(url.clone()).send());
        // The upstream holds the first request: it is in flight.
        reach(&up.heads, 1).await;

        let started = std::time::Instant::now();
        let r = client_of(h2)
            .post(url.clone())
            .body("x".repeat(10_000))
            .send()
            .await
            .unwrap();
        let version = r.version();
        assert_eq!(r.status(), 503, "h2: {h2}");
        assert_eq!(version == reqwest::Version::HTTP_2, h2);
        let body = r.text().await.unwrap();
        assert!(body.contains("too many requests in flight"), "{body}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            up.heads.load(Ordering::SeqCst),
            1,
            "the refused one went on"
        );

        up.gate.add_permits(100);
        let first = first.await.unwrap().unwrap();
        assert_eq!(first.status(), 200, "h2: {h2}");
        assert_eq!(first.text().await.unwrap(), "ok");
        // The first's slot is freed once its response has been sent,
        // which may be a moment after the client has read it all.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = client_of(h2)
                .get(url.clone())
                .send()
                .await
                .unwrap()
                .status();
            if status == 200 {
                break;
            }
            assert_eq!(status, 503);
            assert!(std::time::Instant::now() < deadline, "never served again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(metric(&gw, "pylon_requests_refused_total{reason=\"in_flight\"}") >= 1.0);
    }
}
