//! Tokens checked against inline keys: every algorithm with its key, the
//! bare challenge without a token, time, issuer, audience and required
//! claims, forged, confused and malformed tokens refused, and claims
//! forwarded as headers with the token stripped.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, jwk::Jwk};
use serde_json::{Value, json};

use crate::harness::{TestGateway, Upstream, client};

use super::{
    ALL_ALGS, AUD, INLINE_DEF, ISS, SECRET, challenge, claims, fixture, jwk, now, sign, sign_with,
    signing_key, status_of, toml,
};

fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
}

async fn gateway(up: &Upstream, config: &str) -> TestGateway {
    TestGateway::start(&toml(&up.addr.to_string(), INLINE_DEF, config, "")).await
}

/// A config whose inline keys cover every algorithm, with kids `hs`, `rsa`,
/// `rsa1` (the same RSA key in PKCS#1 form), `ec256`, `ec384`, `ed`; `extra`
/// is added at the top (before the key tables).
fn all_keys_config(extra: &str) -> String {
    format!(
        r#"realm = "orders"
issuer = "{ISS}"
audience = "{AUD}"
{extra}

[[routes.plugins.config.keys]]
kid = "hs"
secret = "{SECRET}"

[[routes.plugins.config.keys]]
kid = "rsa"
pem = '''
{rsa}'''

[[routes.plugins.config.keys]]
kid = "rsa1"
pem = '''
{rsa1}'''

[[routes.plugins.config.keys]]
kid = "ec256"
alg = "ES256"
pem = '''
{ec256}'''

[[routes.plugins.config.keys]]
kid = "ec384"
pem = '''
{ec384}'''

[[routes.plugins.config.keys]]
kid = "ed"
pem = '''
{ed}'''

[[routes.plugins.config.keys]]
kid = "hs64"
secret-base64 = "{secret64}"

[[routes.plugins.config.keys]]
jwk = {ed_jwk}
"#,
        secret64 = base64::engine::general_purpose::STANDARD.encode(SECRET),
        ed_jwk = toml_inline(&jwk(
            Algorithm::EdDSA,
            &signing_key(Algorithm::EdDSA),
            "ed-jwk"
        )),
        rsa = fixture("rsa_public.pem"),
        rsa1 = fixture("rsa_public_pkcs1.pem"),
        ec256 = fixture("ec256_public.pem"),
        ec384 = fixture("ec384_public.pem"),
        ed = fixture("ed25519_public.pem"),
    )
}

/// A JWK as a TOML inline table (its members are all strings).
fn toml_inline(jwk: &Jwk) -> String {
    let members: Vec<String> = serde_json::to_value(jwk)
        .unwrap()
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    format!("{{ {} }}", members.join(", "))
}

/// Assert that `token` gets 401 with an `invalid_token` challenge whose
/// description is `why`.
async fn assert_invalid(gw: &TestGateway, token: &str, why: &str) {
    let got = challenge(gw, token, 401).await;
    assert_eq!(
        got,
        format!("Bearer realm=\"orders\", error=\"invalid_token\", error_description=\"{why}\""),
        "token {token}"
    );
}

