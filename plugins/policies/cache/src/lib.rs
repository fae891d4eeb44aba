//! `cache`: a shared HTTP response cache over the gateway's key-value store
//! (in memory, or Redis so every gateway instance shares it).
//!
//! Config (see README.md for the full reference):
//!
//! ```json
//! { "ttl": "60s", "max-ttl": "1h", "vary": ["accept-language"],
//!   "methods": ["GET", "HEAD"], "max-entry-size": "1MiB" }
//! ```
//!
//! Request phase: a request whose method is cached and that does not say
//! `Cache-Control: no-store`/`no-cache` (or `Pragma: no-cache`) is looked up
//! under its key — route, scheme, method, host, path, query and the `vary`
//! request headers. A hit is answered here (the upstream is not called) with
//! the stored status, headers and body plus `Age` and `X-Cache: HIT`. `HEAD`
//! is looked up under the `GET` key, so a stored `GET` answers it; `HEAD`
//! responses themselves (no body) are never stored.
//!
//! Response phase: the response is stored when [`policy::freshness`] allows
//! it and its body fits `max-entry-size`, for its freshness lifetime, as a
//! binary [`entry::Entry`]. The response gets `X-Cache: MISS` when the
//! lookup missed (and the response was stored, or was a `HEAD`), and
//! `X-Cache: BYPASS` when the request or the response is not cacheable.
//!
//! Needs the `kv` and `clock` capabilities (an ungranted `clock` traps; kv
//! errors make every request a miss that is not stored), and asks the host
//! for the response body.

mod config;
mod entry;
mod policy;

use pylon_plugin_sdk::{
    Header, HeaderOp, Needs, Plugin, ReadRequest, ReadResponse, Request, RequestAction, Response,
    ResponseEdits, ResponseView, clock, export_plugin, kv,
};

use crate::{
    config::Settings,
    entry::Entry,
    policy::{CacheControl, Rules},
};

/// The configured plugin and what the current request's response phase must do.
struct Cache {
    settings: Settings,
    pending: Pending,
}

/// The request phase's decision, for the response phase of the same request.
enum Pending {
    /// No request seen yet (or it was answered from the cache).
    Nothing,
    /// Not looked up; do not store.
    Bypass,
    /// Looked up and missed.
    Miss {
        kv_key: String,
        full_key: Vec<u8>,
        /// `false` for `HEAD`: its response has no body to store.
        store: bool,
        authorized: bool,
    },
}

impl Plugin for Cache {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let settings = config::parse(text)?;
        Ok((
            Cache {
                settings,
                pending: Pending::Nothing,
            },
            Needs::none().with_response_body(),
        ))
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        self.pending = Pending::Bypass;
        let method = req.method();
        if !self.settings.methods.contains(&method) || bypass_requested(req) {
            return RequestAction::proceed();
        }
        let head = method == "HEAD";
        let full_key = cache_key(req, if head { "GET" } else { &method }, &self.settings.vary);
        let kv_key = format!("e:{:032x}", fnv1a128(&full_key));
        // A kv error is a miss: the cache must never break traffic.
        if let Ok(Some(bytes)) = kv::get(&kv_key)
            && let Some(entry) = Entry::decode(&bytes)
            && entry.key == full_key
        {
            self.pending = Pending::Nothing;
            return hit(entry, clock::now_ms()).into();
        }
        self.pending = Pending::Miss {
            kv_key,
            full_key,
            store: !head,
            authorized: req.header("authorization").is_some(),
        };
        RequestAction::proceed()
    }

    fn on_response(&mut self, _req: &Request, resp: &ResponseView) -> ResponseEdits {
        let verdict = match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Nothing => return ResponseEdits::default(),
            Pending::Bypass => "BYPASS",
            Pending::Miss { store: false, .. } => "MISS",
            Pending::Miss {
                kv_key,
                full_key,
                authorized,
                ..
            } => {
                if self.store(&kv_key, full_key, authorized, resp) {
                    "MISS"
                } else {
                    "BYPASS"
                }
            }
        };
        ResponseEdits::default().header_op(HeaderOp::set("x-cache", verdict))
    }
}

impl Cache {
    /// Store `resp` when it is cacheable; `true` when it was (a failed kv
    /// write still counts: the response was cacheable). Reads the body, then
    /// (when it fits) the status and every header, each once.
    fn store(
        &self,
        kv_key: &str,
        key: Vec<u8>,
        authorized: bool,
        resp: &impl ReadResponse,
    ) -> bool {
        let Some(body) = resp.body() else {
            return false;
        };
        if body.len() > self.settings.max_entry_size {
            return false;
        }
        let now_ms = clock::now_ms();
        let rules = Rules {
            statuses: &self.settings.statuses,
            vary: &self.settings.vary,
            default_ttl_ms: self.settings.ttl_ms,
            max_ttl_ms: self.settings.max_ttl_ms,
            authorized,
            now_ms,
        };
        let status = resp.status();
        let headers = resp.headers();
        let Ok(ttl_ms) = policy::freshness(status, &headers, &rules) else {
            return false;
        };
        let entry = Entry {
            stored_at_ms: now_ms,
            age_at_store_s: policy::age(&headers),
            key,
            status,
            headers: stored_headers(headers),
            body,
        };
        if let Some(bytes) = entry.encode() {
            let _ = kv::set(kv_key, &bytes, Some(ttl_ms));
        }
        true
    }
}

