//! `[path-normalization]` and `[[routes]]`: matches, rewrites, per-route limits and pipelines.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use http::Method;
use toml::Spanned;

use super::Ctx;
use crate::config::{model::*, raw, units::parse_size};

pub(super) fn path_normalization(
    cx: &mut Ctx<'_>,
    raw: Option<&Spanned<raw::RawPathNormalization>>,
) -> PathNormalization {
    let mut out = PathNormalization::default();
    let Some(raw) = raw else { return out };
    let r = raw.get_ref();
    out.normalize = r.normalize.unwrap_or(out.normalize);
    out.merge_slashes = r.merge_slashes.unwrap_or(out.merge_slashes);
    let mut action = |v: &Option<Spanned<String>>, key: &str, default: SlashAction| match v {
        None => default,
        Some(s) => SlashAction::from_word(s.get_ref()).unwrap_or_else(|| {
            cx.error(
                s,
                Some("path-normalization".into()),
                format!(
                    "unknown {key} {:?} (expected \"reject\", \"decode\" or \"keep\")",
                    s.get_ref()
                ),
            );
            default
        }),
    };
    out.escaped_slashes = action(&r.escaped_slashes, "escaped-slashes", out.escaped_slashes);
    out.backslashes = action(&r.backslashes, "backslashes", out.backslashes);
    out
}

/// A route path must be in the form request paths are normalised to, or
/// it could never match (`/%61dmin`, `/a/../b`, `//x`).
fn check_normal(
    cx: &mut Ctx<'_>,
    p: &Spanned<String>,
    key: &str,
    subject: &str,
    opts: &PathNormalization,
) {
    let message = match crate::router::path::normalize(p.get_ref(), opts) {
        Ok(n) if n == p.get_ref().as_str() => return,
        Ok(n) => format!(
            "{key} {:?} never matches: request paths are normalised first ([path-normalization]); write {n:?}",
            p.get_ref()
        ),
        Err(e) => format!(
            "{key} {:?} never matches: a request with this path is refused ({e})",
            p.get_ref()
        ),
    };
    cx.error(p, Some(subject.to_owned()), message);
}

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

fn route_path(
    cx: &mut Ctx<'_>,
    r: &raw::RawRoute,
    subject: &str,
    normalization: &PathNormalization,
) -> PathMatch {
    match (&r.path, &r.path_prefix) {
        (Some(p), None) => {
            if let Err(e) = check_pattern(p.get_ref()) {
                cx.error(p, Some(subject.into()), e);
            } else {
                check_normal(cx, p, "path", subject, normalization);
            }
            if p.get_ref().contains('{') {
                PathMatch::Pattern(p.get_ref().clone())
            } else {
                PathMatch::Exact(p.get_ref().clone())
            }
        }
        (None, Some(p)) => {
            if !p.get_ref().starts_with('/') || p.get_ref().contains(['{', '}']) {
                cx.error(
                    p,
                    Some(subject.into()),
                    "path-prefix must start with '/' and contain no parameters",
                );
            } else {
                check_normal(cx, p, "path-prefix", subject, normalization);
            }
            PathMatch::Prefix(p.get_ref().clone())
        }
        (Some(p), Some(_)) => {
            cx.error(
                p,
                Some(subject.into()),
                "set either path or path-prefix, not both",
            );
            PathMatch::Exact(p.get_ref().clone())
        }
        (None, None) => {
            cx.error(
                &r.id,
                Some(subject.into()),
                "needs path = \"...\" or path-prefix = \"...\"",
            );
            PathMatch::Prefix("/".into())
        }
    }
}

fn route_rewrite(
    cx: &mut Ctx<'_>,
    r: &raw::RawRoute,
    path: &PathMatch,
    subject: &str,
) -> Option<Rewrite> {
    match (&r.strip_prefix, &r.rewrite) {
        (Some(s), Some(_)) if *s.get_ref() => {
            cx.error(
                s,
                Some(subject.into()),
                "set either strip-prefix or rewrite, not both",
            );
            None
        }
        (Some(s), _) if *s.get_ref() => {
            if !matches!(path, PathMatch::Prefix(_)) {
                cx.error(s, Some(subject.into()), "strip-prefix needs path-prefix");
            }
            Some(Rewrite::StripPrefix)
        }
        (_, Some(t)) => {
            let params = match path {
                PathMatch::Pattern(p) => pattern_params(p),
                _ => Vec::new(),
            };
            if !t.get_ref().starts_with('/') {
                cx.error(t, Some(subject.into()), "rewrite must start with '/'");
            }
            for used in template_params(t.get_ref()) {
                if !params.contains(&used) {
                    cx.error(
                        t,
                        Some(subject.into()),
                        format!("rewrite uses {{{used}}}, which the path does not capture"),
                    );
                }
            }
            Some(Rewrite::Template(t.get_ref().clone()))
        }
        _ => None,
    }
}

