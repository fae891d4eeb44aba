//! `[[listeners]]` (addresses, connection limits, TLS) and `[admin]`.

use std::{collections::HashSet, net::SocketAddr, path::Path, time::Duration};

use toml::Spanned;

use super::{Ctx, TOML_MAX};
use crate::config::{Diagnostic, model::*, raw};

const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

pub(super) fn listeners(
    cx: &mut Ctx<'_>,
    raw: &[Spanned<raw::RawListener>],
    base: &Path,
) -> Vec<Listener> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for l in raw {
        let r = l.get_ref();
        let subject = format!("listener {:?}", r.address.get_ref());
        let address = match r.address.get_ref().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                cx.error(
                    &r.address,
                    None,
                    format!(
                        "invalid listener address {:?}: expected ip:port, e.g. \"0.0.0.0:8080\"",
                        r.address.get_ref()
                    ),
                );
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        };
        if address.port() != 0 && !seen.insert(address) {
            cx.error(
                &r.address,
                Some(subject.clone()),
                "address is used by another listener",
            );
        }
        let max_header_bytes = cx.size(&r.max_header_size, &subject, 64 << 10);
        if max_header_bytes < 8192
            && let Some(s) = &r.max_header_size
        {
            cx.error(
                s,
                Some(subject.clone()),
                "max-header-size must be at least 8KiB",
            );
        }
        out.push(Listener {
            address,
            max_header_bytes,
            header_timeout: cx.duration(&r.header_timeout, &subject, Duration::from_secs(10)),
            http2: r.http2.unwrap_or(true),
            limits: connection_limits(cx, r, &subject),
            tls: r.tls.as_ref().map(|t| listener_tls(cx, t, &subject, base)),
            redirect_to_https: https_redirect(cx, r, &subject),
            hsts: hsts(cx, r, &subject),
        });
    }
    if raw.is_empty() {
        cx.problems.push(Diagnostic {
            location: None,
            subject: None,
            message: "no [[listeners]]: add one, e.g. [[listeners]] address = \"127.0.0.1:8080\""
                .into(),
        });
    }
    out
}

fn connection_limits(cx: &mut Ctx<'_>, r: &raw::RawListener, subject: &str) -> ConnectionLimits {
    let d = ConnectionLimits::default();
    let max_connections = cx.count(
        &r.max_connections,
        subject,
        "max-connections",
        1..=10_000_000,
        d.max_connections,
    );
    let max_requests_in_flight = cx.count(
        &r.max_requests_in_flight,
        subject,
        "max-requests-in-flight",
        1..=10_000_000,
        d.max_requests_in_flight,
    );
    let max_requests_per_connection = cx.count(
        &r.max_requests_per_connection,
        subject,
        "max-requests-per-connection",
        0..=TOML_MAX,
        d.max_requests_per_connection as usize,
    ) as u64;
    let http2_max_concurrent_streams = cx.count(
        &r.http2_max_concurrent_streams,
        subject,
        "http2-max-concurrent-streams",
        1..=65_536,
        d.http2_max_concurrent_streams as usize,
    ) as u32;
    let http2_max_resets = cx.count(
        &r.http2_max_resets,
        subject,
        "http2-max-resets",
        1..=TOML_MAX,
        d.http2_max_resets as usize,
    ) as u64;
    let http2_max_resets_per_second = cx.count(
        &r.http2_max_resets_per_second,
        subject,
        "http2-max-resets-per-second",
        1..=TOML_MAX,
        d.http2_max_resets_per_second as usize,
    ) as u64;
    let http2_max_send_buffer = cx.size(&r.http2_max_send_buffer, subject, d.http2_max_send_buffer);
    if let Some(s) = &r.http2_max_send_buffer
        && !(1024..=(16 << 20)).contains(&http2_max_send_buffer)
    {
        cx.error(
            s,
            Some(subject.to_owned()),
            "http2-max-send-buffer must be between 1KiB and 16MiB",
        );
    }
    ConnectionLimits {
        max_connections,
        max_requests_in_flight,
        max_requests_per_connection,
        idle_timeout: cx.duration(&r.idle_timeout, subject, d.idle_timeout),
        send_timeout: cx.duration(&r.send_timeout, subject, d.send_timeout),
        stream_idle_timeout: cx.duration(&r.stream_idle_timeout, subject, d.stream_idle_timeout),
        http2_max_concurrent_streams,
        http2_max_send_buffer: http2_max_send_buffer.clamp(1024, 16 << 20),
        http2_max_resets,
        http2_max_resets_per_second,
    }
}

