//! `auth-jwt`: verifies the bearer JWT of every request.
//!
//! A request passes when its `Authorization: Bearer <token>` carries a
//! compact JWS signed by a configured key (inline, or from a JWK Set on a
//! named upstream) with an accepted algorithm, and its claims hold: `exp`,
//! `nbf` and `iat` within the leeway, `iss` and `aud` among the accepted
//! values, required claims present. Chosen claims are then forwarded
//! upstream as headers, and the token optionally removed.
//!
//! Refusals follow RFC 6750: no token → 401 with a bare `Bearer realm`
//! challenge; a bad token → 401 with `error="invalid_token"` and a
//! description. Keys never verify outside their algorithm family (see
//! [`keys`]), `alg: none` is refused, and header parameters that point at
//! keys (`jwk`, `jku`, `x5u`, `x5c`) are ignored: keys come from config only.
//!
//! See README.md for the config reference.

mod config;
mod jwks;
mod keys;
mod token;

use pylon_plugin_sdk::{
    Needs, Plugin, ReadRequest, Request, RequestAction, RequestEdits, Response, clock,
    export_plugin,
};
use serde_json::{Map, Value, json};

use crate::config::Config;
use crate::jwks::Jwks;
use crate::keys::Key;
use crate::token::Refusal;

/// The configured verifier; its JWKS cache persists across requests of a
/// pooled instance, nothing else does.
struct AuthJwt {
    config: Config,
    jwks: Option<Jwks>,
}

/// Why a request was not let through.
enum Failure {
    /// No bearer credentials at all.
    Missing,
    /// The request's credentials are malformed in a way RFC 6750 calls
    /// `invalid_request` (several `Authorization` headers).
    BadRequest(Refusal),
    /// The token was refused.
    Invalid(Refusal),
    /// No key set could be fetched to verify with.
    KeysUnavailable,
}

impl Plugin for AuthJwt {
    fn configure(text: &str) -> Result<(Self, Needs), String> {
        let mut config = config::parse(text)?;
        let jwks = config.jwks.take().map(Jwks::new);
        Ok((AuthJwt { config, jwks }, Needs::none()))
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        match self.authenticate(req) {
            Ok(claims) => self.forward(&claims).into(),
            Err(failure) => self.refuse(failure).into(),
        }
    }
}

export_plugin!(AuthJwt);

impl AuthJwt {
    /// The verified claims of the request's token.
    fn authenticate(&mut self, req: &impl ReadRequest) -> Result<Map<String, Value>, Failure> {
        let token = bearer_token(req)?;
        let parsed = token::parse(&token).map_err(Failure::Invalid)?;
        let alg = parsed.alg;
        if let Some(allowed) = &self.config.algorithms
            && !allowed.contains(&alg)
        {
            return Err(Failure::Invalid(format!("algorithm {alg} is not accepted")));
        }
        let now_ms = clock::now_ms();
        let kid = parsed.kid.as_deref();
        let inline_has_kid = kid.is_some_and(|k| has_kid(&self.config.keys, k));
        let mut candidates: Vec<&Key> = Vec::new();
        if inline_has_kid || self.jwks.is_none() {
            candidates.extend(select(&self.config.keys, kid));
        } else if let Some(jwks) = self.jwks.as_mut() {
            let fetched = match jwks.keys(kid, now_ms) {
                Ok(keys) => keys,
                Err(jwks::Unavailable) if !self.config.keys.is_empty() => &[],
                Err(jwks::Unavailable) => return Err(Failure::KeysUnavailable),
            };
            if kid.is_some_and(|k| has_kid(fetched, k)) {
                candidates.extend(select(fetched, kid));
            } else {
                candidates.extend(select(&self.config.keys, kid));
                candidates.extend(select(fetched, kid));
            }
        }
        if candidates.is_empty() {
            return Err(Failure::Invalid(match kid {
                Some(k) => format!("unknown key id {}", token::sanitize(k)),
                None => "no key id and no key without one".to_string(),
            }));
        }
        candidates.retain(|k| k.accepts(alg));
        if candidates.is_empty() {
            return Err(Failure::Invalid(format!("no key accepts algorithm {alg}")));
        }
        if !candidates
            .iter()
            .any(|k| k.verify(alg, parsed.signing_input, &parsed.signature))
        {
            return Err(Failure::Invalid("invalid signature".to_string()));
        }
        let rules = token::Rules {
            now_s: now_ms as f64 / 1000.0,
            leeway_s: self.config.leeway_s,
            issuers: &self.config.issuers,
            audiences: &self.config.audiences,
            required: &self.config.required_claims,
        };
        token::check_claims(&parsed.claims, &rules).map_err(Failure::Invalid)?;
        Ok(parsed.claims)
    }

