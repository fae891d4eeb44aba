//! `[upstreams.*]`: targets, pools, timeouts and upstream TLS; the
//! resilience settings are [`super::resilience`]'s.

use std::{collections::BTreeMap, path::Path, time::Duration};

use toml::Spanned;

use super::{Ctx, TOML_MAX};
use crate::config::{model::*, raw};

pub(super) fn upstreams(
    cx: &mut Ctx<'_>,
    raw: &BTreeMap<Spanned<String>, Spanned<raw::RawUpstream>>,
    base: &Path,
) -> BTreeMap<String, Upstream> {
    let mut out = BTreeMap::new();
    for (name, u) in raw {
        cx.id(name, "upstream");
        let subject = format!("upstream {:?}", name.get_ref());
        let r = u.get_ref();
        let targets = targets(cx, r, &subject);
        let (protocol, tls) = protocol_and_tls(cx, r, &subject, base);
        let max_idle_per_target =
            cx.whole(&r.max_idle_per_target, &subject, 0..=TOML_MAX, 64, || {
                "max-idle-per-target must not be negative".into()
            });
        // Envoy's circuit-breaker defaults (max_connections and
        // max_pending_requests, 1024 each).
        let max_connections = cx.count(
            &r.max_connections,
            &subject,
            "max-connections",
            1..=1_000_000,
            1024,
        );
        let max_pending = cx.count(&r.max_pending, &subject, "max-pending", 0..=1_000_000, 1024);
        out.insert(
            name.get_ref().clone(),
            Upstream {
                name: name.get_ref().clone(),
                targets,
                protocol,
                connect_timeout: cx.duration(&r.connect_timeout, &subject, Duration::from_secs(5)),
                // Envoy's dns_refresh_rate.
                dns_refresh: cx.duration(&r.dns_refresh, &subject, Duration::from_secs(5)),
                max_idle_per_target,
                max_connections,
                max_pending,
                queue_timeout: cx.duration(&r.queue_timeout, &subject, Duration::from_secs(5)),
                tls,
                resilience: super::resilience::resilience(
                    cx,
                    r,
                    &subject,
                    r.targets.get_ref().len(),
                ),
            },
        );
    }
    out
}

fn targets(cx: &mut Ctx<'_>, r: &raw::RawUpstream, subject: &str) -> Vec<String> {
    let mut targets = Vec::new();
    if r.targets.get_ref().is_empty() {
        cx.error(
            &r.targets,
            Some(subject.into()),
            "needs at least one target",
        );
    }
    for t in r.targets.get_ref() {
        let ok = t.get_ref().rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        }) && http::uri::Authority::try_from(t.get_ref().as_str()).is_ok();
        if ok {
            targets.push(t.get_ref().clone());
        } else {
            cx.error(
                t,
                Some(subject.into()),
                format!("invalid target {:?}: expected host:port", t.get_ref()),
            );
        }
    }
    targets
}

/// The protocol and the TLS settings, which constrain each other.
fn protocol_and_tls(
    cx: &mut Ctx<'_>,
    r: &raw::RawUpstream,
    subject: &str,
    base: &Path,
) -> (UpstreamProtocol, Option<UpstreamTls>) {
    let protocol = match r.protocol.as_ref().map(|p| p.get_ref().as_str()) {
        None | Some("http1") => UpstreamProtocol::Http1,
        Some("h2c") => UpstreamProtocol::H2c,
        Some("h2") => UpstreamProtocol::H2,
        Some(other) => {
            let p = r.protocol.as_ref().expect("matched Some");
            cx.error(
                p,
                Some(subject.into()),
                format!("unknown protocol {other:?} (expected \"http1\", \"h2\" or \"h2c\")"),
            );
            UpstreamProtocol::Http1
        }
    };
    let tls = r
        .tls
        .as_ref()
        .and_then(|t| upstream_tls(cx, t, subject, base));
    match (protocol, &tls, &r.protocol) {
        (UpstreamProtocol::H2, None, Some(p)) => cx.error(
            p,
            Some(subject.into()),
            "protocol \"h2\" is HTTP/2 over TLS and needs tls (for cleartext HTTP/2 use \"h2c\")",
        ),
        (UpstreamProtocol::H2c, Some(_), Some(p)) => cx.error(
            p,
            Some(subject.into()),
            "protocol \"h2c\" is cleartext HTTP/2; over TLS use protocol = \"h2\"",
        ),
        _ => {}
    }
    (protocol, tls)
}

fn upstream_tls(
    cx: &mut Ctx<'_>,
    raw: &Spanned<raw::RawUpstreamTls>,
    subject: &str,
    base: &Path,
) -> Option<UpstreamTls> {
    let r = match raw.get_ref() {
        raw::RawUpstreamTls::Enabled(false) => return None,
        raw::RawUpstreamTls::Enabled(true) => return Some(UpstreamTls::default()),
        raw::RawUpstreamTls::Settings(r) => r,
    };
    let client_cert = match (&r.client_cert, &r.client_key) {
        (Some(cert), Some(key)) => Some(CertKeyFiles {
            cert: base.join(cert.get_ref()),
            key: base.join(key.get_ref()),
        }),
        (None, None) => None,
        (Some(at), None) | (None, Some(at)) => {
            cx.error(
                at,
                Some(subject.into()),
                "client-cert and client-key go together",
            );
            None
        }
    };
    if let Some(name) = &r.server_name
        && rustls::pki_types::ServerName::try_from(name.get_ref().as_str()).is_err()
    {
        cx.error(
            name,
            Some(subject.into()),
            format!(
                "server-name {:?} is not a DNS name or IP address",
                name.get_ref()
            ),
        );
    }
    Some(UpstreamTls {
        ca: r.ca.as_ref().map(|c| base.join(c.get_ref())),
        server_name: r.server_name.as_ref().map(|n| n.get_ref().clone()),
        client_cert,
        insecure_skip_verify: r.insecure_skip_verify.unwrap_or(false),
    })
}
