//! Route matching: host, method, path (exact, prefix, or a pattern with
//! `{name}` and a trailing `{*rest}`), headers and query parameters. The
//! most specific matching route wins ([`Router::new`] states the order),
//! configuration order breaking ties. Also computes the upstream path after
//! prefix strip or rewrite.
//!
//! Matching never allocates unless the route captures parameters, or a
//! condition is on a repeated header or an escaped query parameter. Paths
//! are matched as given: the caller normalises them first with [`path`].

mod conditions;
pub mod path;
#[cfg(test)]
pub(crate) mod properties;

use std::cmp::Reverse;

use conditions::conditions_hold;
use http::{HeaderMap, Method};

use crate::config::{PathMatch, RequestMatch, Rewrite, Route};

/// A compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<CompiledRoute>,
}

#[derive(Debug)]
struct CompiledRoute {
    /// Its index in configuration order.
    index: usize,
    host: Option<HostMatch>,
    methods: Vec<Method>,
    path: CompiledPath,
    rewrite: Option<Rewrite>,
    matches: RequestMatch,
}

/// How specific a route is, compared field by field (greater: tried
/// first). See [`Router::new`].
type Specificity = ((u8, usize), (u8, usize, usize), usize, bool);

impl CompiledRoute {
    fn specificity(&self) -> Specificity {
        let host = match &self.host {
            Some(HostMatch::Exact(_)) => (2, 0),
            Some(HostMatch::Suffix(s)) => (1, s.len()),
            None => (0, 0),
        };
        let path = match &self.path {
            CompiledPath::Exact(p) => (3, p.len(), 0),
            CompiledPath::Pattern(segs) => {
                let literals = segs
                    .iter()
                    .filter(|s| matches!(s, Segment::Literal(_)))
                    .count();
                let catch_all = segs.iter().any(|s| matches!(s, Segment::CatchAll(_)));
                let fixed = segs.len() - usize::from(catch_all);
                // More fixed segments first; on a tie, none left to a
                // `{*rest}` first.
                (2, literals, fixed * 2 + usize::from(!catch_all))
            }
            CompiledPath::Prefix(p) => (1, p.len(), 0),
        };
        (host, path, self.matches.len(), !self.methods.is_empty())
    }
}

#[derive(Debug)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug)]
enum CompiledPath {
    Exact(String),
    Prefix(String),
    Pattern(Vec<Segment>),
}

#[derive(Debug)]
enum Segment {
    Literal(String),
    Param(String),
    CatchAll(String),
}

/// The result of a successful match.
#[derive(Debug, PartialEq, Eq)]
pub struct Match {
    /// Index of the route in configuration order.
    pub index: usize,
    /// Captured parameters, in pattern order.
    pub params: Vec<(String, String)>,
    /// The path to send upstream (after strip-prefix or rewrite).
    pub upstream_path: String,
}

