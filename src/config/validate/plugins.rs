//! `[plugins.*]`: components, isolation, grants and limits; their upstream references.

use std::{collections::BTreeMap, path::Path, time::Duration};

use toml::Spanned;

use super::{Ctx, TOML_MAX};
use crate::config::{model::*, raw};

pub(super) fn plugins(
    cx: &mut Ctx<'_>,
    raw: &BTreeMap<Spanned<String>, Spanned<raw::RawPluginDef>>,
    upstreams: &BTreeMap<String, Upstream>,
    runtime: &ProcessSettings,
    base: &Path,
) -> BTreeMap<String, PluginDef> {
    let mut out = BTreeMap::new();
    for (name, p) in raw {
        cx.id(name, "plugin");
        let subject = format!("plugin {:?}", name.get_ref());
        let r = p.get_ref();
        let isolation = isolation(cx, r, &subject);
        let recycle = recycle(cx, r, &subject);
        let memory_limit_bytes = cx.size(&r.memory, &subject, 64 << 20);
        if memory_limit_bytes > runtime.max_memory_bytes
            && let Some(m) = &r.memory
        {
            cx.error(
                m,
                Some(subject.clone()),
                format!(
                    "memory {} exceeds runtime max-memory ({} bytes)",
                    m.get_ref(),
                    runtime.max_memory_bytes
                ),
            );
        }
        let grants = grants(cx, p, upstreams, &subject);
        if r.component.get_ref().is_empty() {
            cx.error(
                &r.component,
                Some(subject.clone()),
                "component path is empty",
            );
        }
        let max_concurrency = cx.whole(&r.max_concurrency, &subject, 1..=TOML_MAX, 64, || {
            "max-concurrency must be at least 1".into()
        });
        let kv_defaults = KvLimits::default();
        let max_entries = cx.whole(
            &r.kv_max_entries,
            &subject,
            1..=TOML_MAX,
            kv_defaults.max_entries,
            || "kv-max-entries must be at least 1".into(),
        );
        let kv = KvLimits {
            max_bytes: cx.size(&r.kv_max_bytes, &subject, kv_defaults.max_bytes),
            max_entries,
            max_value_bytes: cx.size(&r.kv_max_value_size, &subject, kv_defaults.max_value_bytes),
        };
        out.insert(
            name.get_ref().clone(),
            PluginDef {
                name: name.get_ref().clone(),
                component: base.join(r.component.get_ref()),
                isolation,
                recycle,
                deadline: cx.duration(&r.deadline, &subject, Duration::from_millis(100)),
                memory_limit_bytes,
                max_body_bytes: cx.size(&r.max_body_size, &subject, 1 << 20),
                max_concurrency,
                kv,
                grants,
                location: cx.loc(p),
            },
        );
    }
    out
}

fn isolation(cx: &mut Ctx<'_>, r: &raw::RawPluginDef, subject: &str) -> Isolation {
    match r.isolation.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("pooled") => {
            let max_idle = match &r.pool_size {
                None => 64,
                Some(n) => match usize::try_from(*n.get_ref()) {
                    Ok(v) if v >= 1 => v,
                    _ => {
                        cx.error(n, Some(subject.into()), "pool-size must be at least 1");
                        64
                    }
                },
            };
            Isolation::Pooled { max_idle }
        }
        Some("fresh") => {
            if let Some(n) = &r.pool_size {
                cx.error(
                    n,
                    Some(subject.into()),
                    "pool-size applies only to isolation = \"pooled\"",
                );
            }
            Isolation::Fresh
        }
        Some(other) => {
            let s = r.isolation.as_ref().expect("matched Some");
            cx.error(
                s,
                Some(subject.into()),
                format!("unknown isolation {other:?} (expected \"fresh\" or \"pooled\")"),
            );
            Isolation::Fresh
        }
    }
}

/// `recycle-memory-percent` and `recycle-after-requests` (pooled only).
fn recycle(cx: &mut Ctx<'_>, r: &raw::RawPluginDef, subject: &str) -> Recycle {
    let defaults = Recycle::default();
    let fresh = r.isolation.as_ref().is_some_and(|s| s.get_ref() == "fresh");
    for (key, v) in [
        ("recycle-memory-percent", &r.recycle_memory_percent),
        ("recycle-after-requests", &r.recycle_after_requests),
    ] {
        if let (true, Some(v)) = (fresh, v) {
            cx.error(
                v,
                Some(subject.into()),
                format!("{key} applies only to isolation = \"pooled\""),
            );
        }
    }
    let percent = cx.whole(
        &r.recycle_memory_percent,
        subject,
        1..=100,
        usize::from(defaults.memory_percent),
        || "recycle-memory-percent must be between 1 and 100".into(),
    );
    let after = cx.whole(&r.recycle_after_requests, subject, 0..=TOML_MAX, 0, || {
        "recycle-after-requests must be 0 (never) or more".into()
    });
    Recycle {
        memory_percent: u8::try_from(percent).unwrap_or(defaults.memory_percent),
        after_requests: after as u64,
    }
}

/// The capabilities granted, and the upstreams `http` may call.
fn grants(
    cx: &mut Ctx<'_>,
    p: &Spanned<raw::RawPluginDef>,
    upstreams: &BTreeMap<String, Upstream>,
    subject: &str,
) -> Grants {
    let r = p.get_ref();
    let mut grants = Grants::default();
    let mut wants_http = false;
    for c in &r.capabilities {
        match c.get_ref().as_str() {
            "log" => grants.log = true,
            "clock" => grants.clock = true,
            "kv" => grants.kv = true,
            "http" => wants_http = true,
            other => cx.error(
                c,
                Some(subject.into()),
                format!(
                    "unknown capability {other:?} (expected \"log\", \"clock\", \"kv\" or \"http\")"
                ),
            ),
        }
    }
    for u in &r.http_upstreams {
        if !wants_http {
            cx.error(
                u,
                Some(subject.into()),
                "http-upstreams needs the \"http\" capability",
            );
        } else if !upstreams.contains_key(u.get_ref()) {
            cx.error(
                u,
                Some(subject.into()),
                format!("unknown upstream {:?} in http-upstreams", u.get_ref()),
            );
        } else {
            grants.http_upstreams.push(u.get_ref().clone());
        }
    }
    if wants_http && r.http_upstreams.is_empty() {
        cx.error(
            p, Some(subject.into()), "the \"http\" capability needs http-upstreams = [ ... ] naming the upstreams it may call");
    }
    grants
}
