//! Raw → validated: checks values and cross references (routes → upstreams
//! and plugins, plugins → upstreams) and collects every problem.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::Duration,
};

use http::Method;
use toml::Spanned;

use super::{
    ConfigError, Diagnostic, LineIndex,
    model::*,
    raw::{self, RawConfig},
    units::{parse_duration, parse_size},
};

const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

struct Ctx<'a> {
    file: &'a Arc<str>,
    index: &'a LineIndex,
    problems: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn loc<T>(&self, s: &Spanned<T>) -> Location {
        self.index.location(self.file, s.span().start)
    }

    fn error<T>(&mut self, at: &Spanned<T>, subject: Option<String>, message: impl Into<String>) {
        let location = Some(self.loc(at));
        self.problems.push(Diagnostic {
            location,
            subject,
            message: message.into(),
        });
    }

    fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        subject: &str,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.error(
                        s,
                        Some(subject.into()),
                        "duration must be greater than zero",
                    );
                    default
                }
                Err(e) => {
                    self.error(s, Some(subject.into()), e);
                    default
                }
            },
        }
    }

    fn size(&mut self, v: &Option<Spanned<String>>, subject: &str, default: usize) -> usize {
        match v {
            None => default,
            Some(s) => match parse_size(s.get_ref()) {
                Ok(n) if n > 0 => n,
                Ok(_) => {
                    self.error(s, Some(subject.into()), "size must be greater than zero");
                    default
                }
                Err(e) => {
                    self.error(s, Some(subject.into()), e);
                    default
                }
            },
        }
    }

    fn id(&mut self, s: &Spanned<String>, kind: &str) -> bool {
        let name = s.get_ref();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok {
            self.error(
                s,
                None,
                format!(
                    "invalid {kind} name {name:?}: use 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
                ),
            );
        }
        ok
    }
}

pub(super) fn validate(
    raw: RawConfig,
    file: &Path,
    file_name: &Arc<str>,
    base_dir: &Path,
    index: &LineIndex,
) -> Result<Config, ConfigError> {
    let mut cx = Ctx {
        file: file_name,
        index,
        problems: Vec::new(),
    };

    let runtime = runtime(&mut cx, raw.runtime.as_ref(), base_dir);
    let listeners = listeners(&mut cx, &raw.listeners, base_dir);
    let admin = raw.admin.as_ref().map(|a| admin(&mut cx, a));
    let access_log = raw
        .access_log
        .as_ref()
        .map(|a| access_log(&mut cx, a, base_dir));
    let tracing = raw
        .tracing
        .as_ref()
        .and_then(|t| tracing_config(&mut cx, t));
    let upstreams = upstreams(&mut cx, &raw.upstreams, base_dir);
    let plugins = plugins(&mut cx, &raw.plugins, &upstreams, &runtime, base_dir);
    let path_normalization = path_normalization(&mut cx, raw.path_normalization.as_ref());
    let routes = routes(
        &mut cx,
        &raw.routes,
        &upstreams,
        &plugins,
        &path_normalization,
    );
    instance_budget(&mut cx, &runtime, &plugins, &routes);

    if cx.problems.is_empty() {
        Ok(Config {
            file: file.to_path_buf(),
            runtime,
            listeners,
            admin,
            access_log,
            tracing,
            upstreams,
            plugins,
            routes,
            path_normalization,
        })
    } else {
        cx.problems.sort_by_key(|d| {
            d.location
                .as_ref()
                .map(|l| (l.line, l.column))
                .unwrap_or_default()
        });
        Err(ConfigError {
            diagnostics: cx.problems,
        })
    }
}

