//! `cors`: the route's cross-origin resource sharing policy.
//!
//! Config (see README.md for the full reference):
//!
//! ```json
//! { "allow-origins": ["https://app.example.com", "https://*.example.com"],
//!   "allow-methods": ["GET", "POST"], "allow-headers": ["content-type"],
//!   "expose-headers": ["x-total"], "allow-credentials": true, "max-age": "10m" }
//! ```
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//!   is answered here, never forwarded: `204` with the `Access-Control-*`
//!   headers when the origin, the method and every requested header are
//!   allowed, else `403` without them (the browser then fails the request).
//! - Any other request from an allowed origin continues, and its response
//!   gets `Access-Control-Allow-Origin` (the request's origin, or `*` with
//!   `allow-origins = ["*"]`), `Access-Control-Allow-Credentials` and
//!   `Access-Control-Expose-Headers` in the response phase.
//! - A request from an origin that is not allowed continues, and its
//!   response carries no `Access-Control-Allow-*`/`-Expose-Headers` (the
//!   upstream's own are removed, so this plugin is the route's only policy).
//! - Unless origins are `"*"`, every response gets `Vary: Origin`, since its
//!   CORS headers depend on the request's origin.
//!
//! Needs no capabilities and never reads bodies.

mod config;

use pylon_plugin_sdk::{
    Header, HeaderOp, Needs, Plugin, ReadRequest, ReadResponse, Request, RequestAction, Response,
    ResponseEdits, ResponseView, export_plugin,
};

use crate::config::{List, Origins, Pattern, Settings};

/// The configured plugin and the response edits decided for the current
/// request.
struct Cors {
    settings: Settings,
    pending: Vec<HeaderOp>,
    vary: bool,
}

impl Plugin for Cors {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let settings = config::parse(text)?;
        Ok((
            Cors {
                settings,
                pending: Vec::new(),
                vary: false,
            },
            Needs::none().with_response_phase(),
        ))
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        self.pending.clear();
        self.vary = self.settings.origins != Origins::Any;
        // Without an origin this is no CORS request: nothing else is read.
        let Some(origin) = single_origin(req) else {
            return RequestAction::proceed();
        };
        if req.method() == "OPTIONS"
            && let Some(method) = req.header("access-control-request-method")
        {
            return self.preflight(req, &origin, &method).into();
        }
        if allowed_origin(&self.settings.origins, &origin) {
            self.pending = self.actual_headers(&origin);
        } else {
            self.pending = vec![
                HeaderOp::remove("access-control-allow-origin"),
                HeaderOp::remove("access-control-allow-credentials"),
                HeaderOp::remove("access-control-expose-headers"),
            ];
        }
        RequestAction::proceed()
    }

    fn on_response(&mut self, _req: &Request, resp: &ResponseView) -> ResponseEdits {
        let mut headers = std::mem::take(&mut self.pending);
        if self.vary && !varies_on_origin(resp) {
            headers.push(HeaderOp::append("vary", "Origin"));
        }
        ResponseEdits {
            headers,
            ..ResponseEdits::default()
        }
    }
}

