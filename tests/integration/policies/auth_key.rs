//! Tests of the `auth-key` policy plugin through the running gateway: keys
//! in a header or the query, configured by hash or seeded into the gateway's
//! key-value store, against a real upstream that records what passes.

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{TestGateway, Upstream, client, one_plugin_route, parse, start_error};

const ACME_KEY: &str = "acme-live-3f9a1c77d2";
const GLOBEX_KEY: &str = "globex-live-88b20e4a19";

fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// TOML for a gateway with upstream `u` at `up` and the `auth-key` plugin
/// (with `def` lines in its definition) on route `r` for every path, whose
/// config is the `[routes.plugins.config]` TOML `config`.
fn toml(up: &str, def: &str, config: &str) -> String {
    one_plugin_route(up, "auth-key", def, config)
}

async fn gateway(up: &Upstream, def: &str, config: &str) -> TestGateway {
    TestGateway::start(&toml(&up.addr.to_string(), def, config)).await
}

/// A config knowing the acme and globex keys by hash; `extra` is added.
fn keys_config(extra: &str) -> String {
    format!(
        "{extra}\nkeys = [{{ consumer = \"acme\", sha256 = \"{}\" }}, {{ consumer = \"globex\", sha256 = \"{}\" }}]\n",
        sha256_hex(ACME_KEY),
        sha256_hex(GLOBEX_KEY).to_uppercase(),
    )
}

