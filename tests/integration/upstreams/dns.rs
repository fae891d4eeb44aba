//! Targets named by host: resolved on a timer into their addresses, and a
//! name that does not resolve fails its requests and is counted.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpListener;

use crate::harness::{TestGateway, Upstream, client, series};

use super::{Killable, metrics, route_to_u, upstreams_json, with_admin};

/// Servers on every address `localhost` resolves to (127.0.0.1, and ::1 on
/// most machines), all on one port: the harness's upstream on 127.0.0.1
/// (it records the requests), a `Killable` on each other address.
async fn on_every_localhost_address() -> (Upstream, Vec<Killable>, Vec<SocketAddr>) {
    for _ in 0..20 {
        let v4 = Upstream::named("v4").await;
        let port = v4.addr.port();
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(("localhost", port))
            .await
            .unwrap()
            .collect();
        addrs.sort();
        addrs.dedup();
        assert!(
            addrs.contains(&v4.addr),
            "localhost is not 127.0.0.1: {addrs:?}"
        );
        let mut others = Vec::new();
        for a in addrs.iter().filter(|a| **a != v4.addr) {
            // The port may be taken on that address: then another port.
            match TcpListener::bind(a).await {
                Ok(l) => others.push(Killable::on(l, "other", Duration::ZERO)),
                Err(_) => break,
            }
        }
        if others.len() + 1 == addrs.len() {
            return (v4, others, addrs);
        }
    }
    panic!("no port free on every address of localhost");
}

#[tokio::test]
async fn a_host_name_target_is_resolved_on_a_timer_into_its_addresses() {
    let (v4, others, addrs) = on_every_localhost_address().await;
    let target = format!("localhost:{}", v4.addr.port());
    let gw = TestGateway::start(&with_admin(&format!(
        "[upstreams.u]\ntargets = [\"{target}\"]\ndns-refresh = \"100ms\"\n{}",
        route_to_u("")
    )))
    .await;
    // The first look-up, at load: one endpoint per address.
    let expected: Vec<String> = addrs.iter().map(|a| format!("{target} ({a})")).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = upstreams_json(&gw).await;
        let names: Vec<String> = v["upstreams"][0]["target_states"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["target"].as_str().unwrap().to_string())
            .collect();
        if names == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never resolved into {expected:?}: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Traffic reaches every address.
    let http = client();
    for i in 0..20 {
        let r = http.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
    assert!(!v4.seen().is_empty());
    assert!(
        others.iter().all(|k| k.hits() > 0),
        "an address got nothing"
    );
    // Looked up again on the timer; the set changed once (name → addresses).
    let resolved = |result: &str| {
        format!("pylon_upstream_resolutions_total{{upstream=\"u\",result=\"{result}\"}}")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while series(&metrics(&gw).await, &resolved("ok")).unwrap_or(0.0) < 3.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not looked up again every 100ms"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(series(&metrics(&gw).await, &resolved("changed")), Some(1.0));
    assert_eq!(series(&metrics(&gw).await, &resolved("fail")), None);
}

#[tokio::test]
async fn a_host_name_that_does_not_resolve_fails_its_requests_and_is_counted() {
    let gw = TestGateway::start(&with_admin(&format!(
        "[upstreams.u]\ntargets = [\"no-such-host.invalid:80\"]\ndns-refresh = \"100ms\"\n{}",
        route_to_u("")
    )))
    .await;
    let fail = "pylon_upstream_resolutions_total{upstream=\"u\",result=\"fail\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while series(&metrics(&gw).await, fail).unwrap_or(0.0) < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed look-up counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The name stays the one endpoint, resolved per connection: 502.
    let v = upstreams_json(&gw).await;
    assert_eq!(
        v["upstreams"][0]["target_states"][0]["target"],
        "no-such-host.invalid:80"
    );
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
}
