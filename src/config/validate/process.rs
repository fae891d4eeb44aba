//! `[runtime]`: the process-wide settings (compile cache, instance pool, memory, kv backend, workers).

use std::path::Path;

use toml::Spanned;

use super::Ctx;
use crate::config::{model::*, raw};

pub(super) fn runtime(
    cx: &mut Ctx<'_>,
    raw: Option<&Spanned<raw::RawRuntime>>,
    base: &Path,
) -> ProcessSettings {
    let mut settings = ProcessSettings {
        cache_dir: Some(base.join(".pylon-cache")),
        max_instances: 1000,
        max_memory_bytes: 256 << 20,
        kv: KvBackend::Memory,
        workers: None,
    };
    let Some(raw) = raw else { return settings };
    let r = raw.get_ref();
    if let Some(dir) = &r.cache_dir {
        settings.cache_dir = if dir.get_ref().is_empty() {
            None
        } else {
            Some(base.join(dir.get_ref()))
        };
    }
    settings.max_instances = cx.count(
        &r.max_instances,
        "runtime",
        "max-instances",
        1..=100_000,
        settings.max_instances as usize,
    ) as u32;
    if r.workers.is_some() {
        settings.workers = Some(cx.count(&r.workers, "runtime", "workers", 1..=1024, 1));
    }
    settings.max_memory_bytes = cx.size(&r.max_memory, "runtime", settings.max_memory_bytes);
    if let Some(kv) = &r.kv {
        let k = kv.get_ref();
        match (k.backend.get_ref().as_str(), &k.url) {
            ("memory", None) => settings.kv = KvBackend::Memory,
            ("memory", Some(url)) => cx.error(
                url,
                Some("runtime.kv".into()),
                "url is only used with backend = \"redis\"",
            ),
            ("redis", Some(url)) => {
                if url.get_ref().starts_with("redis://") {
                    settings.kv = KvBackend::Redis {
                        url: url.get_ref().clone(),
                    }
                } else {
                    cx.error(
                        url,
                        Some("runtime.kv".into()),
                        "url must start with redis://",
                    )
                }
            }
            ("redis", None) => cx.error(
                kv,
                Some("runtime.kv".into()),
                "backend = \"redis\" needs a url",
            ),
            (other, _) => cx.error(
                &k.backend,
                Some("runtime.kv".into()),
                format!("unknown backend {other:?} (expected \"memory\" or \"redis\")"),
            ),
        }
    }
    settings
}
