//! Tests of the `rate-limit` policy plugin.

use std::{path::Path, time::Duration};

use pylon::Gateway;

use crate::harness::{
    Redis, TestGateway, Upstream, cache_dir, client, one_plugin_route, parse, root, start_error,
};

/// Upstream, plugin definition (`capabilities` as given) and a route `r` on
/// every path whose only plugin is `rate-limit` with `config`.
fn toml(up: &Upstream, capabilities: &str, config: &str) -> String {
    let def_extra = format!("capabilities = {capabilities}");
    one_plugin_route(&up.addr.to_string(), "rate-limit", &def_extra, config)
}

async fn gateway(up: &Upstream, config: &str) -> TestGateway {
    TestGateway::start(&toml(up, r#"["kv", "clock"]"#, config)).await
}

/// A gateway whose kv store is the Redis at `redis`.
async fn gateway_on_redis(redis: &Redis, up: &Upstream, config: &str) -> TestGateway {
    let text = format!(
        "[runtime]\ncache-dir = {:?}\nkv = {{ backend = \"redis\", url = {:?} }}\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\n{}",
        cache_dir().display().to_string(),
        redis.url(),
        toml(up, r#"["kv", "clock"]"#, config)
    );
    let cfg = pylon::config::parse(&text, Path::new("test.toml"), &root())
        .unwrap_or_else(|e| panic!("{e}"));
    let gateway = Gateway::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("{}", pylon::error::ErrorChain(&e)));
    let addr = gateway.local_addrs()[0];
    TestGateway { gateway, addr }
}

async fn get(gw: &TestGateway, client_id: &str) -> reqwest::Response {
    client()
        .get(gw.url("/thing"))
        .header("x-client", client_id)
        .send()
        .await
        .unwrap()
}

/// A numeric response header.
fn num(r: &reqwest::Response, name: &str) -> u64 {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", r.headers()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

const BY_CLIENT: &str = r#"key = { header = "x-client" }"#;

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after_and_ratelimit_headers() {
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        &format!("limits = [{{ requests = 3, per = \"1m\" }}]\n{BY_CLIENT}"),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get(&gw, "a").await.status(), 200);
    }
    let r = get(&gw, "a").await;
    assert_eq!(r.status(), 429);
    let retry = num(&r, "retry-after");
    assert!((1..=120).contains(&retry), "Retry-After {retry}");
    assert_eq!(num(&r, "ratelimit-limit"), 3);
    assert_eq!(num(&r, "ratelimit-remaining"), 0);
    let reset = num(&r, "ratelimit-reset");
    assert!((1..=120).contains(&reset), "RateLimit-Reset {reset}");
    assert_eq!(r.text().await.unwrap(), "too many requests\n");
    assert_eq!(
        up.seen().len(),
        3,
        "the refused request reached the upstream"
    );
    // Refused requests are not counted: still refused, still 3 upstream.
    assert_eq!(get(&gw, "a").await.status(), 429);
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn proxied_responses_carry_decreasing_remaining() {
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        &format!("limits = [{{ requests = 5, per = \"1h\" }}]\n{BY_CLIENT}"),
    )
    .await;
    for expected in (0..5).rev() {
        let r = get(&gw, "a").await;
        assert_eq!(r.status(), 200);
        assert_eq!(num(&r, "ratelimit-limit"), 5);
        assert_eq!(num(&r, "ratelimit-remaining"), expected);
        assert!(num(&r, "ratelimit-reset") <= 2 * 3600);
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    assert_eq!(get(&gw, "a").await.status(), 429);
}

#[tokio::test]
async fn each_client_header_value_has_its_own_counter() {
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        &format!("limits = [{{ requests = 2, per = \"1m\" }}]\n{BY_CLIENT}"),
    )
    .await;
    assert_eq!(get(&gw, "alice").await.status(), 200);
    assert_eq!(get(&gw, "alice").await.status(), 200);
    assert_eq!(get(&gw, "alice").await.status(), 429);
    let r = get(&gw, "bob").await;
    assert_eq!(r.status(), 200);
    assert_eq!(num(&r, "ratelimit-remaining"), 1);
    // Without the header the client IP is the key: a third counter.
    let r = client().get(gw.url("/thing")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(num(&r, "ratelimit-remaining"), 1);
}

#[tokio::test]
async fn consumer_key_and_missing_key_deny() {
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        "limits = [{ requests = 1, per = \"1m\" }]\nkey = \"consumer\"\nmissing-key = \"deny\"",
    )
    .await;
    let as_consumer = |c: &'static str| client().get(gw.url("/")).header("x-consumer", c).send();
    assert_eq!(as_consumer("acme").await.unwrap().status(), 200);
    assert_eq!(as_consumer("acme").await.unwrap().status(), 429);
    assert_eq!(as_consumer("globex").await.unwrap().status(), 200);
    let r = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.text().await.unwrap(), "missing x-consumer header\n");
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn every_limit_applies_and_headers_show_the_most_restrictive() {
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        &format!("limits = [{{ requests = 2, per = \"1s\" }}, {{ requests = 3, per = \"1h\" }}]\n{BY_CLIENT}"),
    )
    .await;
    // First request: 1 left of the per-second limit, 2 of the hourly one.
    let r = get(&gw, "a").await;
    assert_eq!(
        (num(&r, "ratelimit-limit"), num(&r, "ratelimit-remaining")),
        (2, 1)
    );
    let r = get(&gw, "a").await;
    assert_eq!(r.status(), 200);
    assert_eq!(num(&r, "ratelimit-remaining"), 0);
    // The per-second limit refuses the third, briefly.
    let r = get(&gw, "a").await;
    assert_eq!(r.status(), 429);
    let retry = num(&r, "retry-after");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    tokio::time::sleep(Duration::from_secs(retry)).await;
    // The refused request was not counted by the hourly limit either: one
    // of its 3 is left for this request.
    let r = get(&gw, "a").await;
    assert_eq!(r.status(), 200, "{:?}", r.headers());
    assert_eq!(num(&r, "ratelimit-limit"), 3);
    assert_eq!(num(&r, "ratelimit-remaining"), 0);
    // Now the hourly limit refuses, for much longer.
    let r = get(&gw, "a").await;
    assert_eq!(r.status(), 429);
    assert!(num(&r, "retry-after") > 60, "{:?}", r.headers());
    assert_eq!(num(&r, "ratelimit-limit"), 3);
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn sliding_window_frees_quota_after_the_window_passes() {
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        &format!("limits = [{{ requests = 2, per = \"1s\" }}]\n{BY_CLIENT}"),
    )
    .await;
    assert_eq!(get(&gw, "a").await.status(), 200);
    assert_eq!(get(&gw, "a").await.status(), 200);
    let r = get(&gw, "a").await;
    assert_eq!(r.status(), 429);
    // Retry-After is when the weighted count of the window that filled
    // up has decayed enough: at most two windows.
    let retry = num(&r, "retry-after");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(get(&gw, "a").await.status(), 200);
    // Two full windows after the last request nothing of it weighs any more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = get(&gw, "a").await;
    assert_eq!(r.status(), 200);
    assert_eq!(num(&r, "ratelimit-remaining"), 1);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sleep until just after the next multiple of `step_ms` on the wall clock,
/// where the token bucket (same clock, same process) refills.
async fn next_step(step_ms: u64) {
    let now = now_ms();
    tokio::time::sleep(Duration::from_millis(step_ms - now % step_ms + 2)).await;
}

#[tokio::test]
async fn token_bucket_allows_the_burst_then_the_rate() {
    // 4 per second with a burst of 3: one token every 250ms, at most 3.
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        &format!("algorithm = \"token-bucket\"\nlimits = [{{ requests = 4, per = \"1s\", burst = 3 }}]\n{BY_CLIENT}"),
    )
    .await;
    next_step(250).await;
    let step = now_ms() / 250;
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..4 {
        let r = get(&gw, "a").await;
        statuses.push(r.status().as_u16());
        last = Some(r);
    }
    let last = last.unwrap();
    // Every request fell between two refills (unless the machine stalled).
    if now_ms() / 250 == step {
        assert_eq!(statuses, [200, 200, 200, 429]);
        assert_eq!(
            num(&last, "ratelimit-limit"),
            3,
            "the limit of a bucket is its capacity"
        );
        assert_eq!(
            num(&last, "retry-after"),
            1,
            "the next token is at most 250ms away"
        );
        assert_eq!(num(&last, "ratelimit-reset"), 1, "full again within 750ms");
    }
    // The next step refills exactly one token.
    next_step(250).await;
    let step = now_ms() / 250;
    let first = get(&gw, "a").await;
    assert_eq!(first.status(), 200);
    let second = get(&gw, "a").await.status();
    if now_ms() / 250 == step {
        assert_eq!(num(&first, "ratelimit-remaining"), 0);
        assert_eq!(second, 429);
    }
    // Long after, the bucket holds no more than its capacity.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    next_step(250).await;
    let step = now_ms() / 250;
    let mut passed = 0;
    for _ in 0..4 {
        passed += u32::from(get(&gw, "a").await.status() == 200);
    }
    if now_ms() / 250 == step {
        assert_eq!(passed, 3);
    }
    assert!(passed >= 3);
}

