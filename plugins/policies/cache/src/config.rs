//! The plugin's configuration: the raw serde shape (kebab-case, unknown keys
//! rejected) and its validation into [`Settings`]. Every problem is reported
//! in one message that names the key.

use serde::Deserialize;

use pylon_plugin_sdk::config;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    max_ttl: Option<String>,
    #[serde(default)]
    vary: Vec<String>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    statuses: Option<Vec<u16>>,
    #[serde(default)]
    max_entry_size: Option<String>,
}

/// Statuses stored by default: those RFC 9110 §15.1 calls heuristically
/// cacheable, minus `206` (ranges are not cached) and `405`/`414`/`501`
/// (errors that say more about the request than the resource).
pub(crate) const DEFAULT_STATUSES: [u16; 8] = [200, 203, 204, 300, 301, 308, 404, 410];

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Freshness (ms) for responses that state none.
    pub(crate) ttl_ms: u64,
    /// No entry is kept longer than this (ms).
    pub(crate) max_ttl_ms: u64,
    /// Request headers (lowercase) whose values are part of the key.
    pub(crate) vary: Vec<String>,
    /// Methods (uppercase) served from and stored in the cache.
    pub(crate) methods: Vec<String>,
    /// Statuses that may be stored.
    pub(crate) statuses: Vec<u16>,
    /// Largest body stored (bytes).
    pub(crate) max_entry_size: usize,
}

/// Parse and validate the JSON config.
pub(crate) fn parse(text: &str) -> Result<Settings, String> {
    let raw: Raw = config::parse(text)?;
    let mut problems = Vec::new();
    let mut duration = |key: &str, v: Option<String>, default: u64| match v {
        None => default,
        Some(v) => parse_duration(&v).unwrap_or_else(|e| {
            problems.push(format!("{key}: {e}"));
            default
        }),
    };
    let ttl_ms = duration("ttl", raw.ttl, 60_000);
    let max_ttl_ms = duration("max-ttl", raw.max_ttl, 3_600_000);
    if max_ttl_ms == 0 {
        problems.push("max-ttl: must be longer than 0".to_string());
    }
    if ttl_ms > max_ttl_ms {
        problems.push(format!(
            "ttl: {ttl_ms}ms is longer than max-ttl ({max_ttl_ms}ms)"
        ));
    }

    let mut vary = Vec::new();
    for (i, name) in raw.vary.iter().enumerate() {
        if is_token(name) {
            let name = name.to_ascii_lowercase();
            if !vary.contains(&name) {
                vary.push(name);
            }
        } else {
            problems.push(format!("vary[{i}]: {name:?} is not a valid header name"));
        }
    }

    let methods = match raw.methods {
        None => vec!["GET".to_string(), "HEAD".to_string()],
        Some(list) => {
            if list.is_empty() {
                problems.push("methods: at least one method is needed".to_string());
            }
            let mut out = Vec::new();
            for (i, m) in list.iter().enumerate() {
                if is_token(m) {
                    out.push(m.to_ascii_uppercase());
                } else {
                    problems.push(format!("methods[{i}]: {m:?} is not a valid method"));
                }
            }
            out
        }
    };

    let statuses = match raw.statuses {
        None => DEFAULT_STATUSES.to_vec(),
        Some(list) => {
            for (i, s) in list.iter().enumerate() {
                // 1xx are not final responses, and 206 would need ranges.
                if !(200..=599).contains(s) || *s == 206 {
                    problems.push(format!("statuses[{i}]: {s} cannot be cached"));
                }
            }
            list
        }
    };

    let max_entry_size = match raw.max_entry_size {
        None => 1 << 20,
        Some(v) => match parse_size(&v) {
            Ok(0) => {
                problems.push("max-entry-size: must be larger than 0".to_string());
                0
            }
            Ok(n) => n,
            Err(e) => {
                problems.push(format!("max-entry-size: {e}"));
                0
            }
        },
    };

    if !problems.is_empty() {
        return Err(format!("invalid cache config: {}", problems.join("; ")));
    }
    Ok(Settings {
        ttl_ms,
        max_ttl_ms,
        vary,
        methods,
        statuses,
        max_entry_size,
    })
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `"250ms"`, `"1s"`, `"5m"`, `"1h30m"`, `"1d"` (the SDK's durations) →
/// milliseconds.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let d = config::parse_duration(text)?;
    u64::try_from(d.as_millis()).map_err(|_| format!("{text:?} is too long"))
}

/// `"512"`, `"64KiB"`, `"1MiB"`, `"10MB"` → bytes.
pub(crate) fn parse_size(text: &str) -> Result<usize, String> {
    let bad = || format!("{text:?} is not a size like \"512\", \"64KiB\" or \"1MiB\"");
    let (n, unit) = split_number(text).ok_or_else(bad)?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(scale)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(bad)
}

fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    Some((digits.parse().ok()?, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = parse("{}").unwrap();
        assert_eq!(s.ttl_ms, 60_000);
        assert_eq!(s.max_ttl_ms, 3_600_000);
        assert_eq!(s.methods, ["GET", "HEAD"]);
        assert_eq!(s.max_entry_size, 1 << 20);
        assert_eq!(s.statuses, DEFAULT_STATUSES);
    }

    #[test]
    fn full() {
        let s = parse(
            r#"{"ttl":"5s","max-ttl":"1m","vary":["Accept-Language"],"methods":["get"],
                "statuses":[200],"max-entry-size":"64KiB"}"#,
        )
        .unwrap();
        assert_eq!(s.ttl_ms, 5000);
        assert_eq!(s.vary, ["accept-language"]);
        assert_eq!(s.methods, ["GET"]);
        assert_eq!(s.max_entry_size, 65536);
    }

    #[test]
    fn problems() {
        let e = parse(
            r#"{"ttl":"2h","vary":["a b"],"statuses":[206,100],"max-entry-size":"lots","methods":[]}"#,
        )
        .unwrap_err();
        for want in [
            "ttl: 7200000ms is longer than max-ttl",
            "vary[0]",
            "statuses[0]: 206",
            "statuses[1]: 100",
            "max-entry-size",
            "methods: at least one",
        ] {
            assert!(e.contains(want), "{want} not in {e}");
        }
        assert!(
            parse(r#"{"ttl":"1"}"#)
                .unwrap_err()
                .contains("ttl: \"1\" is not a duration")
        );
        assert!(
            parse(r#"{"tll":"1s"}"#)
                .unwrap_err()
                .contains("unknown field `tll`")
        );
    }
}
