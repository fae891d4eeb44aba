//! Target health: active checks take a failing target out until it passes,
//! all-unhealthy spreads over every target, a reload keeping the targets
//! keeps a dead one out, and the resilience settings are checked at load.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use crate::harness::{TestGateway, Upstream, client, series};

use super::{dead_addr, metrics, route_to_u, upstreams_json, with_admin};

#[tokio::test]
async fn a_target_failing_its_health_check_gets_no_traffic_until_it_passes() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let sick = Upstream::with(move |seen| {
        let ok = h.load(Ordering::SeqCst);
        async move {
            let status = if seen.uri.path() == "/healthz" && !ok {
                503
            } else {
                200
            };
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from_static(b"sick")))
                .unwrap()
        }
    })
    .await;
    let well = Upstream::named("well").await;
    let gw = TestGateway::start(&with_admin(&format!(
        "[upstreams.u]\ntargets = [\"{}\", \"{}\"]\n\n[upstreams.u.health-check]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy-threshold = 1\nhealthy-threshold = 1\n\n{}",
        sick.addr,
        well.addr,
        route_to_u("")
    )))
    .await;
    // Wait for the check to mark it (readiness from the admin API).
    let wait_for = |want: bool| {
        let gw = &gw;
        async move {
            for _ in 0..200 {
                let v = upstreams_json(gw).await;
                if v["upstreams"][0]["target_states"][0]["healthy"] == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("target never became healthy = {want}");
        }
    };
    wait_for(false).await;
    let http = client();
    for _ in 0..10 {
        assert_eq!(
            http.get(gw.url("/x"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "well"
        );
    }
    assert!(sick.seen().iter().all(|s| s.uri.path() == "/healthz"));
    healthy.store(true, Ordering::SeqCst);
    wait_for(true).await;
    let mut bodies = Vec::new();
    for _ in 0..10 {
        bodies.push(
            http.get(gw.url("/x"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    assert!(bodies.iter().any(|b| b == "sick"), "{bodies:?}");
    let m = metrics(&gw).await;
    assert!(
        series(
            &m,
            "pylon_upstream_target_events_total{upstream=\"u\",event=\"unhealthy\"}"
        ) >= Some(1.0),
        "{m}"
    );
    assert!(
        series(
            &m,
            "pylon_upstream_health_checks_total{upstream=\"u\",result=\"fail\"}"
        ) >= Some(1.0)
    );
}

#[tokio::test]
async fn every_target_unhealthy_spreads_traffic_over_all_rather_than_refusing() {
    let a = Upstream::with(|seen| async move {
        let status = if seen.uri.path() == "/healthz" {
            500
        } else {
            200
        };
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"a")))
            .unwrap()
    })
    .await;
    let gw = TestGateway::start(&with_admin(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n\n[upstreams.u.health-check]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy-threshold = 1\n\n{}",
        a.addr,
        route_to_u("")
    )))
    .await;
    for _ in 0..200 {
        if upstreams_json(&gw).await["upstreams"][0]["target_states"][0]["healthy"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        upstreams_json(&gw).await["upstreams"][0]["target_states"][0]["healthy"],
        false
    );
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200, "panic mode still serves");
}

#[test]
fn resilience_settings_are_checked_at_load() {
    let err = crate::harness::parse(
        "[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\nweights = [1, 2]\nbalance = \"fastest\"\n\n\
         [upstreams.u.health-check]\npath = \"healthz\"\nstatuses = \"2xx\"\n\n\
         [upstreams.u.retry-budget]\nratio = 1.5\n\n\
         [[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n\n[routes.retry]\nretries = 50\nstatuses = [404]\n",
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "weights has 2 entries for 1 targets",
        "unknown balance \"fastest\"",
        "invalid path \"healthz\"",
        "invalid statuses \"2xx\"",
        "ratio must be between 0.0 and 1.0",
        "retries must be between 0 and 10",
        "a retried status must be a 5xx",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[tokio::test]
async fn a_reload_that_keeps_the_targets_keeps_a_dead_one_out() {
    let live = Upstream::named("live").await;
    let dead = dead_addr().await;
    let toml = |timeout: &str| {
        with_admin(&format!(
            "[upstreams.u]\ntargets = [\"{dead}\", \"{}\"]\n{}",
            live.addr,
            route_to_u(&format!("timeout = \"{timeout}\""))
        ))
    };
    let gw = TestGateway::start(&toml("30s")).await;
    let http = client();
    let get_all = async || {
        for i in 0..40 {
            let r = http.get(gw.url("/x")).send().await.unwrap();
            assert_eq!(r.status(), 200, "request {i}");
            assert_eq!(r.text().await.unwrap(), "live");
        }
    };
    get_all().await;
    let connect_errors = async || {
        series(
            &metrics(&gw).await,
            "pylon_upstream_errors_total{upstream=\"u\",kind=\"connect\"}",
        )
        .unwrap_or(0.0)
    };
    let before = connect_errors().await;
    assert!(before >= 1.0, "the dead target was tried");
    assert_eq!(
        upstreams_json(&gw).await["upstreams"][0]["target_states"][0]["ejected"],
        true
    );
    // Same targets, another route timeout: a new configuration.
    gw.gateway
        .reload_with(crate::harness::parse(&toml("20s")).unwrap())
        .await
        .unwrap();
    let v = upstreams_json(&gw).await;
    assert_eq!(
        v["upstreams"][0]["target_states"][0]["ejected"], true,
        "the reload forgot the ejection: {v}"
    );
    get_all().await;
    assert_eq!(
        connect_errors().await,
        before,
        "the dead target got traffic again after the reload"
    );
}