#[tokio::test]
async fn route_key_counts_every_client_together() {
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        "limits = [{ requests = 2, per = \"1m\" }]\nkey = \"route\"",
    )
    .await;
    assert_eq!(get(&gw, "a").await.status(), 200);
    assert_eq!(get(&gw, "b").await.status(), 200);
    assert_eq!(get(&gw, "c").await.status(), 429);
}

#[tokio::test]
async fn without_kv_requests_pass_by_default_and_fail_with_deny() {
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&toml(
        &up,
        r#"["clock"]"#,
        "limits = [{ requests = 1, per = \"1m\" }]",
    ))
    .await;
    for _ in 0..3 {
        let r = client().get(gw.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("ratelimit-remaining").is_none());
    }
    let gw = TestGateway::start(&toml(
        &up,
        r#"["clock"]"#,
        "limits = [{ requests = 1, per = \"1m\" }]\non-kv-error = \"deny\"",
    ))
    .await;
    let r = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.text().await.unwrap(), "rate limit store denied\n");
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn headers_false_skips_the_response_phase_headers() {
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        &format!("limits = [{{ requests = 1, per = \"1m\" }}]\nheaders = false\n{BY_CLIENT}"),
    )
    .await;
    let r = get(&gw, "a").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("ratelimit-limit").is_none());
    let r = get(&gw, "a").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert!(r.headers().get("ratelimit-limit").is_none());
}

