//! Invalid `auth-jwt` configs are rejected at load, naming the key.

use crate::harness::{parse, start_error};

use super::{INLINE_DEF, SECRET, fixture, toml};

/// The message `Gateway::start` gives for an auth-jwt config `config`.
async fn rejection(config: &str) -> String {
    let cfg = parse(&toml("127.0.0.1:9", INLINE_DEF, config, "")).unwrap_or_else(|e| panic!("{e}"));
    start_error(cfg)
        .await
        .unwrap_or_else(|| panic!("config accepted: {config}"))
}

#[tokio::test]
async fn invalid_configs_are_rejected_naming_the_key() {
    let rsa = fixture("rsa_public.pem");
    for (config, needle) in [
        (
            "keys = [{ alg = \"XS256\", secret = \"x\" }]".to_string(),
            "invalid auth-jwt config: keys[0]: unknown algorithm \"XS256\" (supported: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)",
        ),
        (
            "keys = [{ kid = \"a\", alg = \"HS256\" }]".to_string(),
            "invalid auth-jwt config: keys[0]: HS256 needs `secret` or `secret-base64`",
        ),
        (
            format!("keys = [{{ secret = \"{SECRET}\" }}]\nalgorithms = [\"none\"]"),
            "algorithms: \"none\" (unsigned tokens) is never accepted",
        ),
        (
            "keys = [{ alg = \"HS512\", secret = \"0123456789abcdef0123456789abcdef\" }]"
                .to_string(),
            "keys[0]: HS512 needs a secret of at least 64 bytes (RFC 7518 §3.2), this one has 32",
        ),
        (
            format!("keys = [{{ alg = \"HS256\", pem = '''\n{rsa}''' }}]"),
            "keys[0]: an RSA key cannot verify HS256",
        ),
        (
            "keys = [{ pem = \"-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\" }]"
                .to_string(),
            "keys[0]: pem: not a valid RSA, EC P-256, EC P-384 or Ed25519 public key",
        ),
        (
            format!("keys = [{{ secret = \"{SECRET}\", pem = '''\n{rsa}''' }}]"),
            "keys[0]: give only one of secret, pem",
        ),
        (
            "realm = \"x\"".to_string(),
            "invalid auth-jwt config: no keys: set `keys`, `jwks`, or both",
        ),
        (
            "jwks = { upstream = \"idp\", path = \"jwks.json\", cache-ttl = \"soon\" }".to_string(),
            "jwks.path: \"jwks.json\" must start with `/`",
        ),
        (
            "jwks = { upstream = \"idp\", path = \"/jwks\", cache-ttl = \"soon\" }".to_string(),
            "jwks.cache-ttl: \"soon\" is not a duration",
        ),
        (
            format!(
                "keys = [{{ secret = \"{SECRET}\" }}]\nforward-claims = {{ sub = \"x user\" }}"
            ),
            "forward-claims.sub: \"x user\" is not a valid header name",
        ),
        (
            format!("keys = [{{ secret = \"{SECRET}\" }}]\nissuers = \"x\""),
            "unknown field `issuers`",
        ),
    ] {
        let err = rejection(&config).await;
        assert!(err.contains("route \"r\", plugin \"auth-jwt\""), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
}
