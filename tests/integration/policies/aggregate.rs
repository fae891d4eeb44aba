//! Tests of the `aggregate` policy plugin: fan-out to real upstreams through
//! the host's outbound HTTP, merging, failure policies, per-call timeouts,
//! the sequential `then` step, and that the calls really run concurrently.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::harness::{TestGateway, Upstream, client, parse, plugin, start_error};

/// An upstream answering `200`, `application/json`, `f(path and query)`
/// after `delay`.
async fn json_upstream(delay: Duration, f: fn(&str) -> Value) -> Upstream {
    Upstream::with(move |seen| async move {
        tokio::time::sleep(delay).await;
        let body = f(&seen.uri.to_string()).to_string();
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    })
    .await
}

/// An upstream answering `status` with `body` at once.
async fn answering(status: u16, body: &'static str) -> Upstream {
    Upstream::with(move |_| async move {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    })
    .await
}

/// The TOML of a gateway whose upstreams are `upstreams` (name, address),
/// all granted to the `aggregate` plugin, and one route `agg` on
/// `/agg/{id}` with no upstream of its own, whose plugin config is the
/// `[routes.plugins.config]` TOML `config`.
fn toml(upstreams: &[(&str, String)], config: &str) -> String {
    let mut out = String::new();
    for (name, addr) in upstreams {
        out += &format!("[upstreams.{name}]\ntargets = [\"{addr}\"]\n\n");
    }
    let names: Vec<String> = upstreams.iter().map(|(n, _)| format!("{n:?}")).collect();
    out += &format!(
        r#"
[plugins.aggregate]
component = {component:?}
capabilities = ["http"]
http-upstreams = [{names}]
# The whole fan-out happens inside one on-request call.
deadline = "3s"

[[routes]]
id = "agg"
path = "/agg/{{id}}"

[[routes.plugins]]
plugin = "aggregate"

[routes.plugins.config]
{config}
"#,
        component = plugin("aggregate"),
        names = names.join(", "),
    );
    out
}

async fn gateway(upstreams: &[(&str, &Upstream)], config: &str) -> TestGateway {
    let ups: Vec<(&str, String)> = upstreams
        .iter()
        .map(|(n, u)| (*n, u.addr.to_string()))
        .collect();
    TestGateway::start(&toml(&ups, config)).await
}

async fn get_json(gw: &TestGateway, path: &str) -> (u16, http::HeaderMap, Value) {
    let r = client()
        .get(gw.url(path))
        .header("x-tenant", "acme co")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, headers, v)
}

/// An address where nothing listens (bound, then closed).
async fn refused_addr() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

#[tokio::test]
async fn merges_answers_under_their_keys_with_substitutions() {
    let users = json_upstream(Duration::ZERO, |pq| json!({"user_at": pq, "name": "Ada"})).await;
    let profiles = json_upstream(Duration::ZERO, |pq| json!(["profile", pq])).await;
    let gw = gateway(
        &[("users", &users), ("profiles", &profiles)],
        r#"calls = [
  { key = "user", upstream = "users", path = "/users/{id}", timeout = "500ms" },
  { key = "profile", upstream = "profiles", path = "/profiles/{id}?fields={query.fields}", method = "POST", headers = { "x-tenant" = "{header.x-tenant}", "x-for" = "user {id}" } },
]
merge = "keys"
"#,
    )
    .await;
    let (status, headers, v) = get_json(&gw, "/agg/a%20b?fields=x+y&other=1").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("x-aggregate-partial").is_none());
    assert_eq!(
        v,
        json!({
            "user": {"user_at": "/users/a%20b", "name": "Ada"},
            "profile": ["profile", "/profiles/a%20b?fields=x%20y"],
        })
    );
    let seen = profiles.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.headers["x-tenant"], "acme co");
    assert_eq!(
        seen.headers["x-for"], "user a%20b",
        "header values are not percent-encoded"
    );
    assert_eq!(users.last().method, "GET");

    let r = client().get(gw.url("/agg/1")).send().await.unwrap();
    assert_eq!(
        r.status(),
        400,
        "a missing query parameter is the client's error"
    );
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(
        v["error"],
        "missing query parameter \"fields\", needed by call \"profile\""
    );
}

