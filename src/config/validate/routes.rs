//! `[[routes]]`: each route put together from its match, its per-route limits
//! and timeouts, its WebSocket setting and its plugin pipeline. What a route
//! matches (path, rewrite, host, methods, header and query conditions) is
//! checked in [`super::matching`].

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use toml::Spanned;

use super::{
    Ctx,
    matching::{request_match, route_host, route_methods, route_path, route_rewrite},
};
use crate::config::{model::*, raw, units::parse_size};

pub(super) fn routes(
    cx: &mut Ctx<'_>,
    raw: &[Spanned<raw::RawRoute>],
    upstreams: &BTreeMap<String, Upstream>,
    plugins: &BTreeMap<String, PluginDef>,
    normalization: &PathNormalization,
) -> Vec<Route> {
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    for route in raw {
        let r = route.get_ref();
        cx.id(&r.id, "route");
        let subject = format!("route {:?}", r.id.get_ref());
        if !ids.insert(r.id.get_ref().clone()) {
            cx.error(
                &r.id,
                Some(subject.clone()),
                "another route has the same id",
            );
        }
        out.push(route_of(
            cx,
            route,
            &subject,
            (upstreams, plugins),
            normalization,
        ));
    }
    out
}

/// The route's `max-request-body`: 100 MiB by default, `0` for none.
///
/// Not nginx's 1 MiB (`client_max_body_size`), the best-known cause of
/// surprise 413s on ordinary uploads, nor Envoy's and Traefik's "none":
/// pylon streams bodies, so the limit guards the upstream and the
/// bandwidth rather than pylon's memory, and 100 MiB (Cloudflare's
/// default request-body limit) passes everyday uploads while still
/// bounding what one request can push through. It counts every body
/// byte of a stream too (a client-streaming gRPC call included).
fn max_request_body(cx: &mut Ctx<'_>, r: &raw::RawRoute, subject: &str) -> Option<u64> {
    const DEFAULT: u64 = 100 << 20;
    let Some(s) = &r.max_request_body else {
        return Some(DEFAULT);
    };
    match parse_size(s.get_ref()) {
        Ok(0) => None,
        Ok(n) => Some(n as u64),
        Err(e) => {
            cx.error(s, Some(subject.to_string()), e);
            Some(DEFAULT)
        }
    }
}

/// One route, its id already checked.
fn route_of(
    cx: &mut Ctx<'_>,
    route: &Spanned<raw::RawRoute>,
    subject: &str,
    (upstreams, plugins): (&BTreeMap<String, Upstream>, &BTreeMap<String, PluginDef>),
    normalization: &PathNormalization,
) -> Route {
    let r = route.get_ref();
    let path = route_path(cx, r, subject, normalization);
    let rewrite = route_rewrite(cx, r, &path, subject);
    let methods = route_methods(cx, r, subject);
    let host = r.host.as_ref().map(|h| route_host(cx, h, subject));
    let upstream = r.upstream.as_ref().map(|u| {
        if !upstreams.contains_key(u.get_ref()) {
            cx.error(
                u,
                Some(subject.to_owned()),
                format!("unknown upstream {:?}", u.get_ref()),
            );
        }
        u.get_ref().clone()
    });
    let refs = r
        .plugins
        .iter()
        .map(|pr| plugin_ref(cx, pr, plugins, subject))
        .collect();
    Route {
        id: r.id.get_ref().clone(),
        host,
        methods,
        path,
        rewrite,
        upstream,
        timeout: cx.duration(&r.timeout, subject, Duration::from_secs(30)),
        // nginx's client_body_timeout and proxy_read_timeout: 60 s
        // between two reads, long enough for any client or upstream
        // that is alive, short enough that a stalled one frees its
        // connections within a minute.
        request_body_timeout: cx.duration(
            &r.request_body_timeout,
            subject,
            Duration::from_secs(60),
        ),
        response_body_timeout: cx.duration(
            &r.response_body_timeout,
            subject,
            Duration::from_secs(60),
        ),
        // nginx's client_body_buffer_size (8-16 KiB): a small body
        // whose client stalls costs no upstream connection.
        request_buffer_bytes: match &r.request_buffer_size {
            None => 16 << 10,
            Some(s) => parse_size(s.get_ref()).unwrap_or_else(|e| {
                cx.error(s, Some(subject.to_owned()), e);
                16 << 10
            }),
        },
        max_request_body: max_request_body(cx, r, subject),
        matches: r
            .matches
            .as_ref()
            .map(|m| request_match(cx, m, subject))
            .unwrap_or_default(),
        websocket: websocket(cx, r, upstreams, subject),
        // Envoy's connection idle timeout (1 h): a WebSocket is often
        // quiet for minutes (a chat, a dashboard between events);
        // nginx's 60 s proxy_read_timeout cutting those is a classic
        // surprise. A peer that stops reading is caught sooner, by the
        // listener's send-timeout.
        tunnel_idle_timeout: cx.duration(
            &r.tunnel_idle_timeout,
            subject,
            Duration::from_secs(3600),
        ),
        retry: super::resilience::retry(cx, &r.retry, subject),
        plugins: refs,
        location: cx.loc(route),
    }
}

/// `websocket = true` tunnels over HTTP/1.1 only: the route's upstream must
/// speak `http1`.
fn websocket(
    cx: &mut Ctx<'_>,
    r: &raw::RawRoute,
    upstreams: &BTreeMap<String, Upstream>,
    subject: &str,
) -> bool {
    let Some(w) = &r.websocket else { return false };
    if !*w.get_ref() {
        return false;
    }
    let upstream = r.upstream.as_ref().and_then(|u| upstreams.get(u.get_ref()));
    if let Some(u) = upstream
        && u.protocol != UpstreamProtocol::Http1
    {
        cx.error(
            w,
            Some(subject.to_owned()),
            format!(
                "websocket needs an http1 upstream; upstream {:?} speaks HTTP/2",
                u.name
            ),
        );
    }
    true
}

fn plugin_ref(
    cx: &mut Ctx<'_>,
    pr: &Spanned<raw::RawPluginRef>,
    plugins: &BTreeMap<String, PluginDef>,
    subject: &str,
) -> PluginRef {
    let p = pr.get_ref();
    let psubject = format!("{subject}, plugin {:?}", p.plugin.get_ref());
    if !plugins.contains_key(p.plugin.get_ref()) {
        cx.error(
            &p.plugin,
            Some(psubject.clone()),
            "no such plugin: define it under [plugins]",
        );
    }
    let on_error = match p.on_error.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("fail-closed") => FailurePolicy::FailClosed,
        Some("fail-open") => FailurePolicy::FailOpen,
        Some(other) => {
            let s = p.on_error.as_ref().expect("matched Some");
            cx.error(
                s,
                Some(psubject.clone()),
                format!("unknown on-error {other:?} (expected \"fail-closed\" or \"fail-open\")"),
            );
            FailurePolicy::FailClosed
        }
    };
    let config = match &p.config {
        None => serde_json::Value::Object(Default::default()),
        Some(t) => match serde_json::to_value(t) {
            Ok(v) => v,
            Err(e) => {
                cx.error(
                    pr,
                    Some(psubject.clone()),
                    format!("config cannot be represented as JSON: {e}"),
                );
                serde_json::Value::Null
            }
        },
    };
    PluginRef {
        plugin: p.plugin.get_ref().clone(),
        config,
        on_error,
        location: cx.loc(pr),
    }
}
