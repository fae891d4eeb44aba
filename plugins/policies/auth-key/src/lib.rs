//! `auth-key`: API key authentication.
//!
//! The key is read from a request header (default `x-api-key`) or a query
//! parameter, hashed with SHA-256 and looked up: first among the configured
//! `keys` (hash → consumer), then, with `kv-lookup`, in the key-value store
//! under `apikey:<sha256 hex>` (value: the consumer name, or `revoked`).
//! Keys are never configured or stored in clear, and hashes are compared in
//! constant time against every configured entry.
//!
//! A known key's consumer is forwarded upstream in a header (default
//! `x-consumer`, replacing any value the client sent) and the key itself is
//! removed from the upstream request unless `strip-key = false`. No key →
//! 401 with `WWW-Authenticate: ApiKey realm="..."`; an unknown or revoked
//! key → 403.
//!
//! See README.md for the config reference.

use pylon_plugin_sdk::{
    Needs, Plugin, ReadRequest, Request, RequestAction, RequestEdits, Response, config,
    export_plugin, kv, serde_json::json,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default, rename = "in")]
    source: Source,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    revoked: Vec<String>,
    #[serde(default)]
    kv_lookup: bool,
    #[serde(default)]
    consumer_header: Option<String>,
    #[serde(default = "yes")]
    strip_key: bool,
    #[serde(default)]
    realm: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    consumer: String,
    sha256: String,
}

fn yes() -> bool {
    true
}

/// Where the key travels.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Source {
    #[default]
    Header,
    Query,
}

/// A SHA-256 digest.
type Hash = [u8; 32];

/// The validated plugin.
struct AuthKey {
    source: Source,
    /// Header name (lowercase) or query parameter name.
    name: String,
    keys: Vec<(Hash, String)>,
    revoked: Vec<Hash>,
    kv_lookup: bool,
    consumer_header: String,
    strip_key: bool,
    realm: String,
}

/// What a key turned out to be.
enum Verdict {
    Consumer(String),
    Unknown,
    Revoked,
    StoreUnavailable,
}

impl Plugin for AuthKey {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let raw: RawConfig = config::parse(text)?;
        let mut problems = Vec::new();

        let name = raw.name.unwrap_or_else(|| match raw.source {
            Source::Header => "x-api-key".to_string(),
            Source::Query => "api_key".to_string(),
        });
        let name = match raw.source {
            Source::Header if is_token(&name) => name.to_ascii_lowercase(),
            Source::Query if !name.is_empty() => name,
            Source::Header => {
                problems.push(format!("name: {name:?} is not a valid header name"));
                name
            }
            Source::Query => {
                problems.push("name: the query parameter name must not be empty".to_string());
                name
            }
        };

        let mut keys: Vec<(Hash, String)> = Vec::new();
        for (i, key) in raw.keys.into_iter().enumerate() {
            let hash = parse_hash(&key.sha256);
            if hash.is_none() {
                problems.push(format!(
                    "keys[{i}].sha256: expected 64 hexadecimal digits (the SHA-256 of the key), got {:?}",
                    key.sha256
                ));
            }
            if !is_field_value(&key.consumer) {
                problems.push(format!(
                    "keys[{i}].consumer: {:?} must be a non-empty header value without control characters",
                    key.consumer
                ));
            }
            if let Some(hash) = hash {
                if let Some((_, other)) = keys.iter().find(|(h, _)| *h == hash) {
                    problems.push(format!(
                        "keys[{i}].sha256: the same key is already configured for consumer {other:?}"
                    ));
                }
                keys.push((hash, key.consumer));
            }
        }

        let mut revoked = Vec::new();
        for (i, text) in raw.revoked.iter().enumerate() {
            match parse_hash(text) {
                Some(hash) => revoked.push(hash),
                None => problems.push(format!(
                    "revoked[{i}]: expected 64 hexadecimal digits (a key's SHA-256), got {text:?}"
                )),
            }
        }

