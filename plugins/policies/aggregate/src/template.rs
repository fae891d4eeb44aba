//! Templates for call paths and header values: literal text with `{...}`
//! substitutions, parsed once at configure time.
//!
//! - `{name}`: a path parameter captured by the route pattern;
//! - `{query.name}`: a query parameter of the client's request (first
//!   occurrence, form-decoded);
//! - `{header.name}`: a header of the client's request (first value);
//! - `{key.a.b}` / `{key/a/b}`: a value in the JSON body answered by the
//!   earlier call `key`, by dotted path (a number indexes an array) or by
//!   JSON pointer (RFC 6901). Only steps in `then` may use these.
//!
//! In a path every substituted value is percent-encoded (all but
//! `A-Z a-z 0-9 - . _ ~`); path parameters are percent-decoded first, so
//! they are not encoded twice. In a header value it is inserted as is.

use std::collections::HashMap;

use pylon_plugin_sdk::{Header, ReadRequest, RequestData};
use serde_json::Value;

/// A parsed template.
#[derive(Debug, Clone)]
pub(crate) struct Template(Vec<Part>);

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Param(String),
    Query(String),
    Header(String),
    Value {
        key: String,
        path: Vec<String>,
        text: String,
    },
}

/// A request-derived value a template needs and the request lacks.
#[derive(Debug)]
pub(crate) enum Missing {
    /// The client did not send it (a query parameter or a header).
    Client(String),
    /// The route pattern has no such parameter: a config mistake.
    Config(String),
}

