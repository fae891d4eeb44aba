//! The admin API: a separate listener (`[admin] address`, localhost by
//! default) answering JSON about the running gateway, reloading it, and
//! serving Prometheus metrics.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /admin/health` | 200 while the process serves (liveness) |
//! | `GET /admin/ready` | 200 once the configuration is loaded and listeners are bound, 503 otherwise (and while shutting down) |
//! | `GET /admin/routes` | the routes in force, in match order |
//! | `GET /admin/upstreams` | the upstreams and their targets; per target: health, ejection, breaker, in-flight requests, peak-EWMA latency |
//! | `GET /admin/plugins` | each component: file, sha256, contract version, load time, origin, stats |
//! | `POST /admin/reload` | reload from the configuration file: 200 with what changed, or 422 with every problem (the old configuration keeps serving) |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text) |
//!
//! With `[admin] token` set, every request needs `Authorization: Bearer
//! <token>` (compared in constant time), else 401. This is not the
//! client-facing path: nothing here goes through routes or plugins.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    body::{self, Body},
    config::{Isolation, PathMatch, Rewrite, UpstreamProtocol},
    plugin::CompileOrigin,
    reload::Reloader,
    telemetry::{access_log::rfc3339, metrics::Metrics},
    upstream::policy::Balance,
};

/// Serve the admin API on `tcp` until `shutdown` turns true.
pub async fn serve(
    tcp: TcpListener,
    reloader: Arc<Reloader>,
    token: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let token = token.map(|t| Arc::<[u8; 32]>::new(Sha256::digest(t.as_bytes()).into()));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let reloader = reloader.clone();
        let token = token.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let reloader = reloader.clone();
            let token = token.clone();
            async move { Ok::<_, Infallible>(handle(&reloader, token.as_deref(), req).await) }
        });
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %err, "admin connection ended with an error");
            }
        });
    }
}

async fn handle(
    reloader: &Reloader,
    token: Option<&[u8; 32]>,
    req: Request<Incoming>,
) -> Response<Body> {
    if let Some(expected) = token
        && !authorized(req.headers().get(header::AUTHORIZATION), expected)
    {
        let mut resp = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "missing or wrong bearer token"}),
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    let path = req.uri().path();
    let method = req.method();
    let get = method == Method::GET || method == Method::HEAD;
    match path {
        "/admin/health" if get => json_response(StatusCode::OK, &json!({"status": "ok"})),
        "/admin/ready" if get => {
            if reloader.is_ready() {
                json_response(StatusCode::OK, &json!({"ready": true}))
            } else {
                json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false}))
            }
        }
        "/admin/routes" if get => json_response(StatusCode::OK, &routes(reloader)),
        "/admin/upstreams" if get => json_response(StatusCode::OK, &upstreams(reloader)),
        "/admin/plugins" if get => json_response(StatusCode::OK, &plugins(reloader)),
        "/admin/certificates" if get => json_response(StatusCode::OK, &certificates(reloader)),
        "/admin/reload" if method == Method::POST => reload(reloader).await,
        "/metrics" if get => {
            let text = reloader.observability().metrics.encode();
            let mut resp = Response::new(body::full(text));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(Metrics::CONTENT_TYPE),
            );
            resp
        }
        "/admin/health"
        | "/admin/ready"
        | "/admin/routes"
        | "/admin/upstreams"
        | "/admin/plugins"
        | "/admin/certificates"
        | "/admin/reload"
        | "/metrics" => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method not allowed"}),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "no such admin endpoint"}),
        ),
    }
}