/// Every pooled plugin on a route keeps up to `pool-size` idle instances
/// for as long as the configuration lives, and they hold slots of the one
/// instance pool (`max-instances`). If the routes can keep more idle
/// instances than the pool holds, after a burst some routes' plugins could
/// no longer be instantiated at all: refuse that at load, at the route use
/// that goes over, rather than fail requests later. A fresh plugin counts
/// one slot per route (the instance serving a request).
fn instance_budget(
    cx: &mut Ctx<'_>,
    runtime: &ProcessSettings,
    plugins: &BTreeMap<String, PluginDef>,
    routes: &[Route],
) {
    let max = u64::from(runtime.max_instances);
    let mut reserved: u64 = 0;
    for route in routes {
        for r in &route.plugins {
            let Some(def) = plugins.get(&r.plugin) else {
                continue;
            };
            let slots = match def.isolation {
                Isolation::Pooled { max_idle } => max_idle as u64,
                Isolation::Fresh => 1,
            };
            reserved += slots;
            if reserved > max {
                cx.problems.push(Diagnostic {
                    location: Some(r.location.clone()),
                    subject: Some(format!("route {:?}, plugin {:?}", route.id, r.plugin)),
                    message: format!(
                        "the routes up to here keep up to {reserved} plugin instances \
                         (pool-size of each pooled plugin per route, 1 per fresh one), \
                         more than [runtime] max-instances = {max}; \
                         lower pool-size or raise max-instances"
                    ),
                });
                return;
            }
        }
    }
}