#[tokio::test]
async fn limits_hold_across_gateways_sharing_redis() {
    let redis = Redis::start();
    let up = Upstream::named("ok").await;
    let config = format!("limits = [{{ requests = 4, per = \"1m\" }}]\n{BY_CLIENT}");
    let gw1 = gateway_on_redis(&redis, &up, &config).await;
    let gw2 = gateway_on_redis(&redis, &up, &config).await;
    for (i, gw) in [&gw1, &gw2, &gw1, &gw2].into_iter().enumerate() {
        let r = get(gw, "shared").await;
        assert_eq!(r.status(), 200);
        assert_eq!(num(&r, "ratelimit-remaining"), 3 - i as u64);
    }
    assert_eq!(get(&gw1, "shared").await.status(), 429);
    assert_eq!(get(&gw2, "shared").await.status(), 429);
    // Another client is unaffected, on either gateway.
    assert_eq!(get(&gw2, "other").await.status(), 200);
    assert_eq!(up.seen().len(), 5);

    // The token bucket's level and counters are shared the same way.
    let bucket = format!(
        "algorithm = \"token-bucket\"\nlimits = [{{ requests = 1, per = \"1h\", burst = 2 }}]\n{BY_CLIENT}"
    );
    let gw3 = gateway_on_redis(&redis, &up, &bucket).await;
    let gw4 = gateway_on_redis(&redis, &up, &bucket).await;
    assert_eq!(get(&gw3, "tb").await.status(), 200);
    assert_eq!(get(&gw4, "tb").await.status(), 200);
    let r = get(&gw3, "tb").await;
    assert_eq!(r.status(), 429);
    // With one token an hour the refill steps are whole hours of the epoch,
    // so the next token comes at the top of the next hour.
    let into_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 3600;
    let retry = num(&r, "retry-after");
    assert!(
        (1..=3600).contains(&retry) && retry.abs_diff(3600 - into_hour) <= 2,
        "retry-after {retry}s, {into_hour}s into the hour"
    );
    assert_eq!(get(&gw4, "tb").await.status(), 429);
}

/// The message `Gateway::start` gives for a rate-limit config `config`.
async fn rejection(config: &str) -> String {
    let up = Upstream::named("unused").await;
    let cfg = parse(&toml(&up, r#"["kv", "clock"]"#, config)).unwrap_or_else(|e| panic!("{e}"));
    start_error(cfg)
        .await
        .unwrap_or_else(|| panic!("config accepted: {config}"))
}

#[tokio::test]
async fn invalid_configs_are_rejected_naming_the_key() {
    for (config, needle) in [
        (
            "limits = []",
            "invalid rate-limit config: limits: at least one limit is needed",
        ),
        (
            "limits = [{ requests = 0, per = \"1s\" }]",
            "limits[0].requests: must be between 1 and",
        ),
        (
            "limits = [{ requests = 1, per = \"1s\" }, { requests = 1, per = \"fortnight\" }]",
            "limits[1].per: \"fortnight\" is not a duration",
        ),
        (
            "limits = [{ requests = 1, per = \"1s\", burst = 5 }]",
            "limits[0].burst: only used with algorithm = \"token-bucket\"",
        ),
        (
            "limits = [{ requests = 1, per = \"1s\" }]\nalgorithm = \"leaky\"",
            "algorithm: unknown algorithm \"leaky\"",
        ),
        (
            "limits = [{ requests = 1, per = \"1s\" }]\nkey = \"user\"",
            "key: unknown key \"user\"",
        ),
        (
            "limits = [{ requests = 1, per = \"1s\" }]\nkey = { claim = \"sub\" }",
            "key.header: needed with key.claim",
        ),
        (
            "limits = [{ requests = 1, per = \"1s\" }]\non-kv-error = \"retry\"",
            "on-kv-error: unknown value \"retry\"",
        ),
        (
            "limits = [{ requests = 1, per = \"1s\" }]\nwindow = \"1s\"",
            "unknown field `window`",
        ),
    ] {
        let err = rejection(config).await;
        assert!(err.contains("route \"r\", plugin \"rate-limit\""), "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}