pub(super) fn admin(cx: &mut Ctx<'_>, raw: &Spanned<raw::RawAdmin>) -> Admin {
    let r = raw.get_ref();
    let address = match &r.address {
        None => DEFAULT_ADMIN.parse().expect("constant address"),
        Some(a) => a.get_ref().parse().unwrap_or_else(|_| {
            cx.error(
                a,
                Some("admin".into()),
                format!("invalid address {:?}: expected ip:port", a.get_ref()),
            );
            DEFAULT_ADMIN.parse().expect("constant address")
        }),
    };
    let token = r.token.as_ref().and_then(|t| {
        if t.get_ref().len() < 16 {
            cx.error(
                t,
                Some("admin".into()),
                "token must be at least 16 characters",
            );
            None
        } else {
            Some(t.get_ref().clone())
        }
    });
    Admin { address, token }
}

fn https_redirect(cx: &mut Ctx<'_>, r: &raw::RawListener, subject: &str) -> Option<HttpsRedirect> {
    let raw = r.redirect_to_https.as_ref()?;
    if r.tls.is_some() {
        cx.error(
            raw,
            Some(subject.into()),
            "redirect-to-https is for a cleartext listener; this one has tls",
        );
        return None;
    }
    match raw.get_ref() {
        raw::RawRedirect::Enabled(false) => None,
        raw::RawRedirect::Enabled(true) => Some(HttpsRedirect { port: None }),
        raw::RawRedirect::Port(p) => match u16::try_from(*p) {
            Ok(443) => Some(HttpsRedirect { port: None }),
            Ok(port) if port > 0 => Some(HttpsRedirect { port: Some(port) }),
            _ => {
                cx.error(
                    raw,
                    Some(subject.into()),
                    "redirect-to-https must be true or the HTTPS port (1-65535)",
                );
                None
            }
        },
    }
}

fn hsts(cx: &mut Ctx<'_>, r: &raw::RawListener, subject: &str) -> Option<http::HeaderValue> {
    let raw = r.hsts.as_ref()?;
    if r.tls.is_none() {
        cx.error(
            raw,
            Some(subject.into()),
            "hsts is for a TLS listener (browsers ignore it over cleartext)",
        );
        return None;
    }
    let text = raw.get_ref();
    let max_age = text
        .split(';')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .is_some_and(|v| v.parse::<u64>().is_ok());
    match http::HeaderValue::from_str(text) {
        Ok(v) if max_age => Some(v),
        _ => {
            cx.error(
                raw,
                Some(subject.into()),
                format!(
                    "hsts {text:?} is not a Strict-Transport-Security value: expected e.g. \"max-age=31536000; includeSubDomains\""
                ),
            );
            None
        }
    }
}

fn listener_tls(
    cx: &mut Ctx<'_>,
    raw: &Spanned<raw::RawListenerTls>,
    subject: &str,
    base: &Path,
) -> ListenerTls {
    let r = raw.get_ref();
    if r.certificates.get_ref().is_empty() {
        cx.error(
            &r.certificates,
            Some(subject.into()),
            "tls needs at least one certificate: certificates = [{ cert = \"…\", key = \"…\" }]",
        );
    }
    let certificates = r
        .certificates
        .get_ref()
        .iter()
        .map(|c| CertKeyFiles {
            cert: base.join(c.get_ref().cert.get_ref()),
            key: base.join(c.get_ref().key.get_ref()),
        })
        .collect();
    let unknown_sni = match r.unknown_sni.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "default")) => UnknownSni::Default,
        Some((_, "refuse")) => UnknownSni::Refuse,
        Some((s, other)) => {
            cx.error(
                s,
                Some(subject.into()),
                format!("unknown-sni must be \"default\" or \"refuse\", not {other:?}"),
            );
            UnknownSni::Default
        }
    };
    let mode = match r.client_auth.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None => None,
        Some((_, "required")) => Some(ClientAuthMode::Required),
        Some((_, "optional")) => Some(ClientAuthMode::Optional),
        Some((s, other)) => {
            cx.error(
                s,
                Some(subject.into()),
                format!("client-auth must be \"required\" or \"optional\", not {other:?}"),
            );
            None
        }
    };
    let client_auth = match (mode, &r.client_ca) {
        (Some(mode), Some(ca)) => Some(ClientAuth {
            mode,
            ca: base.join(ca.get_ref()),
        }),
        (Some(_), None) => {
            cx.error(
                raw,
                Some(subject.into()),
                "client-auth needs client-ca, the PEM bundle of CAs that sign client certificates",
            );
            None
        }
        (None, Some(ca)) => {
            cx.error(
                ca,
                Some(subject.into()),
                "client-ca without client-auth: set client-auth = \"required\" or \"optional\"",
            );
            None
        }
        (None, None) => None,
    };
    ListenerTls {
        certificates,
        unknown_sni,
        client_auth,
    }
}
