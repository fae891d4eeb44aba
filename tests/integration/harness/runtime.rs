//! The plugin runtime on its own, without a gateway: a [`PluginLoader`]
//! with test settings, plugin definitions with test defaults, requests and
//! calls through the [`Plugin`] trait, and [`OutboundHttp`] to local servers.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pylon::{
    config::{Grants, Isolation, KvBackend, Location, PluginDef, ProcessSettings},
    kv::MemoryKv,
    pipeline::{Plugin, PluginError, PluginRequest, PluginResponse, RequestAction},
    plugin::{HostServices, OutboundError, OutboundHttp, PluginLoadError, PluginLoader},
};

use super::plugin;

/// The path of a built guest component (see [`plugin`]).
pub fn component(name: &str) -> PathBuf {
    PathBuf::from(plugin(name))
}

/// Runtime settings for tests: 64 instances, 256 MiB, in-memory kv, and
/// `cache_dir` as the compile cache (none: no disk cache).
pub fn settings(cache_dir: Option<PathBuf>) -> ProcessSettings {
    ProcessSettings {
        cache_dir,
        max_instances: 64,
        max_memory_bytes: 256 << 20,
        kv: KvBackend::Memory,
        workers: None,
    }
}

/// A runtime with [`settings`] and no disk cache.
pub fn runtime() -> PluginLoader {
    PluginLoader::new(&settings(None)).expect("runtime starts")
}

/// A plugin definition with test defaults: fresh, 1 s deadline, 64 MiB, no grants.
pub fn def(name: &str, guest: &str) -> PluginDef {
    PluginDef {
        name: name.to_owned(),
        component: component(guest),
        isolation: Isolation::Fresh,
        recycle: Default::default(),
        deadline: Duration::from_secs(1),
        memory_limit_bytes: 64 << 20,
        max_body_bytes: 1 << 20,
        max_concurrency: 64,
        kv: Default::default(),
        grants: Grants::default(),
        location: Location {
            file: Arc::from("test.toml"),
            line: 1,
            column: 1,
        },
    }
}

/// `d` with pooled isolation keeping up to `max_idle` idle instances.
pub fn pooled(mut d: PluginDef, max_idle: usize) -> PluginDef {
    d.isolation = Isolation::Pooled { max_idle };
    d
}

/// Host services: a fresh in-memory kv and no outbound upstreams.
pub fn host() -> HostServices {
    HostServices {
        kv: Arc::new(MemoryKv::new()),
        http: Arc::new(Upstreams::default()),
        clock: Default::default(),
    }
}

/// Compile `d` (off the async threads) and configure it for `route`.
pub async fn load(
    rt: &PluginLoader,
    d: &PluginDef,
    route: &str,
    config: &str,
    host: HostServices,
) -> Result<Arc<dyn Plugin>, PluginLoadError> {
    let compiled = {
        let (rt, d) = (rt.clone(), d.clone());
        tokio::task::spawn_blocking(move || rt.compile(&d))
            .await
            .unwrap()?
    };
    rt.configure(&compiled, route, config, host).await
}

/// A new runtime with `d` loaded on route `r`; panics if it does not load.
pub async fn loaded(d: &PluginDef, config: &str) -> (PluginLoader, Arc<dyn Plugin>) {
    let rt = runtime();
    let p = load(&rt, d, "r", config, host())
        .await
        .unwrap_or_else(|e| panic!("{} loads: {}", d.name, chain(&e)));
    (rt, p)
}

/// A GET request for `path` on route `r` from 127.0.0.1.
pub fn request(path: &str) -> PluginRequest {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("example.test"));
    PluginRequest {
        route: Arc::from("r"),
        method: Method::GET,
        path: path.to_owned(),
        query: None,
        headers,
        client_addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        scheme: "http",
        client_identity: None,
        params: vec![],
        body: None,
    }
}

/// Run the request phase on a new session.
pub async fn call(p: &Arc<dyn Plugin>, req: &PluginRequest) -> Result<RequestAction, PluginError> {
    p.start().on_request(&mut req.clone()).await
}

/// Like [`call`], for calls that must succeed (panics with the whole chain).
pub async fn call_ok(p: &Arc<dyn Plugin>, req: &PluginRequest) -> RequestAction {
    call(p, req)
        .await
        .unwrap_or_else(|e| panic!("{} failed: {}", p.id(), chain(&e)))
}

/// The response of an action that must be `Respond`.
pub fn responded(action: RequestAction) -> PluginResponse {
    match action {
        RequestAction::Respond(resp) => resp,
        RequestAction::Continue(edits) => panic!("expected a response, got {edits:?}"),
    }
}

/// A plugin response's body as (lossy) text.
pub fn body(resp: &PluginResponse) -> String {
    String::from_utf8_lossy(resp.body.as_deref().unwrap_or_default()).into_owned()
}

/// An error with its whole `source` chain (`a: b: c`), as text.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    pylon::error::ErrorChain(err).to_string()
}

/// The stats of plugin `name` (all zero if it has none).
pub fn stats(rt: &PluginLoader, name: &str) -> pylon::plugin::PluginStatsSnapshot {
    rt.stats()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

/// [`OutboundHttp`] over a plain hyper client, to named local servers.
#[derive(Default)]
pub struct Upstreams {
    /// Upstream name -> address.
    pub targets: HashMap<String, SocketAddr>,
}

#[async_trait]
impl OutboundHttp for Upstreams {
    async fn send(
        &self,
        upstream: &str,
        req: http::Request<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<http::Response<Bytes>, OutboundError> {
        let addr = self
            .targets
            .get(upstream)
            .ok_or_else(|| OutboundError::UnknownUpstream {
                upstream: upstream.to_owned(),
            })?;
        let (mut parts, body) = req.into_parts();
        parts.uri = format!("http://{addr}{}", parts.uri).parse().unwrap();
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let failed = |e: Box<dyn std::error::Error + Send + Sync>| OutboundError::Failed {
            upstream: upstream.to_owned(),
            source: e,
        };
        let exchange = async {
            let resp = client
                .request(http::Request::from_parts(parts, Full::new(body)))
                .await
                .map_err(|e| failed(e.into()))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| failed(e.into()))?;
            Ok(http::Response::from_parts(parts, body.to_bytes()))
        };
        match timeout {
            Some(t) => {
                tokio::time::timeout(t, exchange)
                    .await
                    .map_err(|_| OutboundError::Timeout {
                        upstream: upstream.to_owned(),
                    })?
            }
            None => exchange.await,
        }
    }
}

/// A local HTTP server that answers every request with `body` after `delay`.
pub async fn slow_server(body: &'static str, delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(body.as_bytes()),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