        let consumer_header = raw
            .consumer_header
            .unwrap_or_else(|| "x-consumer".to_string());
        if !is_token(&consumer_header) {
            problems.push(format!(
                "consumer-header: {consumer_header:?} is not a valid header name"
            ));
        }
        let realm = raw.realm.unwrap_or_else(|| "pylon".to_string());
        if !realm
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            problems.push(format!(
                "realm: {realm:?} must be printable ASCII without `\"` or `\\`"
            ));
        }
        if keys.is_empty() && !raw.kv_lookup && problems.is_empty() {
            problems.push("no keys: set `keys`, `kv-lookup = true`, or both".to_string());
        }
        if !problems.is_empty() {
            return Err(format!("invalid auth-key config: {}", problems.join("; ")));
        }
        let plugin = AuthKey {
            source: raw.source,
            name,
            keys,
            revoked,
            kv_lookup: raw.kv_lookup,
            consumer_header: consumer_header.to_ascii_lowercase(),
            strip_key: raw.strip_key,
            realm,
        };
        Ok((plugin, Needs::none()))
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        // With `in = "query"` the query is read once: it holds the key and,
        // stripped of it, goes upstream.
        let query = match self.source {
            Source::Header => None,
            Source::Query => req.query(),
        };
        let Some(key) = self.presented_key(req, query.as_deref()) else {
            return Response::json(
                401,
                &json!({ "error": "unauthorized", "error_description": "an API key is required" }),
            )
            .with_header(
                "www-authenticate",
                format!("ApiKey realm=\"{}\"", self.realm),
            )
            .into();
        };
        let hash: Hash = Sha256::digest(&key).into();
        let consumer = match self.verdict(&hash) {
            Verdict::Consumer(c) => c,
            Verdict::Unknown => return forbidden("unknown API key"),
            Verdict::Revoked => return forbidden("revoked API key"),
            Verdict::StoreUnavailable => {
                return Response::json(
                    503,
                    &json!({
                        "error": "temporarily_unavailable",
                        "error_description": "the API key store is unavailable"
                    }),
                )
                .into();
            }
        };
        let mut edits = RequestEdits::new().set_header(&self.consumer_header, consumer);
        if self.strip_key {
            edits = match self.source {
                Source::Header => edits.remove_header(&self.name),
                Source::Query => {
                    let query = query.as_deref().unwrap_or_default();
                    edits.with_query(without_param(query, &self.name))
                }
            };
        }
        edits.into()
    }
}

export_plugin!(AuthKey);

impl AuthKey {
    /// The key the request presents: the first non-empty value of the
    /// header (read from `req`) or of the query parameter (looked up in
    /// `query`, the request's query as the caller read it).
    fn presented_key(&self, req: &impl ReadRequest, query: Option<&str>) -> Option<Vec<u8>> {
        let key = match self.source {
            Source::Header => trim(&req.header(&self.name)?).to_vec(),
            Source::Query => query_params(query?)
                .find(|(name, _)| *name == self.name.as_bytes())
                .map(|(_, value)| value)?,
        };
        (!key.is_empty()).then_some(key)
    }

    fn verdict(&self, hash: &Hash) -> Verdict {
        let revoked = self
            .revoked
            .iter()
            .fold(subtle::Choice::from(0), |acc, r| acc | r.ct_eq(hash));
        if bool::from(revoked) {
            return Verdict::Revoked;
        }
        // Visit every entry, so timing tells nothing about which matched.
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, (known, _)) in self.keys.iter().enumerate() {
            let hit = known.ct_eq(hash);
            index.conditional_assign(&(i as u32), hit);
            found |= hit;
        }
        if bool::from(found) {
            return Verdict::Consumer(self.keys[index as usize].1.clone());
        }
        if !self.kv_lookup {
            return Verdict::Unknown;
        }
        match kv::get(&format!("apikey:{}", hex(hash))) {
            Ok(None) => Verdict::Unknown,
            Ok(Some(value)) => match std::str::from_utf8(trim(&value)) {
                Ok("revoked") => Verdict::Revoked,
                Ok(consumer) if is_field_value(consumer) => Verdict::Consumer(consumer.to_string()),
                // A value that cannot be forwarded is a broken entry: refuse the key.
                _ => Verdict::Unknown,
            },
            Err(_) => Verdict::StoreUnavailable,
        }
    }
}

