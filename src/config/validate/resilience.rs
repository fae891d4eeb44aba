//! Validation of an upstream's resilience settings (balancing, health
//! checks, outlier detection, breaker, retry budget, `max-requests`) and of
//! a route's retry policy, into [`crate::upstream::policy`]'s types. Every
//! problem is reported with its location; a bad value falls back to the
//! default so the rest is still checked.

use http::{HeaderName, Method};
use toml::Spanned;

use super::Ctx;
use crate::{
    config::raw,
    upstream::policy::{
        Balance, Breaker, HashOn, HealthCheck, Outlier, Resilience, RetryBudget, RetryPolicy,
    },
};

/// The most retries a route may ask for: each is a full upstream call.
const MAX_RETRIES: i64 = 10;
/// The largest target weight (the round-robin cycle holds every weight).
const MAX_WEIGHT: i64 = 1000;

/// A whole number within `min..=max` ([`Ctx::count`]), as an `i64`.
fn int(
    cx: &mut Ctx<'_>,
    v: &Option<Spanned<i64>>,
    subject: &str,
    key: &str,
    (min, max): (i64, i64),
    default: i64,
) -> i64 {
    cx.count(
        v,
        subject,
        key,
        min as usize..=max as usize,
        default as usize,
    ) as i64
}

/// The upstream's resilience settings; `targets` is how many it has.
pub(super) fn resilience(
    cx: &mut Ctx<'_>,
    r: &raw::RawUpstream,
    subject: &str,
    targets: usize,
) -> Resilience {
    let d = Resilience::default();
    let weights = weights(cx, r, subject, targets);
    let balance = balance(cx, r, subject);
    let max_requests = int(
        cx,
        &r.max_requests,
        subject,
        "max-requests",
        (1, 1_000_000),
        d.max_requests as i64,
    ) as usize;
    let health_check = r
        .health_check
        .as_ref()
        .map(|h| health_check(cx, h, subject));
    let outlier = r
        .outlier_detection
        .as_ref()
        .map_or(d.outlier, |o| outlier(cx, o.get_ref(), subject));
    let breaker = r
        .circuit_breaker
        .as_ref()
        .map_or(d.breaker, |b| breaker(cx, b.get_ref(), subject));
    let retry_budget = r
        .retry_budget
        .as_ref()
        .map_or(d.retry_budget, |b| retry_budget(cx, b.get_ref(), subject));
    Resilience {
        balance,
        weights,
        outlier,
        breaker,
        health_check,
        retry_budget,
        max_requests,
    }
}

/// One weight per target, in order (none: all equal).
fn weights(cx: &mut Ctx<'_>, r: &raw::RawUpstream, subject: &str, targets: usize) -> Vec<u32> {
    let Some(w) = &r.weights else {
        return Vec::new();
    };
    if w.get_ref().len() != targets {
        cx.error(
            w,
            Some(subject.into()),
            format!(
                "weights has {} entries for {targets} targets: give one weight per target, in order",
                w.get_ref().len()
            ),
        );
    }
    w.get_ref()
        .iter()
        .map(|n| {
            int(
                cx,
                &Some(n.clone()),
                subject,
                "a weight",
                (1, MAX_WEIGHT),
                1,
            ) as u32
        })
        .collect()
}

/// `outlier-detection`.
fn outlier(cx: &mut Ctx<'_>, o: &raw::RawOutlier, subject: &str) -> Outlier {
    let def = Outlier::default();
    Outlier {
        consecutive_failures: int(
            cx,
            &o.consecutive_failures,
            subject,
            "consecutive-failures",
            (0, 1000),
            i64::from(def.consecutive_failures),
        ) as u32,
        base_ejection: cx.duration(&o.base_ejection_time, subject, def.base_ejection),
        max_ejection: cx.duration(&o.max_ejection_time, subject, def.max_ejection),
        max_ejected_percent: int(
            cx,
            &o.max_ejected_percent,
            subject,
            "max-ejected-percent",
            (0, 100),
            i64::from(def.max_ejected_percent),
        ) as u8,
    }
}

