//! Listener certificates over time: reloads reach new handshakes and keep
//! sessions resumable, a bad certificate in a reload keeps the last good one
//! serving, and the expiry metric follows reloads.

use std::sync::Arc;

use http::StatusCode;
use rustls::pki_types::{CertificateDer, pem::PemObject};

use crate::harness::Upstream;

use super::{
    Issued, Pki, certs_toml, client_config, connect, gateway, gateway_full, get, metric,
    served_names,
};

#[tokio::test]
async fn certificates_reload_for_new_handshakes_keep_the_last_good_and_resume_sessions() {
    let up = Upstream::named("up").await;
    let pki = Pki::new("edge");
    let first = pki.issue("first", "first", &["api.test", "first.test"], false);
    let (gw, addr, file) = gateway(&certs_toml(&[&first]), up.addr).await;
    let client = client_config(&pki, &[b"http/1.1"], None);

    let before = connect(addr, "api.test", client.clone()).await.unwrap();
    assert_eq!(served_names(&before), ["api.test", "first.test"]);
    // TLS 1.3 session tickets reach the client on its first read.
    let warm = connect(addr, "api.test", client.clone()).await.unwrap();
    assert_eq!(get(warm, "api.test", "/").await.0, StatusCode::OK);

    // Rotate: same files, a new certificate.
    let second = pki.issue("second", "second", &["api.test", "second.test"], false);
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    gw.reload().await.unwrap_or_else(|e| panic!("{e}"));

    let after = connect(addr, "api.test", client.clone()).await.unwrap();
    // The client resumed: no certificate was sent this time, and the
    // session from before the reload was accepted.
    assert_eq!(
        after.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let fresh = connect(addr, "api.test", client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(served_names(&fresh), ["api.test", "second.test"]);
    // The connection opened before the reload still works.
    let (status, _) = get(before, "api.test", "/").await;
    assert_eq!(status, StatusCode::OK);

    // A broken rotation (key of another certificate) is refused and the
    // last good certificate keeps serving.
    let third = pki.issue("third", "third", &["api.test"], false);
    std::fs::copy(&third.cert, &first.cert).unwrap();
    let err = gw.reload().await.unwrap_err().to_string();
    assert!(
        err.contains("first.key") && err.contains("127.0.0.1"),
        "{err}"
    );
    let still = connect(addr, "api.test", client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(served_names(&still), ["api.test", "second.test"]);
    drop(file);
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_bad_certificate_in_a_reload_keeps_the_old_one_serving_under_load() {
    use std::sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let up = Upstream::named("up").await;
    let pki = Pki::new("edge");
    let first = pki.issue("first", "first", &["api.test", "first.test"], false);
    let (gw, addr, _) = gateway(&certs_toml(&[&first]), up.addr).await;
    // Every request a full handshake, so each sees the certificate in force.
    let mut config = (*client_config(&pki, &[b"h2", b"http/1.1"], None)).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failures, config) =
            (stop.clone(), ok.clone(), failures.clone(), config.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let result = async {
                    let s = connect(addr, "api.test", config.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    let names = served_names(&s);
                    let (status, body) = get(s, "api.test", "/").await;
                    if status != StatusCode::OK
                        || &body[..] != b"up"
                        || names != ["api.test", "first.test"]
                    {
                        return Err(format!("{status} {body:?} {names:?}"));
                    }
                    Ok::<_, String>(())
                }
                .await;
                match result {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    let served_more = async |by: usize| {
        let target = ok.load(Ordering::Relaxed) + by;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while ok.load(Ordering::Relaxed) < target {
            assert!(std::time::Instant::now() < deadline, "load stalled");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    served_more(20).await;

    let original = (
        std::fs::read(&first.cert).unwrap(),
        std::fs::read(&first.key).unwrap(),
    );
    let restore = || {
        std::fs::write(&first.cert, &original.0).unwrap();
        std::fs::write(&first.key, &original.1).unwrap();
    };
    let expired = pki.issue_valid("old", "old", &["api.test"], false, Some((2001, 2002)));
    let other = pki.issue("other", "other", &["api.test"], false);
    let broken: [(&dyn Fn(), &str); 3] = [
        (
            &|| {
                std::fs::copy(&expired.cert, &first.cert).unwrap();
                std::fs::copy(&expired.key, &first.key).unwrap();
            },
            "expired on 2002-01-01",
        ),
        (
            &|| {
                std::fs::copy(&other.cert, &first.cert).unwrap();
            },
            "first.key",
        ),
        (
            &|| {
                std::fs::remove_file(&first.key).unwrap();
            },
            "first.key",
        ),
    ];
    for (breaks, expect) in broken {
        breaks();
        let err = gw.reload().await.unwrap_err().to_string();
        assert!(err.contains(expect) && err.contains("127.0.0.1"), "{err}");
        served_more(20).await;
        restore();
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) >= 80);
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn certificate_expiry_is_a_metric_per_listener_and_follows_reloads() {
    use sha2::Digest;
    let up = Upstream::named("up").await;
    let pki = Pki::new("edge");
    let first = pki.issue_valid("first", "first", &["api.test"], false, Some((2020, 2090)));
    let (gw, addr, _file) = gateway_full(
        "[admin]\naddress = \"127.0.0.1:0\"",
        "",
        &certs_toml(&[&first]),
        up.addr,
    )
    .await;
    let sha = |issued: &Issued| {
        let der = CertificateDer::from_pem_file(&issued.cert).unwrap();
        hex::encode(sha2::Sha256::digest(der.as_ref()))
    };
    let series = |issued: &Issued, name: &str| {
        format!(
            "pylon_tls_certificate_expiry_seconds{{listener=\"{addr}\",name=\"{name}\",sha256=\"{}\"}}",
            sha(issued)
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    // 2090-01-01T00:00:00Z.
    let left = metric(&gw, &series(&first, "api.test"));
    assert!((left - (3_786_912_000.0 - now)).abs() < 600.0, "{left}");
    // The admin API names the bound address, not the configured port 0.
    let (status, body) = crate::harness::admin_get(&gw, "/admin/certificates").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["listeners"][0]["listener"], addr.to_string(), "{body}");
    assert_eq!(json["listeners"][0]["configured"], "127.0.0.1:0", "{body}");
    assert_eq!(
        json["listeners"][0]["certificates"][0]["sha256"],
        sha(&first),
        "{body}"
    );

    // Rotated to a certificate expiring in a week: the gauge follows.
    let soon = pki.issue_valid(
        "soon",
        "soon",
        &["api.test"],
        false,
        Some((2020, 7 * 86_400)),
    );
    std::fs::copy(&soon.cert, &first.cert).unwrap();
    std::fs::copy(&soon.key, &first.key).unwrap();
    gw.reload().await.unwrap_or_else(|e| panic!("{e}"));
    let left = metric(&gw, &series(&soon, "api.test"));
    assert!((left - 7.0 * 86_400.0).abs() < 600.0, "{left}");
    let text = gw.metrics().encode();
    assert_eq!(
        text.matches("pylon_tls_certificate_expiry_seconds{")
            .count(),
        1,
        "the replaced certificate's series is gone: {text}"
    );
    // `pylon check`'s warnings name it.
    let config = pylon::config::load(gw.config_path().unwrap()).unwrap();
    let warnings = pylon::tls::expiry_warnings(&config);
    assert!(
        warnings.iter().any(|w| w.contains("first.pem expires on")),
        "{warnings:?}"
    );
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}
