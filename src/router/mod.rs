//! Route matching: host, method and path (exact, prefix, or a pattern with
//! `{name}` and a trailing `{*rest}`), in configuration order, first match
//! wins. Also computes the upstream path after prefix strip or rewrite.
//!
//! Matching never allocates unless the route captures parameters. Paths
//! are matched as given: the caller normalises them first with [`path`].

pub mod path;
#[cfg(test)]
pub(crate) mod properties;

use http::Method;

use crate::config::{PathMatch, Rewrite, Route};

/// A compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<CompiledRoute>,
}

#[derive(Debug)]
struct CompiledRoute {
    host: Option<HostMatch>,
    methods: Vec<Method>,
    path: CompiledPath,
    rewrite: Option<Rewrite>,
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
    /// Compile the routes of a configuration.
    pub fn new(routes: &[Route]) -> Self {
        let routes = routes
            .iter()
            .map(|r| CompiledRoute {
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
        Self { routes }
    }

    /// Find the first route matching `host` (without port, any case),
    /// `method` and `path`.
    pub fn route(&self, host: Option<&str>, method: &Method, path: &str) -> Option<Match> {
        let host = host.map(strip_port);
        for (index, r) in self.routes.iter().enumerate() {
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
                index,
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
