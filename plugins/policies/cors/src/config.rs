//! The plugin's configuration: the raw serde shape (kebab-case, unknown keys
//! rejected) and its validation into [`Settings`], including the origin
//! patterns. Every problem is reported in one message that names the key.

use serde::Deserialize;

use pylon_plugin_sdk::config;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    allow_origins: Vec<String>,
    #[serde(default)]
    allow_methods: Option<Vec<String>>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default)]
    max_age: Option<config::DurationOrNumber>,
}

/// Which origins may read responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origins {
    /// `"*"`: any origin.
    Any,
    /// Exact origins and `*.` subdomain patterns.
    List(Vec<Pattern>),
}

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// `https://app.example.com` (lowercase, as browsers serialise origins).
    Exact(String),
    /// `https://*.example.com[:port]`: any subdomain, at any depth, with
    /// this scheme and port.
    Subdomains {
        scheme: String,
        /// `.example.com`
        suffix: String,
        /// `:8443`, or empty for the scheme's default port.
        port: String,
    },
}

/// A list that may be `["*"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum List {
    Any,
    /// Names as configured for headers sent back; compared
    /// ASCII-case-insensitively.
    Only(Vec<String>),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) origins: Origins,
    pub(crate) methods: List,
    pub(crate) headers: List,
    /// Response headers scripts may read (`Access-Control-Expose-Headers`).
    pub(crate) expose: Vec<String>,
    pub(crate) credentials: bool,
    /// Seconds a preflight answer may be cached by the browser.
    pub(crate) max_age: Option<u64>,
}

/// Parse and validate the JSON config.
pub(crate) fn parse(text: &str) -> Result<Settings, String> {
    let raw: Raw = config::parse(text)?;
    let mut problems = Vec::new();

    let origins = if raw.allow_origins.iter().any(|o| o == "*") {
        if raw.allow_origins.len() > 1 {
            problems.push("allow-origins: \"*\" must be the only entry".to_string());
        }
        if raw.allow_credentials {
            problems.push(
                "allow-credentials: cannot be true with allow-origins = [\"*\"] (the CORS protocol forbids credentials with a wildcard origin; list the origins)"
                    .to_string(),
            );
        }
        Origins::Any
    } else {
        if raw.allow_origins.is_empty() {
            problems.push("allow-origins: at least one origin is needed".to_string());
        }
        let mut list = Vec::new();
        for (i, o) in raw.allow_origins.iter().enumerate() {
            match pattern(o) {
                Ok(p) => list.push(p),
                Err(e) => problems.push(format!("allow-origins[{i}]: {e}")),
            }
        }
        Origins::List(list)
    };

    let methods = list(
        "allow-methods",
        raw.allow_methods
            .unwrap_or_else(|| vec!["GET".into(), "HEAD".into(), "POST".into()]),
        &mut problems,
    );
    if methods == List::Only(Vec::new()) {
        problems.push("allow-methods: at least one method is needed".to_string());
    }
    let headers = list("allow-headers", raw.allow_headers, &mut problems);
    let expose = match list("expose-headers", raw.expose_headers, &mut problems) {
        List::Any => vec!["*".to_string()],
        List::Only(v) => v,
    };
    if raw.allow_credentials && expose == ["*"] {
        problems.push(
            "expose-headers: \"*\" is not a wildcard when allow-credentials is true; list the headers"
                .to_string(),
        );
    }

    // A bare number counts in seconds, the header's own unit.
    let max_age = match raw
        .max_age
        .map(|v| v.to_duration(std::time::Duration::from_secs(1)))
    {
        None => None,
        Some(Ok(d)) => Some(d.as_secs()),
        Some(Err(e)) => {
            problems.push(format!("max-age: {e}"));
            None
        }
    };

    if !problems.is_empty() {
        return Err(format!("invalid cors config: {}", problems.join("; ")));
    }
    Ok(Settings {
        origins,
        methods,
        headers,
        expose,
        credentials: raw.allow_credentials,
        max_age,
    })
}

