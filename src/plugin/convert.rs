//! Conversions between the host model (`crate::pipeline`) and the WIT
//! types, both ways, without loss: header values stay bytes and repeated
//! headers stay repeated. (The request and response a hook reads are
//! resources, served field by field by `host::exchange`.)
//!
//! Everything a guest returns is validated here, before the host uses any
//! of it; anything the host cannot apply (a bad header name or value, a
//! status outside 200–599, a path that is not an origin-form path) or that
//! is past one of the output caps below becomes
//! [`PluginError::InvalidOutput`], a failure of that plugin (its route's
//! `on-error` decides, and it is counted in its metrics). The caps keep
//! guest output away from host paths that panic or grow without bound
//! (`http::HeaderMap` panics past 24,576 entries).

use std::{str::FromStr, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, uri::PathAndQuery};

use super::contract::current::pylon::plugin::types as wit;
use crate::{
    pipeline::{
        FixedEdits, HeaderOp, Needs, PluginError, PluginResponse, RequestAction, RequestEdits,
        ResponseEdits,
    },
    tls::ClientIdentity,
};

/// Header edits one list may hold (`headers`, `response-headers`, each
/// fixed list) and header entries a plugin-made response may have.
pub(crate) const MAX_HEADER_ENTRIES: usize = 1_000;
/// Name and value bytes of one edit list or one plugin-made response's
/// headers together (the default request header block is as large).
pub(crate) const MAX_HEADER_BYTES: usize = 64 << 10;
/// Bytes of a path or a query a plugin sets.
pub(crate) const MAX_PATH_BYTES: usize = 8 << 10;

/// Every header value, owned (for results handed to the guest by imports).
pub(crate) fn headers_to_wit_owned(map: &HeaderMap) -> Vec<wit::Header> {
    map.iter()
        .map(|(name, value)| wit::Header {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

/// The verified client certificate as the contract's record (copied: the
/// guest owns what it is handed).
pub(crate) fn client_identity_to_wit(id: &ClientIdentity) -> wit::ClientIdentity {
    wit::ClientIdentity {
        subject: id.subject.clone(),
        dns_names: id.dns_names.clone(),
        uris: id.uris.clone(),
        sha256: id.sha256.clone(),
        not_after: id.not_after,
    }
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
    /// The largest body the plugin may return (its `max-body-size`).
    pub(crate) max_body: usize,
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
        let upstream = match edits.upstream {
            // Upstream names are short identifiers; a longer one names none.
            Some(u) if u.len() > 64 => {
                return Err(self.invalid("upstream", format!("a name of {} bytes", u.len())));
            }
            u => u,
        };
        Ok(RequestEdits {
            headers: self.header_ops(edits.headers)?,
            path,
            query,
            upstream,
            body: edits.body.map(|b| self.body(b)).transpose()?,
            response_headers: self.header_ops(edits.response_headers)?,
        })
    }

    fn body(&self, body: Vec<u8>) -> Result<Bytes, PluginError> {
        if body.len() > self.max_body {
            return Err(self.invalid(
                "body",
                format!(
                    "{} bytes, over the plugin's max-body-size of {} bytes",
                    body.len(),
                    self.max_body
                ),
            ));
        }
        Ok(Bytes::from(body))
    }

    /// Refuse a header list past [`MAX_HEADER_ENTRIES`] or
    /// [`MAX_HEADER_BYTES`], before anything is converted.
    fn header_budget(
        &self,
        what: &'static str,
        entries: usize,
        sizes: impl Iterator<Item = usize>,
    ) -> Result<(), PluginError> {
        if entries > MAX_HEADER_ENTRIES {
            return Err(self.invalid(
                what,
                format!("{entries} entries, over the cap of {MAX_HEADER_ENTRIES}"),
            ));
        }
        let bytes = sizes.fold(0usize, usize::saturating_add);
        if bytes > MAX_HEADER_BYTES {
            return Err(self.invalid(
                what,
                format!("{bytes} bytes of names and values, over the cap of {MAX_HEADER_BYTES}"),
            ));
        }
        Ok(())
    }

    /// The response phase's edits.
    pub(crate) fn response_edits(
        &self,
        edits: wit::ResponseEdits,
    ) -> Result<ResponseEdits, PluginError> {
        Ok(ResponseEdits {
            status: edits.status.map(|s| self.status(s)).transpose()?,
            headers: self.header_ops(edits.headers)?,
            body: edits.body.map(|b| self.body(b)).transpose()?,
        })
    }

    fn response(&self, resp: wit::Response) -> Result<PluginResponse, PluginError> {
        self.header_budget(
            "response headers",
            resp.headers.len(),
            resp.headers.iter().map(|h| h.name.len() + h.value.len()),
        )?;
        let mut headers = HeaderMap::with_capacity(resp.headers.len());
        for h in resp.headers {
            let (name, value) = self.header(h)?;
            headers
                .try_append(name, value)
                .map_err(|_| self.invalid("response headers", "too many entries".into()))?;
        }
        Ok(PluginResponse {
            status: self.status(resp.status)?,
            headers,
            body: Some(
                resp.body
                    .map(|b| self.body(b))
                    .transpose()?
                    .unwrap_or_default(),
            ),
        })
    }

    fn status(&self, status: u16) -> Result<StatusCode, PluginError> {
        match StatusCode::from_u16(status) {
            Ok(s) if (200..=599).contains(&status) => Ok(s),
            _ => Err(self.invalid("status", format!("{status} is not in 200..=599"))),
        }
    }

    fn header_ops(&self, ops: Vec<wit::HeaderOp>) -> Result<Vec<HeaderOp>, PluginError> {
        // Most hooks return no edits: nothing to check or convert.
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.header_budget(
            "header edits",
            ops.len(),
            ops.iter().map(|op| match op {
                wit::HeaderOp::Set(h) | wit::HeaderOp::Append(h) => h.name.len() + h.value.len(),
                wit::HeaderOp::Remove(name) => name.len(),
            }),
        )?;
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
        if path.len() > MAX_PATH_BYTES {
            return Err(self.invalid(
                "path",
                format!("{} bytes, over the cap of {MAX_PATH_BYTES}", path.len()),
            ));
        }
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
        if query.len() > MAX_PATH_BYTES {
            return Err(self.invalid(
                "query",
                format!("{} bytes, over the cap of {MAX_PATH_BYTES}", query.len()),
            ));
        }
        let ok = !query.contains('#') && PathAndQuery::from_str(&format!("/?{query}")).is_ok();
        if ok {
            Ok(query)
        } else {
            Err(self.invalid("query", format!("{query:?} is not a valid query string")))
        }
    }
}

#[cfg(test)]
mod tests;