/// Compare a presented bearer token with the expected one's hash; hashing
/// both first makes the comparison constant-time in length too.
fn authorized(header: Option<&HeaderValue>, expected: &[u8; 32]) -> bool {
    let Some(presented) = header
        .map(HeaderValue::as_bytes)
        .and_then(|v| v.strip_prefix(b"Bearer "))
    else {
        return false;
    };
    let presented: [u8; 32] = Sha256::digest(presented).into();
    presented
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut text = serde_json::to_vec_pretty(value).unwrap_or_default();
    text.push(b'\n');
    let mut resp = Response::new(body::full(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn time(t: std::time::SystemTime) -> String {
    let mut s = String::new();
    rfc3339(&mut s, t);
    s
}

fn routes(reloader: &Reloader) -> Value {
    let rt = reloader.generation();
    let routes: Vec<Value> = rt
        .routes()
        .iter()
        .map(|r| {
            let c = &r.config;
            let (kind, path) = match &c.path {
                PathMatch::Exact(p) => ("exact", p),
                PathMatch::Prefix(p) => ("prefix", p),
                PathMatch::Pattern(p) => ("pattern", p),
            };
            json!({
                "id": c.id,
                "host": c.host,
                "methods": c.methods.iter().map(Method::as_str).collect::<Vec<_>>(),
                "path": path,
                "path_match": kind,
                "rewrite": c.rewrite.as_ref().map(|rw| match rw {
                    Rewrite::StripPrefix => "strip-prefix".to_owned(),
                    Rewrite::Template(t) => t.clone(),
                }),
                "upstream": c.upstream,
                "timeout_ms": c.timeout.as_millis() as u64,
                "plugins": c.plugins.iter().map(|p| json!({
                    "plugin": p.plugin,
                    "on_error": format!("{:?}", p.on_error),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "loaded_at": time(rt.loaded_at()), "routes": routes })
}

fn upstreams(reloader: &Reloader) -> Value {
    let rt = reloader.generation();
    let ups: Vec<Value> = rt
        .upstreams()
        .iter()
        .map(|(name, pool)| {
            let c = pool.config();
            json!({
                "name": name,
                "targets": c.targets,
                "protocol": match c.protocol {
                    UpstreamProtocol::Http1 => "http1",
                    UpstreamProtocol::H2c => "h2c",
                    UpstreamProtocol::H2 => "h2",
                },
                "connect_timeout_ms": c.connect_timeout.as_millis() as u64,
                "max_idle_per_target": c.max_idle_per_target,
                "balance": match &c.resilience.balance {
                    Balance::RoundRobin => "round-robin",
                    Balance::LeastRequest { peak_ewma: false } => "least-request",
                    Balance::LeastRequest { peak_ewma: true } => "peak-ewma",
                    Balance::Hash(_) => "hash",
                },
                "active_requests": pool.active().0,
                "active_retries": pool.active().1,
                "target_states": pool.target_states().map(|(target, s)| json!({
                    "target": target,
                    "healthy": s.healthy,
                    "ejected": s.ejected_for.is_some(),
                    "ejected_for_ms": s.ejected_for.map(|d| d.as_millis() as u64),
                    "ejections": s.ejections,
                    "breaker": s.breaker,
                    "consecutive_failures": s.consecutive_failures,
                    "in_flight": s.in_flight,
                    "ewma_ms": s.ewma.as_secs_f64() * 1e3,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "upstreams": ups })
}

fn certificates(reloader: &Reloader) -> Value {
    let generation = reloader.generation();
    let listeners = &generation.config().listeners;
    let list: Vec<Value> = reloader
        .tls_listeners()
        .iter()
        .map(|l| {
            json!({
                "listener": l.address.to_string(),
                "configured": listeners.get(l.index).map(|c| c.address.to_string()),
                "certificates": l.tls.certificates(),
            })
        })
        .collect();
    json!({ "listeners": list })
}

fn plugins(reloader: &Reloader) -> Value {
    let rt = reloader.generation();
    let stats: std::collections::BTreeMap<_, _> =
        reloader.shared().plugins.stats().into_iter().collect();
    let list: Vec<Value> = rt
        .components()
        .iter()
        .map(|c| {
            let def = c.def();
            let s = stats.get(c.name()).cloned().unwrap_or_default();
            json!({
                "name": c.name(),
                "component": def.component.display().to_string(),
                "sha256": c.sha256_hex(),
                "contract": c.contract().as_str(),
                "loaded_at": time(c.loaded_at()),
                "origin": match c.origin() {
                    CompileOrigin::Compiled => "compiled",
                    CompileOrigin::DiskCache => "disk-cache",
                    CompileOrigin::MemoryCache => "memory-cache",
                },
                "isolation": match def.isolation {
                    Isolation::Fresh => "fresh".to_owned(),
                    Isolation::Pooled { max_idle } => format!("pooled ({max_idle} idle)"),
                },
                "uses_wasi": c.uses_wasi(),
                "deadline_ms": def.deadline.as_millis() as u64,
                "memory_limit_bytes": def.memory_limit_bytes,
                "stats": {
                    "calls": s.calls,
                    "failures": s.failures,
                    "traps": s.traps,
                    "deadline_hits": s.deadline_hits,
                    "memory_hits": s.memory_hits,
                    "invalid_outputs": s.invalid_outputs,
                    "busy": s.busy,
                    "kv_refusals": s.kv_refusals,
                    "kv_bytes": s.kv_bytes,
                    "kv_entries": s.kv_entries,
                    "instantiations": s.instantiations,
                    "total_call_ms": s.total_call_nanos as f64 / 1e6,
                },
            })
        })
        .collect();
    let cache = reloader.shared().plugins.cache_stats();
    json!({
        "plugins": list,
        "compile_cache": {
            "compiled": cache.compiled,
            "disk_hits": cache.disk_hits,
            "memory_hits": cache.memory_hits,
        },
    })
}

async fn reload(reloader: &Reloader) -> Response<Body> {
    match reloader.reload().await {
        Ok(report) => json_response(
            StatusCode::OK,
            &json!({
                "result": "success",
                "warnings": report.warnings,
                "compiled": report.compiled,
                "reused": report.reused,
                "snapshots_taken": report.snapshots_taken,
                "took_ms": report.took.as_secs_f64() * 1e3,
            }),
        ),
        Err(err) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "result": "failure",
                "errors": err.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        ),
    }
}

/// The admin listener's address as bound (for logs and tests).
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/admin")
}
