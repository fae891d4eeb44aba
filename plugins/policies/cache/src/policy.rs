//! HTTP caching rules (RFC 9111, as a shared cache): `Cache-Control`
//! directives, freshness lifetime, `Vary`, and HTTP dates. Pure functions
//! over header lists and values, so they are unit-tested natively.

use pylon_plugin_sdk::Header;

/// The parsed `Cache-Control` directives of one message (every field line
/// combined). Unknown directives are ignored; for repeated ones the first
/// wins.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    /// `max-age`, seconds; `Some(0)` for an invalid value (RFC 9111 §4.2.1:
    /// an invalid freshness is stale).
    pub(crate) max_age: Option<u64>,
    /// `s-maxage`, seconds, same rule.
    pub(crate) s_maxage: Option<u64>,
}

impl CacheControl {
    /// Parse every `cache-control` line of `headers`.
    pub(crate) fn parse(headers: &[Header]) -> CacheControl {
        Self::parse_lines(
            headers
                .iter()
                .filter(|h| h.name == "cache-control")
                .map(|h| h.value.as_slice()),
        )
    }

    /// Parse these `cache-control` field values (every line of the header,
    /// in order, as `header_all("cache-control")` gives them).
    pub(crate) fn from_lines(lines: &[Vec<u8>]) -> CacheControl {
        Self::parse_lines(lines.iter().map(Vec::as_slice))
    }

    fn parse_lines<'v>(lines: impl Iterator<Item = &'v [u8]>) -> CacheControl {
        let mut cc = CacheControl::default();
        for line in lines {
            for (name, value) in directives(line) {
                match name.as_str() {
                    "no-store" => cc.no_store = true,
                    // `no-cache="field"` and `private="field"` restrict
                    // fields; a shared cache that does not strip fields must
                    // treat them like the unqualified forms.
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                    "max-age" if cc.max_age.is_none() => cc.max_age = Some(seconds(&value)),
                    "s-maxage" if cc.s_maxage.is_none() => cc.s_maxage = Some(seconds(&value)),
                    _ => {}
                }
            }
        }
        cc
    }
}

fn seconds(v: &Option<Vec<u8>>) -> u64 {
    match v {
        Some(v) if !v.is_empty() && v.iter().all(u8::is_ascii_digit) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            // RFC 9111 §1.2.2: too large a delta means "a long time".
            .unwrap_or(u64::from(u32::MAX)),
        _ => 0,
    }
}

/// Split a `Cache-Control` value into lowercase names and raw values
/// (quotes removed, `\` escapes resolved).
fn directives(v: &[u8]) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        while i < v.len() && matches!(v[i], b' ' | b'\t' | b',') {
            i += 1;
        }
        let start = i;
        while i < v.len() && !matches!(v[i], b'=' | b',' | b' ' | b'\t') {
            i += 1;
        }
        if start == i {
            break;
        }
        let name = String::from_utf8_lossy(&v[start..i]).to_ascii_lowercase();
        while i < v.len() && matches!(v[i], b' ' | b'\t') {
            i += 1;
        }
        let mut value = None;
        if i < v.len() && v[i] == b'=' {
            i += 1;
            while i < v.len() && matches!(v[i], b' ' | b'\t') {
                i += 1;
            }
            let mut val = Vec::new();
            if i < v.len() && v[i] == b'"' {
                i += 1;
                while i < v.len() && v[i] != b'"' {
                    if v[i] == b'\\' && i + 1 < v.len() {
                        i += 1;
                    }
                    val.push(v[i]);
                    i += 1;
                }
                i += 1;
            } else {
                while i < v.len() && !matches!(v[i], b',' | b' ' | b'\t') {
                    val.push(v[i]);
                    i += 1;
                }
            }
            value = Some(val);
        }
        // Skip anything up to the next comma (malformed trailing junk).
        while i < v.len() && v[i] != b',' {
            i += 1;
        }
        out.push((name, value));
    }
    out
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    Status,
    CacheControl,
    SetCookie,
    Vary,
    Authorization,
    Expired,
}

/// Inputs of [`freshness`] besides the response headers.
pub(crate) struct Rules<'a> {
    /// Statuses that may be stored.
    pub(crate) statuses: &'a [u16],
    /// Request headers that are part of the key (lowercase).
    pub(crate) vary: &'a [String],
    /// Freshness (ms) when the response states none.
    pub(crate) default_ttl_ms: u64,
    /// Cap (ms).
    pub(crate) max_ttl_ms: u64,
    /// The request carried `Authorization`.
    pub(crate) authorized: bool,
    /// Now, ms since the epoch.
    pub(crate) now_ms: u64,
}

