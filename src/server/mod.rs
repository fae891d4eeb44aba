//! Client-facing listeners and the running gateway.
//!
//! A [`Gateway`] binds every listener (a socket per worker), serves HTTP/1.1
//! and HTTP/2 (h2c) on each connection from its [`workers`], hands each request the generation in
//! force when it arrived, swaps generations on reload, and drains connections
//! on shutdown. What one client may hold (connections, requests, time) is
//! bounded per listener in [`conn`].

mod conn;
pub mod fds;

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use crate::workers::Workers;
use arc_swap::ArcSwap;
use conn::{ActivityBody, ConnState, LimitCounters, ListenerShared, ResponseBody, WatchedIo};
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinSet,
};

use crate::{
    config::{self, AccessLogTarget, Config, ConfigError, HttpsRedirect, Listener},
    generation::{Generation, Shared},
    proxy::{self, ConnInfo},
    reload::{FileWatcher, ReloadReport, Reloader},
    telemetry::{
        access_log::AccessLog,
        metrics::Metrics,
        observe::{CountedBody, Observability},
        throttle::LogThrottle,
        trace::{Tracing, TracingError},
    },
    tls::{accept::Alpn, server::ServerTls},
};

/// How long shutdown waits for buffered access log lines and spans.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 streams a client may reset before the server has accepted them
/// (hyper's rapid-reset defence, CVE-2023-44487); past it, GOAWAY
/// `ENHANCE_YOUR_CALM`. h2's default, set here so it cannot change under us.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// HTTP/2 streams the server may reset because the client broke the
/// protocol on them, over a connection's life, before GOAWAY
/// `ENHANCE_YOUR_CALM` (hyper's default is 1024; a correct client causes
/// none).
const H2_MAX_LOCAL_ERROR_RESETS: usize = 128;

