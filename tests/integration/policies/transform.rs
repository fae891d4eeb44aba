//! Tests of the `transform` policy plugin: every kind of edit through the
//! running gateway, against a real upstream that records what it received
//! and answers configured responses; and config rejections.

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use crate::harness::{TestGateway, Upstream, client, one_plugin_route, parse, start_error};

/// The TOML of a gateway with upstream `u` at `up`, the `transform` plugin
/// (with `def_extra` lines in its definition) and one route `r` on every
/// path whose plugin config is the `[routes.plugins.config]` TOML `config`.
fn toml(up: &str, def_extra: &str, config: &str) -> String {
    one_plugin_route(up, "transform", def_extra, config)
}

async fn gateway(up: &Upstream, def_extra: &str, config: &str) -> TestGateway {
    TestGateway::start(&toml(&up.addr.to_string(), def_extra, config)).await
}

/// An upstream answering `status`, `headers` and `body` to every request.
async fn answering(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
) -> Upstream {
    Upstream::with(move |_| async move {
        let mut b = Response::builder().status(status);
        for (name, value) in headers {
            b = b.header(*name, *value);
        }
        b.body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    })
    .await
}

fn values<'h>(headers: &'h http::HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[tokio::test]
async fn request_headers_are_removed_renamed_set_and_added_keeping_untouched_repeats() {
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        "",
        r#"
[routes.plugins.config.request.headers]
remove = ["x-drop"]
rename = { "x-old" = "x-new" }
set = { "x-set" = "new" }
add = { "x-add" = ["a", "b"], "x-keep" = "c" }
"#,
    )
    .await;
    let r = client()
        .get(gw.url("/h"))
        .header("x-keep", "a")
        .header("x-keep", "b")
        .header("x-old", "1")
        .header("x-old", "2")
        .header("x-new", "stale")
        .header("x-drop", "gone")
        .header("x-set", "old1")
        .header("x-set", "old2")
        .header("x-untouched", "u1")
        .header("x-untouched", "u2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(
        values(&seen.headers, "x-untouched"),
        ["u1", "u2"],
        "untouched repeats must survive"
    );
    assert_eq!(
        values(&seen.headers, "x-keep"),
        ["a", "b", "c"],
        "add keeps existing values"
    );
    assert_eq!(
        values(&seen.headers, "x-new"),
        ["1", "2"],
        "rename moves every value, replacing the target"
    );
    assert!(seen.headers.get("x-old").is_none());
    assert!(seen.headers.get("x-drop").is_none());
    assert_eq!(values(&seen.headers, "x-set"), ["new"]);
    assert_eq!(values(&seen.headers, "x-add"), ["a", "b"]);
}

#[tokio::test]
async fn response_headers_are_edited_and_statuses_mapped() {
    let up = Upstream::with(|seen| async move {
        let status = if seen.uri.path() == "/missing" {
            404
        } else {
            200
        };
        Response::builder()
            .status(status)
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .header("server", "backend/1")
            .header("x-old", "o1")
            .header("x-old", "o2")
            .header("cache-control", "private")
            .body(Full::new(Bytes::from_static(b"upstream body")))
            .unwrap()
    })
    .await;
    let gw = gateway(
        &up,
        "",
        r#"
[routes.plugins.config.response]
status-map = { "404" = 204, "500" = 503 }

[routes.plugins.config.response.headers]
remove = ["server"]
rename = { "x-old" = "x-renamed" }
set = { "cache-control" = "no-store" }
add = { "x-via" = "transform" }
"#,
    )
    .await;
    let r = client().get(gw.url("/found")).send().await.unwrap();
    assert_eq!(r.status(), 200, "unmapped statuses pass through");
    let h = r.headers().clone();
    assert_eq!(
        values(&h, "set-cookie"),
        ["a=1", "b=2"],
        "untouched repeats must survive"
    );
    assert!(h.get("server").is_none());
    assert!(h.get("x-old").is_none());
    assert_eq!(values(&h, "x-renamed"), ["o1", "o2"]);
    assert_eq!(values(&h, "cache-control"), ["no-store"]);
    assert_eq!(values(&h, "x-via"), ["transform"]);
    assert_eq!(r.text().await.unwrap(), "upstream body");

    let r = client().get(gw.url("/missing")).send().await.unwrap();
    assert_eq!(r.status(), 204, "404 maps to 204");
    assert_eq!(values(r.headers(), "x-via"), ["transform"]);
    assert_eq!(r.text().await.unwrap(), "", "a 204 carries no body");
}