impl Router {
    /// Compile the routes of a configuration. Of the routes that match a
    /// request, the most specific wins, judged in this order (as nginx
    /// picks a server block before a location, and Envoy a virtual host
    /// before a route):
    ///
    /// 1. host: exact, then `*.` wildcards (the longer suffix first), then
    ///    none;
    /// 2. path: exact (the longer first), then patterns (more literal
    ///    segments first, then more segments before a `{*rest}`), then
    ///    prefixes (the longer first);
    /// 3. more `match` conditions (headers and query parameters) first;
    /// 4. a route limited to `methods` before one for any method;
    /// 5. configuration order.
    pub fn new(routes: &[Route]) -> Self {
        let mut routes: Vec<CompiledRoute> = routes
            .iter()
            .enumerate()
            .map(|(index, r)| CompiledRoute {
                index,
                matches: r.matches.clone(),
                host: r.host.as_ref().map(|h| match h.strip_prefix('*') {
                    Some(suffix) => HostMatch::Suffix(suffix.to_string()),
                    None => HostMatch::Exact(h.clone()),
                }),
                methods: r.methods.clone(),
                path: match &r.path {
                    PathMatch::Exact(p) => CompiledPath::Exact(p.clone()),
                    PathMatch::Prefix(p) => CompiledPath::Prefix(p.clone()),
                    PathMatch::Pattern(p) => CompiledPath::Pattern(
                        p.split('/')
                            .skip(1)
                            .map(
                                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                                    Some(n) => match n.strip_prefix('*') {
                                        Some(rest) => Segment::CatchAll(rest.to_string()),
                                        None => Segment::Param(n.to_string()),
                                    },
                                    None => Segment::Literal(s.to_string()),
                                },
                            )
                            .collect(),
                    ),
                },
                rewrite: r.rewrite.clone(),
            })
            .collect();
        routes.sort_by_key(|r| (Reverse(r.specificity()), r.index));
        Self { routes }
    }

    /// [`Router::route_request`] for a request without headers or query.
    pub fn route(&self, host: Option<&str>, method: &Method, path: &str) -> Option<Match> {
        self.route_request(host, method, path, &HeaderMap::new(), None)
    }

    /// Find the most specific route matching `host` (without port, any
    /// case), `method`, `path`, `headers` and the raw `query`.
    pub fn route_request(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Option<Match> {
        let host = host.map(strip_port);
        for r in &self.routes {
            if let Some(h) = &r.host {
                let Some(host) = host else { continue };
                let ok = match h {
                    HostMatch::Exact(e) => host.eq_ignore_ascii_case(e),
                    HostMatch::Suffix(s) => {
                        host.len() > s.len()
                            && host.is_char_boundary(host.len() - s.len())
                            && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
                    }
                };
                if !ok {
                    continue;
                }
            }
            if !r.methods.is_empty() && !r.methods.contains(method) {
                continue;
            }
            if !r.matches.is_empty() && !conditions_hold(&r.matches, headers, query) {
                continue;
            }
            let params = match &r.path {
                CompiledPath::Exact(p) if p == path => Vec::new(),
                CompiledPath::Prefix(p) if path.starts_with(p.as_str()) => Vec::new(),
                CompiledPath::Pattern(segs) => match match_pattern(segs, path) {
                    Some(params) => params,
                    None => continue,
                },
                _ => continue,
            };
            let upstream_path = match (&r.rewrite, &r.path) {
                (Some(Rewrite::StripPrefix), CompiledPath::Prefix(p)) => {
                    let rest = &path[p.len()..];
                    if rest.starts_with('/') {
                        rest.to_string()
                    } else {
                        format!("/{rest}")
                    }
                }
                (Some(Rewrite::Template(t)), _) => fill_template(t, &params),
                _ => path.to_string(),
            };
            return Some(Match {
                index: r.index,
                params,
                upstream_path,
            });
        }
        None
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn match_pattern(segs: &[Segment], path: &str) -> Option<Vec<(String, String)>> {
    let rest = path.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let mut params = Vec::new();
    let mut consumed = 1; // leading '/'
    for seg in segs {
        match seg {
            Segment::CatchAll(name) => {
                // `/v1/bob/files` against `/v1/{user}/files/{*rest}`: the
                // path ends where the catch-all's `/` would be, so it
                // captures nothing (as `/v1/bob/files/` does).
                let rest = path.get(consumed..).unwrap_or_default();
                params.push((name.clone(), rest.to_string()));
                return Some(params);
            }
            Segment::Literal(l) => {
                let part = parts.next()?;
                if part != l {
                    return None;
                }
                consumed += part.len() + 1;
            }
            Segment::Param(name) => {
                let part = parts.next()?;
                if part.is_empty() {
                    return None;
                }
                params.push((name.clone(), part.to_string()));
                consumed += part.len() + 1;
            }
        }
    }
    parts.next().is_none().then_some(params)
}

fn fill_template(t: &str, params: &[(String, String)]) -> String {
    let mut out = String::with_capacity(t.len() + 16);
    let mut rest = t;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = &rest[start + 1..start + end];
        if let Some((_, v)) = params.iter().find(|(n, _)| n == name) {
            out.push_str(v);
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