fn forbidden(why: &str) -> RequestAction {
    Response::json(
        403,
        &json!({ "error": "forbidden", "error_description": why }),
    )
    .into()
}

/// `bytes` without leading and trailing spaces and tabs.
fn trim(bytes: &[u8]) -> &[u8] {
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ws(b)).map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// The 32 bytes of a 64-digit hex SHA-256 (either case).
fn parse_hash(text: &str) -> Option<Hash> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut hash = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        hash[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(hash)
}

/// Lowercase hex, as kv keys use.
fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decoded `(name, value)` pairs of an `application/x-www-form-urlencoded`
/// query string.
fn query_params(query: &str) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(name), form_decode(value))
    })
}

/// Percent-decoding with `+` as space; a malformed escape stays literal.
fn form_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_at = |j: usize| bytes.get(j).and_then(|&c| (c as char).to_digit(16));
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(hi), Some(lo)) = (hex_at(i + 1), hex_at(i + 2)) {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// `query` with every `name` parameter removed, other pairs kept verbatim
/// and in order. Empty when nothing is left (which removes the query).
fn without_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && form_decode(key) != name.as_bytes()
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// An HTTP token (RFC 9110 `tchar`s), as header names must be.
fn is_token(name: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty() && name.bytes().all(tchar)
}

/// A non-empty header field value without control characters or
/// surrounding whitespace.
fn is_field_value(value: &str) -> bool {
    !value.is_empty()
        && value.trim_matches([' ', '\t']) == value
        && value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use pylon_plugin_sdk::RequestData;

    use super::*;

    const HASH: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn plugin(config: &str) -> AuthKey {
        match AuthKey::configure(config) {
            Ok((plugin, _)) => plugin,
            Err(e) => panic!("{e}"),
        }
    }

    /// What `on_request` passes: the query only with `in = "query"`.
    fn key(plugin: &AuthKey, req: &RequestData) -> Option<Vec<u8>> {
        let query = match plugin.source {
            Source::Header => None,
            Source::Query => req.query(),
        };
        plugin.presented_key(req, query.as_deref())
    }

    #[test]
    fn key_from_header() {
        let p = plugin(&format!(
            r#"{{"keys":[{{"consumer":"c","sha256":"{HASH}"}}]}}"#
        ));
        let req = RequestData::new("GET", "/?api_key=q").with_header("X-Api-Key", " \tfoo ");
        assert_eq!(key(&p, &req).as_deref(), Some(&b"foo"[..]));
        let blank = RequestData::new("GET", "/").with_header("x-api-key", "  ");
        assert_eq!(key(&p, &blank), None);
        assert_eq!(key(&p, &RequestData::new("GET", "/")), None);
    }

    #[test]
    fn key_from_query() {
        let p = plugin(&format!(
            r#"{{"in":"query","name":"k","keys":[{{"consumer":"c","sha256":"{HASH}"}}]}}"#
        ));
        let req = RequestData::new("GET", "/?a=1&k=f%6Fo+x&k=bar").with_header("k", "hdr");
        assert_eq!(key(&p, &req).as_deref(), Some(&b"foo x"[..]));
        assert_eq!(key(&p, &RequestData::new("GET", "/?k=")), None);
        assert_eq!(key(&p, &RequestData::new("GET", "/")), None);
        assert_eq!(without_param("a=1&k=x&b=2&k", "k"), "a=1&b=2");
        assert_eq!(without_param("k=x", "k"), "");
    }
}