#[tokio::test]
async fn deep_merge_combines_objects_later_calls_winning() {
    let a = json_upstream(
        Duration::ZERO,
        |_| json!({"id": 1, "user": {"name": "Ada", "tags": ["a"]}, "src": "a"}),
    )
    .await;
    let b = json_upstream(
        Duration::ZERO,
        |_| json!({"user": {"email": "ada@example.com", "tags": ["b"]}, "src": "b"}),
    )
    .await;
    let gw = gateway(
        &[("a", &a), ("b", &b)],
        r#"merge = "deep"
calls = [
  { key = "first", upstream = "a", path = "/a" },
  { key = "second", upstream = "b", path = "/b" },
]
"#,
    )
    .await;
    let (status, _, v) = get_json(&gw, "/agg/1").await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"id": 1, "user": {"name": "Ada", "email": "ada@example.com", "tags": ["b"]}, "src": "b"})
    );
}

#[tokio::test]
async fn failing_backend_fails_the_request_or_is_omitted_per_policy() {
    let good = json_upstream(Duration::ZERO, |_| json!({"ok": true})).await;
    let broken = answering(500, "{\"error\":\"boom\"}").await;
    let not_json = answering(200, "<html>hello</html>").await;
    let refused = refused_addr().await;
    let ups = [
        ("good", good.addr.to_string()),
        ("broken", broken.addr.to_string()),
        ("notjson", not_json.addr.to_string()),
        ("down", refused),
    ];
    let calls = r#"calls = [
  { key = "good", upstream = "good", path = "/" },
  { key = "broken", upstream = "broken", path = "/" },
  { key = "html", upstream = "notjson", path = "/" },
  { key = "down", upstream = "down", path = "/" },
]
"#;

    let fail = TestGateway::start(&toml(&ups, &format!("on-failure = \"fail\"\n{calls}"))).await;
    let (status, headers, v) = get_json(&fail, "/agg/1").await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        v["call"], "broken",
        "the first failed call in config order is named"
    );
    assert_eq!(v["error"], "call \"broken\" failed: upstream answered 500");

    let omit = TestGateway::start(&toml(&ups, &format!("on-failure = \"omit\"\n{calls}"))).await;
    let (status, headers, v) = get_json(&omit, "/agg/1").await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-aggregate-partial"], "true");
    assert_eq!(
        v,
        json!({"good": {"ok": true}, "_partial": ["broken", "html", "down"]})
    );

    let only_html = TestGateway::start(&toml(
        &ups,
        "calls = [{ key = \"html\", upstream = \"notjson\", path = \"/\" }]\n",
    ))
    .await;
    let (status, _, v) = get_json(&only_html, "/agg/1").await;
    assert_eq!(status, 502, "the default policy is fail");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("call \"html\" failed: the answer is not JSON"),
        "{v}"
    );
}

#[tokio::test]
async fn a_call_slower_than_its_timeout_fails_without_waiting_for_it() {
    let fast = json_upstream(Duration::ZERO, |_| json!("fast")).await;
    let slow = json_upstream(Duration::from_secs(2), |_| json!("slow")).await;
    let calls = r#"calls = [
  { key = "fast", upstream = "fast", path = "/" },
  { key = "slow", upstream = "slow", path = "/", timeout = "100ms" },
]
"#;
    let omit = gateway(
        &[("fast", &fast), ("slow", &slow)],
        &format!("on-failure = \"omit\"\n{calls}"),
    )
    .await;
    let started = Instant::now();
    let (status, headers, v) = get_json(&omit, "/agg/1").await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(headers["x-aggregate-partial"], "true");
    assert_eq!(v, json!({"fast": "fast", "_partial": ["slow"]}));
    assert!(
        took >= Duration::from_millis(100),
        "answered before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "waited for the slow backend: {took:?}"
    );

    let fail = gateway(&[("fast", &fast), ("slow", &slow)], calls).await;
    let (status, _, v) = get_json(&fail, "/agg/1").await;
    assert_eq!(status, 502);
    assert_eq!(v["error"], "call \"slow\" failed: timed out after 100ms");
}

