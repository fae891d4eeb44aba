//! Route matching: host, method, path (exact, prefix, or a pattern with
//! `{name}` and a trailing `{*rest}`), headers and query parameters. The
//! most specific matching route wins ([`Router::new`] states the order),
//! configuration order breaking ties. Also computes the upstream path after
//! prefix strip or rewrite.
//!
//! Matching never allocates unless the route captures parameters, or a
//! condition is on a repeated header or an escaped query parameter. Paths
//! are matched as given: the caller normalises them first with [`path`].

pub mod path;
#[cfg(test)]
pub(crate) mod properties;

use std::{borrow::Cow, cmp::Reverse};

use http::{HeaderMap, HeaderName, Method};

use crate::config::{PathMatch, RequestMatch, Rewrite, Route, ValueMatch};

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

fn conditions_hold(m: &RequestMatch, headers: &HeaderMap, query: Option<&str>) -> bool {
    m.headers
        .iter()
        .all(|(name, want)| header_holds(headers, name, want))
        && m.query
            .iter()
            .all(|(name, want)| query_holds(query, name, want))
}

/// A header sent several times is compared as its values joined with `,`
/// (how RFC 9110 5.3 combines them, and what Envoy matches).
fn header_holds(headers: &HeaderMap, name: &HeaderName, want: &ValueMatch) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    let ValueMatch::Exact(want) = want else {
        return true;
    };
    let mut joined = Cow::Borrowed(first.as_bytes());
    for v in values {
        let j = joined.to_mut();
        j.push(b',');
        j.extend_from_slice(v.as_bytes());
    }
    *joined == *want.as_bytes()
}

/// Whether any `name=value` pair of `query` (names and values
/// percent-decoded, `+` a space) satisfies `want`. A pair that does not
/// decode (a bad escape, not UTF-8) satisfies nothing.
fn query_holds(query: Option<&str>, name: &str, want: &ValueMatch) -> bool {
    let Some(query) = query else {
        return false;
    };
    query.split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        !k.is_empty()
            && decode_component(k).is_some_and(|k| k == name)
            && match want {
                ValueMatch::Present => true,
                ValueMatch::Exact(e) => decode_component(v).is_some_and(|v| v == e.as_str()),
            }
    })
}

