//! The integration harness: real upstream servers and a real gateway on
//! `127.0.0.1:0`, a real HTTP client, and the real compiled plugins (built
//! once per test run by `scripts/build-plugins`).

#![allow(dead_code, unreachable_pub)]

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use pylon::{Gateway, config};
use tokio::net::TcpListener;

pub mod runtime;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The path of a built plugin component, building all plugins once per run.
pub fn plugin(name: &str) -> String {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        // The kit's projects build with this very pylon (`pylon plugin
        // build`), and its tools go where the kit's tests put them.
        let status = std::process::Command::new(root().join("scripts/build-plugins"))
            .env("PYLON", env!("CARGO_BIN_EXE_pylon"))
            .env("PYLON_KIT_TOOLS", root().join("build/kit-tools"))
            .status()
            .expect("run scripts/build-plugins");
        assert!(status.success(), "scripts/build-plugins failed");
    });
    let p = root().join("build/plugins").join(format!("{name}.wasm"));
    assert!(p.exists(), "plugin {name} was not built: {}", p.display());
    p.display().to_string()
}

/// A captured request as an upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

type Handler = Arc<
    dyn Fn(Seen) -> std::pin::Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// A real upstream HTTP server recording what it receives.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// An upstream answering 200 with `name` as the body.
    pub async fn named(name: &'static str) -> Upstream {
        Self::with(
            move |_| async move { Response::new(Full::new(Bytes::from_static(name.as_bytes()))) },
        )
        .await
    }

    /// An upstream that echoes the request body back.
    pub async fn echo_body() -> Upstream {
        Self::with(|seen| async move { Response::new(Full::new(seen.body)) }).await
    }

    /// An upstream answering with `f(request)`.
    pub async fn with<F, Fut>(f: F) -> Upstream
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |s| Box::pin(f(s)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let s = Seen {
                                method: parts.method,
                                uri: parts.uri,
                                version: parts.version,
                                headers: parts.headers,
                                body,
                            };
                            seen.lock().unwrap().push(s.clone());
                            Ok::<_, Infallible>(handler(s).await)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    /// The requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("upstream saw no request")
    }

    /// The `traceparent` of the last request received, split into its four
    /// fields (version, trace id, parent id, flags).
    pub fn last_traceparent(&self) -> Vec<String> {
        let sent = self.last().headers["traceparent"]
            .to_str()
            .unwrap()
            .to_owned();
        let parts: Vec<String> = sent.split('-').map(str::to_owned).collect();
        assert_eq!(parts.len(), 4, "{sent}");
        parts
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gateway running in-process on an ephemeral port.
pub struct TestGateway {
    pub gateway: Gateway,
    pub addr: SocketAddr,
}

impl TestGateway {
    /// Start a gateway from TOML text; a `[[listeners]]` on 127.0.0.1:0 and
    /// a cache dir in a temp folder are added.
    pub async fn start(toml: &str) -> TestGateway {
        let cfg = parse(toml).unwrap_or_else(|e| panic!("{e}"));
        let gateway = Gateway::start(cfg)
            .await
            .unwrap_or_else(|e| panic!("{}", pylon::error::ErrorChain(&e)));
        let addr = gateway.local_addrs()[0];
        TestGateway { gateway, addr }
    }

    /// `http://127.0.0.1:port` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// The message (the whole error chain) `Gateway::start` refuses `cfg`
/// with, or `None` if it started.
pub async fn start_error(cfg: config::Config) -> Option<String> {
    match Gateway::start(cfg).await {
        Ok(_) => None,
        Err(e) => Some(pylon::error::ErrorChain(&e).to_string()),
    }
}

/// Parse TOML text as a config with a test listener and a shared test cache dir.
pub fn parse(toml: &str) -> Result<config::Config, config::ConfigError> {
    let text = format!(
        "[runtime]\ncache-dir = {:?}\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\n{toml}",
        cache_dir().display().to_string()
    );
    config::parse(&text, Path::new("test.toml"), &root())
}

/// TOML for upstream `u` at `up`, the plugin `name` (its built component,
/// plus the `def_extra` lines in its definition) and one route `r` on every
/// path whose only plugin is `name`, configured by the
/// `[routes.plugins.config]` TOML `config`.
pub fn one_plugin_route(up: &str, name: &str, def_extra: &str, config: &str) -> String {
    format!(
        r#"
[upstreams.u]
targets = ["{up}"]

[plugins.{name}]
component = {component:?}
{def_extra}

[[routes]]
id = "r"
path-prefix = "/"
upstream = "u"

[[routes.plugins]]
plugin = "{name}"

[routes.plugins.config]
{config}
"#,
        component = plugin(name),
    )
}

/// GET `path` on the gateway's admin listener: status and body text.
pub async fn admin_get(gw: &Gateway, path: &str) -> (u16, String) {
    let r = client()
        .get(format!(
            "http://{}{path}",
            gw.admin_addr().expect("admin listener")
        ))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Send `req` and return the response's status: the "send a request,
/// expect a status" of most tests (a request that cannot be sent fails the
/// test).
pub async fn status_of(req: reqwest::RequestBuilder) -> reqwest::StatusCode {
    req.send().await.unwrap().status()
}

/// The value of one exact series line in `/metrics`.
pub fn series(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One compile cache shared by the whole test run.
pub fn cache_dir() -> PathBuf {
    root().join("target/test-pylon-cache")
}

/// A plain HTTP client (HTTP/1.1, no proxy, no redirects).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A real `redis-server` on a free loopback port, without persistence, for
/// tests of state shared across gateways (`[runtime] kv = { backend =
/// "redis", url = .. }`). Killed when dropped.
pub struct Redis {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: std::process::Child,
}

impl Redis {
    /// Start one and return once it logs that it accepts connections and
    /// answers `PING`. Redis needs an explicit port, so a free one is found
    /// by binding port 0; if another process takes it first, the server
    /// exits and another port is tried.
    pub fn start() -> Redis {
        use std::io::{BufRead, BufReader, Read, Write};
        let bin = ["/usr/bin/redis-server", "redis-server"]
            .into_iter()
            .find(|b| !b.starts_with('/') || Path::new(b).exists())
            .unwrap();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = std::process::Command::new(bin)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--loglevel", "notice", "--logfile", ""])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start redis-server (apt-get install redis-server)");
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut ready = false;
            let mut line = String::new();
            while out.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("Ready to accept connections") {
                    ready = true;
                    break;
                }
                line.clear();
            }
            if !ready {
                // EOF before ready: it exited (port taken); try another.
                let _ = child.kill();
                let _ = child.wait();
                continue;
            }
            // Keep draining its log so it never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
            let mut conn =
                std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            conn.write_all(b"PING\r\n").unwrap();
            let mut pong = [0u8; 7];
            conn.read_exact(&mut pong).expect("redis PING");
            assert_eq!(&pong, b"+PONG\r\n");
            return Redis { port, child };
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
