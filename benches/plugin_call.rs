//! Per-request cost of a plugin: get an instance (fresh from the
//! pre-instantiated snapshot of the configured component, or from the pool)
//! and call `on-request`, then release it (a fresh instance is freed).
//! Measured for the example `headers` plugin in both isolation modes: its
//! hooks do nothing (its edits are fixed edits, which a route applies
//! without calling it), so that is the bare cost of an instance and a call;
//! and for
//! `auth-key` pooled (reads one header, hashes it, compares, forwards the
//! consumer) and `rate-limit` pooled (client IP, clock, a kv increment and
//! a kv read, `RateLimit-*` headers): plugins that do real work. And, when
//! `benches/languages` has built them (under `build/lang-bench/`), the same
//! small policy written in each plugin language (`tier-rust`, `tier-python`,
//! `tier-js`, `tier-c`: 401 without `x-tenant`, else an `x-tier` header),
//! pooled and fresh. Prints median and p99 in µs.
//!
//! `cargo bench --bench plugin_call` (needs `build/plugins/*.wasm`:
//! `scripts/build-plugins`). A filter argument selects cases
//! (`cargo bench --bench plugin_call -- pooled`). `PLUGIN_CALL_ITERS` sets
//! the sample count.

use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue, Method};
use pylon::{
    config::{Grants, Isolation, KvBackend, Location, PluginDef, ProcessSettings},
    kv::MemoryKv,
    pipeline::{Plugin, PluginRequest},
    plugin::{HostServices, OutboundError, OutboundHttp, PluginLoader},
};
use sha2::{Digest, Sha256};

// The gateway's allocator (src/main.rs), so that a call is measured as it runs there.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct NoHttp;

#[async_trait::async_trait]
impl OutboundHttp for NoHttp {
    async fn send(
        &self,
        upstream: &str,
        _req: http::Request<bytes::Bytes>,
        _timeout: Option<Duration>,
    ) -> Result<http::Response<bytes::Bytes>, OutboundError> {
        Err(OutboundError::UnknownUpstream {
            upstream: upstream.to_owned(),
        })
    }
}

/// The key `auth-key` is configured with (by its SHA-256) and finds.
const API_KEY: &str = "bench-key-0123456789";

fn request() -> PluginRequest {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "api.example.test"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("x-request-id", "0f8fad5b-d9cb-469f-a165-70867728950e"),
        ("authorization", "Bearer abcdefghijklmnopqrstuvwxyz"),
        ("x-api-key", API_KEY),
        ("x-tenant", "acme"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    PluginRequest {
        route: Arc::from("users"),
        method: Method::GET,
        path: "/users/7".into(),
        query: Some("full=1".into()),
        headers,
        client_addr: SocketAddr::from(([127, 0, 0, 1], 50000)),
        scheme: "http",
        client_identity: None,
        params: vec![("id".into(), "7".into())],
        body: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

async fn measure(name: &str, plugin: &Arc<dyn Plugin>, iters: usize) {
    let mut req = request();
    let mut once = async || {
        let mut session = plugin.start();
        session.on_request(&mut req).await.expect("on-request");
    };
    for _ in 0..iters / 10 {
        once().await;
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        once().await;
        samples.push(t.elapsed());
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>().as_secs_f64() * 1e6 / iters as f64;
    println!(
        "{name:<16} median {:>7.2} µs   p99 {:>7.2} µs   mean {:>7.2} µs   ({iters} calls)",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        mean,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects modes.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let iters: usize = std::env::var("PLUGIN_CALL_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("build/plugins");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let runtime = PluginLoader::new(&ProcessSettings {
            // Interpreter components take tens of seconds to compile.
            cache_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(".pylon-cache")),
            max_instances: 256,
            max_memory_bytes: 64 << 20,
            kv: KvBackend::Memory,
            workers: None,
        })
        .expect("plugin runtime");
        let host = HostServices {
            kv: Arc::new(MemoryKv::new()),
            http: Arc::new(NoHttp),
            clock: Default::default(),
        };
        let headers =
            r#"{"request": {"set": {"x-gateway": "pylon"}, "remove": ["authorization"]}}"#;
        let auth_key = format!(
            r#"{{"keys": [{{"consumer": "bench", "sha256": "{}"}}]}}"#,
            hex::encode(Sha256::digest(API_KEY))
        );
        let rate_limit = r#"{"key": "ip", "limits": [{"requests": 1000000000, "per": "1h"}]}"#;
        let kv_and_clock = Grants {
            kv: true,
            clock: true,
            ..Grants::default()
        };
        let mut cases: Vec<(String, std::path::PathBuf, String, Isolation, Grants)> = Vec::new();
        for (name, plugin, config, isolation, grants) in [
            (
                "headers/fresh",
                "headers",
                headers,
                Isolation::Fresh,
                Grants::default(),
            ),
            (
                "headers/pooled",
                "headers",
                headers,
                Isolation::Pooled { max_idle: 8 },
                Grants::default(),
            ),
            (
                "auth-key/pooled",
                "auth-key",
                auth_key.as_str(),
                Isolation::Pooled { max_idle: 8 },
                Grants::default(),
            ),
            (
                "rate-limit/pooled",
                "rate-limit",
                rate_limit,
                Isolation::Pooled { max_idle: 8 },
                kv_and_clock,
            ),
        ] {
            let component = built.join(format!("{plugin}.wasm"));
            assert!(
                component.is_file(),
                "{} is missing: run scripts/build-plugins",
                component.display()
            );
            cases.push((name.into(), component, config.into(), isolation, grants));
        }
        let languages = Path::new(env!("CARGO_MANIFEST_DIR")).join("build/lang-bench");
        for lang in ["rust", "c", "python", "js"] {
            let component = languages.join(format!("tier-{lang}/build/tier-{lang}.wasm"));
            if !component.is_file() {
                continue;
            }
            for (mode, isolation) in [
                ("pooled", Isolation::Pooled { max_idle: 8 }),
                ("fresh", Isolation::Fresh),
            ] {
                cases.push((
                    format!("tier-{lang}/{mode}"),
                    component.clone(),
                    r#"{"tier": "gold"}"#.into(),
                    isolation,
                    Grants::default(),
                ));
            }
        }
        for (name, component, config, isolation, grants) in cases {
            if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
                continue;
            }
            let plugin = component
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("plugin")
                .to_owned();
            // An interpreter (Python, JavaScript) needs the default memory
            // cap, and its call takes hundreds of µs: fewer samples.
            let big = std::fs::metadata(&component).map_or(0, |m| m.len()) > 4 << 20;
            let def = PluginDef {
                name: plugin,
                component,
                isolation,
                recycle: Default::default(),
                deadline: Duration::from_secs(1),
                memory_limit_bytes: if big { 64 << 20 } else { 16 << 20 },
                max_body_bytes: 1 << 20,
                max_concurrency: 64,
                kv: Default::default(),
                grants,
                location: Location {
                    file: Arc::from("bench"),
                    line: 1,
                    column: 1,
                },
            };
            let compiled = runtime.compile(&def).expect("compile");
            let plugin = runtime
                .configure(&compiled, "users", &config, host.clone())
                .await
                .expect("configure");
            measure(&name, &plugin, if big { iters / 20 } else { iters }).await;
        }
    });
}