/// At most one "accept failed" line per this interval.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration (or a plugin it names) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The worker threads could not be started.
    #[error("cannot start the worker threads")]
    Workers(#[source] std::io::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The access log file could not be opened.
    #[error("cannot open the access log {path}")]
    AccessLog {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The OTLP exporter could not be set up.
    #[error(transparent)]
    Tracing(#[from] TracingError),
    /// The configuration file and components cannot be watched for changes.
    #[error("cannot watch the configuration for changes")]
    Watch(#[source] notify::Error),
}

/// A running gateway.
pub struct Gateway {
    reloader: Arc<Reloader>,
    addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
    watcher: Option<FileWatcher>,
    // Last: dropped after the tasks on it have drained.
    workers: Workers,
}

impl Gateway {
    /// Load the configuration file, build the generation, bind the listeners,
    /// start serving, and reload whenever the file or a component it names
    /// changes.
    pub async fn start_from_file(path: PathBuf) -> Result<Gateway, StartError> {
        let config = config::load(&path)?;
        let mut gw = Self::start_with(config, Some(path)).await?;
        gw.watcher = Some(FileWatcher::start(&gw.reloader).map_err(StartError::Watch)?);
        Ok(gw)
    }

    /// Build the generation for `config`, bind its listeners and start serving.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Self::start_with(config, None).await
    }

    async fn start_with(config: Config, path: Option<PathBuf>) -> Result<Gateway, StartError> {
        let shared = Arc::new(Shared::new(&config).await?);
        fds::check_budget(&config);
        let obs = Arc::new(observability(&config, &shared.metrics)?);
        let listeners = config.listeners.clone();
        let tls = crate::tls::listeners(&config)?;
        let worker_count = config.runtime.worker_count();
        let admin = config.admin.clone();
        let generation = Generation::build(config, &shared).await?;
        let current = Arc::new(ArcSwap::from_pointee(generation));
        let reloader = Arc::new(Reloader::new(shared, current.clone(), path, obs.clone()));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let workers = Workers::start(worker_count).map_err(StartError::Workers)?;
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        let bind = |address: SocketAddr| async move {
            let tcp = TcpListener::bind(address)
                .await
                .map_err(|source| StartError::Bind { address, source })?;
            let addr = tcp
                .local_addr()
                .map_err(|source| StartError::Bind { address, source })?;
            Ok::<_, StartError>((tcp, addr))
        };
        let mut tls_listeners = Vec::new();
        for (index, (l, tls)) in listeners.into_iter().zip(tls).enumerate() {
            let bind_err = |source| StartError::Bind {
                address: l.address,
                source,
            };
            let sockets = bind_per_worker(l.address, workers.handles().len()).map_err(bind_err)?;
            let addr = sockets[0].local_addr().map_err(bind_err)?;
            let limits = ListenerShared::new(
                l.limits.clone(),
                l.header_timeout,
                LimitCounters::new(&obs.metrics),
            );
            for (tcp, handle) in sockets.into_iter().zip(workers.handles()) {
                let serve = serve(
                    tcp,
                    l.clone(),
                    tls.clone(),
                    limits.clone(),
                    current.clone(),
                    obs.clone(),
                    shutdown_rx.clone(),
                );
                tasks.spawn_on(serve, handle);
            }
            tracing::info!(%addr, workers = workers.handles().len(), tls = tls.is_some(), "listening");
            if let Some(tls) = tls {
                tls_listeners.push(crate::reload::TlsListener {
                    index,
                    address: addr,
                    tls,
                });
            }
            addrs.push(addr);
        }
        reloader.set_tls_listeners(tls_listeners);
        let admin_addr = match admin {
            Some(admin) => {
                let (tcp, addr) = bind(admin.address).await?;
                tracing::info!(%addr, "admin API listening");
                tasks.spawn(crate::admin::serve(
                    tcp,
                    reloader.clone(),
                    admin.token,
                    shutdown_rx.clone(),
                ));
                Some(addr)
            }
            None => None,
        };
        reloader.set_ready(true);
        Ok(Gateway {
            reloader,
            addrs,
            admin_addr,
            shutdown_tx,
            tasks,
            watcher: None,
            workers,
        })
    }

    /// The bound listener addresses, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// How many data-plane worker threads serve the listeners.
    pub fn worker_count(&self) -> usize {
        self.workers.handles().len()
    }

    /// The admin API's bound address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The generation in force.
    pub fn generation(&self) -> Arc<Generation> {
        self.reloader.generation()
    }

    /// Process-wide state (plugin engine, KV store, metrics).
    pub fn shared(&self) -> &Arc<Shared> {
        self.reloader.shared()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.reloader.shared().metrics
    }

    /// The reloader (shared with the admin API and the file watcher).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// The configuration file, when started from one.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.reloader.config_path()
    }

    /// Re-read the configuration file and swap in the new generation. On any
    /// error the old generation keeps serving.
    pub async fn reload(&self) -> Result<ReloadReport, ConfigError> {
        self.reloader.reload().await
    }

    /// Build a generation for `config` beside the current one and swap it in.
    /// Settings that need a restart are kept and reported as warnings.
    pub async fn reload_with(&self, config: Config) -> Result<ReloadReport, ConfigError> {
        self.reloader.reload_with(config).await
    }

    /// Stop accepting (listeners close at once), let in-flight requests
    /// finish for up to `grace`, close what is left, and flush the access
    /// log and the span queue.
    pub async fn shutdown(mut self, grace: Duration) {
        self.reloader.set_ready(false);
        self.watcher = None;
        let _ = self.shutdown_tx.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(?grace, "grace period over; closing remaining connections");
            self.tasks.abort_all();
        }
        self.reloader.observability().flush(FLUSH_TIMEOUT).await;
    }
}

/// The access log and tracing the configuration asks for.
fn observability(config: &Config, metrics: &Arc<Metrics>) -> Result<Observability, StartError> {
    let access_log = match &config.access_log {
        None => None,
        Some(target) => Some(
            AccessLog::start(target, metrics.access_log_dropped().clone()).map_err(|source| {
                StartError::AccessLog {
                    path: match target {
                        AccessLogTarget::Stdout => PathBuf::from("-"),
                        AccessLogTarget::File(p) => p.clone(),
                    },
                    source,
                }
            })?,
        ),
    };
    let tracing = match &config.tracing {
        None => Tracing::disabled(),
        Some(t) => Tracing::otlp(&t.otlp_endpoint, &t.service_name)?,
    };
    Ok(Observability::new(metrics.clone(), access_log, tracing))
}

