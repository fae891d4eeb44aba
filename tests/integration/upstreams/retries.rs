//! Retries: to another target after a refused connect or a reset before
//! the response, for idempotent methods only, never after a streamed body
//! was sent or the response head came, and bounded by the retry budget.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinSet,
};

use crate::harness::{TestGateway, Upstream, client, series, status_of};

use super::{dead_addr, metrics, route_to_u, two_target_gateway, upstreams_json, with_admin};

/// A raw HTTP/1.1 target that reads a request head and then closes the
/// connection without answering (a crash before the response), counting
/// the connections it took.
async fn resetting_target() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let t = taken.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            t.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                // Some of the body, then the crash.
                let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await;
                drop(s);
            });
        }
    });
    (addr, taken)
}

#[tokio::test]
async fn refused_connect_is_retried_on_the_other_target_and_the_dead_one_ejected() {
    let live = Upstream::named("live").await;
    let dead = dead_addr().await;
    let gw = two_target_gateway(dead, live.addr, "").await;
    let http = client();
    for i in 0..40 {
        let r = http.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.text().await.unwrap(), "live");
    }
    let m = metrics(&gw).await;
    let retries = series(
        &m,
        "pylon_upstream_retries_total{upstream=\"u\",reason=\"connect\"}",
    )
    .unwrap_or(0.0);
    assert!(
        (1.0..=5.0).contains(&retries),
        "retried until ejected (5 failures): {retries}\n{m}"
    );
    assert_eq!(
        series(
            &m,
            "pylon_upstream_target_events_total{upstream=\"u\",event=\"ejected\"}"
        ),
        Some(1.0)
    );
    let v = upstreams_json(&gw).await;
    let states = &v["upstreams"][0]["target_states"];
    assert_eq!(states[0]["target"], dead.to_string());
    assert_eq!(states[0]["ejected"], true, "{v}");
    assert_eq!(states[1]["ejected"], false, "{v}");
}

#[tokio::test]
async fn reset_before_the_response_is_retried_for_get_but_not_for_post() {
    let (resetter, taken) = resetting_target().await;
    let good = Upstream::echo_body().await;
    let gw = two_target_gateway(resetter, good.addr, "").await;
    let http = client();
    // Round robin starts at the resetting target: each pair of requests
    // sends one there first.
    let mut ok = 0;
    for _ in 0..4 {
        assert_eq!(status_of(http.get(gw.url("/get"))).await, 200);
        ok += 1;
    }
    assert_eq!(ok, 4);
    assert!(
        taken.load(Ordering::SeqCst) >= 1,
        "the resetting target was tried"
    );

    // POST (not idempotent) with a small, buffered body: never resent.
    let before = good.seen().len();
    let mut failed = 0;
    for _ in 0..4 {
        let r = http
            .post(gw.url("/post"))
            .body("small body")
            .send()
            .await
            .unwrap();
        if r.status() == 502 {
            failed += 1;
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    assert!(
        failed >= 1,
        "a POST that met the reset failed rather than being resent"
    );
    assert_eq!(
        good.seen().len() - before,
        4 - failed,
        "no POST reached the good target twice or after a reset"
    );
}

#[tokio::test]
async fn post_with_a_streamed_body_is_never_retried_after_it_was_sent() {
    let (resetter, taken) = resetting_target().await;
    let good = Upstream::echo_body().await;
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{resetter}\"]\n\n[upstreams.v]\ntargets = [\"{}\"]\n{}",
        good.addr,
        route_to_u("")
    ))
    .await;
    // PUT is idempotent, but its body streams (no length): once bytes went
    // out they cannot be sent again.
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"part one, ")),
        Ok(Bytes::from_static(b"part two")),
    ];
    let r = client()
        .put(gw.url("/stream"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(taken.load(Ordering::SeqCst), 1, "one attempt, no retry");
}

#[tokio::test]
async fn a_retried_status_goes_to_another_target_for_idempotent_methods_only() {
    let busy = Upstream::with(|_| async {
        Response::builder()
            .status(503)
            .body(Full::new(Bytes::from_static(b"busy")))
            .unwrap()
    })
    .await;
    let good = Upstream::named("good").await;
    let gw = two_target_gateway(busy.addr, good.addr, "").await;
    let http = client();
    for _ in 0..4 {
        let r = http.get(gw.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "good");
    }
    let busy_posts_before = busy.seen().iter().filter(|s| s.method == "POST").count();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(status_of(http.post(gw.url("/")).body("x")).await.as_u16());
    }
    let busy_posts = busy.seen().iter().filter(|s| s.method == "POST").count() - busy_posts_before;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        busy_posts,
        "every POST the busy target answered reached the client as is: {statuses:?}"
    );
}

#[tokio::test]
async fn the_retry_budget_stops_a_retry_storm() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let failing = Upstream::with(move |_| {
        h.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Response::builder()
                .status(503)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
    })
    .await;
    let gw = TestGateway::start(&with_admin(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n{}",
        failing.addr,
        route_to_u("")
    )))
    .await;
    let http = client();
    // More than the budget's floor lets through (3 in flight plus 10 a
    // second): a storm.
    let clients = 100;
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let (http, url) = (http.clone(), gw.url("/"));
        set.spawn(async move { status_of(http.get(url)).await.as_u16() });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), 503);
    }
    let sent = hits.load(Ordering::SeqCst);
    // Without a budget, 2 retries each: 120 attempts.
    assert!(
        sent < clients * 3 / 2,
        "{sent} attempts for {clients} requests"
    );
    let m = metrics(&gw).await;
    assert!(
        series(
            &m,
            "pylon_upstream_retries_denied_total{upstream=\"u\",reason=\"budget\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "{m}"
    );
}

#[tokio::test]
async fn reset_after_the_response_head_is_not_retried() {
    // Headers and part of the body, then the connection drops.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let t = taken.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            t.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                    .await;
                let _ = s.flush().await;
                drop(s);
            });
        }
    });
    let good = Upstream::named("good").await;
    let gw = two_target_gateway(addr, good.addr, "").await;
    let r = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the head went to the client as it came");
    assert!(
        r.bytes().await.is_err(),
        "the body is cut, not completed elsewhere"
    );
    assert_eq!(taken.load(Ordering::SeqCst), 1);
    assert!(good.seen().is_empty(), "nothing was resent");
}