impl Template {
    /// Parse `text`; the error says what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let open = rest.find('{').unwrap_or(rest.len());
            let lit = &rest[..open];
            if lit.contains('}') {
                return Err(format!("{text:?} has a '}}' without a '{{'"));
            }
            if !lit.is_empty() {
                parts.push(Part::Lit(lit.to_string()));
            }
            rest = &rest[open..];
            let Some(inner) = rest.strip_prefix('{') else {
                break;
            };
            let Some(close) = inner.find('}') else {
                return Err(format!("{text:?} has a '{{' without a '}}'"));
            };
            parts.push(substitution(text, &inner[..close])?);
            rest = &inner[close + 1..];
        }
        Ok(Template(parts))
    }

    /// The literal text, for checks on what the template itself contains.
    pub(crate) fn literals(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Part::Lit(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The call keys whose responses the template reads, as written
    /// (`{user.id}` → `("user", "user.id")`).
    pub(crate) fn value_refs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter_map(|p| match p {
            Part::Value { key, text, .. } => Some((key.as_str(), text.as_str())),
            _ => None,
        })
    }

    /// Check that `req` has every request-derived value the template needs.
    pub(crate) fn check(&self, req: &impl ReadRequest) -> Result<(), Missing> {
        for part in &self.0 {
            match part {
                Part::Param(name) if req.param(name).is_none() => {
                    return Err(Missing::Config(format!(
                        "the route has no path parameter {{{name}}}"
                    )));
                }
                Part::Query(name) if query_param(req, name).is_none() => {
                    return Err(Missing::Client(format!("missing query parameter {name:?}")));
                }
                Part::Header(name) if req.header(name).is_none() => {
                    return Err(Missing::Client(format!("missing header {name:?}")));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Fill the template. `encode` percent-encodes substituted values (for
    /// paths). Request-derived values must have passed [`Template::check`];
    /// the error is a value missing from an earlier call's answer.
    pub(crate) fn render(
        &self,
        req: &impl ReadRequest,
        answers: &HashMap<&str, Value>,
        encode: bool,
    ) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for part in &self.0 {
            let value: Vec<u8> = match part {
                Part::Lit(s) => {
                    out.extend_from_slice(s.as_bytes());
                    continue;
                }
                Part::Param(name) => {
                    let raw = req.param(name).unwrap_or_default();
                    if encode {
                        percent_decode(&raw)
                    } else {
                        raw.as_bytes().to_vec()
                    }
                }
                Part::Query(name) => query_param(req, name).unwrap_or_default(),
                Part::Header(name) => req.header(name).unwrap_or_default(),
                Part::Value { key, path, text } => {
                    let Some(answer) = answers.get(key.as_str()) else {
                        return Err(format!("no value for {{{text}}}: call {key:?} failed"));
                    };
                    match lookup(answer, path) {
                        Some(Value::String(s)) => s.clone().into_bytes(),
                        Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string().into_bytes(),
                        Some(_) => {
                            return Err(format!(
                                "{{{text}}} is not a string, number or boolean in the answer of {key:?}"
                            ));
                        }
                        None => {
                            return Err(format!(
                                "no value for {{{text}}} in the answer of {key:?}"
                            ));
                        }
                    }
                }
            };
            if encode {
                percent_encode(&value, &mut out);
            } else {
                out.extend_from_slice(&value);
            }
        }
        Ok(out)
    }
}

/// The parts of the client's request a set of templates reads: path
/// parameters, header names (lowercase) and whether any reads the query.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    params: Vec<String>,
    headers: Vec<String>,
    query: bool,
}

impl Reads {
    /// Add what `template` reads.
    pub(crate) fn add(&mut self, template: &Template) {
        for part in &template.0 {
            match part {
                Part::Param(name) if !self.params.contains(name) => {
                    self.params.push(name.clone());
                }
                Part::Header(name) if !self.headers.contains(name) => {
                    self.headers.push(name.clone());
                }
                Part::Query(_) => self.query = true,
                _ => {}
            }
        }
    }

    /// Copy what the templates read from `req` (one host call per part,
    /// each part once) into a plain request to check and render them
    /// against: the parameters the request has, the first value of each
    /// header it has and the query. Everything else is left empty.
    pub(crate) fn snapshot(&self, req: &impl ReadRequest) -> RequestData {
        RequestData {
            route: String::new(),
            method: String::new(),
            path: String::new(),
            query: if self.query { req.query() } else { None },
            headers: self
                .headers
                .iter()
                .filter_map(|name| Some(Header::new(name.as_str(), req.header(name)?)))
                .collect(),
            client_addr: String::new(),
            scheme: String::new(),
            client_identity: None,
            params: self
                .params
                .iter()
                .filter_map(|name| Some((name.clone(), req.param(name)?)))
                .collect(),
            body: None,
        }
    }
}

fn substitution(text: &str, inner: &str) -> Result<Part, String> {
    let sep = inner.find(['.', '/']);
    let head = &inner[..sep.unwrap_or(inner.len())];
    if head.is_empty() {
        return Err(format!("{text:?} has an empty substitution {{{inner}}}"));
    }
    let Some(sep) = sep else {
        return Ok(Part::Param(inner.to_string()));
    };
    let rest = &inner[sep + 1..];
    let tail_empty = || format!("{text:?}: {{{inner}}} names nothing after {head:?}");
    match (head, &inner[sep..sep + 1]) {
        ("query", ".") if !rest.is_empty() => Ok(Part::Query(rest.to_string())),
        ("header", ".") if !rest.is_empty() => Ok(Part::Header(rest.to_ascii_lowercase())),
        ("query" | "header", _) => Err(tail_empty()),
        (_, ".") => {
            if rest.is_empty() || rest.split('.').any(str::is_empty) {
                return Err(format!(
                    "{text:?}: {{{inner}}} is not a dotted path (empty segment)"
                ));
            }
            Ok(Part::Value {
                key: head.to_string(),
                path: rest.split('.').map(str::to_string).collect(),
                text: inner.to_string(),
            })
        }
        _ => Ok(Part::Value {
            key: head.to_string(),
            path: pointer(&inner[sep..]).map_err(|e| format!("{text:?}: {{{inner}}}: {e}"))?,
            text: inner.to_string(),
        }),
    }
}

/// The reference tokens of a JSON pointer (RFC 6901) starting with `/`.
fn pointer(ptr: &str) -> Result<Vec<String>, String> {
    ptr[1..]
        .split('/')
        .map(|t| {
            let mut out = String::new();
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => out.push('~'),
                    Some('1') => out.push('/'),
                    _ => {
                        return Err(format!(
                            "{ptr:?} is not a JSON pointer ('~' must be followed by 0 or 1)"
                        ));
                    }
                }
            }
            Ok(out)
        })
        .collect()
}

fn lookup<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, token| match v {
        Value::Object(m) => m.get(token),
        Value::Array(a) => token.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// The first value of query parameter `name`, form-decoded.
fn query_param(req: &impl ReadRequest, name: &str) -> Option<Vec<u8>> {
    req.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k) == name.as_bytes()).then(|| form_decode(v))
    })
}