#[tokio::test]
async fn every_algorithm_is_accepted_with_its_key() {
    let up = Upstream::named("orders").await;
    let gw = gateway(&up, &all_keys_config("")).await;
    for (alg, kid) in ALL_ALGS {
        let token = sign(alg, Some(kid), &claims());
        let r = client()
            .get(gw.url("/orders"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{alg:?} with key {kid}");
        assert_eq!(r.text().await.unwrap(), "orders");
        // Without a kid, every key of the right family is tried.
        let token = sign(alg, None, &claims());
        assert_eq!(status_of(&gw, &token).await, 200, "{alg:?} without kid");
    }
    assert_eq!(up.seen().len(), 24);
    // Keys given as base64 secret and as an inline JWK.
    let token = sign(Algorithm::HS256, Some("hs64"), &claims());
    assert_eq!(status_of(&gw, &token).await, 200);
    let token = sign(Algorithm::EdDSA, Some("ed-jwk"), &claims());
    assert_eq!(status_of(&gw, &token).await, 200);
    // The token goes upstream untouched unless `strip-token` is set.
    let token = sign(Algorithm::ES256, Some("ec256"), &claims());
    client()
        .get(gw.url("/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.last().headers["authorization"],
        format!("Bearer {token}")
    );
}

#[tokio::test]
async fn missing_token_gets_a_bare_bearer_challenge() {
    let up = Upstream::named("orders").await;
    let gw = gateway(&up, &all_keys_config("")).await;
    let r = client().get(gw.url("/orders")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"orders\"");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    // Another scheme is no bearer token either.
    let r = client()
        .get(gw.url("/orders"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"orders\"");
    // Two sets of credentials are a malformed request (RFC 6750 §3.1).
    let token = sign(Algorithm::HS256, Some("hs"), &claims());
    let r = client()
        .get(gw.url("/orders"))
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"orders\", error=\"invalid_request\", error_description=\"more than one Authorization header\""
    );
    assert!(
        up.seen().is_empty(),
        "refused requests must not reach the upstream"
    );
}

#[tokio::test]
async fn time_issuer_audience_and_required_claims_are_enforced() {
    let up = Upstream::named("orders").await;
    let config = all_keys_config("required-claims = [\"sub\", \"scope\"]\nleeway = \"30s\"");
    let gw = gateway(&up, &config).await;
    let with = |changes: Value| {
        let mut c = claims();
        c["scope"] = json!("orders:read");
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        sign(Algorithm::RS256, Some("rsa"), &c)
    };
    assert_eq!(status_of(&gw, &with(json!({}))).await, 200);

    let n = now();
    assert_invalid(
        &gw,
        &with(json!({ "exp": n - 60 })),
        "the token has expired",
    )
    .await;
    assert_invalid(
        &gw,
        &with(json!({ "nbf": n + 120 })),
        "the token is not valid yet",
    )
    .await;
    assert_invalid(
        &gw,
        &with(json!({ "iat": n + 120 })),
        "the token was issued in the future",
    )
    .await;
    assert_invalid(
        &gw,
        &with(json!({ "exp": "tomorrow" })),
        "claim exp is not a NumericDate",
    )
    .await;
    assert_invalid(
        &gw,
        &with(json!({ "iss": "https://evil.test" })),
        "unexpected issuer",
    )
    .await;
    assert_invalid(
        &gw,
        &with(json!({ "iss": null })),
        "missing required claim iss",
    )
    .await;
    assert_invalid(
        &gw,
        &with(json!({ "aud": "billing-api" })),
        "unexpected audience",
    )
    .await;
    assert_invalid(
        &gw,
        &with(json!({ "aud": ["a", "b"] })),
        "unexpected audience",
    )
    .await;
    assert_invalid(
        &gw,
        &with(json!({ "scope": null })),
        "missing required claim scope",
    )
    .await;
    assert_invalid(
        &gw,
        &with(json!({ "sub": null })),
        "missing required claim sub",
    )
    .await;

    // Within the leeway on either side; `aud` may be a list containing ours.
    assert_eq!(status_of(&gw, &with(json!({ "exp": n - 10 }))).await, 200);
    assert_eq!(status_of(&gw, &with(json!({ "nbf": n + 10 }))).await, 200);
    assert_eq!(
        status_of(&gw, &with(json!({ "aud": ["billing-api", AUD] }))).await,
        200
    );
    assert_eq!(up.seen().len(), 4);
}

#[tokio::test]
async fn forged_confused_and_malformed_tokens_are_refused() {
    let up = Upstream::named("orders").await;
    let gw = gateway(&up, &all_keys_config("")).await;
    let c = claims();

    // Signed by another RSA key under our key's id.
    let other = EncodingKey::from_rsa_pem(fixture("rsa2_private.pem").as_bytes()).unwrap();
    assert_invalid(
        &gw,
        &sign_with(Algorithm::RS256, &other, Some("rsa"), &c),
        "invalid signature",
    )
    .await;
    // A valid token with one payload byte changed.
    let good = sign(Algorithm::ES256, Some("ec256"), &c);
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut tampered = c.clone();
    tampered["sub"] = json!("admin");
    parts[1] = b64(&tampered);
    assert_invalid(&gw, &parts.join("."), "invalid signature").await;

    // Unsigned tokens, however spelled.
    for alg in ["none", "None", "NONE"] {
        let token = format!("{}.{}.", b64(&json!({ "alg": alg, "typ": "JWT" })), b64(&c));
        assert_invalid(&gw, &token, "unsigned tokens (alg none) are not accepted").await;
    }

    // Algorithm confusion: HS256 keyed with the RSA public key's PEM bytes.
    let confused = EncodingKey::from_secret(fixture("rsa_public.pem").as_bytes());
    assert_invalid(
        &gw,
        &sign_with(Algorithm::HS256, &confused, Some("rsa"), &c),
        "no key accepts algorithm HS256",
    )
    .await;
    // Without a kid only the real HMAC secret is tried, and fails.
    assert_invalid(
        &gw,
        &sign_with(Algorithm::HS256, &confused, None, &c),
        "invalid signature",
    )
    .await;
    // An EC P-256 key verifies ES256 and nothing else.
    assert_invalid(
        &gw,
        &sign(Algorithm::ES384, Some("ec256"), &c),
        "no key accepts algorithm ES384",
    )
    .await;

    assert_invalid(
        &gw,
        &sign(Algorithm::RS256, Some("rotated-away"), &c),
        "unknown key id rotated-away",
    )
    .await;

    let header = b64(&json!({ "alg": "HS256", "kid": "hs" }));
    let payload = b64(&c);
    for (token, why) in [
        (
            "garbage".to_string(),
            "malformed token: expected three dot-separated segments",
        ),
        (
            format!("{header}.{payload}"),
            "malformed token: expected three dot-separated segments",
        ),
        (
            format!("{header}.{payload}.sig.extra"),
            "malformed token: expected three dot-separated segments",
        ),
        (
            format!("{header}.{payload}.***"),
            "malformed token: signature is not base64url",
        ),
        (
            format!("{header}.!!!.c2ln"),
            "malformed token: payload is not base64url",
        ),
        (
            format!("%%%.{payload}.c2ln"),
            "malformed token: header is not base64url",
        ),
        (
            format!("{}.{payload}.c2ln", URL_SAFE_NO_PAD.encode("not json")),
            "malformed token: header is not a JSON object",
        ),
        (
            format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode("[1,2]")),
            "malformed token: payload is not a JSON object",
        ),
        (
            format!("{}.{payload}.c2ln", b64(&json!({ "typ": "JWT" }))),
            "malformed token: header has no alg",
        ),
        (
            format!("{}.{payload}.c2ln", b64(&json!({ "alg": "XS256" }))),
            "unsupported algorithm XS256",
        ),
        (
            format!(
                "{}.{payload}.c2ln",
                b64(&json!({ "alg": "HS256", "crit": ["exp"] }))
            ),
            "critical header parameters are not supported",
        ),
    ] {
        assert_invalid(&gw, &token, why).await;
    }
    let r = client()
        .get(gw.url("/orders"))
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"orders\", error=\"invalid_token\", error_description=\"malformed token: empty\""
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
    assert!(
        up.seen().is_empty(),
        "no refused token may reach the upstream"
    );
}

#[tokio::test]
async fn claims_are_forwarded_as_headers_and_the_token_stripped() {
    let up = Upstream::named("orders").await;
    let config = format!(
        "strip-token = true\nforward-claims = {{ sub = \"x-user-id\", roles = \"x-roles\", admin = \"x-admin\", email = \"x-email\", org = \"x-org\" }}\n[[routes.plugins.config.keys]]\nsecret = \"{SECRET}\"\n"
    );
    let gw = gateway(&up, &config).await;
    let mut c = claims();
    c["roles"] = json!(["reader", "writer"]);
    c["admin"] = json!(false);
    c["org"] = json!({ "id": 7, "name": "Acme" });
    let token = sign(Algorithm::HS256, None, &c);
    let r = client()
        .get(gw.url("/orders"))
        .bearer_auth(&token)
        // A client must not be able to claim an identity the token lacks.
        .header("x-email", "ceo@example.test")
        .header("x-user-id", "someone-else")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-user-id"], "user-7");
    assert_eq!(seen.headers.get_all("x-user-id").iter().count(), 1);
    assert_eq!(seen.headers["x-roles"], "[\"reader\",\"writer\"]");
    assert_eq!(seen.headers["x-admin"], "false");
    assert_eq!(seen.headers["x-org"], "{\"id\":7,\"name\":\"Acme\"}");
    assert!(
        seen.headers.get("x-email").is_none(),
        "absent claim must clear the header"
    );
    assert!(
        seen.headers.get("authorization").is_none(),
        "strip-token keeps the token upstream"
    );
}