/// Counts an open client connection until dropped.
struct ConnectionGauge(prometheus_client::metrics::gauge::Gauge);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One listening socket per worker on `address`, all bound with
/// `SO_REUSEPORT` (a port 0 is chosen once, by the first), so the kernel
/// spreads new connections over the workers. With one shared socket,
/// whichever worker woke first took a whole burst of connections (wrk's 32
/// all landed on one of two workers), leaving the other idle for as long as
/// those connections lived.
fn bind_per_worker(
    address: SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut bound = address;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        let socket = if bound.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(bound)?;
        let listener = socket.listen(1024)?;
        bound = listener.local_addr()?;
        sockets.push(listener.into_std()?);
    }
    Ok(sockets)
}

/// The HTTP side of a listener's connections: one builder that detects
/// the protocol (cleartext: HTTP/1.1, or HTTP/2 with prior knowledge) and
/// one per protocol for TLS, where ALPN has already chosen.
struct Protocols {
    detect: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(listener: &Listener) -> Self {
        let l = &listener.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(listener.header_timeout)
            .max_buf_size(listener.max_header_bytes.max(8192))
            // Flattened writes (see `upstream::h1`); TLS streams gain most.
            .writev(false)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(listener.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(l.http2_max_concurrent_streams)
            .max_send_buf_size(l.http2_max_send_buffer)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
            // RFC 8441: WebSocket over HTTP/2 (see `proxy::upgrade`).
            .enable_connect_protocol();
        let http1 = builder.clone().http1_only();
        let http2 = builder.clone().http2_only();
        let detect = if listener.http2 {
            builder
        } else {
            http1.clone()
        };
        Self {
            detect,
            http1,
            http2,
        }
    }
}

/// What every connection of one worker's socket shares.
struct ConnContext {
    listener: Listener,
    tls: Option<Arc<ServerTls>>,
    protocols: Protocols,
    current: Arc<ArcSwap<Generation>>,
    obs: Arc<Observability>,
}

/// Accept on one worker's socket of a listener until shutdown, then let
/// its connections finish (each closes gracefully). The accept loop only
/// accepts and counts: a TLS handshake runs in the connection's own task.
async fn serve(
    tcp: std::net::TcpListener,
    listener: Listener,
    tls: Option<Arc<ServerTls>>,
    limits: Arc<ListenerShared>,
    current: Arc<ArcSwap<Generation>>,
    obs: Arc<Observability>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tcp = match TcpListener::from_std(tcp) {
        Ok(tcp) => tcp,
        Err(err) => {
            tracing::error!(address = %listener.address, error = %err, "cannot register the listener");
            return;
        }
    };
    let cx = Arc::new(ConnContext {
        protocols: Protocols::new(&listener),
        listener,
        tls,
        current,
        obs,
    });
    // Every connection task holds a sender; `recv` ends when all are gone.
    let (drained_tx, mut drained) = mpsc::channel::<()>(1);
    loop {
        let (stream, client) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    if ACCEPT_FAILED.admit() {
                        tracing::warn!(address = %cx.listener.address, error = %err, "accept failed");
                    }
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // At capacity: closed before anything is read (or any handshake
        // work done), so it costs no request.
        let Some(state) = limits.admit_connection() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        cx.obs.metrics.open_connections().inc();
        let gauge = ConnectionGauge(cx.obs.metrics.open_connections().clone());
        let drained = drained_tx.clone();
        let shutdown = shutdown.clone();
        let cx = cx.clone();
        tokio::spawn(async move {
            let _gauge = gauge;
            connection(cx, stream, client, state, shutdown, drained).await;
        });
    }
    drop(tcp);
    drop(drained_tx);
    let _ = drained.recv().await;
}

/// One accepted connection: the TLS handshake if the listener has TLS
/// (bounded by `header-timeout`, abandoned on shutdown), then HTTP.
async fn connection(
    cx: Arc<ConnContext>,
    stream: tokio::net::TcpStream,
    client: SocketAddr,
    state: Arc<ConnState>,
    mut shutdown: watch::Receiver<bool>,
    drained: mpsc::Sender<()>,
) {
    let io = WatchedIo::new(stream, state.clone());
    let Some(tls) = &cx.tls else {
        let info = ConnInfo::new(client, "http")
            .with_send_timeout(cx.listener.limits.send_timeout)
            .with_drain(drained);
        let builder = &cx.protocols.detect;
        return http(&cx, builder, io, info, state, shutdown, client).await;
    };
    let timeout = cx.listener.header_timeout;
    let accepted = tokio::select! {
        accepted = crate::tls::accept::handshake(tls, io, timeout) => accepted,
        _ = shutdown.wait_for(|stop| *stop) => return,
    };
    let accepted = match accepted {
        Ok(a) => a,
        Err(failure) => {
            cx.obs.metrics.tls_handshake_failed(failure.label());
            tracing::debug!(%client, reason = failure.label(), "TLS handshake failed");
            return;
        }
    };
    cx.obs
        .metrics
        .tls_connection(accepted.version, accepted.alpn.label());
    let builder = match accepted.alpn {
        Alpn::H2 => &cx.protocols.http2,
        Alpn::Http1 | Alpn::None => &cx.protocols.http1,
    };
    let info = ConnInfo::tls(client, accepted.identity)
        .with_send_timeout(cx.listener.limits.send_timeout)
        .with_drain(drained);
    http(&cx, builder, accepted.stream, info, state, shutdown, client).await;
}

/// Serve HTTP on `io` until the connection ends.
async fn http<I>(
    cx: &Arc<ConnContext>,
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    info: ConnInfo,
    state: Arc<ConnState>,
    shutdown: watch::Receiver<bool>,
    client: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let current = cx.current.clone();
    let obs = cx.obs.clone();
    let conn_state = state.clone();
    let redirect = cx.listener.redirect_to_https;
    // Only a TLS listener may have one (validation), and only TLS
    // connections reach here on a TLS listener.
    let hsts = cx.listener.hsts.clone();
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let rt = current.load_full();
        let scope = obs.begin(&req, client);
        let admitted = conn_state.admit_request();
        let http1 = req.version() < http::Version::HTTP_2;
        let grpc = proxy::is_grpc(req.headers());
        let info = info.clone();
        let hsts = hsts.clone();
        async move {
            let Some((guard, last)) = admitted else {
                let resp = crate::error::error_response_for(
                    grpc,
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "too many requests in flight",
                );
                let resp = Observability::finish(scope, resp);
                return Ok::<_, Infallible>(resp.map(|b| ResponseBody::new(b, None)));
            };
            let slot = guard.slot().clone();
            let req = req.map(|b| {
                crate::body::boxed(CountedBody::new(
                    ActivityBody::new(b, slot.clone()),
                    scope.clone(),
                ))
            });
            let resp = match redirect {
                Some(to) => https_redirect(&req, to),
                None => {
                    let work = Observability::run(scope.clone(), proxy::handle(rt, req, info));
                    tokio::select! {
                        biased;
                        resp = work => resp,
                        () = slot.expired() => slot.idle_response(grpc),
                    }
                }
            };
            let mut resp = Observability::finish(scope, resp);
            if let Some(h) = hsts {
                resp.headers_mut()
                    .insert(http::header::STRICT_TRANSPORT_SECURITY, h);
            }
            if last && http1 {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok(resp.map(|b| ResponseBody::new(b, Some(guard))))
        }
    });
    // With upgrades: a WebSocket upgrade's 101 hands the socket (still
    // holding the connection's slot) to the proxy's tunnel.
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    conn::drive(conn, |c| c.graceful_shutdown(), state, shutdown, client).await;
}

