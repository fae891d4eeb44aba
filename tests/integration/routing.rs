//! Routing on headers and query parameters (issue 19.9), end to end: the
//! most specific matching route wins whatever the file order, and a
//! request that meets no route's conditions gets 404.

use crate::harness::{TestGateway, Upstream, client};

#[tokio::test]
async fn headers_and_query_pick_the_route_most_specific_first() {
    let v1 = Upstream::named("v1").await;
    let v2 = Upstream::named("v2").await;
    let beta = Upstream::named("beta").await;
    // Written least specific first: the order must not matter.
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.v1]
targets = ["{v1}"]
[upstreams.v2]
targets = ["{v2}"]
[upstreams.beta]
targets = ["{beta}"]

[[routes]]
id = "v1"
path-prefix = "/api/"
upstream = "v1"

[[routes]]
id = "v2"
path-prefix = "/api/"
match = {{ headers = {{ "x-version" = "2" }} }}
upstream = "v2"

[[routes]]
id = "beta"
path-prefix = "/api/"
match = {{ headers = {{ "x-version" = "2" }}, query = {{ beta = true, "the region" = "eu west" }} }}
upstream = "beta"

[[routes]]
id = "canary-only"
path = "/canary"
match = {{ headers = {{ "x-canary" = true }} }}
upstream = "v2"
"#,
        v1 = v1.addr,
        v2 = v2.addr,
        beta = beta.addr,
    ))
    .await;
    let c = client();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut req = c.get(gw.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/api/x", &[]).await, (200, "v1".into()));
    assert_eq!(
        get("/api/x", &[("x-version", "2")]).await,
        (200, "v2".into())
    );
    assert_eq!(
        get("/api/x?beta&the+region=eu%20west", &[("x-version", "2")]).await,
        (200, "beta".into())
    );
    // One condition short: the next most specific route.
    assert_eq!(
        get("/api/x?beta", &[("x-version", "2")]).await,
        (200, "v2".into())
    );
    assert_eq!(
        get("/api/x?beta&the+region=eu%20west", &[("x-version", "3")]).await,
        (200, "v1".into())
    );
    // A header sent twice is its values joined: "2,2" is not "2".
    let r = c
        .get(gw.url("/api/x"))
        .header("x-version", "2")
        .header("x-version", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "v1");
    // Presence: any value, even empty; absent: no route, 404.
    assert_eq!(get("/canary", &[("x-canary", "")]).await.0, 200);
    assert_eq!(get("/canary", &[]).await.0, 404);
    gw.gateway.shutdown(std::time::Duration::from_secs(1)).await;
}

#[test]
fn match_conditions_are_checked_at_load() {
    for (toml, expect) in [
        (
            "match = { headers = { \"x-a\" = false } }",
            "false is not a condition",
        ),
        (
            "match = { headers = { \"bad header\" = \"1\" } }",
            "not a valid header name",
        ),
        (
            "match = { headers = { \"x-a\" = \"a\\nb\" } }",
            "can never be a header value",
        ),
        (
            "match = { query = { \"\" = true } }",
            "a parameter needs a name",
        ),
        (
            "match = { query = { a = 1 } }",
            "a string (the exact value) or true",
        ),
        ("match = { cookies = { a = \"1\" } }", "unknown field"),
    ] {
        let err = crate::harness::parse(&format!(
            "[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n{toml}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains(expect), "{toml}: {err}");
        assert!(
            err.contains("route \"r\"")
                || expect == "unknown field"
                || expect.starts_with("a string"),
            "{toml}: {err}"
        );
    }
}
