//! `rate-limit`: limits requests per client, counted in the gateway's
//! key-value store so that limits hold across every gateway instance sharing
//! one store (Redis).
//!
//! Config (see README.md for the full reference):
//!
//! ```json
//! { "limits": [{ "requests": 10, "per": "1s" }, { "requests": 1000, "per": "1h" }],
//!   "algorithm": "sliding-window", "key": "consumer", "on-kv-error": "allow" }
//! ```
//!
//! A request must pass every limit. One over any limit is answered `429`
//! with `Retry-After` (seconds) and is not counted. Every response — the 429s
//! and, as response edits given in the request phase, the proxied ones — carries
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` for the most
//! restrictive limit (the fewest remaining; on a tie the latest reset).
//! The counting itself is in [`algo`]; this module picks keys and speaks HTTP.
//!
//! Needs the `kv` and `clock` capabilities (an ungranted `clock` traps; an
//! ungranted or failing `kv` follows `on-kv-error`).

mod algo;
mod config;

use pylon_plugin_sdk::{
    HeaderOp, Needs, Plugin, ReadRequest, Request, RequestAction, RequestEdits, Response, clock,
    export_plugin,
    kv::{self, KvError},
};

use crate::{
    algo::{Store, Usage, View},
    config::{Algorithm, Key, Limit, MissingKey, Settings},
};

/// The configured plugin.
struct RateLimit {
    settings: Settings,
    /// Per limit, the part of its counter keys that names it.
    limit_ids: Vec<String>,
    /// The route, asked of the host once: an instance serves one route.
    route: Option<String>,
}

/// The host's kv store.
struct HostKv;

impl Store for HostKv {
    fn incr(&mut self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, KvError> {
        kv::incr(key, delta, Some(ttl_ms))
    }
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        kv::get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), KvError> {
        kv::set(key, value, Some(ttl_ms))
    }
}

impl Plugin for RateLimit {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let settings = config::parse(text)?;
        // The `RateLimit-*` headers are known in the request phase and go
        // back as response edits from there: no response phase.
        let limit_ids = settings
            .limits
            .iter()
            .map(|l| limit_id(settings.algorithm, l))
            .collect();
        let plugin = RateLimit {
            settings,
            limit_ids,
            route: None,
        };
        Ok((plugin, Needs::none()))
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        let client = match client_key(&self.settings.key, req) {
            Ok(k) => k,
            Err(missing) => match self.settings.missing_key {
                MissingKey::Ip => ip_key(req),
                MissingKey::Allow => return RequestAction::proceed(),
                MissingKey::Deny => {
                    return Response::text(400, format!("missing {missing} header\n")).into();
                }
            },
        };
        // The route is asked of the host only when no group replaces it.
        let group = match &self.settings.group {
            Some(group) => group.as_str(),
            None => self.route.get_or_insert_with(|| req.route()).as_str(),
        };
        let now = clock::now_ms();

        let mut store = HostKv;
        let mut usages = Vec::with_capacity(self.settings.limits.len());
        for (limit, id) in self.settings.limits.iter().zip(&self.limit_ids) {
            let prefix = [group, id, &client].join("|");
            let usage = match self.settings.algorithm {
                Algorithm::SlidingWindow => algo::sliding_window(&mut store, &prefix, limit, now),
                Algorithm::TokenBucket => algo::token_bucket(&mut store, &prefix, limit, now),
            };
            match usage {
                Ok(u) => usages.push(u),
                Err(_) if self.settings.allow_on_kv_error => return RequestAction::proceed(),
                Err(e) => {
                    let why = match e {
                        KvError::Denied => "denied",
                        KvError::Unavailable(_) => "unavailable",
                        KvError::NotANumber => "corrupt",
                    };
                    return Response::text(503, format!("rate limit store {why}\n"))
                        .with_header("retry-after", "1")
                        .into();
                }
            }
        }

        let allowed = usages.iter().all(|u| u.allowed);
        if !allowed {
            // Best effort: a failed rollback only refuses this client a
            // little longer.
            for u in &usages {
                let _ = store.incr(&u.counter, -1, u.counter_ttl_ms);
            }
        }
        let views: Vec<View> = usages.iter().map(|u: &Usage| u.view(allowed)).collect();
        let headers = if self.settings.headers {
            headers_for(&views)
        } else {
            Vec::new()
        };
        if allowed {
            return RequestEdits {
                response_headers: headers,
                ..RequestEdits::default()
            }
            .into();
        }
        let retry_ms = views.iter().map(|v| v.retry_ms).max().unwrap_or(0);
        let mut resp = Response::text(429, "too many requests\n")
            .with_header("retry-after", secs(retry_ms).max(1).to_string());
        for op in headers {
            if let HeaderOp::Set(h) = op {
                resp.headers.push(h);
            }
        }
        resp.into()
    }
}

/// Distinguishes counters of different limits (and of a changed limit).
fn limit_id(algorithm: Algorithm, l: &Limit) -> String {
    match algorithm {
        Algorithm::SlidingWindow => format!("{}/{}", l.requests, l.per_ms),
        Algorithm::TokenBucket => format!("{}/{}/{}", l.requests, l.per_ms, l.burst),
    }
}

/// `RateLimit-*` for the most restrictive view.
fn headers_for(views: &[View]) -> Vec<HeaderOp> {
    let Some(v) = views.iter().min_by(|a, b| {
        a.remaining
            .cmp(&b.remaining)
            .then(b.reset_ms.cmp(&a.reset_ms))
    }) else {
        return Vec::new();
    };
    let decimal = |n: u64| {
        let mut s = String::with_capacity(20);
        algo::push_u64(&mut s, n);
        s
    };
    vec![
        HeaderOp::set("ratelimit-limit", decimal(v.limit)),
        HeaderOp::set("ratelimit-remaining", decimal(v.remaining)),
        HeaderOp::set("ratelimit-reset", decimal(secs(v.reset_ms))),
    ]
}

fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// The client part of the counter keys, or the name of the header the key
/// needs when the request lacks it (or it is empty).
fn client_key<'a>(key: &'a Key, req: &impl ReadRequest) -> Result<String, &'a str> {
    match key {
        Key::Ip => Ok(ip_key(req)),
        Key::Route => Ok("route".to_string()),
        Key::Header(name) => match req.header(name).filter(|v| !v.is_empty()) {
            Some(v) => {
                let mut key = String::from("h:");
                encode_into(&mut key, &v);
                Ok(key)
            }
            None => Err(name),
        },
    }
}

fn ip_key(req: &impl ReadRequest) -> String {
    let addr = req.client_addr();
    let ip = match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr.as_str(),
    };
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let mut key = String::from("ip:");
    encode_into(&mut key, ip.as_bytes());
    key
}

/// [`encode_into`] a new string.
#[cfg(test)]
fn encode(v: &[u8]) -> String {
    let mut out = String::new();
    encode_into(&mut out, v);
    out
}

/// Key-safe text for arbitrary bytes, appended to `out`: safe bytes as they
/// are, others as `%XX`; very long values as a 128-bit hash (prefixed `#`,
/// which the escaped form never contains), which keeps keys bounded. A hash
/// collision could only make two such clients share counters.
fn encode_into(out: &mut String, v: &[u8]) {
    const MAX: usize = 200;
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"-._~@+=/".contains(&b);
    let start = out.len();
    out.reserve(v.len());
    for &b in v {
        if safe(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        if out.len() - start > MAX {
            out.truncate(start);
            out.push_str(&format!("#{:032x}", fnv1a128(v)));
            return;
        }
    }
}

fn fnv1a128(v: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    v.iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

export_plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use pylon_plugin_sdk::RequestData;

    use super::*;

    fn from(addr: &str) -> RequestData {
        RequestData {
            client_addr: addr.to_string(),
            ..RequestData::new("GET", "/")
        }
    }

    #[test]
    fn client_keys() {
        assert_eq!(ip_key(&from("10.0.0.7:5123")), "ip:10.0.0.7");
        assert_eq!(ip_key(&from("[::1]:443")), "ip:%3A%3A1");
        assert_eq!(ip_key(&from("unix")), "ip:unix");
        let req = from("10.0.0.7:1").with_header("X-Key", "a b");
        assert_eq!(client_key(&Key::Ip, &req), Ok("ip:10.0.0.7".to_string()));
        assert_eq!(client_key(&Key::Route, &req), Ok("route".to_string()));
        let header = Key::Header("x-key".into());
        assert_eq!(client_key(&header, &req), Ok("h:a%20b".to_string()));
        let empty = from("10.0.0.7:1").with_header("x-key", "");
        assert_eq!(client_key(&header, &empty), Err("x-key"));
        assert_eq!(client_key(&header, &from("10.0.0.7:1")), Err("x-key"));
    }

    #[test]
    fn keys_are_escaped_and_bounded() {
        assert_eq!(encode(b"abc-1.2"), "abc-1.2");
        assert_eq!(encode(b"a:b|c%"), "a%3Ab%7Cc%25");
        assert_eq!(encode(&[0xff]), "%FF");
        let long = encode(&[b'x'; 1000]);
        assert!(long.starts_with('#') && long.len() == 33, "{long}");
    }

    #[test]
    fn most_restrictive_view_wins() {
        let v = |remaining, reset_ms| View {
            limit: 10,
            remaining,
            reset_ms,
            retry_ms: 0,
        };
        let h = headers_for(&[v(5, 1000), v(2, 500), v(2, 3000)]);
        let value = |i: usize| match &h[i] {
            HeaderOp::Set(h) => String::from_utf8(h.value.clone()).unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(value(1), "2");
        assert_eq!(value(2), "3");
    }
}