#[tokio::test]
async fn then_steps_use_values_from_earlier_answers() {
    let users = json_upstream(
        Duration::ZERO,
        |_| json!({"id": 7, "account": {"no": "A/1"}, "teams": [{"id": "t9"}]}),
    )
    .await;
    let orders = json_upstream(Duration::ZERO, |pq| json!({"for": pq})).await;
    let teams = json_upstream(Duration::ZERO, |pq| json!({"for": pq})).await;
    let gw = gateway(
        &[("users", &users), ("orders", &orders), ("teams", &teams)],
        r#"on-failure = "omit"
calls = [{ key = "user", upstream = "users", path = "/users/{id}" }]
then = [
  { key = "orders", upstream = "orders", path = "/orders?user={user.id}&acct={user.account.no}" },
  { key = "team", upstream = "teams", path = "/teams/{user/teams/0/id}", headers = { "x-user" = "{user.id}" } },
  { key = "missing", upstream = "teams", path = "/x/{user.nope}" },
]
"#,
    )
    .await;
    let (status, headers, v) = get_json(&gw, "/agg/7").await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-aggregate-partial"], "true");
    assert_eq!(
        v,
        json!({
            "user": {"id": 7, "account": {"no": "A/1"}, "teams": [{"id": "t9"}]},
            "orders": {"for": "/orders?user=7&acct=A%2F1"},
            "team": {"for": "/teams/t9"},
            "_partial": ["missing"],
        })
    );
    assert_eq!(teams.last().headers["x-user"], "7");
    assert_eq!(
        teams.seen().len(),
        1,
        "a step whose value is missing is not sent"
    );
    assert_eq!(users.seen().len(), 1);

    // When the first group's call fails, the steps that depend on it fail too.
    let down = refused_addr().await;
    let ups = [
        ("users", down),
        ("orders", orders.addr.to_string()),
        ("teams", teams.addr.to_string()),
    ];
    let gw = TestGateway::start(&toml(
        &ups,
        r#"on-failure = "omit"
calls = [{ key = "user", upstream = "users", path = "/users/{id}" }]
then = [{ key = "orders", upstream = "orders", path = "/orders?user={user.id}" }]
"#,
    ))
    .await;
    let before = orders.seen().len();
    let (status, _, v) = get_json(&gw, "/agg/7").await;
    assert_eq!(status, 200);
    assert_eq!(v, json!({"_partial": ["user", "orders"]}));
    assert_eq!(orders.seen().len(), before);
}

#[tokio::test]
async fn calls_run_concurrently_so_latency_is_the_slowest_not_the_sum() {
    let a = json_upstream(Duration::from_millis(50), |_| json!(50)).await;
    let b = json_upstream(Duration::from_millis(100), |_| json!(100)).await;
    let c = json_upstream(Duration::from_millis(150), |_| json!(150)).await;
    let gw = gateway(
        &[("a", &a), ("b", &b), ("c", &c)],
        r#"calls = [
  { key = "a", upstream = "a", path = "/" },
  { key = "b", upstream = "b", path = "/" },
  { key = "c", upstream = "c", path = "/" },
]
"#,
    )
    .await;
    let http = client();
    // Warm up: instance pool, upstream connections.
    let r = http.get(gw.url("/agg/1")).send().await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap(),
        json!({"a": 50, "b": 100, "c": 150})
    );
    let mut samples = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        let r = http.get(gw.url("/agg/1")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(150),
            "faster than the slowest backend: {took:?}"
        );
        samples.push(took);
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    eprintln!("aggregate latency samples (50/100/150 ms backends): {samples:?}, median {median:?}");
    assert!(
        median < Duration::from_millis(280),
        "calls did not overlap: median {median:?} of {samples:?}"
    );
}

#[tokio::test]
async fn invalid_configs_are_rejected_naming_the_key() {
    for (config, needle) in [
        (
            "calls = []\n",
            "invalid aggregate config: calls: at least one call is needed",
        ),
        (
            "calls = [{ key = \"a\", upstream = \"u\", path = \"/a\", timeout = \"soon\" }]\n",
            "calls[0].timeout: not a positive duration",
        ),
        (
            "calls = [{ key = \"a\", upstream = \"u\", path = \"/a/{b.id}\" }, { key = \"b\", upstream = \"u\", path = \"/b\" }]\n",
            "calls[0] (\"a\"): {b.id} reads the answer of \"b\", but calls run at once; move this call to `then`",
        ),
        (
            "calls = [{ key = \"a\", upstream = \"u\", path = \"/a/{id\" }]\n",
            "calls[0].path: \"/a/{id\" has a '{' without a '}'",
        ),
        (
            "calls = [{ key = \"a\", upstream = \"u\", path = \"/a\" }]\nmerge = \"shallow\"\n",
            "unknown variant `shallow`",
        ),
    ] {
        let cfg = parse(&toml(&[("u", "127.0.0.1:9".to_string())], config))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = start_error(cfg)
            .await
            .unwrap_or_else(|| panic!("config accepted: {config}"));
        assert!(err.contains("route \"agg\", plugin \"aggregate\""), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
}
