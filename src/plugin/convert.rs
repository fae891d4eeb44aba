//! Conversions between the host model (`crate::pipeline`) and the WIT
//! types, both ways, without loss: header values stay bytes and repeated
//! headers stay repeated. (The request and response a hook reads are
//! resources, served field by field by `host::exchange`.)
//!
//! Everything a guest returns is validated here; anything the host cannot
//! apply (a bad header name or value, a status outside 200–599, a path that
//! is not an origin-form path) becomes [`PluginError::InvalidOutput`].

use std::{str::FromStr, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, uri::PathAndQuery};

use super::bindings::pylon::plugin::types as wit;
use crate::pipeline::{
    FixedEdits, HeaderOp, Needs, PluginError, PluginResponse, RequestAction, RequestEdits,
    ResponseEdits,
};

/// Every header value, owned (for results handed to the guest by imports).
pub(crate) fn headers_to_wit_owned(map: &HeaderMap) -> Vec<wit::Header> {
    map.iter()
        .map(|(name, value)| wit::Header {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

/// `ip:port`, as `SocketAddr`'s `Display` writes it. IPv4 (the common
/// case) is written by hand: the formatting machinery cost more than the
/// rest of building the request for the guest.
pub(crate) fn socket_addr_text(addr: std::net::SocketAddr) -> String {
    use std::fmt::Write;
    match addr {
        std::net::SocketAddr::V4(v4) => {
            let mut out = String::with_capacity(21);
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(&mut out, u32::from(octet));
            }
            out.push(':');
            push_decimal(&mut out, u32::from(v4.port()));
            out
        }
        v6 => {
            let mut out = String::with_capacity(48);
            let _ = write!(out, "{v6}");
            out
        }
    }
}

fn push_decimal(out: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// Validates one guest's output, naming the plugin in every error.
pub(crate) struct Validate<'a> {
    pub(crate) plugin: &'a Arc<str>,
}

impl Validate<'_> {
    fn invalid(&self, what: &'static str, detail: String) -> PluginError {
        PluginError::InvalidOutput {
            plugin: self.plugin.clone(),
            what,
            detail,
        }
    }

    /// What `configure` declared: the needs, and the fixed header edits,
    /// validated like any edits (a bad one fails the load, naming the plugin).
    pub(crate) fn configured(&self, n: wit::Needs) -> Result<(Needs, FixedEdits), PluginError> {
        let needs = Needs {
            request_phase: n.request_phase,
            request_body: n.request_body,
            response_phase: n.response_phase,
            response_body: n.response_body,
        };
        let fixed = FixedEdits {
            request: self.header_ops(n.fixed_request_headers)?,
            response: self.header_ops(n.fixed_response_headers)?,
        };
        Ok((needs, fixed))
    }

    /// The request phase's decision.
    pub(crate) fn action(&self, action: wit::RequestAction) -> Result<RequestAction, PluginError> {
        Ok(match action {
            wit::RequestAction::Continue(edits) => {
                RequestAction::Continue(self.request_edits(edits)?)
            }
            wit::RequestAction::Respond(resp) => RequestAction::Respond(self.response(resp)?),
        })
    }

    fn request_edits(&self, edits: wit::RequestEdits) -> Result<RequestEdits, PluginError> {
        let path = edits.path.map(|p| self.path(p)).transpose()?;
        let query = edits.query.map(|q| self.query(q)).transpose()?;
        Ok(RequestEdits {
            headers: self.header_ops(edits.headers)?,
            path,
            query,
            upstream: edits.upstream,
            body: edits.body.map(Bytes::from),
            response_headers: self.header_ops(edits.response_headers)?,
        })
    }

    /// The response phase's edits.
    pub(crate) fn response_edits(
        &self,
        edits: wit::ResponseEdits,
    ) -> Result<ResponseEdits, PluginError> {
        Ok(ResponseEdits {
            status: edits.status.map(|s| self.status(s)).transpose()?,
            headers: self.header_ops(edits.headers)?,
            body: edits.body.map(Bytes::from),
        })
    }

    fn response(&self, resp: wit::Response) -> Result<PluginResponse, PluginError> {
        let mut headers = HeaderMap::with_capacity(resp.headers.len());
        for h in resp.headers {
            let (name, value) = self.header(h)?;
            headers.append(name, value);
        }
        Ok(PluginResponse {
            status: self.status(resp.status)?,
            headers,
            body: Some(resp.body.map(Bytes::from).unwrap_or_default()),
        })
    }

    fn status(&self, status: u16) -> Result<StatusCode, PluginError> {
        match StatusCode::from_u16(status) {
            Ok(s) if (200..=599).contains(&status) => Ok(s),
            _ => Err(self.invalid("status", format!("{status} is not in 200..=599"))),
        }
    }

    fn header_ops(&self, ops: Vec<wit::HeaderOp>) -> Result<Vec<HeaderOp>, PluginError> {
        ops.into_iter()
            .map(|op| {
                Ok(match op {
                    wit::HeaderOp::Set(h) => {
                        let (n, v) = self.header(h)?;
                        HeaderOp::Set(n, v)
                    }
                    wit::HeaderOp::Append(h) => {
                        let (n, v) = self.header(h)?;
                        HeaderOp::Append(n, v)
                    }
                    wit::HeaderOp::Remove(name) => HeaderOp::Remove(self.header_name(&name)?),
                })
            })
            .collect()
    }

    fn header(&self, h: wit::Header) -> Result<(HeaderName, HeaderValue), PluginError> {
        let name = self.header_name(&h.name)?;
        // The value takes over the guest's bytes instead of copying them.
        let value = HeaderValue::from_maybe_shared(Bytes::from(h.value)).map_err(|_| {
            self.invalid(
                "header value",
                format!("value of `{name}` contains a byte not allowed in a header"),
            )
        })?;
        Ok((name, value))
    }

    fn header_name(&self, name: &str) -> Result<HeaderName, PluginError> {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| self.invalid("header name", format!("{name:?}")))
    }

    fn path(&self, path: String) -> Result<String, PluginError> {
        let ok = path.starts_with('/')
            && !path.contains(['?', '#'])
            && PathAndQuery::from_str(&path).is_ok();
        if ok {
            Ok(path)
        } else {
            Err(self.invalid("path", format!("{path:?} is not an origin-form path")))
        }
    }

    fn query(&self, query: String) -> Result<String, PluginError> {
        let ok = !query.contains('#') && PathAndQuery::from_str(&format!("/?{query}")).is_ok();
        if ok {
            Ok(query)
        } else {
            Err(self.invalid("query", format!("{query:?} is not a valid query string")))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn socket_addresses_print_as_display_does() {
        for addr in [
            "127.0.0.1:9",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.20.30.40:8080",
            "[::1]:443",
            "[2001:db8::7]:65535",
        ] {
            let a: SocketAddr = addr.parse().unwrap();
            assert_eq!(socket_addr_text(a), a.to_string());
        }
    }

    fn v() -> Validate<'static> {
        static NAME: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        Validate {
            plugin: NAME.get_or_init(|| Arc::from("p")),
        }
    }

    fn header(name: &str, value: &[u8]) -> wit::Header {
        wit::Header {
            name: name.into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn repeated_and_non_utf8_headers_survive_the_round_trip() {
        let mut map = HeaderMap::new();
        map.append("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        map.append("x-b", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let wit = headers_to_wit_owned(&map);
        assert_eq!(wit.len(), 3);
        let resp = v()
            .response(wit::Response {
                status: 200,
                headers: wit,
                body: None,
            })
            .unwrap();
        assert_eq!(resp.headers, map);
        assert_eq!(resp.body.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn invalid_guest_output_is_rejected_not_panicked_on() {
        let bad = |edits: wit::RequestEdits| v().action(wit::RequestAction::Continue(edits));
        let base = || wit::RequestEdits {
            headers: vec![],
            path: None,
            query: None,
            upstream: None,
            body: None,
            response_headers: vec![],
        };
        let cases = [
            wit::RequestEdits {
                headers: vec![wit::HeaderOp::Set(header("bad name", b"v"))],
                ..base()
            },
            wit::RequestEdits {
                headers: vec![wit::HeaderOp::Append(header("x", b"a\nb"))],
                ..base()
            },
            wit::RequestEdits {
                headers: vec![wit::HeaderOp::Remove(String::new())],
                ..base()
            },
            wit::RequestEdits {
                path: Some("no-slash".into()),
                ..base()
            },
            wit::RequestEdits {
                path: Some("/a?b".into()),
                ..base()
            },
            wit::RequestEdits {
                query: Some("a b".into()),
                ..base()
            },
            wit::RequestEdits {
                response_headers: vec![wit::HeaderOp::Set(header("x", b"a\rb"))],
                ..base()
            },
        ];
        for edits in cases {
            let debug = format!("{edits:?}");
            assert!(
                matches!(bad(edits), Err(PluginError::InvalidOutput { .. })),
                "{debug}"
            );
        }
        for status in [0, 99, 101, 600, 1000] {
            let r = v().response_edits(wit::ResponseEdits {
                status: Some(status),
                headers: vec![],
                body: None,
            });
            assert!(
                matches!(r, Err(PluginError::InvalidOutput { what: "status", .. })),
                "{status}"
            );
        }
    }

    #[test]
    fn fixed_edits_are_validated_like_any_edits() {
        let needs = |request: Vec<wit::HeaderOp>, response: Vec<wit::HeaderOp>| wit::Needs {
            request_phase: false,
            request_body: false,
            response_phase: false,
            response_body: false,
            fixed_request_headers: request,
            fixed_response_headers: response,
        };
        let (n, fixed) = v()
            .configured(needs(
                vec![wit::HeaderOp::Set(header("x-a", b"1"))],
                vec![
                    wit::HeaderOp::Remove("server".into()),
                    wit::HeaderOp::Append(header("x-b", b"caf\xe9")),
                ],
            ))
            .unwrap();
        assert!(!n.request_phase && !n.response_phase);
        assert_eq!(
            fixed.request,
            [HeaderOp::Set(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("1")
            )]
        );
        assert_eq!(fixed.response.len(), 2);
        for bad in [
            needs(vec![wit::HeaderOp::Set(header("bad name", b"v"))], vec![]),
            needs(vec![], vec![wit::HeaderOp::Append(header("x", b"a\nb"))]),
        ] {
            assert!(matches!(
                v().configured(bad),
                Err(PluginError::InvalidOutput { .. })
            ));
        }
    }
}