/// The 308 a `redirect-to-https` listener answers every request with: the
/// host the client asked for (its port replaced by `to.port`, or dropped
/// for 443), path and query, over `https`. 308 rather than 301: the client
/// repeats the same method and body. A request whose host is missing,
/// repeated or not a plain host (see [`redirect_host`]) gets 400: nothing
/// else could go in `Location` without redirecting somewhere the client did
/// not ask for.
fn https_redirect<B>(
    req: &http::Request<B>,
    to: HttpsRedirect,
) -> http::Response<crate::body::Body> {
    let bad = || {
        crate::error::error_response(
            http::StatusCode::BAD_REQUEST,
            "no valid host to redirect to",
        )
    };
    // The request target's authority wins over `Host` (HTTP/2's
    // `:authority`, an HTTP/1.1 absolute-form target; RFC 9112 3.2.2).
    let asked = match req.uri().authority() {
        Some(a) => a.as_str().as_bytes(),
        None => {
            let mut hosts = req.headers().get_all(http::header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(h), None) => h.as_bytes(),
                _ => return bad(),
            }
        }
    };
    let Some(host) = redirect_host(asked) else {
        return bad();
    };
    // An asterisk-form (`OPTIONS *`) target has no path to keep.
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let location = match to.port {
        Some(port) => format!("https://{host}:{port}{path}"),
        None => format!("https://{host}{path}"),
    };
    let Ok(location) = http::HeaderValue::try_from(location) else {
        return bad();
    };
    let mut resp = http::Response::new(crate::body::empty());
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(http::header::LOCATION, location);
    resp.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from_static("0"),
    );
    resp
}