#[tokio::test]
async fn path_is_rewritten_with_named_captures_and_left_alone_when_it_does_not_match() {
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        "",
        r#"
[routes.plugins.config.request]
path = { match = "^/old/(?P<id>[^/]+)/(\\w+)$", replace = "/new/${id}/v2/$2" }
"#,
    )
    .await;
    let r = client()
        .get(gw.url("/old/a%20b/items?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().uri.to_string(), "/new/a%20b/v2/items?x=1");

    client().get(gw.url("/other/42")).send().await.unwrap();
    assert_eq!(up.last().uri.to_string(), "/other/42");
}

#[tokio::test]
async fn query_edits_keep_untouched_parameters_in_order_and_encoding() {
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        "",
        r#"
[routes.plugins.config.request.query]
remove = ["drop"]
rename = { "old" = "new" }
set = { "page" = "2", "lang" = "fr & en" }
add = { "tag" = ["x y", "z"] }
"#,
    )
    .await;
    client()
        .get(gw.url("/q?z=%7e+raw&page=1&old=a%2Fb&drop=1&page=9&flag&q=%E2%9C%93"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.last().uri.query(),
        Some("z=%7e+raw&page=2&new=a%2Fb&flag&q=%E2%9C%93&lang=fr+%26+en&tag=x+y&tag=z")
    );

    let gw2 = gateway(
        &up,
        "",
        "[routes.plugins.config.request.query]\nremove = [\"only\"]\n",
    )
    .await;
    client().get(gw2.url("/q?only=1")).send().await.unwrap();
    assert_eq!(
        up.last().uri.to_string(),
        "/q",
        "removing every parameter removes the query"
    );
}

const JSON_EDITS: &str = r#"
remove = ["/password", "/tags/0"]
rename = { "/user/fullName" = "name" }
move = [{ from = "/legacy", to = "/meta/legacy" }]
set = { "/version" = 2, "/meta/source" = "gateway", "/tags/-" = "new" }
add = { "/user/role" = "guest", "/user/name" = "never" }
"#;

const JSON_IN: &str = r#"{"z":1,"user":{"fullName":"Ada","id":7},"password":"s3cret","tags":["old","keep"],"legacy":{"a":[1,2]},"version":1}"#;

const JSON_OUT: &str = r#"{"z":1,"user":{"name":"Ada","id":7,"role":"guest"},"tags":["keep","new"],"version":2,"meta":{"legacy":{"a":[1,2]},"source":"gateway"}}"#;

#[tokio::test]
async fn request_json_body_is_edited_by_pointer_and_length_fixed() {
    let up = Upstream::echo_body().await;
    let gw = gateway(
        &up,
        "",
        &format!("[routes.plugins.config.request.json]\n{JSON_EDITS}"),
    )
    .await;
    let r = client()
        .post(gw.url("/json"))
        .header("content-type", "application/json; charset=utf-8")
        .body(JSON_IN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(
        std::str::from_utf8(&seen.body).unwrap(),
        JSON_OUT,
        "untouched members keep their order"
    );
    assert_eq!(
        seen.headers["content-length"],
        JSON_OUT.len().to_string().as_str()
    );
}

#[tokio::test]
async fn response_json_body_is_edited_and_content_length_fixed() {
    let up = answering(
        201,
        &[("content-type", "application/problem+json")],
        JSON_IN,
    )
    .await;
    let gw = gateway(
        &up,
        "",
        &format!("[routes.plugins.config.response.json]\n{JSON_EDITS}"),
    )
    .await;
    let r = client().get(gw.url("/json")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["content-length"],
        JSON_OUT.len().to_string().as_str()
    );
    assert_eq!(r.text().await.unwrap(), JSON_OUT);
}

#[tokio::test]
async fn non_json_and_malformed_bodies_pass_through_unchanged() {
    let up = Upstream::with(|seen| async move {
        let (ct, body): (&str, &[u8]) = match seen.uri.path() {
            "/text" => ("text/plain", b"{\"password\":\"not json by type\"}"),
            "/broken" => ("application/json", b"{\"password\": oops"),
            _ => ("application/json", b"{\"password\":\"x\",\"keep\":1}"),
        };
        Response::builder()
            .header("content-type", ct)
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    })
    .await;
    let gw = gateway(
        &up,
        "capabilities = [\"log\"]",
        "[routes.plugins.config.request.json]\nremove = [\"/password\"]\n\
         [routes.plugins.config.response.json]\nremove = [\"/password\"]\n",
    )
    .await;
    for (ct, body) in [
        ("text/plain", "{\"password\":1}"),
        ("application/json", "{\"password\": oops"),
    ] {
        let r = client()
            .post(gw.url("/broken"))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{ct}");
        assert_eq!(
            up.last().body,
            body.as_bytes(),
            "{ct} body must reach the upstream unchanged"
        );
        assert_eq!(
            r.text().await.unwrap(),
            "{\"password\": oops",
            "malformed response passes through"
        );
    }
    let r = client().get(gw.url("/text")).send().await.unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "{\"password\":\"not json by type\"}"
    );
    let r = client().get(gw.url("/good")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "{\"keep\":1}");
}

#[tokio::test]
async fn strict_json_rejects_non_json_and_malformed_request_bodies() {
    let up = Upstream::echo_body().await;
    let gw = gateway(
        &up,
        "",
        "strict-json = true\n[routes.plugins.config.request.json]\nremove = [\"/password\"]\n",
    )
    .await;
    let r = client()
        .post(gw.url("/s"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(
        v["error"],
        "request body is not JSON (content-type: text/plain)"
    );

    let r = client()
        .post(gw.url("/s"))
        .header("content-type", "application/json")
        .body("{\"password\":")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("request body is not valid JSON: "),
        "{v}"
    );
    assert!(
        up.seen().is_empty(),
        "rejected bodies must not reach the upstream"
    );

    let r = client().get(gw.url("/s")).send().await.unwrap();
    assert_eq!(r.status(), 200, "a request without a body is not an error");
    let r = client()
        .post(gw.url("/s"))
        .header("content-type", "application/json")
        .body("{\"password\":1,\"a\":2}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "{\"a\":2}");
}

#[tokio::test]
async fn bodies_are_buffered_only_for_directions_with_json_edits() {
    let big = "x".repeat(4096);
    let up = Upstream::with(move |_| {
        let big = big.clone();
        async move { Response::new(Full::new(Bytes::from(big))) }
    })
    .await;
    let limit = "max-body-size = \"1KiB\"";
    let headers_only = gateway(
        &up,
        limit,
        "[routes.plugins.config.request.headers]\nset = { \"x-a\" = \"1\" }\n\
         [routes.plugins.config.response.headers]\nset = { \"x-b\" = \"2\" }\n",
    )
    .await;
    let r = client()
        .post(headers_only.url("/big"))
        .body(vec![b'y'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "header edits must not buffer bodies");
    assert_eq!(r.headers()["x-b"], "2");
    assert_eq!(r.text().await.unwrap().len(), 4096);
    assert_eq!(up.last().body.len(), 4096);

    let request_json = gateway(
        &up,
        limit,
        "[routes.plugins.config.request.json]\nremove = [\"/a\"]\n",
    )
    .await;
    let r = client()
        .post(request_json.url("/big"))
        .body(vec![b'y'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        413,
        "request JSON edits buffer the request body"
    );
    let r = client().get(request_json.url("/big")).send().await.unwrap();
    assert_eq!(
        r.text().await.unwrap().len(),
        4096,
        "but not the response body"
    );

    let response_json = gateway(
        &up,
        limit,
        "[routes.plugins.config.response.json]\nremove = [\"/a\"]\n",
    )
    .await;
    let r = client()
        .post(response_json.url("/big"))
        .body(vec![b'y'; 4096])
        .send()
        .await
        .unwrap();
    // Past the plugin's limit the response is not buffered: the plugin sees
    // no body and the response streams through byte for byte.
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap().len(),
        4096,
        "a response over the limit streams through unaltered"
    );
}

/// The message `Gateway::start` gives for a route whose transform config is `config`.
async fn rejection(config: &str) -> String {
    let cfg = parse(&toml("127.0.0.1:9", "", config)).unwrap_or_else(|e| panic!("{e}"));
    start_error(cfg)
        .await
        .unwrap_or_else(|| panic!("config accepted: {config}"))
}

#[tokio::test]
async fn invalid_configs_are_rejected_naming_the_key() {
    for (config, needle) in [
        (
            "[routes.plugins.config.request]\npath = { match = \"^/old/(?P<id>[^/]+\", replace = \"/new/$id\" }\n",
            "invalid transform config: request.path.match: invalid regex \"^/old/(?P<id>[^/]+\"",
        ),
        (
            "[routes.plugins.config.request]\npath = { match = \"^/old/(?P<id>\\\\d+)$\", replace = \"/new/$ident\" }\n",
            "request.path.replace: $ident names no capture group",
        ),
        (
            "[routes.plugins.config.response.json]\nremove = [\"user/name\"]\n",
            "invalid transform config: response.json.remove: \"user/name\" is not a JSON pointer (it must start with '/')",
        ),
        (
            "[routes.plugins.config.request.json]\nset = { \"/a~2\" = 1 }\n",
            "request.json.set: \"/a~2\" is not a JSON pointer ('~' must be followed by 0 or 1)",
        ),
        (
            "[routes.plugins.config.request.headers]\nset = { \"bad header\" = \"x\" }\n",
            "invalid transform config: request.headers.set: \"bad header\" is not a valid header name",
        ),
        (
            "[routes.plugins.config.response.headers]\nrename = { \"x-ok\" = \"x:no\" }\n",
            "response.headers.rename: \"x:no\" is not a valid header name",
        ),
        (
            "[routes.plugins.config.response]\nstatus-map = { \"404\" = 99 }\n",
            "response.status-map: \"404\" maps to 99, which is not a status code (100-599)",
        ),
        (
            "[routes.plugins.config.request]\nheader = {}\n",
            "unknown field `header`",
        ),
    ] {
        let err = rejection(config).await;
        assert!(err.contains("route \"r\", plugin \"transform\""), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
}
