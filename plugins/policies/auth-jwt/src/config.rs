//! The plugin's configuration: the raw serde shape and its validation into
//! [`Config`]. Every problem is reported, each naming its key.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use pylon_plugin_sdk::config::{self, DurationOrNumber, OneOrMany};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::keys::{self, Alg, Key, Material};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    jwks: Option<RawJwks>,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    issuer: Option<OneOrMany<String>>,
    #[serde(default)]
    audience: Option<OneOrMany<String>>,
    #[serde(default)]
    required_claims: Vec<String>,
    #[serde(default)]
    leeway: Option<DurationOrNumber>,
    #[serde(default)]
    forward_claims: BTreeMap<String, String>,
    #[serde(default)]
    strip_token: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKey {
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_base64: Option<String>,
    #[serde(default)]
    pem: Option<String>,
    #[serde(default)]
    jwk: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawJwks {
    upstream: String,
    path: String,
    #[serde(default)]
    cache_ttl: Option<DurationOrNumber>,
    #[serde(default)]
    min_refresh_interval: Option<DurationOrNumber>,
    #[serde(default)]
    timeout: Option<DurationOrNumber>,
}

/// Where the JWK Set lives and how it is cached.
pub(crate) struct JwksConfig {
    /// The named upstream (must be in the plugin's `http-upstreams`).
    pub(crate) upstream: String,
    /// Path and query on that upstream.
    pub(crate) path: String,
    /// How long a fetched set is used before it is fetched again.
    pub(crate) cache_ttl_ms: u64,
    /// At most one refresh for an unknown `kid` per this long.
    pub(crate) min_refresh_interval_ms: u64,
    /// Timeout of one fetch.
    pub(crate) timeout_ms: u32,
}

/// The validated configuration.
pub(crate) struct Config {
    /// The `realm` of `WWW-Authenticate` challenges.
    pub(crate) realm: String,
    /// Keys given inline.
    pub(crate) keys: Vec<Key>,
    pub(crate) jwks: Option<JwksConfig>,
    /// Algorithms tokens may use; `None` means any a key accepts.
    pub(crate) algorithms: Option<Vec<Alg>>,
    /// Accepted `iss` values; empty means `iss` is not checked.
    pub(crate) issuers: Vec<String>,
    /// Accepted `aud` values; empty means `aud` is not checked.
    pub(crate) audiences: Vec<String>,
    pub(crate) required_claims: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub(crate) leeway_s: f64,
    /// Claim name -> request header name.
    pub(crate) forward_claims: Vec<(String, String)>,
    pub(crate) strip_token: bool,
}

/// Parse and validate the JSON config text.
pub(crate) fn parse(text: &str) -> Result<Config, String> {
    let raw: RawConfig = config::parse(text)?;
    let mut problems = Vec::new();

    let realm = raw.realm.unwrap_or_else(|| "pylon".to_string());
    if !is_quotable(&realm) {
        problems.push(format!(
            "realm: {realm:?} must be printable ASCII without `\"` or `\\`"
        ));
    }

    let mut keys = Vec::new();
    for (i, raw_key) in raw.keys.into_iter().enumerate() {
        match key(raw_key) {
            Ok(k) => keys.push(k),
            Err(e) => problems.push(format!("keys[{i}]: {e}")),
        }
    }

    let jwks = raw.jwks.and_then(|j| match jwks(j) {
        Ok(j) => Some(j),
        Err(e) => {
            problems.extend(e);
            None
        }
    });

    let algorithms = raw.algorithms.map(|names| {
        let mut algs = Vec::new();
        for name in names {
            match alg(&name) {
                Ok(a) => algs.push(a),
                Err(e) => problems.push(format!("algorithms: {e}")),
            }
        }
        algs
    });
    if algorithms.as_ref().is_some_and(Vec::is_empty) {
        problems.push("algorithms: must name at least one algorithm".to_string());
    }

    let leeway_s = match raw.leeway.map(duration_ms).transpose() {
        Ok(ms) => ms.unwrap_or(30_000) as f64 / 1000.0,
        Err(e) => {
            problems.push(format!("leeway: {e}"));
            0.0
        }
    };

    let mut forward_claims = Vec::new();
    for (claim, header) in raw.forward_claims {
        if is_token(&header) {
            forward_claims.push((claim, header.to_ascii_lowercase()));
        } else {
            problems.push(format!(
                "forward-claims.{claim}: {header:?} is not a valid header name"
            ));
        }
    }

    if keys.is_empty() && jwks.is_none() && problems.is_empty() {
        problems.push("no keys: set `keys`, `jwks`, or both".to_string());
    }
    if let (Some(allowed), false) = (&algorithms, keys.is_empty() || jwks.is_some()) {
        // With inline keys only, an allowed algorithm no key accepts is a typo.
        for a in allowed {
            if !keys.iter().any(|k| k.accepts(*a)) {
                problems.push(format!("algorithms: no configured key can verify {a}"));
            }
        }
    }

    if !problems.is_empty() {
        return Err(format!("invalid auth-jwt config: {}", problems.join("; ")));
    }
    Ok(Config {
        realm,
        keys,
        jwks,
        algorithms,
        issuers: raw.issuer.map(OneOrMany::into_vec).unwrap_or_default(),
        audiences: raw.audience.map(OneOrMany::into_vec).unwrap_or_default(),
        required_claims: raw.required_claims,
        leeway_s,
        forward_claims,
        strip_token: raw.strip_token,
    })
}

fn alg(name: &str) -> Result<Alg, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("\"none\" (unsigned tokens) is never accepted".to_string());
    }
    Alg::parse(name)
        .ok_or_else(|| format!("unknown algorithm {name:?} (supported: {})", Alg::list()))
}

