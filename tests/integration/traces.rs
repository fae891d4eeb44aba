//! Traces: W3C trace context continued to the upstream, and OTLP export
//! of request, plugin and upstream spans.

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use prost::Message;

use crate::harness::{TestGateway, Upstream, client, plugin};

#[tokio::test]
async fn traceparent_is_continued_to_the_upstream_with_a_new_parent_id() {
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nid = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
        up.addr
    ))
    .await;
    let http = client();
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    http.get(gw.url("/"))
        .header("traceparent", incoming)
        .send()
        .await
        .unwrap();
    let parts = up.last_traceparent();
    assert_eq!(parts[0], "00");
    assert_eq!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "trace id kept"
    );
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "parent id must be pylon's span"
    );
    assert!(
        parts[2].len() == 16
            && parts[2]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_ne!(parts[2], "0000000000000000");
    assert_eq!(parts[3], "01", "sampled flag kept");

    // No (or a malformed) traceparent: a new valid trace starts.
    for header in [None, Some("00-zz-bad-01")] {
        let mut req = http.get(gw.url("/"));
        if let Some(h) = header {
            req = req.header("traceparent", h);
        }
        req.send().await.unwrap();
        let parts = up.last_traceparent();
        assert_eq!(parts[1].len(), 32);
        assert_ne!(parts[1], "00000000000000000000000000000000");
        assert_eq!(parts[2].len(), 16);
    }
}

#[tokio::test]
async fn otlp_exporter_sends_request_plugin_and_upstream_spans() {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        trace::v1::{Span, span::SpanKind},
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let collector = Upstream::with(move |seen| {
        let tx = tx.clone();
        async move {
            assert_eq!(seen.method, http::Method::POST);
            assert_eq!(seen.uri.path(), "/v1/traces");
            assert_eq!(seen.headers["content-type"], "application/x-protobuf");
            let _ = tx.send(seen.body);
            Response::new(Full::new(Bytes::new()))
        }
    })
    .await;
    let up = Upstream::named("ok").await;
    let gw = TestGateway::start(&format!(
        r#"[tracing]
otlp-endpoint = "http://{collector}"
service-name = "pylon-test"
[upstreams.u]
targets = ["{up}"]
[plugins.hdr]
component = {hdr:?}
[[routes]]
id = "r"
path-prefix = "/"
upstream = "u"
[[routes.plugins]]
plugin = "hdr"
config = {{ request = {{ headers = {{ rename = {{ "x-b" = "x-c" }} }} }} }}
"#,
        collector = collector.addr,
        up = up.addr,
        // A plugin called on every request (a rename reads the request).
        hdr = plugin("transform"),
    ))
    .await;
    let trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = client()
        .get(gw.url("/traced"))
        .header("traceparent", format!("00-{trace_hex}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();

    let mut spans: Vec<Span> = Vec::new();
    let mut posts = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while spans.len() < 3 {
        let body = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the collector got fewer than 3 spans")
            .unwrap();
        posts += 1;
        let req = ExportTraceServiceRequest::decode(body).unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .find(|a| a.key == "service.name");
            assert!(format!("{service:?}").contains("pylon-test"), "{service:?}");
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    assert!(posts >= 1);
    let trace = hex::decode(trace_hex).unwrap();
    assert!(
        spans.iter().all(|s| s.trace_id == trace),
        "every span is in the client's trace"
    );
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("server span");
    assert_eq!(server.name, "GET r");
    assert_eq!(
        server.parent_span_id,
        hex::decode("00f067aa0ba902b7").unwrap()
    );
    let plugin_span = spans
        .iter()
        .find(|s| s.name == "plugin hdr on-request")
        .expect("plugin span");
    assert_eq!(plugin_span.parent_span_id, server.span_id);
    let upstream = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("upstream span");
    assert_eq!(upstream.name, "upstream u");
    assert_eq!(upstream.parent_span_id, server.span_id);
    assert_eq!(
        sent,
        format!("00-{trace_hex}-{}-01", hex::encode(&upstream.span_id))
    );
}
