//! The most specific route wins whatever the file order, and it matches the
//! request on its own (issue 19.9). Failures are kept in
//! `proptest-regressions/router/properties/ranking.txt`.

use http::Method;
use proptest::prelude::*;

use super::{Router, cases, test_router};

/// Routes of distinct specificity (no two tie), by id, each as TOML.
const RANKED: &[(&str, &str)] = &[
    ("any", "path-prefix = \"/\""),
    ("api", "path-prefix = \"/api\""),
    ("api-post", "path-prefix = \"/api\"\nmethods = [\"POST\"]"),
    (
        "v2",
        "path-prefix = \"/api\"\nmatch = { headers = { \"x-version\" = \"2\" } }",
    ),
    (
        "v2-beta",
        "path-prefix = \"/api\"\nmatch = { headers = { \"x-version\" = \"2\" }, query = { beta = true } }",
    ),
    ("user", "path = \"/api/users/{id}\""),
    ("user-rest", "path = \"/api/users/{id}/{*rest}\""),
    ("me", "path = \"/api/users/me\""),
    (
        "debug",
        "path-prefix = \"/\"\nmatch = { query = { debug = \"1\" } }",
    ),
    ("wild", "host = \"*.example.com\"\npath-prefix = \"/\""),
    (
        "exact-host",
        "host = \"api.example.com\"\npath-prefix = \"/\"",
    ),
];

fn ranked_router(order: &[usize]) -> Router {
    let toml: String = order
        .iter()
        .map(|&i| {
            let (id, body) = RANKED[i];
            format!("[[routes]]\nid = \"{id}\"\n{body}\nupstream = \"u\"\n")
        })
        .collect();
    test_router(&toml)
}

/// A request to route: host, method, path, `x-version` values, query.
type Req = (
    Option<&'static str>,
    Method,
    &'static str,
    Vec<&'static str>,
    Option<&'static str>,
);

fn any_request() -> impl Strategy<Value = Req> {
    (
        proptest::sample::select(vec![
            None,
            Some("api.example.com"),
            Some("x.example.com:8080"),
            Some("other.test"),
        ]),
        proptest::sample::select(vec![Method::GET, Method::POST]),
        proptest::sample::select(vec![
            "/",
            "/api",
            "/apix",
            "/api/users/me",
            "/api/users/7",
            "/api/users/7/x",
        ]),
        proptest::collection::vec(proptest::sample::select(vec!["1", "2", ""]), 0..3),
        proptest::sample::select(vec![
            None,
            Some("beta"),
            Some("beta=1&debug=1"),
            Some("debug=%31"),
            Some("debug=1+"),
            Some("x=1&debug=1"),
            Some("debug=%"),
        ]),
    )
}

fn route_id(router: &Router, order: &[usize], req: &Req) -> Option<&'static str> {
    let mut headers = http::HeaderMap::new();
    for v in &req.3 {
        headers.append("x-version", http::HeaderValue::from_static(v));
    }
    router
        .route_request(req.0, &req.1, req.2, &headers, req.4)
        .map(|m| RANKED[order[m.index]].0)
}

/// Whether route `i` alone matches `req`.
fn matches_alone(i: usize, req: &Req) -> bool {
    route_id(&ranked_router(&[i]), &[i], req).is_some()
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn the_most_specific_route_wins_whatever_the_file_order(
        order in Just((0..RANKED.len()).collect::<Vec<_>>()).prop_shuffle(),
        req in any_request(),
    ) {
        let natural: Vec<usize> = (0..RANKED.len()).collect();
        let expected = route_id(&ranked_router(&natural), &natural, &req);
        let got = route_id(&ranked_router(&order), &order, &req);
        prop_assert_eq!(got, expected);
        match got {
            Some(id) => {
                let i = RANKED.iter().position(|r| r.0 == id).unwrap();
                prop_assert!(matches_alone(i, &req), "{} does not match alone", id);
            }
            None => {
                for (i, route) in RANKED.iter().enumerate() {
                    prop_assert!(!matches_alone(i, &req), "{} matches alone", route.0);
                }
            }
        }
    }
}