fn list(key: &str, items: Vec<String>, problems: &mut Vec<String>) -> List {
    if items.iter().any(|i| i == "*") {
        if items.len() > 1 {
            problems.push(format!("{key}: \"*\" must be the only entry"));
        }
        return List::Any;
    }
    for (i, item) in items.iter().enumerate() {
        if !is_token(item) {
            problems.push(format!("{key}[{i}]: {item:?} is not a valid name"));
        }
    }
    List::Only(items)
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An allowed-origin entry: `scheme://host[:port]`, where host may start
/// with `*.`.
fn pattern(text: &str) -> Result<Pattern, String> {
    let bad = |why: &str| format!("{text:?} {why}");
    let lower = text.to_ascii_lowercase();
    let (scheme, rest) = lower
        .split_once("://")
        .ok_or_else(|| bad("is not an origin like \"https://app.example.com\""))?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(bad("has an invalid scheme"));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(bad(
            "must be scheme://host[:port], without a path or a trailing slash",
        ));
    }
    let (host, port) = if rest.starts_with('[') {
        let end = rest.find(']').ok_or_else(|| bad("has an invalid host"))?;
        rest.split_at(end + 1)
    } else {
        rest.rfind(':').map_or((rest, ""), |i| rest.split_at(i))
    };
    if let Some(p) = port.strip_prefix(':') {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return Err(bad("has an invalid port"));
        }
    } else if !port.is_empty() {
        return Err(bad("has an invalid host"));
    }
    let port = port.to_string();
    let host_ok = |h: &str| {
        !h.is_empty()
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    if let Some(suffix) = host.strip_prefix("*.") {
        if !host_ok(suffix) {
            return Err(bad("has an invalid host after \"*.\""));
        }
        return Ok(Pattern::Subdomains {
            scheme: scheme.to_string(),
            suffix: format!(".{suffix}"),
            port,
        });
    }
    let bracketed_v6 = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|h| {
            h.contains(':')
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() || b".:".contains(&b))
        });
    if host.contains('*') {
        return Err(bad(
            "may use \"*\" only as its first label (\"https://*.example.com\")",
        ));
    }
    if !bracketed_v6 && !host_ok(host) {
        return Err(bad("has an invalid host"));
    }
    Ok(Pattern::Exact(lower))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert_eq!(
            pattern("https://App.Example.com"),
            Ok(Pattern::Exact("https://app.example.com".into()))
        );
        assert_eq!(
            pattern("http://localhost:3000"),
            Ok(Pattern::Exact("http://localhost:3000".into()))
        );
        assert_eq!(
            pattern("https://*.example.com:8443"),
            Ok(Pattern::Subdomains {
                scheme: "https".into(),
                suffix: ".example.com".into(),
                port: ":8443".into()
            })
        );
        assert!(pattern("https://[::1]:8080").is_ok());
        assert!(pattern("https://[::1]").is_ok());
        for bad in [
            "example.com",
            "https://example.com/",
            "https://a.*.com",
            "https://*",
            "https://x.com:99999",
            "https://x..com",
            "null",
        ] {
            assert!(pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_with_wildcard_origin_rejected() {
        let e = parse(r#"{"allow-origins":["*"],"allow-credentials":true}"#).unwrap_err();
        assert!(
            e.starts_with("invalid cors config: allow-credentials: cannot be true"),
            "{e}"
        );
    }

    #[test]
    fn full_and_problems() {
        let s = parse(
            r#"{"allow-origins":["https://a.example.com"],"allow-methods":["GET","PUT"],
                "allow-headers":["*"],"expose-headers":["x-total"],"max-age":"10m"}"#,
        )
        .unwrap();
        assert_eq!(s.methods, List::Only(vec!["GET".into(), "PUT".into()]));
        assert_eq!(s.headers, List::Any);
        assert_eq!(s.max_age, Some(600));
        assert_eq!(
            parse(r#"{"allow-origins":["*"],"max-age":30}"#)
                .unwrap()
                .max_age,
            Some(30)
        );
        let e =
            parse(r#"{"allow-origins":["ftp:/x","*"],"allow-headers":["a b"],"max-age":"soon"}"#)
                .unwrap_err();
        for want in [
            "allow-origins: \"*\" must be the only",
            "allow-headers[0]",
            "max-age",
        ] {
            assert!(e.contains(want), "{want} not in {e}");
        }
        let e = parse(r#"{"allow-origins":["https://a.b","nope"]}"#).unwrap_err();
        assert!(e.contains("allow-origins[1]: \"nope\""), "{e}");
        assert!(
            parse("{}")
                .unwrap_err()
                .contains("missing field `allow-origins`")
        );
    }
}