/// How long (ms) a response may be served from the cache, or why it may not
/// be stored. Freshness is `s-maxage`, else `max-age`, else `Expires` minus
/// `Date` (or now), else the configured default; minus the response's `Age`;
/// capped by `max-ttl`.
pub(crate) fn freshness(
    status: u16,
    headers: &[Header],
    rules: &Rules<'_>,
) -> Result<u64, NotStored> {
    if !rules.statuses.contains(&status) {
        return Err(NotStored::Status);
    }
    let cc = CacheControl::parse(headers);
    if cc.no_store || cc.no_cache || cc.private {
        return Err(NotStored::CacheControl);
    }
    if headers.iter().any(|h| h.name == "set-cookie") {
        return Err(NotStored::SetCookie);
    }
    // RFC 9111 §3.5: a shared cache stores answers to authorised requests
    // only when the response explicitly allows it.
    if rules.authorized && !(cc.public || cc.must_revalidate || cc.s_maxage.is_some()) {
        return Err(NotStored::Authorization);
    }
    for h in headers.iter().filter(|h| h.name == "vary") {
        for name in h.value.split(|&b| b == b',') {
            let name = String::from_utf8_lossy(name.trim_ascii()).to_ascii_lowercase();
            if !name.is_empty() && !rules.vary.contains(&name) {
                return Err(NotStored::Vary);
            }
        }
    }
    let lifetime_ms = if let Some(s) = cc.s_maxage.or(cc.max_age) {
        s.saturating_mul(1000)
    } else if let Some(expires) = first(headers, "expires") {
        let Some(expires) = parse_http_date(expires) else {
            return Err(NotStored::Expired);
        };
        let date = first(headers, "date")
            .and_then(parse_http_date)
            .unwrap_or(rules.now_ms / 1000);
        expires.saturating_sub(date).saturating_mul(1000)
    } else {
        rules.default_ttl_ms
    };
    let age_ms = age(headers).saturating_mul(1000);
    let ttl = lifetime_ms.saturating_sub(age_ms).min(rules.max_ttl_ms);
    if ttl == 0 {
        return Err(NotStored::Expired);
    }
    Ok(ttl)
}

/// The response's `Age` in seconds (0 when absent or invalid).
pub(crate) fn age(headers: &[Header]) -> u64 {
    first(headers, "age")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
        .unwrap_or(0)
}

fn first<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name == name)
        .map(|h| h.value.as_slice())
}

/// Seconds since the epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37
/// GMT`). The obsolete RFC 850 and asctime forms are not accepted; a date
/// that does not parse is treated as one in the past.
pub(crate) fn parse_http_date(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split(' ');
    let (_weekday, day, month, year, time, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some() || zone != "GMT" || day.len() != 2 || year.len() != 4 {
        return None;
    }
    let day: u64 = day.parse().ok()?;
    let month = match month {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u64 = year.parse().ok()?;
    let mut hms = time.split(':');
    let (h, m, sec): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if hms.next().is_some()
        || !(1..=31).contains(&day)
        || year < 1970
        || h > 23
        || m > 59
        || sec > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm, for years ≥ 1970).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<Header> {
        pairs.iter().map(|(n, v)| Header::new(*n, *v)).collect()
    }

    const RULES: Rules<'static> = Rules {
        statuses: &[200, 404],
        vary: &[],
        default_ttl_ms: 60_000,
        max_ttl_ms: 3_600_000,
        authorized: false,
        now_ms: 784_111_777_000,
    };

    #[test]
    fn directives_parse() {
        let cc = CacheControl::parse(&h(&[
            ("cache-control", "public, max-age=\"30\", S-MaxAge=60"),
            ("cache-control", "max-age=5,no-cache=\"set-cookie, x\""),
        ]));
        assert!(cc.public && cc.no_cache && !cc.no_store);
        assert_eq!(cc.max_age, Some(30));
        assert_eq!(cc.s_maxage, Some(60));
        let cc = CacheControl::parse(&h(&[("cache-control", "max-age=soon")]));
        assert_eq!(cc.max_age, Some(0));
    }

    #[test]
    fn lifetimes() {
        let f = |pairs: &[(&str, &str)]| freshness(200, &h(pairs), &RULES);
        assert_eq!(f(&[]), Ok(60_000));
        assert_eq!(f(&[("cache-control", "max-age=10")]), Ok(10_000));
        assert_eq!(
            f(&[("cache-control", "max-age=10, s-maxage=20")]),
            Ok(20_000)
        );
        assert_eq!(
            f(&[("cache-control", "max-age=10"), ("age", "4")]),
            Ok(6_000)
        );
        assert_eq!(f(&[("cache-control", "max-age=99999")]), Ok(3_600_000));
        assert_eq!(
            f(&[("cache-control", "max-age=0")]),
            Err(NotStored::Expired)
        );
        assert_eq!(
            f(&[("cache-control", "no-store")]),
            Err(NotStored::CacheControl)
        );
        assert_eq!(
            f(&[("cache-control", "private, max-age=9")]),
            Err(NotStored::CacheControl)
        );
        assert_eq!(f(&[("set-cookie", "a=b")]), Err(NotStored::SetCookie));
        assert_eq!(f(&[("vary", "accept-language")]), Err(NotStored::Vary));
        assert_eq!(
            f(&[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("expires", "Sun, 06 Nov 1994 08:50:07 GMT")
            ]),
            Ok(30_000)
        );
        assert_eq!(f(&[("expires", "0")]), Err(NotStored::Expired));
        assert_eq!(freshness(500, &[], &RULES), Err(NotStored::Status));
        let authorized = Rules {
            authorized: true,
            ..RULES
        };
        assert_eq!(
            freshness(200, &[], &authorized),
            Err(NotStored::Authorization)
        );
        assert_eq!(
            freshness(200, &h(&[("cache-control", "public")]), &authorized),
            Ok(60_000)
        );
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date(b"Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(951_825_600)
        );
        assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(parse_http_date(b"\xff"), None);
    }
}
