//! The plugin's configuration: the raw serde shape (kebab-case, unknown keys
//! rejected) and its validation into [`Settings`]. Every problem is reported
//! in one message that names the key.

use serde::Deserialize;

use pylon_plugin_sdk::config;

/// The config as written under `[routes.plugins.config]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    limits: Vec<RawLimit>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    key: Option<RawKey>,
    #[serde(default)]
    consumer_header: Option<String>,
    #[serde(default)]
    missing_key: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    on_kv_error: Option<String>,
    #[serde(default)]
    headers: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    requests: u64,
    per: String,
    #[serde(default)]
    burst: Option<u64>,
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "\"ip\", \"route\", \"consumer\", { header = \"name\" } or { claim = \"name\", header = \"name\" }"
)]
enum RawKey {
    Name(String),
    // Before `Header`, which would otherwise take `{ claim, header }` too.
    Claim {
        claim: String,
        #[serde(default)]
        header: Option<String>,
    },
    Header {
        header: String,
    },
}

/// How requests are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    /// Two fixed-window counters, the previous one weighted by how much of
    /// it still overlaps the sliding window.
    SlidingWindow,
    /// A token bucket refilled in discrete steps (see `algo::token_bucket`).
    TokenBucket,
}

/// What identifies one client's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    /// The client's IP address (without the port).
    Ip,
    /// Every request of the route (or group) shares one set of counters.
    Route,
    /// The first value of this request header (consumer, claim or any header).
    Header(String),
}

/// What to do with a request that lacks the header its key needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MissingKey {
    /// Count it under its client IP instead.
    Ip,
    /// Let it through uncounted.
    Allow,
    /// Refuse it with 400.
    Deny,
}

/// One limit: `requests` per `per_ms` (and a bucket capacity for the token
/// bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    /// Requests allowed per window (sliding window) or refilled per `per_ms`
    /// (token bucket).
    pub(crate) requests: u64,
    /// The window length in milliseconds.
    pub(crate) per_ms: u64,
    /// Token bucket capacity (equals `requests` unless configured).
    pub(crate) burst: u64,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The limits, every one of which a request must pass.
    pub(crate) limits: Vec<Limit>,
    /// How they are counted.
    pub(crate) algorithm: Algorithm,
    /// What the counters are keyed by.
    pub(crate) key: Key,
    /// Requests without the key's header.
    pub(crate) missing_key: MissingKey,
    /// Counter namespace shared by routes with the same group (default: the route id).
    pub(crate) group: Option<String>,
    /// Let requests through (`true`) or answer 503 when the store fails.
    pub(crate) allow_on_kv_error: bool,
    /// Emit `RateLimit-*` headers.
    pub(crate) headers: bool,
}

/// The largest window: a year keeps every computation far from overflow.
const MAX_PER_MS: u64 = 366 * 24 * 3600 * 1000;
/// The largest request count or burst per limit.
const MAX_REQUESTS: u64 = 1 << 40;

