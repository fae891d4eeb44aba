//! Tests of the `auth-jwt` policy plugin through the running gateway: tokens
//! signed on the test side by an independent JWT library (`jsonwebtoken`)
//! with the fixed keys of tests/fixtures/jwt/, a real upstream recording what
//! passes, and a real JWKS server counting its fetches.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, JwkSet},
};
use serde_json::{Value, json};

use crate::harness::{TestGateway, Upstream, client, parse, plugin, root, start_error};

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

fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
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

/// A JWKS server whose document the test can replace; its `seen()` counts
/// the fetches.
async fn jwks_server(doc: Arc<Mutex<Value>>, status: u16) -> Upstream {
    Upstream::with(move |_| {
        let body = doc.lock().unwrap().to_string();
        async move {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        }
    })
    .await
}

/// The public JWK of the test's `alg` signing key, with id `kid`.
fn jwk(alg: Algorithm, key: &EncodingKey, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    jwk
}

fn jwks(keys: Vec<Jwk>) -> Value {
    serde_json::to_value(JwkSet { keys }).unwrap()
}

/// A gateway whose auth-jwt gets keys from the JWKS server `idp` only.
async fn jwks_gateway(
    up: &Upstream,
    idp: &Upstream,
    def_extra: &str,
    jwks_extra: &str,
) -> TestGateway {
    let config =
        format!("jwks = {{ upstream = \"idp\", path = \"/.well-known/jwks.json\"{jwks_extra} }}\n");
    let def = format!(
        "capabilities = [\"clock\", \"kv\", \"http\", \"log\"]\nhttp-upstreams = [\"idp\"]\n{def_extra}"
    );
    let idp_upstream = format!("[upstreams.idp]\ntargets = [\"{}\"]\n", idp.addr);
    TestGateway::start(&toml(&up.addr.to_string(), &def, &config, &idp_upstream)).await
}

fn rsa_key() -> EncodingKey {
    signing_key(Algorithm::RS256)
}

fn rsa2_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture("rsa2_private.pem").as_bytes()).unwrap()
}

#[tokio::test]
async fn jwks_keys_of_every_type_verify() {
    let up = Upstream::named("orders").await;
    let keys = ALL_ALGS
        .iter()
        .filter(|(alg, kid)| *kid != "rsa1" && !matches!(alg, Algorithm::HS384 | Algorithm::HS512))
        .map(|&(alg, kid)| jwk(alg, &signing_key(alg), &format!("{kid}-{alg:?}")))
        .collect();
    let mut doc = jwks(keys);
    // Keys the plugin cannot use are skipped, not fatal to the set.
    let mut enc = serde_json::to_value(jwk(Algorithm::RS256, &rsa2_key(), "enc")).unwrap();
    enc["use"] = json!("enc");
    enc.as_object_mut().unwrap().remove("alg");
    let keys = doc["keys"].as_array_mut().unwrap();
    keys.push(enc);
    keys.push(json!({ "kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521" }));
    keys.push(json!({ "kty": "weird", "kid": "weird" }));
    keys.push(json!("not an object"));
    let idp = jwks_server(Arc::new(Mutex::new(doc)), 200).await;
    let gw = jwks_gateway(&up, &idp, "", "").await;
    for (alg, kid) in ALL_ALGS {
        if kid == "rsa1" || matches!(alg, Algorithm::HS384 | Algorithm::HS512) {
            continue;
        }
        let token = sign(alg, Some(&format!("{kid}-{alg:?}")), &claims());
        assert_eq!(status_of(&gw, &token).await, 200, "{alg:?}");
    }
    // Each JWK carries its `alg`, which binds the key to it.
    let token = sign(Algorithm::PS256, Some("rsa-RS256"), &claims());
    assert_eq!(status_of(&gw, &token).await, 401);
    assert_eq!(idp.seen().len(), 1, "one fetch serves every key");
    assert_eq!(idp.last().uri.path(), "/.well-known/jwks.json");
    // A skipped key is unknown (so it costs one refresh): signed by its
    // private key, the token is still refused.
    let token = sign_with(Algorithm::RS256, &rsa2_key(), Some("enc"), &claims());
    let got = challenge(&gw, &token, 401).await;
    assert!(
        got.ends_with("error_description=\"unknown key id enc\""),
        "{got}"
    );
    assert_eq!(idp.seen().len(), 2);
}