fn runtime(
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
    if let Some(n) = &r.max_instances {
        match u32::try_from(*n.get_ref()) {
            Ok(v) if (1..=100_000).contains(&v) => settings.max_instances = v,
            _ => cx.error(
                n,
                Some("runtime".into()),
                "max-instances must be between 1 and 100000",
            ),
        }
    }
    if let Some(n) = &r.workers {
        match usize::try_from(*n.get_ref()) {
            Ok(v) if (1..=1024).contains(&v) => settings.workers = Some(v),
            _ => cx.error(
                n,
                Some("runtime".into()),
                "workers must be between 1 and 1024",
            ),
        }
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

fn listeners(cx: &mut Ctx<'_>, raw: &[Spanned<raw::RawListener>], base: &Path) -> Vec<Listener> {
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
    let mut count = |v: &Option<Spanned<i64>>, key: &str, min: i64, max: i64, default: u64| match v
    {
        None => default,
        Some(n) if (min..=max).contains(n.get_ref()) => *n.get_ref() as u64,
        Some(n) => {
            cx.error(
                n,
                Some(subject.to_owned()),
                format!("{key} must be between {min} and {max}"),
            );
            default
        }
    };
    let max_connections = count(
        &r.max_connections,
        "max-connections",
        1,
        10_000_000,
        d.max_connections as u64,
    ) as usize;
    let max_requests_in_flight = count(
        &r.max_requests_in_flight,
        "max-requests-in-flight",
        1,
        10_000_000,
        d.max_requests_in_flight as u64,
    ) as usize;
    let max_requests_per_connection = count(
        &r.max_requests_per_connection,
        "max-requests-per-connection",
        0,
        i64::MAX,
        d.max_requests_per_connection,
    );
    let http2_max_concurrent_streams = count(
        &r.http2_max_concurrent_streams,
        "http2-max-concurrent-streams",
        1,
        65_536,
        d.http2_max_concurrent_streams.into(),
    ) as u32;
    let http2_max_resets = count(
        &r.http2_max_resets,
        "http2-max-resets",
        1,
        i64::MAX,
        d.http2_max_resets,
    );
    let http2_max_resets_per_second = count(
        &r.http2_max_resets_per_second,
        "http2-max-resets-per-second",
        1,
        i64::MAX,
        d.http2_max_resets_per_second,
    );
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

fn admin(cx: &mut Ctx<'_>, raw: &Spanned<raw::RawAdmin>) -> Admin {
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

fn access_log(cx: &mut Ctx<'_>, raw: &Spanned<raw::RawAccessLog>, base: &Path) -> AccessLogTarget {
    let path = &raw.get_ref().path;
    match path.get_ref().as_str() {
        "-" => AccessLogTarget::Stdout,
        "" => {
            cx.error(
                path,
                Some("access-log".into()),
                "path must be \"-\" (stdout) or a file path",
            );
            AccessLogTarget::Stdout
        }
        p => AccessLogTarget::File(base.join(p)),
    }
}

fn tracing_config(cx: &mut Ctx<'_>, raw: &Spanned<raw::RawTracing>) -> Option<TracingConfig> {
    let r = raw.get_ref();
    let endpoint = r.otlp_endpoint.get_ref().trim_end_matches('/');
    let valid = endpoint
        .strip_prefix("http://")
        .is_some_and(|rest| !rest.is_empty() && endpoint.parse::<http::Uri>().is_ok());
    if !valid {
        let hint = if endpoint.starts_with("https://") {
            "https is not supported; use a local collector over http"
        } else {
            "expected an http:// URL, e.g. \"http://127.0.0.1:4318\""
        };
        cx.error(
            &r.otlp_endpoint,
            Some("tracing".into()),
            format!(
                "invalid otlp-endpoint {:?}: {hint}",
                r.otlp_endpoint.get_ref()
            ),
        );
        return None;
    }
    let service_name = match &r.service_name {
        None => "pylon".to_owned(),
        Some(s) if s.get_ref().trim().is_empty() => {
            cx.error(s, Some("tracing".into()), "service-name must not be empty");
            return None;
        }
        Some(s) => s.get_ref().clone(),
    };
    Some(TracingConfig {
        otlp_endpoint: endpoint.to_owned(),
        service_name,
    })
}

fn upstreams(
    cx: &mut Ctx<'_>,
    raw: &BTreeMap<Spanned<String>, Spanned<raw::RawUpstream>>,
    base: &Path,
) -> BTreeMap<String, Upstream> {
    let mut out = BTreeMap::new();
    for (name, u) in raw {
        cx.id(name, "upstream");
        let subject = format!("upstream {:?}", name.get_ref());
        let r = u.get_ref();
        let mut targets = Vec::new();
        if r.targets.get_ref().is_empty() {
            cx.error(
                &r.targets,
                Some(subject.clone()),
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
                    Some(subject.clone()),
                    format!("invalid target {:?}: expected host:port", t.get_ref()),
                );
            }
        }
        let protocol = match r.protocol.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("h2c") => UpstreamProtocol::H2c,
            Some("h2") => UpstreamProtocol::H2,
            Some(other) => {
                let p = r.protocol.as_ref().expect("matched Some");
                cx.error(
                    p,
                    Some(subject.clone()),
                    format!("unknown protocol {other:?} (expected \"http1\", \"h2\" or \"h2c\")"),
                );
                UpstreamProtocol::Http1
            }
        };
        let tls = r
            .tls
            .as_ref()
            .and_then(|t| upstream_tls(cx, t, &subject, base));
        match (protocol, &tls, &r.protocol) {
            (UpstreamProtocol::H2, None, Some(p)) => cx.error(
                p,
                Some(subject.clone()),
                "protocol \"h2\" is HTTP/2 over TLS and needs tls (for cleartext HTTP/2 use \"h2c\")",
            ),
            (UpstreamProtocol::H2c, Some(_), Some(p)) => cx.error(
                p,
                Some(subject.clone()),
                "protocol \"h2c\" is cleartext HTTP/2; over TLS use protocol = \"h2\"",
            ),
            _ => {}
        }
        let max_idle_per_target = match &r.max_idle_per_target {
            None => 64,
            Some(n) => usize::try_from(*n.get_ref()).unwrap_or_else(|_| {
                cx.error(
                    n,
                    Some(subject.clone()),
                    "max-idle-per-target must not be negative",
                );
                64
            }),
        };
        let mut count = |v: &Option<Spanned<i64>>, key: &str, min: usize, default: usize| match v {
            None => default,
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(v) if (min..=1_000_000).contains(&v) => v,
                _ => {
                    cx.error(
                        n,
                        Some(subject.clone()),
                        format!("{key} must be between {min} and 1000000"),
                    );
                    default
                }
            },
        };
        // Envoy's circuit-breaker defaults (max_connections and
        // max_pending_requests, 1024 each).
        let max_connections = count(&r.max_connections, "max-connections", 1, 1024);
        let max_pending = count(&r.max_pending, "max-pending", 0, 1024);
        out.insert(
            name.get_ref().clone(),
            Upstream {
                name: name.get_ref().clone(),
                targets,
                protocol,
                connect_timeout: cx.duration(&r.connect_timeout, &subject, Duration::from_secs(5)),
                max_idle_per_target,
                max_connections,
                max_pending,
                queue_timeout: cx.duration(&r.queue_timeout, &subject, Duration::from_secs(5)),
                tls,
            },
        );
    }
    out
}

fn plugins(
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
        let isolation = match r.isolation.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("pooled") => {
                let max_idle = match &r.pool_size {
                    None => 64,
                    Some(n) => match usize::try_from(*n.get_ref()) {
                        Ok(v) if v >= 1 => v,
                        _ => {
                            cx.error(n, Some(subject.clone()), "pool-size must be at least 1");
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
                        Some(subject.clone()),
                        "pool-size applies only to isolation = \"pooled\"",
                    );
                }
                Isolation::Fresh
            }
            Some(other) => {
                let s = r.isolation.as_ref().expect("matched Some");
                cx.error(
                    s,
                    Some(subject.clone()),
                    format!("unknown isolation {other:?} (expected \"fresh\" or \"pooled\")"),
                );
                Isolation::Fresh
            }
        };
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
                    Some(subject.clone()),
                    format!("unknown capability {other:?} (expected \"log\", \"clock\", \"kv\" or \"http\")"),
                ),
            }
        }
        for u in &r.http_upstreams {
            if !wants_http {
                cx.error(
                    u,
                    Some(subject.clone()),
                    "http-upstreams needs the \"http\" capability",
                );
            } else if !upstreams.contains_key(u.get_ref()) {
                cx.error(
                    u,
                    Some(subject.clone()),
                    format!("unknown upstream {:?} in http-upstreams", u.get_ref()),
                );
            } else {
                grants.http_upstreams.push(u.get_ref().clone());
            }
        }
        if wants_http && r.http_upstreams.is_empty() {
            cx.error(p, Some(subject.clone()), "the \"http\" capability needs http-upstreams = [ ... ] naming the upstreams it may call");
        }
        if r.component.get_ref().is_empty() {
            cx.error(
                &r.component,
                Some(subject.clone()),
                "component path is empty",
            );
        }
        let mut positive = |n: &Option<Spanned<i64>>, key: &str, default: usize| match n {
            None => default,
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(v) if v >= 1 => v,
                _ => {
                    cx.error(
                        n,
                        Some(subject.clone()),
                        format!("{key} must be at least 1"),
                    );
                    default
                }
            },
        };
        let max_concurrency = positive(&r.max_concurrency, "max-concurrency", 64);
        let kv_defaults = KvLimits::default();
        let max_entries = positive(&r.kv_max_entries, "kv-max-entries", kv_defaults.max_entries);
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

