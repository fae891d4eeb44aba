//! The admin API: what it describes (routes, plugins, upstreams, metrics)
//! and its token.

use serde_json::Value;

use crate::harness::{TestGateway, Upstream, admin_get, client, plugin, series, status_of};

#[tokio::test]
async fn admin_api_describes_the_gateway_and_serves_metrics() {
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&format!(
        r#"[admin]
address = "127.0.0.1:0"
[upstreams.u]
targets = ["{up}"]
[upstreams.dead]
targets = ["127.0.0.1:1"]
[plugins.hdr]
component = {hdr:?}
[plugins.trap]
component = {trap:?}
[[routes]]
id = "r"
path = "/r"
upstream = "u"
[[routes.plugins]]
plugin = "hdr"
config = {{ request = {{ headers = {{ rename = {{ "x-b" = "x-c" }} }} }} }}
[[routes]]
id = "dead"
path = "/dead"
upstream = "dead"
[[routes]]
id = "trap"
path = "/trap"
upstream = "u"
[[routes.plugins]]
plugin = "trap"
"#,
        up = up.addr,
        // A plugin called on every request (a rename reads the request).
        hdr = plugin("transform"),
        trap = plugin("trap"),
    ))
    .await;
    let gw = &gw.gateway;
    let base = format!("http://{}", gw.local_addrs()[0]);
    let http = client();
    for _ in 0..2 {
        assert_eq!(status_of(http.get(format!("{base}/r"))).await, 200);
    }
    assert_eq!(status_of(http.get(format!("{base}/nowhere"))).await, 404);
    assert_eq!(status_of(http.get(format!("{base}/dead"))).await, 502);
    assert_eq!(status_of(http.get(format!("{base}/trap"))).await, 500);

    let (s, body) = admin_get(gw, "/admin/health").await;
    assert_eq!((s, body.contains("ok")), (200, true));
    let (s, body) = admin_get(gw, "/admin/ready").await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = admin_get(gw, "/admin/routes").await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<_> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, ["r", "dead", "trap"]);
    assert_eq!(v["routes"][0]["plugins"][0]["plugin"], "hdr");
    let (_, body) = admin_get(gw, "/admin/upstreams").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["upstreams"][1]["name"], "u");
    assert_eq!(v["upstreams"][1]["targets"][0], up.addr.to_string());
    let (_, body) = admin_get(gw, "/admin/plugins").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let hdr = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "hdr")
        .unwrap();
    assert_eq!(hdr["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(hdr["contract"], "0.4.1");
    assert!(hdr["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert!(hdr["stats"]["calls"].as_u64().unwrap() >= 3, "{hdr}");
    let (s, _) = admin_get(gw, "/admin/nothing").await;
    assert_eq!(s, 404);

    let (s, m) = admin_get(gw, "/metrics").await;
    assert_eq!(s, 200);
    let expect = [
        (r#"pylon_requests_total{route="r",status="200"}"#, 2.0),
        (
            r#"pylon_request_duration_seconds_count{route="r",status="200"}"#,
            2.0,
        ),
        (
            r#"pylon_requests_total{route="unmatched",status="404"}"#,
            1.0,
        ),
        (r#"pylon_requests_total{route="dead",status="502"}"#, 1.0),
        (r#"pylon_requests_total{route="trap",status="500"}"#, 1.0),
        (
            r#"pylon_upstream_request_duration_seconds_count{upstream="u"}"#,
            2.0,
        ),
        // One request, three connect failures: a refused connect is
        // retried (twice by default), here on the only target there is.
        (
            r#"pylon_upstream_errors_total{upstream="dead",kind="connect"}"#,
            3.0,
        ),
        (r#"pylon_plugin_traps_total{plugin="trap"}"#, 1.0),
        ("pylon_runtimes_alive", 1.0),
    ];
    for (name, value) in expect {
        assert_eq!(series(&m, name), Some(value), "{name} in\n{m}");
    }
    assert!(
        series(&m, r#"pylon_plugin_calls_total{plugin="hdr"}"#).unwrap() >= 3.0,
        "{m}"
    );
    assert!(
        series(
            &m,
            r#"pylon_plugin_call_duration_seconds_count{plugin="hdr"}"#
        )
        .unwrap()
            >= 3.0,
        "{m}"
    );
    assert!(m.contains("pylon_open_connections "), "{m}");
    assert!(
        m.contains(r#"pylon_plugin_deadline_hits_total{plugin="trap"} 0"#),
        "{m}"
    );
    assert!(
        m.contains(r#"pylon_plugin_memory_hits_total{plugin="trap"} 0"#),
        "{m}"
    );
}

#[tokio::test]
async fn admin_token_is_required_when_configured() {
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"s3cret-token-0123456789\"\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
        up.addr
    ))
    .await;
    let url = format!("http://{}/admin/routes", gw.gateway.admin_addr().unwrap());
    let http = client();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret-token-012345678"),
        Some("s3cret-token-0123456789"),
    ] {
        let mut req = http.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }
    let r = http
        .get(&url)
        .bearer_auth("s3cret-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!(
            "http://{}/metrics",
            gw.gateway.admin_addr().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "metrics are behind the token too");
}