/// `circuit-breaker`.
fn breaker(cx: &mut Ctx<'_>, b: &raw::RawBreaker, subject: &str) -> Breaker {
    let def = Breaker::default();
    Breaker {
        consecutive_failures: int(
            cx,
            &b.consecutive_failures,
            subject,
            "consecutive-failures",
            (0, 1000),
            i64::from(def.consecutive_failures),
        ) as u32,
        backoff: cx.duration(&b.backoff, subject, def.backoff),
        max_backoff: cx.duration(&b.max_backoff, subject, def.max_backoff),
    }
}

/// `retry-budget`.
fn retry_budget(cx: &mut Ctx<'_>, b: &raw::RawRetryBudget, subject: &str) -> RetryBudget {
    let def = RetryBudget::default();
    RetryBudget {
        ratio: match &b.ratio {
            None => def.ratio,
            Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                cx.error(v, Some(subject.into()), "ratio must be between 0.0 and 1.0");
                def.ratio
            }
        },
        min_concurrent: int(
            cx,
            &b.min_concurrent,
            subject,
            "min-concurrent",
            (0, 1_000_000),
            def.min_concurrent as i64,
        ) as usize,
        min_per_second: int(
            cx,
            &b.min_per_second,
            subject,
            "min-per-second",
            (0, 1_000_000),
            i64::from(def.min_per_second),
        ) as u32,
    }
}

fn balance(cx: &mut Ctx<'_>, r: &raw::RawUpstream, subject: &str) -> Balance {
    let hash_on = r.hash_on.as_ref().and_then(|h| {
        let text = h.get_ref().as_str();
        let on = match text.split_once(':') {
            None if text == "client-ip" => Some(HashOn::ClientIp),
            Some(("header", name)) => HeaderName::try_from(name).ok().map(HashOn::Header),
            Some(("cookie", name)) if !name.is_empty() => Some(HashOn::Cookie(name.to_owned())),
            Some(("path-param", name)) if !name.is_empty() => Some(HashOn::PathParam(name.to_owned())),
            _ => None,
        };
        if on.is_none() {
            cx.error(
                h,
                Some(subject.into()),
                format!("invalid hash-on {text:?} (expected \"client-ip\", \"header:NAME\", \"cookie:NAME\" or \"path-param:NAME\")"),
            );
        }
        on
    });
    let b = match r.balance.as_ref().map(|b| b.get_ref().as_str()) {
        None | Some("round-robin") => Balance::RoundRobin,
        Some("least-request") => Balance::LeastRequest { peak_ewma: false },
        Some("peak-ewma") => Balance::LeastRequest { peak_ewma: true },
        Some("hash") => match hash_on.clone() {
            Some(on) => return Balance::Hash(on),
            None => {
                if r.hash_on.is_none() {
                    let at = r.balance.as_ref().expect("matched Some");
                    cx.error(at, Some(subject.into()), "balance = \"hash\" needs hash-on (\"client-ip\", \"header:NAME\", \"cookie:NAME\" or \"path-param:NAME\")");
                }
                Balance::RoundRobin
            }
        },
        Some(other) => {
            let at = r.balance.as_ref().expect("matched Some");
            cx.error(
                at,
                Some(subject.into()),
                format!("unknown balance {other:?} (expected \"round-robin\", \"least-request\", \"peak-ewma\" or \"hash\")"),
            );
            Balance::RoundRobin
        }
    };
    if let Some(h) = &r.hash_on
        && hash_on.is_some()
    {
        cx.error(
            h,
            Some(subject.into()),
            "hash-on is used only with balance = \"hash\"",
        );
    }
    b
}

