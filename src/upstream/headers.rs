//! Header hygiene between client and upstream: hop-by-hop headers removed
//! (RFC 9110 §7.6.1, including those named in `Connection`), and the
//! `X-Forwarded-*` and `Via` headers set.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Remove hop-by-hop headers, including every header the `Connection`
/// header names, and `Upgrade` (a WebSocket tunnel sets its own, see
/// `crate::proxy`). `TE` is kept as `trailers` when it names trailers.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none: one pass over the names (interned standard
    // headers compare cheaply) instead of nine hashed removals.
    if !headers
        .keys()
        .any(|k| k == header::UPGRADE || HOP_BY_HOP.contains(k))
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // `TE: trailers` is the one TE value HTTP/2 allows and gRPC servers
    // may require; it goes on, as Envoy sends it (RFC 9113 §8.2.2).
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The client address as a header value, formatted once per connection.
pub fn client_ip_value(client: IpAddr) -> HeaderValue {
    HeaderValue::try_from(client.to_string()).expect("an IP address is a valid header value")
}

/// Set `X-Forwarded-For` (appending `client`, from [`client_ip_value`]),
/// `X-Forwarded-Proto`, `X-Forwarded-Host` and `Via` on a request going
/// upstream.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    scheme: &'static str,
    host: Option<&HeaderValue>,
    version: http::Version,
) {
    let prev = headers
        .get(&X_FORWARDED_FOR)
        .map(HeaderValue::as_bytes)
        .filter(|v| !v.trim_ascii().is_empty());
    let xff = match prev {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        None => Some(client.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    append_via(headers, version);
}

/// Append this hop to `Via`.
pub fn append_via(headers: &mut HeaderMap, version: http::Version) {
    let via = match version {
        http::Version::HTTP_10 => "1.0 pylon",
        http::Version::HTTP_2 => "2 pylon",
        _ => "1.1 pylon",
    };
    headers.append(header::VIA, HeaderValue::from_static(via));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip, Trailers"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn forwarded_for_appends_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(
            &mut h,
            &client_ip_value("127.0.0.1".parse().unwrap()),
            "http",
            Some(&HeaderValue::from_static("api.test")),
            http::Version::HTTP_11,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.test");
        assert_eq!(h["via"], "1.1 pylon");
    }
}
