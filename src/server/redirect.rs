//! `redirect-to-https`: the 308 a cleartext listener answers every request
//! with, and the host check that keeps `Location` to the host the client
//! asked for.

use crate::config::HttpsRedirect;

/// The 308 a `redirect-to-https` listener answers every request with: the
/// host the client asked for (its port replaced by `to.port`, or dropped
/// for 443), path and query, over `https`. 308 rather than 301: the client
/// repeats the same method and body. A request whose host is missing,
/// repeated or not a plain host (see [`redirect_host`]) gets 400: nothing
/// else could go in `Location` without redirecting somewhere the client did
/// not ask for.
pub(super) fn https_redirect<B>(
    req: &http::Request<B>,
    to: HttpsRedirect,
) -> http::Response<crate::body::Body> {
    let bad = || {
        crate::error::error_response(
            http::StatusCode::BAD_REQUEST,
            "no valid host to redirect to",
        )
    };
    // The request target's authority wins over `Host` (HTTP/2's
    // `:authority`, an HTTP/1.1 absolute-form target; RFC 9112 3.2.2).
    let asked = match req.uri().authority() {
        Some(a) => a.as_str().as_bytes(),
        None => {
            let mut hosts = req.headers().get_all(http::header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(h), None) => h.as_bytes(),
                _ => return bad(),
            }
        }
    };
    let Some(host) = redirect_host(asked) else {
        return bad();
    };
    // An asterisk-form (`OPTIONS *`) target has no path to keep.
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let location = match to.port {
        Some(port) => format!("https://{host}:{port}{path}"),
        None => format!("https://{host}{path}"),
    };
    let Ok(location) = http::HeaderValue::try_from(location) else {
        return bad();
    };
    let mut resp = http::Response::new(crate::body::empty());
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(http::header::LOCATION, location);
    resp.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from_static("0"),
    );
    resp
}

/// The host of `authority` (`Host` syntax: `uri-host [":" port]`) if it
/// is one a redirect may name, without its port: a DNS-style name (letters,
/// digits, `-`, `_`, `.`), an IPv4 address or a bracketed IPv6 address,
/// with at most a port of 1 to 65535. Anything else (userinfo as in
/// `evil@host`, percent-escapes, a path, a port out of range, an IPv6
/// zone) is refused rather than cleaned up, so what the client sent is
/// either the host in `Location` or a 400.
fn redirect_host(authority: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(authority).ok()?;
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (&text[..inside.len() + 2], port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        if host.is_empty() || host.len() > 253 || !host.bytes().all(plain) {
            return None;
        }
        (host, port)
    };
    match port {
        // `Host: example.com:` is allowed (port = *DIGIT).
        None | Some("") => Some(host),
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            matches!(p.parse::<u16>(), Ok(1..)).then_some(host)
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(target: &str, hosts: &[&str], port: Option<u16>) -> (u16, Option<String>) {
        let mut req = http::Request::builder().uri(target);
        for h in hosts {
            req = req.header(http::header::HOST, *h);
        }
        let resp = https_redirect(&req.body(()).unwrap(), HttpsRedirect { port });
        let location = resp
            .headers()
            .get(http::header::LOCATION)
            .map(|l| l.to_str().unwrap().to_owned());
        (resp.status().as_u16(), location)
    }

    #[test]
    fn the_redirect_keeps_host_path_and_query_and_sets_the_port() {
        let ok = |l: &str| (308, Some(l.to_owned()));
        assert_eq!(
            redirect("/a/b?x=1&y", &["api.test:8080"], Some(8443)),
            ok("https://api.test:8443/a/b?x=1&y")
        );
        assert_eq!(redirect("/", &["api.test"], None), ok("https://api.test/"));
        assert_eq!(
            redirect("/p", &["[::1]:80"], Some(8443)),
            ok("https://[::1]:8443/p")
        );
        assert_eq!(
            redirect("/p", &["10.0.0.1:"], None),
            ok("https://10.0.0.1/p")
        );
        // A double slash stays a path: the host is fixed before it.
        assert_eq!(
            redirect("//evil.test/x", &["api.test"], None),
            ok("https://api.test//evil.test/x")
        );
        // The absolute-form target's authority wins over Host.
        assert_eq!(
            redirect("http://api.test:80/x", &["other.test"], None),
            ok("https://api.test/x")
        );
        assert_eq!(redirect("*", &["api.test"], None), ok("https://api.test/"));
    }

    #[test]
    fn a_host_that_is_not_plainly_a_host_gets_400() {
        for hosts in [
            &[][..],
            &["api.test", "evil.test"][..],
            &[""],
            &["evil.test@api.test"],
            &["api.test:99999"],
            &["api.test:0"],
            &["api.test:443:1"],
            &["api.test:+443"],
            &["api.test/evil"],
            &["api.test%2fevil.test"],
            &["api.test\\evil.test"],
            &["[::1"],
            &["[::1]x"],
            &["[fe80::1%25eth0]"],
            &["[not-ipv6]"],
            &["a b"],
        ] {
            assert_eq!(redirect("/", hosts, None), (400, None), "{hosts:?}");
        }
        let long = "a".repeat(254);
        assert_eq!(redirect("/", &[long.as_str()], None), (400, None));
        assert_eq!(
            redirect("http://user@api.test/", &["api.test"], None),
            (400, None)
        );
    }
}