fn path_normalization(
    cx: &mut Ctx<'_>,
    raw: Option<&Spanned<raw::RawPathNormalization>>,
) -> PathNormalization {
    let mut out = PathNormalization::default();
    let Some(raw) = raw else { return out };
    let r = raw.get_ref();
    out.normalize = r.normalize.unwrap_or(out.normalize);
    out.merge_slashes = r.merge_slashes.unwrap_or(out.merge_slashes);
    let mut action = |v: &Option<Spanned<String>>, key: &str, default: SlashAction| match v {
        None => default,
        Some(s) => SlashAction::from_word(s.get_ref()).unwrap_or_else(|| {
            cx.error(
                s,
                Some("path-normalization".into()),
                format!(
                    "unknown {key} {:?} (expected \"reject\", \"decode\" or \"keep\")",
                    s.get_ref()
                ),
            );
            default
        }),
    };
    out.escaped_slashes = action(&r.escaped_slashes, "escaped-slashes", out.escaped_slashes);
    out.backslashes = action(&r.backslashes, "backslashes", out.backslashes);
    out
}

/// A route path must be in the form request paths are normalised to, or
/// it could never match (`/%61dmin`, `/a/../b`, `//x`).
fn check_normal(
    cx: &mut Ctx<'_>,
    p: &Spanned<String>,
    key: &str,
    subject: &str,
    opts: &PathNormalization,
) {
    let message = match crate::router::path::normalize(p.get_ref(), opts) {
        Ok(n) if n == p.get_ref().as_str() => return,
        Ok(n) => format!(
            "{key} {:?} never matches: request paths are normalised first ([path-normalization]); write {n:?}",
            p.get_ref()
        ),
        Err(e) => format!(
            "{key} {:?} never matches: a request with this path is refused ({e})",
            p.get_ref()
        ),
    };
    cx.error(p, Some(subject.to_owned()), message);
}