fn health_check(cx: &mut Ctx<'_>, h: &Spanned<raw::RawHealthCheck>, subject: &str) -> HealthCheck {
    let r = h.get_ref();
    let subject = &format!("{subject} health-check");
    let path = r.path.get_ref();
    if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
        cx.error(
            &r.path,
            Some(subject.clone()),
            format!("invalid path {path:?}: expected one starting with '/'"),
        );
    }
    let mut hc = HealthCheck::new(path.clone());
    if let Some(m) = &r.method {
        match Method::from_bytes(m.get_ref().as_bytes()) {
            Ok(method) => hc.method = method,
            Err(_) => cx.error(
                m,
                Some(subject.clone()),
                format!("invalid method {:?}", m.get_ref()),
            ),
        }
    }
    if let Some(host) = &r.host {
        match http::HeaderValue::from_str(host.get_ref()) {
            Ok(_) if !host.get_ref().is_empty() => hc.host = Some(host.get_ref().clone()),
            _ => cx.error(host, Some(subject.clone()), "invalid host"),
        }
    }
    if let Some(s) = &r.statuses {
        match parse_statuses(s.get_ref()) {
            Some(list) => hc.statuses = list,
            None => cx.error(
                s,
                Some(subject.clone()),
                format!(
                    "invalid statuses {:?}: expected e.g. \"200-399\" or \"200,204\"",
                    s.get_ref()
                ),
            ),
        }
    }
    hc.interval = cx.duration(&r.interval, subject, hc.interval);
    hc.timeout = cx.duration(&r.timeout, subject, hc.timeout);
    hc.healthy_threshold = int(
        cx,
        &r.healthy_threshold,
        subject,
        "healthy-threshold",
        (1, 1000),
        i64::from(hc.healthy_threshold),
    ) as u32;
    hc.unhealthy_threshold = int(
        cx,
        &r.unhealthy_threshold,
        subject,
        "unhealthy-threshold",
        (1, 1000),
        i64::from(hc.unhealthy_threshold),
    ) as u32;
    hc
}

/// `"200-399"`, `"200,204,301-302"`: inclusive ranges of statuses 100–599.
fn parse_statuses(s: &str) -> Option<Vec<(u16, u16)>> {
    let status = |t: &str| {
        t.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (100..=599).contains(n))
    };
    s.split(',')
        .map(|part| match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (status(lo)?, status(hi)?);
                (lo <= hi).then_some((lo, hi))
            }
            None => status(part).map(|n| (n, n)),
        })
        .collect()
}

/// A route's retry policy (`[routes.retry]`).
pub(super) fn retry(
    cx: &mut Ctx<'_>,
    r: &Option<Spanned<raw::RawRetry>>,
    subject: &str,
) -> RetryPolicy {
    let d = RetryPolicy::default();
    let Some(r) = r else {
        return d;
    };
    let r = r.get_ref();
    let statuses = match &r.statuses {
        None => d.statuses,
        Some(list) => list
            .get_ref()
            .iter()
            .filter_map(|s| match u16::try_from(*s.get_ref()) {
                Ok(n) if (500..=599).contains(&n) => Some(n),
                _ => {
                    cx.error(s, Some(subject.into()), "a retried status must be a 5xx");
                    None
                }
            })
            .collect(),
    };
    let backoff = cx.duration(&r.backoff, subject, d.backoff);
    let max_backoff = cx.duration(&r.max_backoff, subject, d.max_backoff.max(backoff));
    if max_backoff < backoff
        && let Some(m) = &r.max_backoff
    {
        cx.error(
            m,
            Some(subject.into()),
            "max-backoff must not be below backoff",
        );
    }
    RetryPolicy {
        retries: int(
            cx,
            &r.retries,
            subject,
            "retries",
            (0, MAX_RETRIES),
            i64::from(d.retries),
        ) as u32,
        statuses,
        non_idempotent: r.non_idempotent.as_ref().is_some_and(|b| *b.get_ref()),
        backoff,
        max_backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_statuses;

    #[test]
    fn statuses_parse_as_ranges() {
        assert_eq!(parse_statuses("200-399"), Some(vec![(200, 399)]));
        assert_eq!(
            parse_statuses("200, 204,301-302"),
            Some(vec![(200, 200), (204, 204), (301, 302)])
        );
        for bad in ["", "2xx", "399-200", "600", "200-"] {
            assert_eq!(parse_statuses(bad), None, "{bad}");
        }
    }
}