#[tokio::test]
async fn jwks_rotation_refreshes_and_unknown_kid_floods_stay_bounded() {
    let up = Upstream::named("orders").await;
    let doc = Arc::new(Mutex::new(jwks(vec![jwk(
        Algorithm::RS256,
        &rsa_key(),
        "k1",
    )])));
    let idp = jwks_server(doc.clone(), 200).await;
    let gw = jwks_gateway(
        &up,
        &idp,
        "",
        ", cache-ttl = \"1h\", min-refresh-interval = \"1h\"",
    )
    .await;

    let k1 = sign(Algorithm::RS256, Some("k1"), &claims());
    assert_eq!(status_of(&gw, &k1).await, 200);
    assert_eq!(status_of(&gw, &k1).await, 200);
    assert_eq!(idp.seen().len(), 1, "the set is cached");

    // The identity provider rotates: k2 appears, k1 stays for a while.
    doc.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::to_value(jwk(Algorithm::RS256, &rsa2_key(), "k2")).unwrap());
    let k2 = sign_with(Algorithm::RS256, &rsa2_key(), Some("k2"), &claims());
    assert_eq!(
        status_of(&gw, &k2).await,
        200,
        "a new kid triggers a refresh"
    );
    assert_eq!(idp.seen().len(), 2);
    assert_eq!(status_of(&gw, &k1).await, 200);

    // A flood of made-up kids, concurrently: the refresh budget of this
    // interval is spent, so none of them reaches the identity provider.
    let flood = (0..40).map(|i| {
        let gw_url = gw.url("/orders");
        let token = sign(Algorithm::RS256, Some(&format!("bogus-{i}")), &claims());
        async move {
            let r = client()
                .get(gw_url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .to_string(),
            )
        }
    });
    for (i, (status, challenge)) in futures::future::join_all(flood)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(status, 401);
        assert!(
            challenge.contains(&format!("error_description=\"unknown key id bogus-{i}\"")),
            "{challenge}"
        );
    }
    assert_eq!(
        idp.seen().len(),
        2,
        "unknown kids must not trigger more fetches"
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_refreshes_once_per_interval() {
    let up = Upstream::named("orders").await;
    let doc = Arc::new(Mutex::new(jwks(vec![jwk(
        Algorithm::RS256,
        &rsa_key(),
        "k1",
    )])));
    let idp = jwks_server(doc.clone(), 200).await;
    let gw = jwks_gateway(&up, &idp, "", ", min-refresh-interval = \"1h\"").await;
    assert_eq!(
        status_of(&gw, &sign(Algorithm::RS256, Some("k1"), &claims())).await,
        200
    );
    assert_eq!(idp.seen().len(), 1);

    let flood = (0..40).map(|i| {
        let url = gw.url("/orders");
        let token = sign(Algorithm::RS256, Some(&format!("bogus-{i}")), &claims());
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures::future::join_all(flood).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(
        idp.seen().len(),
        2,
        "exactly one refresh for the whole flood"
    );
}

#[tokio::test]
async fn refreshes_resume_after_the_interval_and_the_cache_expires() {
    let up = Upstream::named("orders").await;
    let doc = Arc::new(Mutex::new(jwks(vec![jwk(
        Algorithm::RS256,
        &rsa_key(),
        "k1",
    )])));
    let idp = jwks_server(doc.clone(), 200).await;
    let gw = jwks_gateway(
        &up,
        &idp,
        "",
        ", cache-ttl = \"1h\", min-refresh-interval = \"1s\"",
    )
    .await;
    assert_eq!(
        status_of(&gw, &sign(Algorithm::RS256, Some("k1"), &claims())).await,
        200
    );

    let start = Instant::now();
    assert_eq!(
        status_of(&gw, &sign(Algorithm::RS256, Some("x"), &claims())).await,
        401
    );
    assert_eq!(
        status_of(&gw, &sign(Algorithm::RS256, Some("y"), &claims())).await,
        401
    );
    if start.elapsed() < Duration::from_millis(900) {
        assert_eq!(idp.seen().len(), 2, "one refresh within the interval");
    }
    // The bound is time-based: nothing to wait on but the clock.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(start.elapsed())).await;
    let before = idp.seen().len();
    assert_eq!(
        status_of(&gw, &sign(Algorithm::RS256, Some("z"), &claims())).await,
        401
    );
    assert_eq!(
        idp.seen().len(),
        before + 1,
        "a new interval allows a new refresh"
    );

    // With a short cache TTL a known kid is fetched again once it expires.
    let gw = jwks_gateway(
        &up,
        &idp,
        "",
        ", cache-ttl = \"300ms\", min-refresh-interval = \"1h\"",
    )
    .await;
    let before = idp.seen().len();
    let k1 = sign(Algorithm::RS256, Some("k1"), &claims());
    assert_eq!(status_of(&gw, &k1).await, 200);
    assert_eq!(idp.seen().len(), before + 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(status_of(&gw, &k1).await, 200);
    assert_eq!(
        idp.seen().len(),
        before + 2,
        "an expired set is fetched again"
    );
}

#[tokio::test]
async fn fresh_instances_share_the_jwks_through_the_kv_store() {
    let up = Upstream::named("orders").await;
    let doc = Arc::new(Mutex::new(jwks(vec![jwk(
        Algorithm::ES256,
        &signing_key(Algorithm::ES256),
        "e1",
    )])));
    let idp = jwks_server(doc, 200).await;
    let gw = jwks_gateway(&up, &idp, "isolation = \"fresh\"", "").await;
    let token = sign(Algorithm::ES256, Some("e1"), &claims());
    for _ in 0..5 {
        assert_eq!(status_of(&gw, &token).await, 200);
    }
    assert_eq!(
        idp.seen().len(),
        1,
        "every fresh instance must find the set in kv"
    );
}

#[tokio::test]
async fn unreachable_jwks_gives_503_and_is_not_hammered() {
    let up = Upstream::named("orders").await;
    let idp = jwks_server(Arc::new(Mutex::new(json!({ "error": "down" }))), 500).await;
    let gw = jwks_gateway(&up, &idp, "", ", min-refresh-interval = \"1h\"").await;
    let token = sign(Algorithm::RS256, Some("k1"), &claims());
    for _ in 0..3 {
        let r = client()
            .get(gw.url("/orders"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "temporarily_unavailable");
    }
    assert_eq!(
        idp.seen().len(),
        1,
        "a failed fetch is not retried within the interval"
    );
    assert!(up.seen().is_empty());
}

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