/// Parse and validate the JSON config.
pub(crate) fn parse(text: &str) -> Result<Settings, String> {
    let raw: Raw = config::parse(text)?;
    let mut problems = Vec::new();

    let algorithm = match raw.algorithm.as_deref() {
        None | Some("sliding-window") => Algorithm::SlidingWindow,
        Some("token-bucket") => Algorithm::TokenBucket,
        Some(other) => {
            problems.push(format!(
                "algorithm: unknown algorithm {other:?} (expected \"sliding-window\" or \"token-bucket\")"
            ));
            Algorithm::SlidingWindow
        }
    };

    if raw.limits.is_empty() {
        problems.push("limits: at least one limit is needed".to_string());
    }
    let mut limits = Vec::new();
    for (i, l) in raw.limits.iter().enumerate() {
        let at = format!("limits[{i}]");
        let per_ms = match parse_duration(&l.per) {
            Ok(0) => {
                problems.push(format!("{at}.per: must be longer than 0"));
                continue;
            }
            Ok(ms) if ms > MAX_PER_MS => {
                problems.push(format!("{at}.per: at most 366d"));
                continue;
            }
            Ok(ms) => ms,
            Err(e) => {
                problems.push(format!("{at}.per: {e}"));
                continue;
            }
        };
        if l.requests == 0 || l.requests > MAX_REQUESTS {
            problems.push(format!(
                "{at}.requests: must be between 1 and {MAX_REQUESTS}"
            ));
            continue;
        }
        let burst = match (algorithm, l.burst) {
            (_, None) => l.requests,
            (Algorithm::TokenBucket, Some(b)) if (1..=MAX_REQUESTS).contains(&b) => b,
            (Algorithm::TokenBucket, Some(_)) => {
                problems.push(format!("{at}.burst: must be between 1 and {MAX_REQUESTS}"));
                continue;
            }
            (Algorithm::SlidingWindow, Some(_)) => {
                problems.push(format!(
                    "{at}.burst: only used with algorithm = \"token-bucket\""
                ));
                continue;
            }
        };
        limits.push(Limit {
            requests: l.requests,
            per_ms,
            burst,
        });
    }

    let consumer_header = match raw.consumer_header {
        Some(h) => match header_name(&h) {
            Ok(h) => h,
            Err(e) => {
                problems.push(format!("consumer-header: {e}"));
                String::new()
            }
        },
        None => "x-consumer".to_string(),
    };
    let key = match raw.key {
        None => Key::Ip,
        Some(RawKey::Name(name)) => match name.as_str() {
            "ip" => Key::Ip,
            "route" => Key::Route,
            "consumer" => Key::Header(consumer_header),
            other => {
                problems.push(format!(
                    "key: unknown key {other:?} (expected \"ip\", \"route\", \"consumer\", {{ header = \"name\" }} or {{ claim = \"name\", header = \"name\" }})"
                ));
                Key::Ip
            }
        },
        Some(RawKey::Header { header }) => match header_name(&header) {
            Ok(h) => Key::Header(h),
            Err(e) => {
                problems.push(format!("key.header: {e}"));
                Key::Ip
            }
        },
        Some(RawKey::Claim { claim, header }) => {
            if claim.is_empty() || !claim.bytes().all(is_token_byte) {
                problems.push(format!("key.claim: {claim:?} is not a valid claim name"));
            }
            // The claim reaches this plugin only as the header an auth
            // plugin forwards it in (auth-jwt's `forward-claims`).
            match header.as_deref().map(header_name) {
                Some(Ok(h)) => Key::Header(h),
                Some(Err(e)) => {
                    problems.push(format!("key.header: {e}"));
                    Key::Ip
                }
                None => {
                    problems.push(format!(
                        "key.header: needed with key.claim: the request header the claim {claim:?} is forwarded in (auth-jwt forward-claims)"
                    ));
                    Key::Ip
                }
            }
        }
    };

    let missing_key = match raw.missing_key.as_deref() {
        None | Some("ip") => MissingKey::Ip,
        Some("allow") => MissingKey::Allow,
        Some("deny") => MissingKey::Deny,
        Some(other) => {
            problems.push(format!(
                "missing-key: unknown value {other:?} (expected \"ip\", \"allow\" or \"deny\")"
            ));
            MissingKey::Ip
        }
    };

    let allow_on_kv_error = match raw.on_kv_error.as_deref() {
        None | Some("allow") => true,
        Some("deny") => false,
        Some(other) => {
            problems.push(format!(
                "on-kv-error: unknown value {other:?} (expected \"allow\" or \"deny\")"
            ));
            true
        }
    };

    if let Some(g) = &raw.group
        && (g.is_empty() || g.len() > 64 || !g.bytes().all(is_token_byte))
    {
        problems.push(format!(
            "group: {g:?} must be 1 to 64 letters, digits or `-_.`"
        ));
    }

    if !problems.is_empty() {
        return Err(format!(
            "invalid rate-limit config: {}",
            problems.join("; ")
        ));
    }
    Ok(Settings {
        limits,
        algorithm,
        key,
        missing_key,
        group: raw.group,
        allow_on_kv_error,
        headers: raw.headers.unwrap_or(true),
    })
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// A header name, lowercased; HTTP token characters only.
fn header_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("{name:?} is not a valid header name"))
    }
}

/// `"250ms"`, `"1s"`, `"5m"`, `"1h30m"`, `"1d"` (the SDK's durations) →
/// milliseconds.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let d = config::parse_duration(text)?;
    u64::try_from(d.as_millis()).map_err(|_| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("1s"), Ok(1000));
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert!(parse_duration("1").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn full_config() {
        let s = parse(
            r#"{"limits":[{"requests":10,"per":"1s"},{"requests":1000,"per":"1h","burst":50}],
                "algorithm":"token-bucket","key":{"header":"X-Api-Key"},"on-kv-error":"deny"}"#,
        )
        .unwrap();
        assert_eq!(s.algorithm, Algorithm::TokenBucket);
        assert_eq!(s.key, Key::Header("x-api-key".into()));
        assert_eq!(s.limits[1].burst, 50);
        assert_eq!(s.limits[0].burst, 10);
        assert!(!s.allow_on_kv_error);
    }

    #[test]
    fn keys() {
        let key = |k: &str| {
            parse(&format!(
                r#"{{"limits":[{{"requests":1,"per":"1s"}}],"key":{k}}}"#
            ))
        };
        assert_eq!(
            key(r#""consumer""#).unwrap().key,
            Key::Header("x-consumer".into())
        );
        assert_eq!(key(r#""route""#).unwrap().key, Key::Route);
        assert_eq!(
            key(r#"{"claim":"sub","header":"X-User"}"#).unwrap().key,
            Key::Header("x-user".into())
        );
        assert!(
            key(r#"{"claim":"sub"}"#)
                .unwrap_err()
                .contains("key.header: needed with key.claim")
        );
        assert!(
            key(r#""nope""#)
                .unwrap_err()
                .contains("key: unknown key \"nope\"")
        );
        assert!(
            key(r#"{"header":"bad name"}"#)
                .unwrap_err()
                .contains("key.header")
        );
    }

    #[test]
    fn problems_are_all_reported() {
        let e = parse(
            r#"{"limits":[{"requests":0,"per":"1s"},{"requests":1,"per":"soon","burst":3}],"on-kv-error":"maybe"}"#,
        )
        .unwrap_err();
        assert!(e.contains("limits[0].requests"), "{e}");
        assert!(e.contains("limits[1].per"), "{e}");
        assert!(e.contains("on-kv-error"), "{e}");
        let e = parse(r#"{"limits":[{"requests":1,"per":"1s","burst":3}]}"#).unwrap_err();
        assert!(e.contains("limits[0].burst: only used with"), "{e}");
        assert!(
            parse(r#"{"limits":[]}"#)
                .unwrap_err()
                .contains("limits: at least one")
        );
        assert!(
            parse(r#"{"limit":[]}"#)
                .unwrap_err()
                .contains("unknown field `limit`")
        );
    }
}