fn routes(
    cx: &mut Ctx<'_>,
    raw: &[Spanned<raw::RawRoute>],
    upstreams: &BTreeMap<String, Upstream>,
    plugins: &BTreeMap<String, PluginDef>,
    normalization: &PathNormalization,
) -> Vec<Route> {
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    for route in raw {
        let r = route.get_ref();
        cx.id(&r.id, "route");
        let subject = format!("route {:?}", r.id.get_ref());
        if !ids.insert(r.id.get_ref().clone()) {
            cx.error(
                &r.id,
                Some(subject.clone()),
                "another route has the same id",
            );
        }
        let path = match (&r.path, &r.path_prefix) {
            (Some(p), None) => {
                if let Err(e) = check_pattern(p.get_ref()) {
                    cx.error(p, Some(subject.clone()), e);
                } else {
                    check_normal(cx, p, "path", &subject, normalization);
                }
                if p.get_ref().contains('{') {
                    PathMatch::Pattern(p.get_ref().clone())
                } else {
                    PathMatch::Exact(p.get_ref().clone())
                }
            }
            (None, Some(p)) => {
                if !p.get_ref().starts_with('/') || p.get_ref().contains(['{', '}']) {
                    cx.error(
                        p,
                        Some(subject.clone()),
                        "path-prefix must start with '/' and contain no parameters",
                    );
                } else {
                    check_normal(cx, p, "path-prefix", &subject, normalization);
                }
                PathMatch::Prefix(p.get_ref().clone())
            }
            (Some(p), Some(_)) => {
                cx.error(
                    p,
                    Some(subject.clone()),
                    "set either path or path-prefix, not both",
                );
                PathMatch::Exact(p.get_ref().clone())
            }
            (None, None) => {
                cx.error(
                    &r.id,
                    Some(subject.clone()),
                    "needs path = \"...\" or path-prefix = \"...\"",
                );
                PathMatch::Prefix("/".into())
            }
        };
        let rewrite = match (&r.strip_prefix, &r.rewrite) {
            (Some(s), Some(_)) if *s.get_ref() => {
                cx.error(
                    s,
                    Some(subject.clone()),
                    "set either strip-prefix or rewrite, not both",
                );
                None
            }
            (Some(s), _) if *s.get_ref() => {
                if !matches!(path, PathMatch::Prefix(_)) {
                    cx.error(s, Some(subject.clone()), "strip-prefix needs path-prefix");
                }
                Some(Rewrite::StripPrefix)
            }
            (_, Some(t)) => {
                let params = match &path {
                    PathMatch::Pattern(p) => pattern_params(p),
                    _ => Vec::new(),
                };
                if !t.get_ref().starts_with('/') {
                    cx.error(t, Some(subject.clone()), "rewrite must start with '/'");
                }
                for used in template_params(t.get_ref()) {
                    if !params.contains(&used) {
                        cx.error(
                            t,
                            Some(subject.clone()),
                            format!("rewrite uses {{{used}}}, which the path does not capture"),
                        );
                    }
                }
                Some(Rewrite::Template(t.get_ref().clone()))
            }
            _ => None,
        };
        let mut methods = Vec::new();
        for m in &r.methods {
            match Method::from_bytes(m.get_ref().as_bytes()) {
                Ok(method) if m.get_ref().bytes().all(|b| b.is_ascii_uppercase()) => {
                    methods.push(method)
                }
                _ => cx.error(
                    m,
                    Some(subject.clone()),
                    format!(
                        "invalid method {:?}: use uppercase, e.g. \"GET\"",
                        m.get_ref()
                    ),
                ),
            }
        }
        let host = r.host.as_ref().map(|h| {
            let v = h.get_ref().to_ascii_lowercase();
            let bare = v.strip_prefix("*.").unwrap_or(&v);
            if bare.is_empty() || bare.contains(['*', '/', ' ']) {
                cx.error(h, Some(subject.clone()), format!("invalid host {:?}: use a name like \"api.example.com\" or \"*.example.com\"", h.get_ref()));
            }
            v
        });
        let upstream = r.upstream.as_ref().map(|u| {
            if !upstreams.contains_key(u.get_ref()) {
                cx.error(
                    u,
                    Some(subject.clone()),
                    format!("unknown upstream {:?}", u.get_ref()),
                );
            }
            u.get_ref().clone()
        });
        let mut refs = Vec::new();
        for pr in &r.plugins {
            let p = pr.get_ref();
            let psubject = format!("{subject}, plugin {:?}", p.plugin.get_ref());
            if !plugins.contains_key(p.plugin.get_ref()) {
                cx.error(
                    &p.plugin,
                    Some(psubject.clone()),
                    "no such plugin: define it under [plugins]",
                );
            }
            let on_error = match p.on_error.as_ref().map(|s| s.get_ref().as_str()) {
                None | Some("fail-closed") => FailurePolicy::FailClosed,
                Some("fail-open") => FailurePolicy::FailOpen,
                Some(other) => {
                    let s = p.on_error.as_ref().expect("matched Some");
                    cx.error(
                        s,
                        Some(psubject.clone()),
                        format!(
                            "unknown on-error {other:?} (expected \"fail-closed\" or \"fail-open\")"
                        ),
                    );
                    FailurePolicy::FailClosed
                }
            };
            let config = match &p.config {
                None => serde_json::Value::Object(Default::default()),
                Some(t) => match serde_json::to_value(t) {
                    Ok(v) => v,
                    Err(e) => {
                        cx.error(
                            pr,
                            Some(psubject.clone()),
                            format!("config cannot be represented as JSON: {e}"),
                        );
                        serde_json::Value::Null
                    }
                },
            };
            refs.push(PluginRef {
                plugin: p.plugin.get_ref().clone(),
                config,
                on_error,
                location: cx.loc(pr),
            });
        }
        out.push(Route {
            id: r.id.get_ref().clone(),
            host,
            methods,
            path,
            rewrite,
            upstream,
            timeout: cx.duration(&r.timeout, &subject, Duration::from_secs(30)),
            // nginx's client_body_timeout and proxy_read_timeout: 60 s
            // between two reads, long enough for any client or upstream
            // that is alive, short enough that a stalled one frees its
            // connections within a minute.
            request_body_timeout: cx.duration(
                &r.request_body_timeout,
                &subject,
                Duration::from_secs(60),
            ),
            response_body_timeout: cx.duration(
                &r.response_body_timeout,
                &subject,
                Duration::from_secs(60),
            ),
            // nginx's client_body_buffer_size (8-16 KiB): a small body
            // whose client stalls costs no upstream connection.
            request_buffer_bytes: match &r.request_buffer_size {
                None => 16 << 10,
                Some(s) => parse_size(s.get_ref()).unwrap_or_else(|e| {
                    cx.error(s, Some(subject.clone()), e);
                    16 << 10
                }),
            },
            plugins: refs,
            location: cx.loc(route),
        });
    }
    out
}

/// Check a path pattern: starts with `/`, `{name}` params with unique
/// names, a `{*rest}` catch-all only as the last segment.
fn check_pattern(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} must start with '/'"));
    }
    let mut names = HashSet::new();
    let segments: Vec<&str> = p.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        if seg.contains(['{', '}']) {
            let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
                return Err(format!(
                    "path {p:?}: a parameter must be a whole segment, like /{{id}}"
                ));
            };
            let (catch_all, name) = match inner.strip_prefix('*') {
                Some(n) => (true, n),
                None => (false, inner),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("path {p:?}: invalid parameter name {name:?}"));
            }
            if catch_all && i + 1 != segments.len() {
                return Err(format!("path {p:?}: {{*{name}}} must be the last segment"));
            }
            if !names.insert(name) {
                return Err(format!("path {p:?}: parameter {name:?} appears twice"));
            }
        }
    }
    Ok(())
}

fn pattern_params(p: &str) -> Vec<String> {
    p.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|s| s.trim_start_matches('*').to_string())
        .collect()
}

fn template_params(t: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        out.push(rest[start + 1..start + end].to_string());
        rest = &rest[start + end + 1..];
    }
    out
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
