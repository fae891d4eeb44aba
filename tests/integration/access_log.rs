//! The access log: one JSON line per request.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{TestGateway, Upstream, client, status_of};

#[tokio::test]
async fn access_log_writes_one_json_line_per_request() {
    let up = Upstream::echo_body().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&format!(
        "[access-log]\npath = {:?}\n[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"echo\"\npath-prefix = \"/echo\"\nupstream = \"u\"\n",
        log.display().to_string(),
        up.addr
    ))
    .await;
    let http = client();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = http
        .post(gw.url("/echo/x?secret=1"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body("hello world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello world");
    assert_eq!(status_of(http.get(gw.url("/missing"))).await, 404);
    // Shutdown flushes the log writer.
    gw.gateway.shutdown(Duration::from_secs(5)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let a = &lines[0];
    assert_eq!(a["route"], "echo");
    assert_eq!(a["method"], "POST");
    assert_eq!(a["path"], "/echo/x", "the query is not logged");
    assert_eq!(a["status"], 200);
    assert_eq!(a["bytes_in"], 11);
    assert_eq!(a["bytes_out"], 11);
    assert_eq!(a["upstream"], "u");
    assert!(a["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert!(a["duration_ms"].as_f64().unwrap() >= a["upstream_ms"].as_f64().unwrap());
    assert!(a["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(a["trace_id"], trace);
    let time = a["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
        "{time}"
    );
    let b = &lines[1];
    assert_eq!(b["route"], Value::Null);
    assert_eq!(b["status"], 404);
    assert_eq!(b["upstream"], Value::Null);
    assert_eq!(b["trace_id"].as_str().unwrap().len(), 32);
}