    /// The edits for an accepted request: forwarded claims (a header is
    /// removed when its claim is absent, so clients cannot supply it) and
    /// the optional token removal.
    fn forward(&self, claims: &Map<String, Value>) -> RequestEdits {
        let mut edits = RequestEdits::new();
        for (claim, header) in &self.config.forward_claims {
            edits = match claims.get(claim).filter(|v| !v.is_null()) {
                Some(value) => edits.set_header(header, header_value(value)),
                None => edits.remove_header(header),
            };
        }
        if self.config.strip_token {
            edits = edits.remove_header("authorization");
        }
        edits
    }

    fn refuse(&self, failure: Failure) -> Response {
        let realm = &self.config.realm;
        let (status, challenge, body) = match failure {
            Failure::Missing => (
                401,
                format!("Bearer realm=\"{realm}\""),
                json!({ "error": "unauthorized", "error_description": "a bearer token is required" }),
            ),
            Failure::BadRequest(why) => (
                400,
                format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{why}\""
                ),
                json!({ "error": "invalid_request", "error_description": why }),
            ),
            Failure::Invalid(why) => (
                401,
                format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{why}\""
                ),
                json!({ "error": "invalid_token", "error_description": why }),
            ),
            Failure::KeysUnavailable => {
                return Response::json(
                    503,
                    &json!({
                        "error": "temporarily_unavailable",
                        "error_description": "the signing keys could not be fetched"
                    }),
                );
            }
        };
        Response::json(status, &body).with_header("www-authenticate", challenge)
    }
}

/// The token of the request's `Authorization: Bearer` header.
fn bearer_token(req: &impl ReadRequest) -> Result<String, Failure> {
    // Every value in one host call: a second one is refused.
    let values = req.header_all("authorization");
    let value = match values.as_slice() {
        [] => return Err(Failure::Missing),
        [value] => value,
        _ => {
            return Err(Failure::BadRequest(
                "more than one Authorization header".to_string(),
            ));
        }
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return Err(Failure::Invalid("malformed token: not ASCII".to_string()));
    };
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme: this plugin sees no bearer credentials.
        return Err(Failure::Missing);
    }
    let token = rest.trim_matches([' ', '\t']);
    if token.is_empty() {
        return Err(Failure::Invalid("malformed token: empty".to_string()));
    }
    Ok(token.to_string())
}

fn has_kid(keys: &[Key], kid: &str) -> bool {
    keys.iter().any(|k| k.kid.as_deref() == Some(kid))
}

/// The keys a token naming `kid` may be checked against: those with that
/// exact id, else those without an id. A token without `kid` may use any.
fn select<'a>(keys: &'a [Key], kid: Option<&str>) -> Vec<&'a Key> {
    match kid {
        None => keys.iter().collect(),
        Some(kid) if has_kid(keys, kid) => keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .collect(),
        Some(_) => keys.iter().filter(|k| k.kid.is_none()).collect(),
    }
}

/// A claim as a header value: a string as is when it is a valid field
/// value, anything else as JSON text (which escapes control characters).
fn header_value(value: &Value) -> Vec<u8> {
    let valid = |s: &str| {
        !s.starts_with([' ', '\t'])
            && !s.ends_with([' ', '\t'])
            && s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
    };
    match value {
        Value::String(s) if valid(s) => s.clone().into_bytes(),
        other => other.to_string().replace('\u{7f}', "\\u007f").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use pylon_plugin_sdk::RequestData;

    use super::*;

    fn token(headers: &[&[u8]]) -> Result<String, Failure> {
        let req = headers.iter().fold(RequestData::new("GET", "/"), |r, v| {
            r.with_header("Authorization", v)
        });
        bearer_token(&req)
    }

    #[test]
    fn bearer_token_extraction() {
        assert!(matches!(token(&[b"Bearer abc"]).as_deref(), Ok("abc")));
        assert!(matches!(
            token(&[b" bearer \t abc \t"]).as_deref(),
            Ok("abc")
        ));
        assert!(matches!(token(&[]), Err(Failure::Missing)));
        assert!(matches!(
            token(&[b"Basic dXNlcjpwdw=="]),
            Err(Failure::Missing)
        ));
        assert!(matches!(token(&[b"Bearer"]), Err(Failure::Invalid(_))));
        assert!(matches!(token(&[b"Bearer \xff"]), Err(Failure::Invalid(_))));
        assert!(matches!(
            token(&[b"Bearer a", b"Bearer b"]),
            Err(Failure::BadRequest(_))
        ));
    }
}