fn decode_component(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains(['%', '+']) {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
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
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    fn router(toml: &str) -> Router {
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n{toml}"
        );
        let cfg = config::parse(&text, Path::new("t.toml"), Path::new(".")).unwrap();
        Router::new(&cfg.routes)
    }

    #[test]
    fn first_matching_route_wins_in_order() {
        let r = router(
            "[[routes]]\nid = \"a\"\npath = \"/users/me\"\nupstream = \"u\"\n\
             [[routes]]\nid = \"b\"\npath = \"/users/{id}\"\nupstream = \"u\"\n\
             [[routes]]\nid = \"c\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
        );
        assert_eq!(r.route(None, &Method::GET, "/users/me").unwrap().index, 0);
        let m = r.route(None, &Method::GET, "/users/42").unwrap();
        assert_eq!(m.index, 1);
        assert_eq!(m.params, vec![("id".to_string(), "42".to_string())]);
        assert_eq!(r.route(None, &Method::GET, "/users/42/x").unwrap().index, 2);
        assert_eq!(r.route(None, &Method::GET, "/users/").unwrap().index, 2);
    }

    #[test]
    fn host_and_method_filter_routes() {
        let r = router(
            "[[routes]]\nid = \"a\"\nhost = \"*.example.com\"\nmethods = [\"POST\"]\npath-prefix = \"/\"\nupstream = \"u\"\n\
             [[routes]]\nid = \"b\"\nhost = \"api.test\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
        );
        assert_eq!(
            r.route(Some("x.Example.com:8080"), &Method::POST, "/")
                .unwrap()
                .index,
            0
        );
        assert!(r.route(Some("x.example.com"), &Method::GET, "/").is_none());
        assert!(r.route(Some("example.com"), &Method::POST, "/").is_none());
        assert_eq!(
            r.route(Some("API.test"), &Method::GET, "/").unwrap().index,
            1
        );
        assert!(r.route(None, &Method::GET, "/").is_none());
    }

    #[test]
    fn strip_prefix_and_template_rewrite() {
        let r = router(
            "[[routes]]\nid = \"a\"\npath-prefix = \"/api\"\nstrip-prefix = true\nupstream = \"u\"\n\
             [[routes]]\nid = \"b\"\npath = \"/v1/{user}/files/{*rest}\"\nrewrite = \"/files/{user}/{rest}\"\nupstream = \"u\"\n",
        );
        assert_eq!(
            r.route(None, &Method::GET, "/api/x/y")
                .unwrap()
                .upstream_path,
            "/x/y"
        );
        assert_eq!(
            r.route(None, &Method::GET, "/api").unwrap().upstream_path,
            "/"
        );
        let m = r
            .route(None, &Method::GET, "/v1/bob/files/a/b.txt")
            .unwrap();
        assert_eq!(m.upstream_path, "/files/bob/a/b.txt");
    }

    #[test]
    fn the_most_specific_route_wins_whatever_the_file_order() {
        let r = router(
            "[[routes]]\nid = \"any\"\npath-prefix = \"/\"\nupstream = \"u\"\n\
             [[routes]]\nid = \"api\"\npath-prefix = \"/api\"\nupstream = \"u\"\n\
             [[routes]]\nid = \"v2\"\npath-prefix = \"/api\"\nmatch = { headers = { \"x-version\" = \"2\" } }\nupstream = \"u\"\n\
             [[routes]]\nid = \"beta\"\npath-prefix = \"/api\"\nmatch = { headers = { \"x-version\" = \"2\" }, query = { beta = true } }\nupstream = \"u\"\n\
             [[routes]]\nid = \"user\"\npath = \"/api/users/{id}\"\nupstream = \"u\"\n\
             [[routes]]\nid = \"host\"\nhost = \"api.test\"\npath-prefix = \"/\"\nupstream = \"u\"\n",
        );
        let at = |host: Option<&str>, path: &str, headers: &[(&str, &str)], query: Option<&str>| {
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            r.route_request(host, &Method::GET, path, &map, query)
                .map(|m| m.index)
        };
        assert_eq!(at(None, "/x", &[], None), Some(0));
        assert_eq!(at(None, "/api/x", &[], None), Some(1));
        assert_eq!(at(None, "/api/x", &[("x-version", "2")], None), Some(2));
        assert_eq!(
            at(None, "/api/x", &[("x-version", "2")], Some("a=1&beta")),
            Some(3)
        );
        assert_eq!(
            at(None, "/api/x", &[("x-version", "2")], Some("beta=")),
            Some(3)
        );
        assert_eq!(
            at(None, "/api/x", &[("x-version", "1")], Some("beta")),
            Some(1)
        );
        // Repeated: compared joined, so "2" then "1" is not "2".
        assert_eq!(
            at(
                None,
                "/api/x",
                &[("x-version", "2"), ("x-version", "1")],
                None
            ),
            Some(1)
        );
        // A pattern is more specific than a prefix, a host than any path.
        assert_eq!(
            at(None, "/api/users/7", &[("x-version", "2")], None),
            Some(4)
        );
        assert_eq!(
            at(Some("api.test:8443"), "/api/users/7", &[], None),
            Some(5)
        );
    }

    #[test]
    fn query_conditions_decode_names_and_values() {
        let r = router(
            "[[routes]]\nid = \"q\"\npath-prefix = \"/\"\nmatch = { query = { \"the key\" = \"a b/é\" } }\nupstream = \"u\"\n",
        );
        let hit = |q: &str| {
            r.route_request(None, &Method::GET, "/", &HeaderMap::new(), Some(q))
                .is_some()
        };
        assert!(hit("the+key=a+b%2F%C3%A9"));
        assert!(hit("x=1&the%20key=a%20b/%c3%a9&y"));
        assert!(hit("the+key=no&the+key=a+b/é"));
        for q in [
            "the+key=a+b",
            "thekey=a+b%2F%C3%A9",
            "the+key=a+b%2F%C3",
            "the+key=a+b%2F%C3%A9%",
            "the+key=a+b%+F%C3%A9",
            "",
        ] {
            assert!(!hit(q), "{q}");
        }
        assert!(r.route(None, &Method::GET, "/").is_none());
    }

    /// Found by `fuzz/` (path_router): this path panicked on a slice past
    /// its end.
    #[test]
    fn catch_all_matches_a_path_ending_before_its_slash() {
        let r = router(
            "[[routes]]\nid = \"b\"\npath = \"/v1/{user}/files/{*rest}\"\nrewrite = \"/files/{user}/{rest}\"\nupstream = \"u\"\n",
        );
        for path in ["/v1/bob/files", "/v1/bob/files/"] {
            let m = r.route(None, &Method::GET, path).unwrap();
            assert_eq!(m.params[1], ("rest".to_string(), String::new()), "{path}");
            assert_eq!(m.upstream_path, "/files/bob/");
        }
        assert!(r.route(None, &Method::GET, "/v1/bob/file").is_none());
        assert!(r.route(None, &Method::GET, "/v1/bob").is_none());
    }
}
