//! The case file (`cases.toml`) as written, and its requests and
//! responses turned into the pipeline's types. Not for running a case
//! ([`super`]) or judging it ([`super::compare`]).

use std::{collections::BTreeMap, net::SocketAddr, path::Path, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;

use crate::{
    kit::KitError,
    pipeline::{PluginRequest, PluginResponse},
    tls::ClientIdentity,
};

/// The most cases one file may hold: a case file is input like any other.
pub const MAX_CASES: usize = 10_000;

/// The route id plugins see in a case.
pub(super) const ROUTE: &str = "test";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CaseFile {
    #[serde(default)]
    pub(super) plugin: PluginSection,
    #[serde(default, rename = "case")]
    pub(super) cases: Vec<Case>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct PluginSection {
    pub(super) isolation: Option<String>,
    #[serde(default)]
    pub(super) capabilities: Vec<String>,
    #[serde(default)]
    pub(super) http_upstreams: Vec<String>,
    pub(super) deadline: Option<String>,
    pub(super) memory: Option<String>,
    /// The wall clock every case reads (ms since the epoch), unless the
    /// case sets its own `now_ms`; without either, the system clock.
    pub(super) now_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Case {
    pub(super) name: String,
    pub(super) config: Option<toml::Value>,
    #[serde(default)]
    pub(super) request: RequestSpec,
    #[serde(default)]
    pub(super) kv: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) http: Vec<Canned>,
    pub(super) response: Option<ResponseSpec>,
    pub(super) expect: Expect,
    pub(super) expect_response: Option<ExpectResponse>,
    #[serde(default)]
    pub(super) expect_kv: BTreeMap<String, String>,
    /// The wall clock for this case (ms since the epoch).
    pub(super) now_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RequestSpec {
    #[serde(default = "get")]
    pub(super) method: String,
    #[serde(default = "root")]
    pub(super) path: String,
    pub(super) query: Option<String>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, OneOrMany>,
    pub(super) body: Option<String>,
    #[serde(default = "client")]
    pub(super) client: String,
    #[serde(default)]
    pub(super) params: BTreeMap<String, String>,
    /// `https` on the scheme; without it, https exactly when the request
    /// has a client identity.
    pub(super) https: Option<bool>,
    /// The verified client certificate the request came with (mTLS).
    #[serde(rename = "client-identity")]
    pub(super) client_identity: Option<IdentitySpec>,
}

/// A client certificate as the contract's `client-identity` record has it,
/// field for field (what the host reads from a verified certificate).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct IdentitySpec {
    pub(super) subject: String,
    #[serde(default)]
    pub(super) dns_names: Vec<String>,
    #[serde(default)]
    pub(super) uris: Vec<String>,
    /// 64 lower-case hex digits, as the host gives it; default all zeros.
    #[serde(default = "no_fingerprint")]
    pub(super) sha256: String,
    /// Seconds since the epoch; default 4102444800 (2100-01-01).
    #[serde(default = "far_future")]
    pub(super) not_after: i64,
}

fn no_fingerprint() -> String {
    "0".repeat(64)
}
fn far_future() -> i64 {
    4_102_444_800
}

impl IdentitySpec {
    /// The identity, refused when it is one the host could never hand a
    /// plugin (a case must test what a plugin can really see).
    fn identity(&self) -> Result<ClientIdentity, String> {
        let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        if self.sha256.len() != 64 || !self.sha256.bytes().all(hex) {
            return Err(format!(
                "request client-identity sha256 {:?}: 64 lower-case hex digits",
                self.sha256
            ));
        }
        Ok(ClientIdentity {
            subject: self.subject.clone(),
            dns_names: self.dns_names.clone(),
            uris: self.uris.clone(),
            sha256: self.sha256.clone(),
            not_after: self.not_after,
        })
    }
}

impl Default for RequestSpec {
    fn default() -> Self {
        Self {
            method: get(),
            path: root(),
            query: None,
            headers: BTreeMap::new(),
            body: None,
            client: client(),
            params: BTreeMap::new(),
            https: None,
            client_identity: None,
        }
    }
}

fn get() -> String {
    "GET".to_owned()
}
fn root() -> String {
    "/".to_owned()
}
fn client() -> String {
    "127.0.0.1:40000".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResponseSpec {
    #[serde(default = "ok")]
    pub(super) status: u16,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, OneOrMany>,
    pub(super) body: Option<String>,
}

fn ok() -> u16 {
    200
}

/// A canned answer to an outbound request: matched by upstream and
/// path-and-query (and method when given).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Canned {
    pub(super) upstream: String,
    pub(super) path: String,
    pub(super) method: Option<String>,
    #[serde(default = "ok")]
    pub(super) status: u16,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    pub(super) body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Expect {
    pub(super) action: Action,
    pub(super) status: Option<u16>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    pub(super) absent: Vec<String>,
    pub(super) body: Option<String>,
    pub(super) path: Option<String>,
    pub(super) query: Option<String>,
    pub(super) upstream: Option<String>,
    pub(super) message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Action {
    Continue,
    Respond,
    RejectConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExpectResponse {
    pub(super) status: Option<u16>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    pub(super) absent: Vec<String>,
    pub(super) body: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(vs) => vs.iter().map(String::as_str).collect(),
        }
    }
}

/// Read the case file at `path` (checked whole before anything runs).
pub(super) fn load_cases(path: &Path) -> Result<CaseFile, KitError> {
    let bad = |message: String| KitError::Cases {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| KitError::Io {
        path: path.to_owned(),
        source,
    })?;
    let file: CaseFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if file.cases.is_empty() {
        return Err(bad("no [[case]] in the file".to_owned()));
    }
    if file.cases.len() > MAX_CASES {
        return Err(bad(format!("more than {MAX_CASES} cases")));
    }
    Ok(file)
}

pub(super) fn header_map(
    headers: &BTreeMap<String, OneOrMany>,
    what: &str,
) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, values) in headers {
        let name = HeaderName::try_from(name.to_ascii_lowercase())
            .map_err(|e| format!("{what} header name {name:?}: {e}"))?;
        for value in values.values() {
            let value = HeaderValue::try_from(value)
                .map_err(|e| format!("{what} header {name} value {value:?}: {e}"))?;
            map.append(name.clone(), value);
        }
    }
    Ok(map)
}

pub(super) fn request(spec: &RequestSpec) -> Result<PluginRequest, String> {
    let method = Method::from_bytes(spec.method.as_bytes())
        .map_err(|e| format!("request method {:?}: {e}", spec.method))?;
    if !spec.path.starts_with('/') {
        return Err(format!("request path {:?} must start with `/`", spec.path));
    }
    let client_addr: SocketAddr = spec
        .client
        .parse()
        .map_err(|e| format!("request client {:?} (ip:port): {e}", spec.client))?;
    let mut headers = header_map(&spec.headers, "request")?;
    if !headers.contains_key(http::header::HOST) {
        headers.insert(http::header::HOST, HeaderValue::from_static("example.test"));
    }
    let client_identity = match &spec.client_identity {
        None => None,
        Some(_) if spec.https == Some(false) => {
            return Err(
                "request client-identity with https = false: a client certificate comes only \
                 over TLS"
                    .to_owned(),
            );
        }
        Some(id) => Some(Arc::new(id.identity()?)),
    };
    let https = spec.https.unwrap_or(client_identity.is_some());
    Ok(PluginRequest {
        route: Arc::from(ROUTE),
        method,
        path: spec.path.clone(),
        query: spec.query.clone(),
        headers,
        client_addr,
        scheme: if https { "https" } else { "http" },
        client_identity,
        params: spec
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        body: spec.body.clone().map(Bytes::from),
    })
}

pub(super) fn response(spec: &ResponseSpec) -> Result<PluginResponse, String> {
    let status = StatusCode::from_u16(spec.status)
        .map_err(|e| format!("response status {}: {e}", spec.status))?;
    let mut resp = PluginResponse::new(status);
    resp.headers = header_map(&spec.headers, "response")?;
    resp.body = spec.body.clone().map(Bytes::from);
    Ok(resp)
}
