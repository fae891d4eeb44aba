//! Unit tests of route matching.

use http::HeaderName;

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