impl Cors {
    /// The answer to a preflight from `origin` asking for `method` (the
    /// `Access-Control-Request-Method` value, as the caller read it).
    fn preflight(&self, req: &impl ReadRequest, origin: &str, method: &[u8]) -> Response {
        let s = &self.settings;
        let vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";
        let deny = |why: &str| {
            let mut r = Response::text(403, format!("CORS preflight refused: {why}\n"));
            if s.origins != Origins::Any {
                r = r.with_header("vary", vary);
            }
            r
        };
        if !allowed_origin(&s.origins, origin) {
            return deny("origin not allowed");
        }
        let Ok(method) = std::str::from_utf8(method) else {
            return deny("method not allowed");
        };
        let method_ok = match &s.methods {
            List::Any => is_token(method),
            List::Only(list) => list.iter().any(|m| m.eq_ignore_ascii_case(method)),
        };
        if !method_ok {
            return deny("method not allowed");
        }
        let mut requested = Vec::new();
        for v in req.header_all("access-control-request-headers") {
            for name in v.split(|&b| b == b',') {
                let name = name.trim_ascii();
                if name.is_empty() {
                    continue;
                }
                match std::str::from_utf8(name) {
                    Ok(n) if is_token(n) => requested.push(n.to_ascii_lowercase()),
                    _ => return deny("header not allowed"),
                }
            }
        }
        if let List::Only(list) = &s.headers
            && !requested
                .iter()
                .all(|r| list.iter().any(|h| h.eq_ignore_ascii_case(r)))
        {
            return deny("header not allowed");
        }

        let mut resp = Response::new(204);
        let mut add = |name: &str, value: String| resp.headers.push(Header::new(name, value));
        add(
            "access-control-allow-origin",
            self.allow_origin_value(origin),
        );
        if s.credentials {
            add("access-control-allow-credentials", "true".into());
        }
        // With credentials, `*` is a literal name to browsers, so echo
        // what was asked instead.
        match &s.methods {
            List::Any if s.credentials => add("access-control-allow-methods", method.into()),
            List::Any => add("access-control-allow-methods", "*".into()),
            List::Only(list) => add("access-control-allow-methods", list.join(", ")),
        }
        match &s.headers {
            List::Any if s.credentials => {
                if !requested.is_empty() {
                    add("access-control-allow-headers", requested.join(", "));
                }
            }
            List::Any => add("access-control-allow-headers", "*".into()),
            List::Only(list) if !list.is_empty() => {
                add("access-control-allow-headers", list.join(", "));
            }
            List::Only(_) => {}
        }
        if let Some(age) = s.max_age {
            add("access-control-max-age", age.to_string());
        }
        if s.origins != Origins::Any {
            add("vary", vary.into());
        }
        resp
    }

    /// Response edits for an actual request from an allowed origin.
    fn actual_headers(&self, origin: &str) -> Vec<HeaderOp> {
        let s = &self.settings;
        let mut ops = vec![HeaderOp::set(
            "access-control-allow-origin",
            self.allow_origin_value(origin),
        )];
        if s.credentials {
            ops.push(HeaderOp::set("access-control-allow-credentials", "true"));
        } else {
            ops.push(HeaderOp::remove("access-control-allow-credentials"));
        }
        if s.expose.is_empty() {
            ops.push(HeaderOp::remove("access-control-expose-headers"));
        } else {
            ops.push(HeaderOp::set(
                "access-control-expose-headers",
                s.expose.join(", "),
            ));
        }
        ops
    }

    fn allow_origin_value(&self, origin: &str) -> String {
        match self.settings.origins {
            // Config validation rules out credentials with `*`.
            Origins::Any => "*".to_string(),
            Origins::List(_) => origin.to_string(),
        }
    }
}

