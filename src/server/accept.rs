//! One worker's side of a listener: its `SO_REUSEPORT` socket, the accept
//! loop (admission at `max-connections`, the open-connections gauge), the
//! TLS handshake, and hyper serving HTTP/1.1 or HTTP/2 on the connection
//! with every request handed to the proxy (or the HTTPS redirect). Not
//! here: what one connection may hold and for how long (`conn`), the
//! gateway's start and shutdown (`super`).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};

use super::{
    conn::{self, ActivityBody, ConnState, ListenerShared, ResponseBody, WatchedIo},
    redirect::https_redirect,
};
use crate::{
    config::Listener,
    generation::Generation,
    proxy::{self, ConnInfo},
    telemetry::{
        observe::{CountedBody, Observability},
        throttle::LogThrottle,
    },
    tls::{accept::Alpn, server::ServerTls},
};

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
pub(super) fn bind_per_worker(
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
pub(super) async fn serve(
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

/// Accept failures are logged at most once per [`ACCEPT_LOG_INTERVAL`]
/// (the next line says how many were held back): out of descriptors, every
/// attempt fails, and a line per attempt would flood the log.
static ACCEPT_FAILED: LogThrottle = LogThrottle::new("accept failed", 1, ACCEPT_LOG_INTERVAL);