/// The host of `authority` (`Host` syntax: `uri-host [":" port]`) if it
/// is one a redirect may name, without its port: a DNS-style name (letters,
/// digits, `-`, `_`, `.`), an IPv4 address or a bracketed IPv6 address,
/// with at most a port of 1 to 65535. Anything else (userinfo as in
/// `evil@host`, percent-escapes, a path, a port out of range, an IPv6
/// zone) is refused rather than cleaned up, so what the client sent is
/// either the host in `Location` or a 400.
fn redirect_host(authority: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(authority).ok()?;
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (&text[..inside.len() + 2], port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        if host.is_empty() || host.len() > 253 || !host.bytes().all(plain) {
            return None;
        }
        (host, port)
    };
    match port {
        // `Host: example.com:` is allowed (port = *DIGIT).
        None | Some("") => Some(host),
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            matches!(p.parse::<u16>(), Ok(1..)).then_some(host)
        }
        Some(_) => None,
    }
}

/// Accept failures are logged at most once per [`ACCEPT_LOG_INTERVAL`]
/// (the next line says how many were held back): out of descriptors, every
/// attempt fails, and a line per attempt would flood the log.
static ACCEPT_FAILED: LogThrottle = LogThrottle::new("accept failed", 1, ACCEPT_LOG_INTERVAL);

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(target: &str, hosts: &[&str], port: Option<u16>) -> (u16, Option<String>) {
        let mut req = http::Request::builder().uri(target);
        for h in hosts {
            req = req.header(http::header::HOST, *h);
        }
        let resp = https_redirect(&req.body(()).unwrap(), HttpsRedirect { port });
        let location = resp
            .headers()
            .get(http::header::LOCATION)
            .map(|l| l.to_str().unwrap().to_owned());
        (resp.status().as_u16(), location)
    }

    #[test]
    fn the_redirect_keeps_host_path_and_query_and_sets_the_port() {
        let ok = |l: &str| (308, Some(l.to_owned()));
        assert_eq!(
            redirect("/a/b?x=1&y", &["api.test:8080"], Some(8443)),
            ok("https://api.test:8443/a/b?x=1&y")
        );
        assert_eq!(redirect("/", &["api.test"], None), ok("https://api.test/"));
        assert_eq!(
            redirect("/p", &["[::1]:80"], Some(8443)),
            ok("https://[::1]:8443/p")
        );
        assert_eq!(
            redirect("/p", &["10.0.0.1:"], None),
            ok("https://10.0.0.1/p")
        );
        // A double slash stays a path: the host is fixed before it.
        assert_eq!(
            redirect("//evil.test/x", &["api.test"], None),
            ok("https://api.test//evil.test/x")
        );
        // The absolute-form target's authority wins over Host.
        assert_eq!(
            redirect("http://api.test:80/x", &["other.test"], None),
            ok("https://api.test/x")
        );
        assert_eq!(redirect("*", &["api.test"], None), ok("https://api.test/"));
    }

    #[test]
    fn a_host_that_is_not_plainly_a_host_gets_400() {
        for hosts in [
            &[][..],
            &["api.test", "evil.test"][..],
            &[""],
            &["evil.test@api.test"],
            &["api.test:99999"],
            &["api.test:0"],
            &["api.test:443:1"],
            &["api.test:+443"],
            &["api.test/evil"],
            &["api.test%2fevil.test"],
            &["api.test\\evil.test"],
            &["[::1"],
            &["[::1]x"],
            &["[fe80::1%25eth0]"],
            &["[not-ipv6]"],
            &["a b"],
        ] {
            assert_eq!(redirect("/", hosts, None), (400, None), "{hosts:?}");
        }
        let long = "a".repeat(254);
        assert_eq!(redirect("/", &[long.as_str()], None), (400, None));
        assert_eq!(
            redirect("http://user@api.test/", &["api.test"], None),
            (400, None)
        );
    }
}