fn key(raw: RawKey) -> Result<Key, String> {
    let alg = raw.alg.as_deref().map(alg).transpose()?;
    let given: Vec<&str> = [
        ("secret", raw.secret.is_some()),
        ("secret-base64", raw.secret_base64.is_some()),
        ("pem", raw.pem.is_some()),
        ("jwk", raw.jwk.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let hmac = alg.is_some_and(|a| a.name().starts_with("HS"));
    match given.as_slice() {
        [] if hmac => {
            return Err(format!(
                "{} needs `secret` or `secret-base64`",
                alg.map_or("", Alg::name)
            ));
        }
        [] => return Err("needs one of `secret`, `secret-base64`, `pem` or `jwk`".to_string()),
        [_] => {}
        many => return Err(format!("give only one of {}", many.join(", "))),
    }
    if let Some(jwk) = raw.jwk {
        let mut key = keys::key_from_jwk(&jwk).map_err(|e| format!("jwk: {e}"))?;
        if raw.kid.is_some() {
            key.kid = raw.kid;
        }
        if alg.is_some() {
            key.alg = alg;
        }
        return Key::new(key.kid, key.alg, key.material);
    }
    let material = if let Some(secret) = raw.secret {
        Material::Hmac(secret.into_bytes())
    } else if let Some(b64) = raw.secret_base64 {
        let b64 = b64.trim();
        let bytes = URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .or_else(|_| STANDARD.decode(b64))
            .map_err(|_| "secret-base64: not valid base64".to_string())?;
        Material::Hmac(bytes)
    } else if let Some(pem) = raw.pem {
        keys::material_from_pem(&pem).map_err(|e| format!("pem: {e}"))?
    } else {
        unreachable!("exactly one key source is set")
    };
    Key::new(raw.kid, alg, material)
}

fn jwks(raw: RawJwks) -> Result<JwksConfig, Vec<String>> {
    let mut problems = Vec::new();
    if raw.upstream.is_empty() {
        problems.push("jwks.upstream: must name an upstream".to_string());
    }
    if !raw.path.starts_with('/') || raw.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        problems.push(format!(
            "jwks.path: {:?} must start with `/` and contain no spaces or control characters",
            raw.path
        ));
    }
    let mut dur = |name: &str, value: Option<DurationOrNumber>, default: u64| match value
        .map(duration_ms)
        .transpose()
    {
        Ok(ms) => ms.unwrap_or(default),
        Err(e) => {
            problems.push(format!("jwks.{name}: {e}"));
            default
        }
    };
    let cache_ttl_ms = dur("cache-ttl", raw.cache_ttl, 300_000);
    let min_refresh_interval_ms = dur("min-refresh-interval", raw.min_refresh_interval, 10_000);
    let timeout_ms = dur("timeout", raw.timeout, 2_000);
    if cache_ttl_ms == 0 {
        problems.push("jwks.cache-ttl: must be more than 0".to_string());
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(JwksConfig {
        upstream: raw.upstream,
        path: raw.path,
        cache_ttl_ms,
        min_refresh_interval_ms,
        timeout_ms: u32::try_from(timeout_ms).unwrap_or(u32::MAX),
    })
}

/// Milliseconds of a duration (`"250ms"`, `"30s"`, `"1h30m"`, see the SDK)
/// or a bare number of seconds.
fn duration_ms(d: DurationOrNumber) -> Result<u64, String> {
    let d = d.to_duration(std::time::Duration::from_secs(1))?;
    u64::try_from(d.as_millis()).map_err(|_| "too large".to_string())
}

/// An HTTP token (RFC 9110 `tchar`s), as header names must be.
fn is_token(name: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty() && name.bytes().all(tchar)
}

/// Whether `s` can sit inside a quoted-string of a challenge unescaped.
fn is_quotable(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}