fn form_decode(s: &str) -> Vec<u8> {
    percent_decode(&s.replace('+', " "))
}

fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn percent_encode(value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(query: Option<&str>) -> RequestData {
        let mut req = RequestData::new("GET", "/u/a%20b").with_header("x-tenant", "acme co");
        req.route = "r".into();
        req.query = query.map(str::to_string);
        req.params = vec![("id".into(), "a%20b".into())];
        req
    }

    fn render(t: &str, answers: &HashMap<&str, Value>, encode: bool) -> Result<String, String> {
        let t = Template::parse(t)?;
        t.check(&req(Some("x=1+2&y=%C3%A9&x=9")))
            .map_err(|e| format!("{e:?}"))?;
        t.render(&req(Some("x=1+2&y=%C3%A9&x=9")), answers, encode)
            .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn substitutions_are_filled_and_encoded_in_paths() {
        let mut answers = HashMap::new();
        answers.insert(
            "user",
            json!({"id": 7, "tags": ["a/b"], "x.y": {"~": true}}),
        );
        assert_eq!(
            render(
                "/p/{id}?x={query.x}&y={query.y}&t={header.x-tenant}",
                &answers,
                true
            )
            .unwrap(),
            "/p/a%20b?x=1%202&y=%C3%A9&t=acme%20co"
        );
        assert_eq!(
            render(
                "/o?u={user.id}&t={user.tags.0}&p={user/x.y/~0}",
                &answers,
                true
            )
            .unwrap(),
            "/o?u=7&t=a%2Fb&p=true"
        );
        assert_eq!(
            render("Bearer {header.x-tenant} {id}", &answers, false).unwrap(),
            "Bearer acme co a%20b"
        );
        let err = render("/o/{user.name}", &answers, true).unwrap_err();
        assert!(err.contains("no value for {user.name}"), "{err}");
        let err = render("/o/{user.tags}", &answers, true).unwrap_err();
        assert!(err.contains("not a string, number or boolean"), "{err}");
        let err = render("/o/{orders.id}", &answers, true).unwrap_err();
        assert!(err.contains("call \"orders\" failed"), "{err}");
    }

    #[test]
    fn missing_request_values_are_classified() {
        let t = Template::parse("/p/{query.absent}").unwrap();
        assert!(matches!(t.check(&req(None)), Err(Missing::Client(_))));
        let t = Template::parse("/p/{nope}").unwrap();
        assert!(matches!(t.check(&req(None)), Err(Missing::Config(_))));
    }

    #[test]
    fn malformed_templates_are_rejected() {
        for (t, needle) in [
            ("/a/{id", "without a '}'"),
            ("/a/}", "without a '{'"),
            ("/a/{}", "empty substitution"),
            ("/a/{query.}", "names nothing"),
            ("/a/{user..id}", "empty segment"),
            ("/a/{user/~2}", "not a JSON pointer"),
        ] {
            let err = Template::parse(t).unwrap_err();
            assert!(err.contains(needle), "{t}: {err}");
        }
    }

    #[test]
    fn snapshots_hold_only_what_the_templates_read() {
        let mut reads = Reads::default();
        for t in [
            "/p/{id}/{id}?x={query.x}",
            "{header.x-tenant} {header.x-absent}",
        ] {
            reads.add(&Template::parse(t).unwrap());
        }
        let full = req(Some("x=1+2"))
            .with_header("x-other", "o")
            .with_header("x-tenant", "second");
        let snap = reads.snapshot(&full);
        assert_eq!(snap.query.as_deref(), Some("x=1+2"));
        assert_eq!(snap.params, [("id".to_string(), "a%20b".to_string())]);
        assert_eq!(snap.headers, [Header::new("x-tenant", "acme co")]);
        assert_eq!(snap.body, None);
        let empty = Reads::default().snapshot(&full);
        assert_eq!(
            (empty.query, empty.headers, empty.params),
            (None, vec![], vec![])
        );
    }
}