fn request_match(
    cx: &mut Ctx<'_>,
    raw: &Spanned<raw::RawRequestMatch>,
    subject: &str,
) -> RequestMatch {
    let mut out = RequestMatch::default();
    let value = |cx: &mut Ctx<'_>, what: &str, v: &Spanned<raw::RawValueMatch>| match v.get_ref() {
        raw::RawValueMatch::Present(true) => Some(ValueMatch::Present),
        raw::RawValueMatch::Present(false) => {
            cx.error(
                v,
                Some(subject.into()),
                format!("match {what}: false is not a condition; use true (present) or a string (that exact value)"),
            );
            None
        }
        raw::RawValueMatch::Exact(s) => Some(ValueMatch::Exact(s.clone())),
    };
    for (name, v) in &raw.get_ref().headers {
        let what = format!("header {name:?}");
        let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
            cx.error(
                v,
                Some(subject.into()),
                format!("match {what}: not a valid header name"),
            );
            continue;
        };
        let Some(m) = value(cx, &what, v) else {
            continue;
        };
        if let ValueMatch::Exact(e) = &m
            && http::HeaderValue::from_str(e).is_err()
        {
            cx.error(
                v,
                Some(subject.into()),
                format!("match {what}: {e:?} can never be a header value"),
            );
            continue;
        }
        out.headers.push((header, m));
    }
    for (name, v) in &raw.get_ref().query {
        let what = format!("query parameter {name:?}");
        if name.is_empty() {
            cx.error(
                v,
                Some(subject.into()),
                "match query: a parameter needs a name",
            );
            continue;
        }
        if let Some(m) = value(cx, &what, v) {
            out.query.push((name.clone(), m));
        }
    }
    out
}

fn route_host(cx: &mut Ctx<'_>, h: &Spanned<String>, subject: &str) -> String {
    let v = h.get_ref().to_ascii_lowercase();
    let bare = v.strip_prefix("*.").unwrap_or(&v);
    if bare.is_empty() || bare.contains(['*', '/', ' ']) {
        cx.error(
            h,
            Some(subject.into()),
            format!(
                "invalid host {:?}: use a name like \"api.example.com\" or \"*.example.com\"",
                h.get_ref()
            ),
        );
    }
    v
}

fn route_methods(cx: &mut Ctx<'_>, r: &raw::RawRoute, subject: &str) -> Vec<Method> {
    let mut methods = Vec::new();
    for m in &r.methods {
        match Method::from_bytes(m.get_ref().as_bytes()) {
            Ok(method) if m.get_ref().bytes().all(|b| b.is_ascii_uppercase()) => {
                methods.push(method)
            }
            _ => cx.error(
                m,
                Some(subject.into()),
                format!(
                    "invalid method {:?}: use uppercase, e.g. \"GET\"",
                    m.get_ref()
                ),
            ),
        }
    }
    methods
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

/// Check a path pattern: starts with `/`, `{name}` params with unique
/// names, a `{*rest}` catch-all only as the last segment.
fn check_pattern(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} must start with '/'"));
    }
    let mut names = HashSet::new();
    let segments: Vec<&str> = p.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        if seg.contains(['{', '}']) {
            let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
                return Err(format!(
                    "path {p:?}: a parameter must be a whole segment, like /{{id}}"
                ));
            };
            let (catch_all, name) = match inner.strip_prefix('*') {
                Some(n) => (true, n),
                None => (false, inner),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("path {p:?}: invalid parameter name {name:?}"));
            }
            if catch_all && i + 1 != segments.len() {
                return Err(format!("path {p:?}: {{*{name}}} must be the last segment"));
            }
            if !names.insert(name) {
                return Err(format!("path {p:?}: parameter {name:?} appears twice"));
            }
        }
    }
    Ok(())
}

fn pattern_params(p: &str) -> Vec<String> {
    p.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|s| s.trim_start_matches('*').to_string())
        .collect()
}

fn template_params(t: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        out.push(rest[start + 1..start + end].to_string());
        rest = &rest[start + end + 1..];
    }
    out
}
