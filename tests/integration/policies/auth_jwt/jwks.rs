//! Keys from a real JWKS server: every key type verifies, rotation refreshes
//! while unknown-kid floods stay bounded (one refresh per interval, resumed
//! after it, the cache expiring), fresh instances share the JWKS through the
//! key-value store, and an unreachable JWKS gives 503 without being hammered.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use jsonwebtoken::{
    Algorithm, EncodingKey,
    jwk::{Jwk, JwkSet},
};
use serde_json::{Value, json};

use crate::harness::{TestGateway, Upstream, client};

use super::{
    ALL_ALGS, challenge, claims, fixture, jwk, sign, sign_with, signing_key, status_of, toml,
};

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
