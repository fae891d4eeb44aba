//! Tests of the `auth-jwt` policy plugin through the running gateway: tokens
//! signed on the test side by an independent JWT library (`jsonwebtoken`)
//! with the fixed keys of tests/fixtures/jwt/, a real upstream recording what
//! passes, and a real JWKS server counting its fetches.
//!
//! This file holds the keys, the token signing and the gateways the tests
//! below share.

mod config;
mod jwks;
mod tokens;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

use crate::harness::{TestGateway, client, plugin, root};

/// The HMAC secret: 64 bytes, enough for HS512 (RFC 7518 §3.2).
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const ISS: &str = "https://idp.test";
const AUD: &str = "orders-api";

fn fixture(name: &str) -> String {
    let path = root().join("tests/fixtures/jwt").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Valid claims for the test issuer and audience.
fn claims() -> Value {
    json!({ "sub": "user-7", "iss": ISS, "aud": AUD, "iat": now(), "exp": now() + 600 })
}

/// The private key the test signs `alg` tokens with.
fn signing_key(alg: Algorithm) -> EncodingKey {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => EncodingKey::from_secret(SECRET.as_bytes()),
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
            EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).unwrap()
        }
        ES256 => EncodingKey::from_ec_pem(fixture("ec256_private.pem").as_bytes()).unwrap(),
        ES384 => EncodingKey::from_ec_pem(fixture("ec384_private.pem").as_bytes()).unwrap(),
        EdDSA => EncodingKey::from_ed_pem(fixture("ed25519_private.pem").as_bytes()).unwrap(),
        other => panic!("no test key for {other:?}"),
    }
}

fn sign_with(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    sign_with(alg, &signing_key(alg), kid, claims)
}

/// The plugin definition lines for inline keys: only the clock is needed.
const INLINE_DEF: &str = "capabilities = [\"clock\"]";

/// TOML for a gateway with upstream `u` at `up`, the `auth-jwt` plugin (with
/// `def` lines in its definition) on route `r` for every path, whose config
/// is the `[routes.plugins.config]` TOML `config`; `more` is added at the
/// top level (extra upstreams).
fn toml(up: &str, def: &str, config: &str, more: &str) -> String {
    format!(
        r#"
[upstreams.u]
targets = ["{up}"]

{more}

[plugins.auth-jwt]
component = {component:?}
deadline = "2s"
{def}

[[routes]]
id = "r"
path-prefix = "/"
upstream = "u"

[[routes.plugins]]
plugin = "auth-jwt"

[routes.plugins.config]
{config}
"#,
        component = plugin("auth-jwt"),
    )
}

/// The `WWW-Authenticate` of a refusal of `token`, after checking the status.
async fn challenge(gw: &TestGateway, token: &str, status: u16) -> String {
    let r = client()
        .get(gw.url("/orders"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), status, "token {token}");
    r.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn status_of(gw: &TestGateway, token: &str) -> u16 {
    client()
        .get(gw.url("/orders"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

const ALL_ALGS: [(Algorithm, &str); 12] = [
    (Algorithm::HS256, "hs"),
    (Algorithm::HS384, "hs"),
    (Algorithm::HS512, "hs"),
    (Algorithm::RS256, "rsa"),
    (Algorithm::RS384, "rsa1"),
    (Algorithm::RS512, "rsa"),
    (Algorithm::PS256, "rsa"),
    (Algorithm::PS384, "rsa1"),
    (Algorithm::PS512, "rsa"),
    (Algorithm::ES256, "ec256"),
    (Algorithm::ES384, "ec384"),
    (Algorithm::EdDSA, "ed"),
];

/// The public JWK of the test's `alg` signing key, with id `kid`.
fn jwk(alg: Algorithm, key: &EncodingKey, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    jwk
}
