//! A route's header and query conditions (issue 19.9): repeated headers
//! compared joined, query names and values percent-decoded.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName};

use crate::config::{RequestMatch, ValueMatch};

/// Whether `headers` and `query` satisfy every header and query condition
/// of `m`.
pub(super) fn conditions_hold(m: &RequestMatch, headers: &HeaderMap, query: Option<&str>) -> bool {
    m.headers
        .iter()
        .all(|(name, want)| header_holds(headers, name, want))
        && m.query
            .iter()
            .all(|(name, want)| query_holds(query, name, want))
}

/// A header sent several times is compared as its values joined with `,`
/// (how RFC 9110 5.3 combines them, and what Envoy matches).
fn header_holds(headers: &HeaderMap, name: &HeaderName, want: &ValueMatch) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    let ValueMatch::Exact(want) = want else {
        return true;
    };
    let mut joined = Cow::Borrowed(first.as_bytes());
    for v in values {
        let j = joined.to_mut();
        j.push(b',');
        j.extend_from_slice(v.as_bytes());
    }
    *joined == *want.as_bytes()
}

/// Whether any `name=value` pair of `query` (names and values
/// percent-decoded, `+` a space) satisfies `want`. A pair that does not
/// decode (a bad escape, not UTF-8) satisfies nothing.
fn query_holds(query: Option<&str>, name: &str, want: &ValueMatch) -> bool {
    let Some(query) = query else {
        return false;
    };
    query.split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        !k.is_empty()
            && decode_component(k).is_some_and(|k| k == name)
            && match want {
                ValueMatch::Present => true,
                ValueMatch::Exact(e) => decode_component(v).is_some_and(|v| v == e.as_str()),
            }
    })
}

fn decode_component(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains(['%', '+']) {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}