/// The request's `Origin`, when there is exactly one and it is UTF-8.
fn single_origin(req: &impl ReadRequest) -> Option<String> {
    let all = req.header_all("origin");
    let [only] = all.as_slice() else {
        return None;
    };
    std::str::from_utf8(only).ok().map(|o| o.trim().to_string())
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `origin` (as the browser sent it) is allowed. `null` (opaque
/// origins) never is, except through `"*"`.
fn allowed_origin(origins: &Origins, origin: &str) -> bool {
    let list = match origins {
        Origins::Any => return true,
        Origins::List(list) => list,
    };
    let origin = origin.to_ascii_lowercase();
    list.iter().any(|p| match p {
        Pattern::Exact(o) => *o == origin,
        Pattern::Subdomains {
            scheme,
            suffix,
            port,
        } => {
            let Some(rest) = origin
                .strip_prefix(scheme.as_str())
                .and_then(|r| r.strip_prefix("://"))
            else {
                return false;
            };
            let Some(host) = rest.strip_suffix(port.as_str()) else {
                return false;
            };
            // Without a configured port the origin must have none either.
            if port.is_empty() && host.contains(':') {
                return false;
            }
            match host.strip_suffix(suffix.as_str()) {
                Some(sub) => {
                    !sub.is_empty()
                        && sub.split('.').all(|label| {
                            !label.is_empty()
                                && label
                                    .bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        })
                }
                None => false,
            }
        }
    })
}

/// The response already varies on `Origin` (or on everything).
fn varies_on_origin(resp: &impl ReadResponse) -> bool {
    resp.header_all("vary").iter().any(|v| {
        v.split(|&b| b == b',').any(|n| {
            let n = n.trim_ascii();
            n == b"*" || n.eq_ignore_ascii_case(b"origin")
        })
    })
}

export_plugin!(Cors);

#[cfg(test)]
mod tests {
    use pylon_plugin_sdk::RequestData;

    use super::*;

    fn origins(list: &[&str]) -> Origins {
        let json = serde_json_list(list);
        config::parse(&format!(r#"{{"allow-origins":{json}}}"#))
            .unwrap()
            .origins
    }

    fn serde_json_list(list: &[&str]) -> String {
        let quoted: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", quoted.join(","))
    }

    #[test]
    fn origin_matching() {
        let o = origins(&[
            "https://app.example.com",
            "https://*.example.org",
            "http://*.dev.test:8080",
        ]);
        for ok in [
            "https://app.example.com",
            "https://APP.example.com",
            "https://a.example.org",
            "https://a.b.example.org",
            "http://x.dev.test:8080",
        ] {
            assert!(allowed_origin(&o, ok), "{ok}");
        }
        for no in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://example.org",
            "https://.example.org",
            "https://evil-example.org",
            "https://a.example.org.evil.com",
            "https://a.example.org:443",
            "http://x.dev.test",
            "http://x.dev.test:8081",
            "null",
            "",
        ] {
            assert!(!allowed_origin(&o, no), "{no}");
        }
        assert!(allowed_origin(&origins(&["*"]), "null"));
    }

    #[test]
    fn vary_detection() {
        let vary = |values: &[&str]| {
            let resp = values
                .iter()
                .fold(Response::new(200), |r, v| r.with_header("vary", v));
            varies_on_origin(&resp)
        };
        assert!(vary(&["Accept, origin"]));
        assert!(vary(&["*"]));
        assert!(vary(&["accept", "Origin"]));
        assert!(!vary(&["accept-origin"]));
        assert!(!vary(&[]));
    }

    #[test]
    fn origin_must_be_single() {
        let req = |origins: &[&str]| {
            let r = origins.iter().fold(RequestData::new("GET", "/"), |r, o| {
                r.with_header("Origin", o)
            });
            single_origin(&r)
        };
        assert_eq!(
            req(&[" https://a.test "]).as_deref(),
            Some("https://a.test")
        );
        assert_eq!(req(&[]), None);
        assert_eq!(req(&["https://a.test", "https://b.test"]), None);
        let bad = RequestData::new("GET", "/").with_header("origin", b"\xff");
        assert_eq!(single_origin(&bad), None);
    }

    #[test]
    fn preflight_answers() {
        let (cors, _) = Cors::configure(
            r#"{"allow-origins":["https://a.test"],"allow-methods":["GET","PUT"],
                "allow-headers":["content-type","x-id"],"max-age":"10m"}"#,
        )
        .unwrap();
        let req = RequestData::new("OPTIONS", "/")
            .with_header("access-control-request-headers", "Content-Type, x-id")
            .with_header("access-control-request-headers", "");
        let ok = cors.preflight(&req, "https://a.test", b"put");
        assert_eq!(ok.status, 204);
        assert_eq!(
            ok.header_str("access-control-allow-origin"),
            Some("https://a.test")
        );
        assert_eq!(
            ok.header_str("access-control-allow-methods"),
            Some("GET, PUT")
        );
        assert_eq!(
            ok.header_str("access-control-allow-headers"),
            Some("content-type, x-id")
        );
        assert_eq!(ok.header_str("access-control-max-age"), Some("600"));
        assert_eq!(cors.preflight(&req, "https://b.test", b"PUT").status, 403);
        assert_eq!(
            cors.preflight(&req, "https://a.test", b"DELETE").status,
            403
        );
        assert_eq!(cors.preflight(&req, "https://a.test", b"\xff").status, 403);
        let other = RequestData::new("OPTIONS", "/")
            .with_header("access-control-request-headers", "x-other");
        let refused = cors.preflight(&other, "https://a.test", b"GET");
        assert_eq!(refused.status, 403);
        assert_eq!(refused.header("access-control-allow-origin"), None);
    }
}
