//! Splitting a compact JWS (RFC 7515 §7.1) and checking its claims
//! (RFC 7519 §4.1). Pure functions: no host calls, so they never trap.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::keys::Alg;

/// Tokens longer than this are rejected before any decoding.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A token split and decoded, signature not yet checked.
pub(crate) struct Parsed<'a> {
    pub(crate) alg: Alg,
    pub(crate) kid: Option<String>,
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signing_input: &'a [u8],
    pub(crate) signature: Vec<u8>,
    pub(crate) claims: Map<String, Value>,
}

/// Why a token was refused; the text is the RFC 6750 `error_description`,
/// so it never contains `"` or `\`.
pub(crate) type Refusal = String;

/// Split, decode and parse `token`. Checks the header (`alg` supported and
/// not `none`, no `crit`) but not the signature or the claims.
pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, Refusal> {
    if token.len() > MAX_TOKEN_LEN {
        return Err("malformed token: too long".to_string());
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed token: expected three dot-separated segments".to_string());
    };
    let header = object(header_b64, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(name)) if name.eq_ignore_ascii_case("none") => {
            return Err("unsigned tokens (alg none) are not accepted".to_string());
        }
        Some(Value::String(name)) => {
            Alg::parse(name).ok_or_else(|| format!("unsupported algorithm {}", sanitize(name)))?
        }
        _ => return Err("malformed token: header has no alg".to_string()),
    };
    if header.contains_key("crit") {
        return Err("critical header parameters are not supported".to_string());
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("malformed token: kid is not a string".to_string()),
    };
    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| "malformed token: signature is not base64url".to_string())?;
    let claims = object(payload_b64, "payload")?;
    let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    Ok(Parsed {
        alg,
        kid,
        signing_input,
        signature,
        claims,
    })
}

/// A base64url segment holding a JSON object.
fn object(segment: &str, what: &str) -> Result<Map<String, Value>, Refusal> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| format!("malformed token: {what} is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(format!("malformed token: {what} is not a JSON object")),
    }
}

/// What the claims must satisfy.
pub(crate) struct Rules<'a> {
    /// Now, in seconds since the epoch.
    pub(crate) now_s: f64,
    pub(crate) leeway_s: f64,
    pub(crate) issuers: &'a [String],
    pub(crate) audiences: &'a [String],
    pub(crate) required: &'a [String],
}

/// Check the registered claims against `rules`.
pub(crate) fn check_claims(claims: &Map<String, Value>, rules: &Rules<'_>) -> Result<(), Refusal> {
    let time = |name: &str| -> Result<Option<f64>, Refusal> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|t| t.is_finite())
                .map(Some)
                .ok_or_else(|| format!("claim {name} is not a NumericDate")),
        }
    };
    if let Some(exp) = time("exp")?
        && rules.now_s >= exp + rules.leeway_s
    {
        return Err("the token has expired".to_string());
    }
    if let Some(nbf) = time("nbf")?
        && rules.now_s + rules.leeway_s < nbf
    {
        return Err("the token is not valid yet".to_string());
    }
    if let Some(iat) = time("iat")?
        && iat > rules.now_s + rules.leeway_s
    {
        return Err("the token was issued in the future".to_string());
    }
    if !rules.issuers.is_empty() {
        match claims.get("iss") {
            Some(Value::String(iss)) if rules.issuers.iter().any(|i| i == iss) => {}
            Some(_) => return Err("unexpected issuer".to_string()),
            None => return Err("missing required claim iss".to_string()),
        }
    }
    if !rules.audiences.is_empty() {
        let ok = |a: &str| rules.audiences.iter().any(|x| x == a);
        match claims.get("aud") {
            Some(Value::String(aud)) if ok(aud) => {}
            Some(Value::Array(auds)) if auds.iter().filter_map(Value::as_str).any(ok) => {}
            Some(_) => return Err("unexpected audience".to_string()),
            None => return Err("missing required claim aud".to_string()),
        }
    }
    for name in rules.required {
        if claims.get(name).is_none_or(Value::is_null) {
            return Err(format!("missing required claim {}", sanitize(name)));
        }
    }
    Ok(())
}

/// `text` cut to 64 characters and reduced to what an RFC 6750
/// `error_description` may hold (printable ASCII except `"` and `\`).
pub(crate) fn sanitize(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '?',
        })
        .collect()
}
