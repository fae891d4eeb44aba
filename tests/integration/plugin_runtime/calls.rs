//! What a guest sees and answers on a call: the headers plugin's fixed
//! edits (no call needed), the inspector seeing the request without loss,
//! and a Python component running with WASI.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use pylon::{
    pipeline::RequestAction,
    plugin::{PluginLoadError, PluginLoader},
};

use crate::harness::runtime::{
    body, call_ok, chain, def, host, loaded, pooled, request, responded, settings, stats,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_plugin_declares_its_edits_as_fixed_and_asks_for_no_call() {
    let config = r#"{"request": {"set": {"x-a": "1"}, "remove": ["host"]},
                     "response": {"append": {"x-b": ["2", "3"]}}}"#;
    let (rt, p) = loaded(&def("headers", "headers"), config).await;
    let needs = p.needs();
    assert!(!needs.request_phase && !needs.response_phase, "{needs:?}");
    assert!(!needs.request_body && !needs.response_body);
    let mut headers = request("/").headers;
    assert!(headers.contains_key("host"));
    p.fixed()
        .request
        .iter()
        .for_each(|op| op.apply(&mut headers).unwrap());
    assert_eq!(headers.get("x-a").unwrap(), "1");
    assert!(headers.get("host").is_none());
    let mut headers = HeaderMap::new();
    p.fixed()
        .response
        .iter()
        .for_each(|op| op.apply(&mut headers).unwrap());
    let values: Vec<_> = headers.get_all("x-b").iter().collect();
    assert_eq!(values, ["2", "3"]);
    assert_eq!(stats(&rt, "headers").calls, 1, "only configure ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspector_sees_the_request_without_loss() {
    let config = r#"{"want-body": true}"#;
    let (_rt, p) = loaded(&def("inspector", "inspector"), config).await;
    assert!(p.needs().request_body);
    let mut req = request("/a%20b");
    req.method = Method::POST;
    req.query = Some("x=1&x=2".into());
    req.headers.append("x-multi", HeaderValue::from_static("1"));
    req.headers.append("x-multi", HeaderValue::from_static("2"));
    req.headers
        .append("x-bytes", HeaderValue::from_bytes(b"caf\xe9").unwrap());
    req.params = vec![("id".into(), "7".into())];
    req.body = Some(Bytes::from_static(b"hello"));
    let resp = responded(call_ok(&p, &req).await);
    let json: serde_json::Value = serde_json::from_str(&body(&resp)).unwrap();
    assert_eq!(json["method"], "POST");
    assert_eq!(json["path"], "/a%20b");
    assert_eq!(json["query"], "x=1&x=2");
    assert_eq!(json["client_addr"], "127.0.0.1:40000");
    assert_eq!(json["params"], serde_json::json!([["id", "7"]]));
    assert_eq!(json["body"], "hello");
    let headers = json["headers"].as_array().unwrap();
    let multi: Vec<_> = headers.iter().filter(|h| h[0] == "x-multi").collect();
    assert_eq!(multi.len(), 2);
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "x-bytes" && h[1]["base64"] == "Y2Fm6Q==")
    );

    // Without `want-body` the body is not handed over.
    let (_rt, p) = loaded(&def("inspector", "inspector"), "{}").await;
    let json: serde_json::Value =
        serde_json::from_str(&body(&responded(call_ok(&p, &req).await))).unwrap();
    assert_eq!(json["body_len"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_component_loads_with_wasi_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let rt = PluginLoader::new(&settings(Some(dir.path().into()))).unwrap();
    let d = pooled(def("hello", "hello-python"), 2);
    let compiled = {
        let (rt, d) = (rt.clone(), d.clone());
        tokio::task::spawn_blocking(move || rt.compile(&d))
            .await
            .unwrap()
            .unwrap()
    };
    assert!(compiled.uses_wasi());
    let p = rt
        .configure(&compiled, "r", r#"{"greeting": "hi"}"#, host())
        .await
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    for _ in 0..2 {
        let RequestAction::Continue(edits) = call_ok(&p, &request("/")).await else {
            panic!("hello continues");
        };
        let mut headers = HeaderMap::new();
        edits
            .headers
            .iter()
            .for_each(|op| op.apply(&mut headers).unwrap());
        assert_eq!(headers.get("x-hello").unwrap(), "hi");
    }
    let err = rt
        .configure(&compiled, "r", r#"{"nope": 1}"#, host())
        .await
        .err()
        .expect("unknown keys are rejected");
    assert!(
        matches!(err, PluginLoadError::ConfigRejected { .. }),
        "{err:?}"
    );

    // Fresh isolation works too (instantiating the large component per
    // request), from a snapshot taken at load even with the default 100 ms
    // deadline: reading ~20 MiB of Python state back is load work, not a
    // call, so each request then makes its one `on-request` call and never
    // a `configure`.
    let mut d = def("hello-fresh", "hello-python");
    d.deadline = std::time::Duration::from_millis(100);
    let compiled = tokio::task::spawn_blocking({
        let rt = rt.clone();
        move || rt.compile(&d)
    })
    .await
    .unwrap()
    .unwrap();
    let fresh = rt.configure(&compiled, "r", "{}", host()).await.unwrap();
    let before = stats(&rt, "hello-fresh").calls;
    for _ in 0..2 {
        call_ok(&fresh, &request("/")).await;
    }
    assert_eq!(stats(&rt, "hello-fresh").calls - before, 2);
}