async fn error_of(r: reqwest::Response) -> String {
    let body: Value = r.json().await.unwrap();
    body["error_description"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn header_key_passes_with_its_consumer_and_is_stripped() {
    let up = Upstream::named("ok").await;
    let gw = gateway(&up, "", &keys_config("")).await;
    for (key, consumer) in [(ACME_KEY, "acme"), (GLOBEX_KEY, "globex")] {
        let r = client()
            .get(gw.url("/things?x=1"))
            .header("x-api-key", key)
            // A client must not be able to pick its consumer.
            .header("x-consumer", "root")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
        let seen = up.last();
        assert_eq!(seen.headers["x-consumer"], consumer);
        assert_eq!(seen.headers.get_all("x-consumer").iter().count(), 1);
        assert!(
            seen.headers.get("x-api-key").is_none(),
            "the key must not reach the upstream"
        );
        assert_eq!(seen.uri, "/things?x=1");
    }
}

#[tokio::test]
async fn missing_key_is_401_with_an_apikey_challenge() {
    let up = Upstream::named("ok").await;
    let gw = gateway(&up, "", &keys_config("realm = \"things\"")).await;
    let r = client().get(gw.url("/things")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "ApiKey realm=\"things\"");
    assert_eq!(error_of(r).await, "an API key is required");
    // A blank key is no key, and the key in the wrong place is not looked at.
    let r = client()
        .get(gw.url("/things"))
        .header("x-api-key", "  ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(gw.url(&format!("/things?x-api-key={ACME_KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn unknown_and_revoked_keys_are_403() {
    let up = Upstream::named("ok").await;
    let config = keys_config(&format!("revoked = [\"{}\"]", sha256_hex(GLOBEX_KEY)));
    let gw = gateway(&up, "", &config).await;
    let send = |key: &'static str| {
        client()
            .get(gw.url("/things"))
            .header("x-api-key", key)
            .send()
    };

    let r = send("acme-live-3f9a1c77d3").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("www-authenticate").is_none());
    assert_eq!(error_of(r).await, "unknown API key");
    // Revocation wins over the key's own entry.
    let r = send(GLOBEX_KEY).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_of(r).await, "revoked API key");
    assert!(up.seen().is_empty());

    assert_eq!(send(ACME_KEY).await.unwrap().status(), 200);
    // Keys are compared exactly: no trimming inside, no case folding.
    assert_eq!(send("ACME-LIVE-3F9A1C77D2").await.unwrap().status(), 403);
}

#[tokio::test]
async fn query_key_is_read_decoded_and_removed() {
    let up = Upstream::named("ok").await;
    let key = "k+y/with=odd&chars";
    let config = format!(
        "in = \"query\"\nkeys = [{{ consumer = \"odd\", sha256 = \"{}\" }}, {{ consumer = \"acme\", sha256 = \"{}\" }}]",
        sha256_hex(key),
        sha256_hex(ACME_KEY)
    );
    let gw = gateway(&up, "", &config).await;

    let r = client()
        .get(gw.url(&format!(
            "/things?a=1&api_key={ACME_KEY}&b=two%20words&api_key=again"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(
        seen.uri, "/things?a=1&b=two%20words",
        "other parameters stay verbatim"
    );
    assert_eq!(seen.headers["x-consumer"], "acme");

    let r = client()
        .get(gw.url(&format!("/things?api_key={ACME_KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().uri, "/things", "an emptied query is removed");

    // Percent-encoding is decoded before hashing.
    let r = client()
        .get(gw.url("/things?api_key=k%2By%2Fwith%3Dodd%26chars"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["x-consumer"], "odd");

    let r = client().get(gw.url("/things?a=1")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "ApiKey realm=\"pylon\"");
    let r = client()
        .get(gw.url("/things"))
        .header("x-api-key", ACME_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a header key does not count when the query is configured"
    );
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn custom_names_and_strip_key_false_keep_the_key() {
    let up = Upstream::named("ok").await;
    let config =
        keys_config("name = \"X-Token\"\nconsumer-header = \"x-client\"\nstrip-key = false");
    let gw = gateway(&up, "", &config).await;
    let r = client()
        .get(gw.url("/things"))
        .header("x-token", ACME_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-client"], "acme");
    assert_eq!(seen.headers["x-token"], ACME_KEY);
    assert!(seen.headers.get("x-consumer").is_none());
}

#[tokio::test]
async fn kv_lookup_finds_consumers_and_revocations_seeded_in_the_store() {
    let up = Upstream::named("ok").await;
    let gw = gateway(
        &up,
        "capabilities = [\"kv\"]",
        &keys_config("kv-lookup = true"),
    )
    .await;
    let kv = gw.gateway.shared().kv.clone();
    // The host namespaces every plugin's keys as `<plugin name>:`.
    let entry = |key: &str| format!("auth-key:apikey:{}", sha256_hex(key));
    let send = |key: &'static str| {
        client()
            .get(gw.url("/things"))
            .header("x-api-key", key)
            .send()
    };
    const INITECH: &str = "initech-live-0001";

    assert_eq!(send(INITECH).await.unwrap().status(), 403, "not seeded yet");
    kv.set(&entry(INITECH), Bytes::from_static(b"initech"), None)
        .await
        .unwrap();
    assert_eq!(send(INITECH).await.unwrap().status(), 200);
    assert_eq!(up.last().headers["x-consumer"], "initech");

    // Configured keys still work beside the store.
    assert_eq!(send(ACME_KEY).await.unwrap().status(), 200);
    assert_eq!(up.last().headers["x-consumer"], "acme");

    kv.set(&entry(INITECH), Bytes::from_static(b"revoked"), None)
        .await
        .unwrap();
    let r = send(INITECH).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_of(r).await, "revoked API key");

    kv.delete(&entry(INITECH)).await.unwrap();
    let r = send(INITECH).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_of(r).await, "unknown API key");

    // Another plugin's namespace is not this plugin's.
    kv.set(
        &format!("other:apikey:{}", sha256_hex(INITECH)),
        Bytes::from_static(b"x"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(send(INITECH).await.unwrap().status(), 403);
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn kv_lookup_without_the_kv_capability_is_503() {
    let up = Upstream::named("ok").await;
    let gw = gateway(&up, "", "kv-lookup = true").await;
    let r = client()
        .get(gw.url("/things"))
        .header("x-api-key", ACME_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(error_of(r).await, "the API key store is unavailable");
    assert!(up.seen().is_empty());
}

/// The message `Gateway::start` gives for an auth-key config `config`.
async fn rejection(config: &str) -> String {
    let cfg = parse(&toml("127.0.0.1:9", "", config)).unwrap_or_else(|e| panic!("{e}"));
    start_error(cfg)
        .await
        .unwrap_or_else(|| panic!("config accepted: {config}"))
}

#[tokio::test]
async fn invalid_configs_are_rejected_naming_the_key() {
    let hash = sha256_hex(ACME_KEY);
    for (config, needle) in [
        (
            "keys = [{ consumer = \"acme\", sha256 = \"abc\" }]".to_string(),
            "invalid auth-key config: keys[0].sha256: expected 64 hexadecimal digits (the SHA-256 of the key), got \"abc\"",
        ),
        (
            format!("keys = [{{ consumer = \"\", sha256 = \"{hash}\" }}]"),
            "keys[0].consumer: \"\" must be a non-empty header value",
        ),
        (
            format!(
                "keys = [{{ consumer = \"a\", sha256 = \"{hash}\" }}, {{ consumer = \"b\", sha256 = \"{hash}\" }}]"
            ),
            "keys[1].sha256: the same key is already configured for consumer \"a\"",
        ),
        (
            format!("kv-lookup = true\nrevoked = [\"{}\"]", &hash[..63]),
            "revoked[0]: expected 64 hexadecimal digits",
        ),
        (
            "in = \"cookie\"\nkv-lookup = true".to_string(),
            "unknown variant `cookie`, expected `header` or `query`",
        ),
        (
            "kv-lookup = true\nname = \"x api key\"".to_string(),
            "name: \"x api key\" is not a valid header name",
        ),
        (
            "kv-lookup = true\nconsumer-header = \"\"".to_string(),
            "consumer-header: \"\" is not a valid header name",
        ),
        (
            "realm = \"x\"".to_string(),
            "invalid auth-key config: no keys: set `keys`, `kv-lookup = true`, or both",
        ),
        (
            "kv-lookup = true\nheader = \"x\"".to_string(),
            "unknown field `header`",
        ),
    ] {
        let err = rejection(&config).await;
        assert!(err.contains("route \"r\", plugin \"auth-key\""), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
}