/// The request asks not to be served from (or stored in) the cache.
/// `Pragma` counts only when there is no `Cache-Control`.
fn bypass_requested(req: &impl ReadRequest) -> bool {
    let cc_lines = req.header_all("cache-control");
    let cc = CacheControl::from_lines(&cc_lines);
    cc.no_store
        || cc.no_cache
        || (cc_lines.is_empty()
            && req
                .header_all("pragma")
                .iter()
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"no-cache")))
}

/// The response for a hit: the stored one plus `Age` and `X-Cache: HIT`.
/// For `HEAD` the body stays in place so the host sends the right
/// `Content-Length`; HTTP servers never send a body in answer to `HEAD`.
fn hit(entry: Entry, now_ms: u64) -> Response {
    let age = entry.age_at_store_s + now_ms.saturating_sub(entry.stored_at_ms) / 1000;
    let mut headers = entry.headers;
    headers.push(Header::new("age", age.to_string()));
    headers.push(Header::new("x-cache", "HIT"));
    Response {
        status: entry.status,
        headers,
        body: Some(entry.body),
    }
}

/// Headers worth storing: not hop-by-hop (nor named in `Connection`), not
/// the ones the cache recomputes on a hit (`Age`, `X-Cache`), not the
/// framing the host recomputes (`Content-Length`).
fn stored_headers(headers: Vec<Header>) -> Vec<Header> {
    let connection: Vec<String> = headers
        .iter()
        .filter(|h| h.name == "connection")
        .flat_map(|h| {
            h.value
                .split(|&b| b == b',')
                .map(|n| String::from_utf8_lossy(n.trim_ascii()).to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    headers
        .into_iter()
        .filter(|h| {
            !matches!(
                h.name.as_str(),
                "connection"
                    | "keep-alive"
                    | "proxy-connection"
                    | "proxy-authenticate"
                    | "proxy-authorization"
                    | "te"
                    | "trailer"
                    | "transfer-encoding"
                    | "upgrade"
                    | "set-cookie"
                    | "age"
                    | "x-cache"
                    | "content-length"
            ) && !connection.contains(&h.name)
        })
        .collect()
}

/// The full cache key: every part length-prefixed so no two requests share
/// a key by accident; a request header absent and present-but-empty differ.
fn cache_key(req: &impl ReadRequest, method: &str, vary: &[String]) -> Vec<u8> {
    let mut key = Vec::new();
    let mut part = |bytes: &[u8]| {
        key.extend_from_slice(bytes.len().to_string().as_bytes());
        key.push(b':');
        key.extend_from_slice(bytes);
    };
    part(req.route().as_bytes());
    part(req.scheme().as_bytes());
    part(method.as_bytes());
    part(&req.header("host").unwrap_or_default().to_ascii_lowercase());
    part(req.path().as_bytes());
    match req.query() {
        Some(q) => part(format!("?{q}").as_bytes()),
        None => part(b""),
    }
    for name in vary {
        let values = req.header_all(name);
        if values.is_empty() {
            part(b"-");
        } else {
            part(&[b"+".as_slice(), &values.join(b", ".as_slice())].concat());
        }
    }
    key
}

fn fnv1a128(v: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    v.iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

export_plugin!(Cache);

#[cfg(test)]
mod tests {
    use pylon_plugin_sdk::RequestData;

    use super::*;

    fn request(method: &str, query: Option<&str>, headers: &[(&str, &str)]) -> RequestData {
        let mut req = RequestData::new(method, "/a");
        req.route = "r".into();
        req.query = query.map(Into::into);
        for (name, value) in headers {
            req = req.with_header(*name, *value);
        }
        req
    }

    #[test]
    fn keys_separate_what_they_must() {
        let vary = ["accept-language".to_string()];
        let key = |r: &RequestData| cache_key(r, &r.method, &vary);
        let base = key(&request("GET", None, &[("host", "a.example")]));
        assert_eq!(base, key(&request("GET", None, &[("host", "A.example")])));
        for other in [
            request("GET", Some(""), &[("host", "a.example")]),
            request("GET", None, &[("host", "b.example")]),
            request("POST", None, &[("host", "a.example")]),
            request(
                "GET",
                None,
                &[("host", "a.example"), ("accept-language", "")],
            ),
            request(
                "GET",
                None,
                &[("host", "a.example"), ("accept-language", "fr")],
            ),
        ] {
            assert_ne!(base, key(&other), "{other:?}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_not_stored() {
        let stored = stored_headers(
            [
                ("content-type", "text/plain"),
                ("connection", "x-private"),
                ("x-private", "1"),
                ("transfer-encoding", "chunked"),
                ("age", "3"),
                ("etag", "\"v1\""),
            ]
            .iter()
            .map(|(n, v)| Header::new(*n, *v))
            .collect(),
        );
        let names: Vec<_> = stored.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["content-type", "etag"]);
    }

    #[test]
    fn request_directives_bypass() {
        assert!(bypass_requested(&request(
            "GET",
            None,
            &[("cache-control", "no-cache")]
        )));
        assert!(bypass_requested(&request(
            "GET",
            None,
            &[("cache-control", "no-store")]
        )));
        assert!(bypass_requested(&request(
            "GET",
            None,
            &[("pragma", "no-cache")]
        )));
        assert!(!bypass_requested(&request(
            "GET",
            None,
            &[("cache-control", "max-age=5"), ("pragma", "no-cache")]
        )));
        assert!(!bypass_requested(&request("GET", None, &[])));
    }
}
