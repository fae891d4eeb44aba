//! `[path-normalization]` and what a route matches: its path or path
//! prefix (a pattern's parameters, in the form request paths are normalised
//! to), its rewrite, host, methods and header and query conditions. Not the
//! rest of a route (limits, timeouts, pipeline): that is [`super::routes`].

use std::collections::HashSet;

use http::Method;
use toml::Spanned;

use super::Ctx;
use crate::config::{model::*, raw};

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

pub(super) fn route_path(
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

pub(super) fn route_rewrite(
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

pub(super) fn request_match(
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

pub(super) fn route_host(cx: &mut Ctx<'_>, h: &Spanned<String>, subject: &str) -> String {
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

pub(super) fn route_methods(cx: &mut Ctx<'_>, r: &raw::RawRoute, subject: &str) -> Vec<Method> {
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
