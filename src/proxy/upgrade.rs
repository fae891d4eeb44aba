//! WebSocket passthrough: an HTTP/1.1 `Upgrade: websocket` request on a
//! route that allows it (`websocket = true`) goes, after the route's
//! request-phase plugins (which may refuse it: no upstream connection is
//! made then), to a target of the route's `http1` upstream on a connection
//! of its own ([`crate::upstream::TunnelConn`]). When the upstream answers
//! `101 Switching Protocols` naming `websocket`, the client gets the 101
//! and from then on bytes are copied both ways ([`tunnel`]) until the
//! upstream closes (or the client does and then the upstream), a side
//! stops reading for the listener's
//! `send-timeout`, or nothing moves either way for the route's
//! `tunnel-idle-timeout`. Any other answer goes back as an ordinary
//! response (and the client's connection stays HTTP), so an upstream that
//! does not switch cannot be made to carry smuggled requests.
//!
//! An HTTP/2 client asks with an extended CONNECT (RFC 8441,
//! `:protocol = websocket`; the listeners advertise
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL`): it goes upstream as the HTTP/1.1
//! upgrade above (with a `Sec-WebSocket-Key` of pylon's own) and the
//! upstream's 101 becomes the client's 200; the stream then carries the
//! bytes. The HTTP/2 connection's own limits still apply around it: its
//! `idle-timeout` counts from the last byte read from the client while no
//! ordinary request is in flight.
//!
//! Every other upgrade (`h2c`, `TLS/1.0`, anything on a route without
//! `websocket`) is not tunnelled: its `Upgrade` header is hop-by-hop and
//! removed, and the request goes upstream as an ordinary one.
//!
//! The tunnel holds the client connection's `max-connections` slot (the
//! upgraded socket carries it) and one of the target's `max-connections`.
//!
//! Not here: the response phase of an upgraded exchange (there is no
//! response to edit once the protocol switched: plugins' response phase is
//! skipped for a 101), HTTP/2 upstreams (refused at load).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header,
};
use http_body::Body as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    ConnInfo,
    forward::{Outbound, upstream_head},
    route::Routed,
};
use crate::{
    body::{self, Body},
    error::{LOG_LINES_PER_SECOND, ProxyError},
    generation::{Generation, LiveRoute},
    telemetry::{observe, throttle::LogThrottle, trace::TRACEPARENT},
    upstream::{UpstreamError, headers},
};

/// The bytes one direction of a tunnel reads before writing them on.
const COPY_BUFFER: usize = 16 * 1024;

/// `HTTP2-Settings`: hop-by-hop, only meaningful with `Upgrade: h2c`.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

static TUNNEL_FAILED: LogThrottle = LogThrottle::new(
    "tunnel setup failed",
    LOG_LINES_PER_SECOND,
    Duration::from_secs(1),
);

/// A client's upgrade that will be tunnelled if the upstream agrees.
pub(super) struct Wanted {
    on_upgrade: OnUpgrade,
    /// RFC 8441: an HTTP/2 extended CONNECT, answered 200 rather than 101.
    h2: bool,
}

/// The WebSocket upgrade `routed` asks for, when its route allows one:
/// HTTP/1.1 `GET` with `Connection: upgrade` and `Upgrade: websocket`, or
/// an HTTP/2 extended CONNECT with `:protocol = websocket` (RFC 8441).
/// `None` for everything else, whose `Upgrade` is then dropped on the way
/// upstream as any hop-by-hop header. A request with `HTTP2-Settings` never
/// upgrades and loses that header. An extended CONNECT on a route without
/// `websocket` is refused (400): it has no meaning as an ordinary request.
pub(super) fn wanted(routed: &mut Routed<'_>) -> Result<Option<Wanted>, ProxyError> {
    let parts = &mut routed.parts;
    parts.headers.remove(HTTP2_SETTINGS);
    let protocol = parts.extensions.remove::<hyper::ext::Protocol>();
    let h2 = parts.version == Version::HTTP_2 && parts.method == Method::CONNECT;
    if h2 && let Some(p) = &protocol {
        if !routed.route.config.websocket || !p.as_str().eq_ignore_ascii_case("websocket") {
            return Err(ProxyError::BadRequest(
                "this route does not tunnel this protocol",
            ));
        }
    } else if !routed.route.config.websocket
        || parts.version != Version::HTTP_11
        || parts.method != Method::GET
        || !is_websocket_upgrade(&parts.headers)
    {
        return Ok(None);
    }
    let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return Ok(None);
    };
    Ok(Some(Wanted { on_upgrade, h2 }))
}

/// `Connection` lists `upgrade` and `Upgrade` is exactly `websocket`.
fn is_websocket_upgrade(h: &HeaderMap) -> bool {
    let connection_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let mut upgrades = h.get_all(header::UPGRADE).iter();
    let websocket = match (upgrades.next(), upgrades.next()) {
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"),
        _ => false,
    };
    connection_upgrade && websocket
}

/// Send the upgrade request `out` to the upstream on a connection of its
/// own. On a `101` naming `websocket`, start the tunnel (it runs on its
/// own task once hyper has handed over both connections) and return the
/// 101 for the client; any other response is returned as it is, for the
/// ordinary path.
pub(super) async fn forward(
    rt: &Generation,
    out: Outbound<'_>,
    wanted: Wanted,
) -> Result<Response<Body>, ProxyError> {
    let Outbound {
        route,
        upstream,
        mut parts,
        path_and_query,
        host,
        conn,
        body,
        body_state: _,
        params: _,
    } = out;
    let Some(upstream) = upstream else {
        return Err(ProxyError::NoUpstream {
            route: route.id.to_string(),
        });
    };
    if !body.is_end_stream() && body.size_hint().upper() != Some(0) {
        return Err(ProxyError::BadRequest("an upgrade request has no body"));
    }
    let upstream_error = |source| ProxyError::Upstream {
        route: route.id.to_string(),
        source,
    };
    upstream_head(
        &mut parts,
        conn,
        host,
        Version::HTTP_11,
        &path_and_query,
        upstream,
    )
    .map_err(upstream_error)?;
    set_upgrade_headers(&mut parts.headers);
    if wanted.h2 {
        // RFC 8441 §5: the HTTP/1.1 hop needs the GET and the key an
        // HTTP/2 client does not send.
        parts.method = Method::GET;
        parts.headers.insert(SEC_WEBSOCKET_KEY, websocket_key());
    }
    parts.version = Version::HTTP_11;
    let metrics = rt.upstream_metrics(upstream);
    let call = match metrics {
        Some((name, metrics)) => observe::upstream_call(name, Some(metrics)),
        None => observe::upstream_call(&Arc::from(upstream), None),
    };
    if let Some(tp) = call.traceparent() {
        parts.headers.insert(TRACEPARENT, tp);
    }
    let req = Request::from_parts(parts, body::empty());
    let result = exchange(rt, upstream, req, route.config.timeout).await;
    call.finish(match &result {
        Ok(resp) => Ok(resp.status().as_u16()),
        Err(e) => Err(e.kind()),
    });
    let resp = result.map_err(upstream_error)?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(not_switched(resp, route));
    }
    if !is_websocket_switch(resp.headers()) {
        return Err(upstream_error(UpstreamError::Failed {
            upstream: upstream.to_string(),
            target: "upgrade".into(),
            source: "101 without `Upgrade: websocket`".into(),
        }));
    }
    Ok(switched(resp, wanted, route, conn))
}

/// The upstream did not switch: its response, as an ordinary one, and the
/// client's connection stays HTTP.
fn not_switched(resp: Response<hyper::body::Incoming>, route: &LiveRoute) -> Response<Body> {
    let (mut rparts, rbody) = resp.into_parts();
    headers::remove_hop_by_hop(&mut rparts.headers);
    headers::append_via(&mut rparts.headers, Version::HTTP_11);
    let idle = route.config.response_body_timeout;
    let rbody = body::UpstreamBody::wrap(body::boxed(rbody), idle, Box::new(|| {}));
    Response::from_parts(rparts, rbody)
}

/// The upstream switched: start the tunnel between the two upgraded
/// connections (on its own task, once hyper has handed both over) and
/// return the client's 101 (or, over HTTP/2, its 200).
fn switched(
    mut resp: Response<hyper::body::Incoming>,
    wanted: Wanted,
    route: &LiveRoute,
    conn: &ConnInfo,
) -> Response<Body> {
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let (mut rparts, _) = resp.into_parts();
    headers::remove_hop_by_hop(&mut rparts.headers);
    if wanted.h2 {
        rparts.status = StatusCode::OK;
        rparts.headers.remove(SEC_WEBSOCKET_ACCEPT);
        headers::append_via(&mut rparts.headers, Version::HTTP_2);
    } else {
        headers::append_via(&mut rparts.headers, Version::HTTP_11);
        set_upgrade_headers(&mut rparts.headers);
    }
    let limits = Limits {
        idle: route.config.tunnel_idle_timeout,
        send: conn.send_timeout,
    };
    let mut gauge = route.metrics.tunnel_opened();
    let route_id = route.id.clone();
    let drain = conn.drain.clone();
    tokio::spawn(async move {
        let (client, upstream) = tokio::join!(wanted.on_upgrade, upstream_upgrade);
        match (client, upstream) {
            (Ok(client), Ok(upstream)) => {
                let run = tunnel(TokioIo::new(client), TokioIo::new(upstream), limits);
                // Gateway shutdown: the tunnel runs on through the grace
                // period (holding `drain` keeps the listener draining),
                // and is closed, both sockets, once it is over.
                let end = match &drain {
                    Some(d) => tokio::select! {
                        end = run => end,
                        () = d.closed() => TunnelEnd::Shutdown,
                    },
                    None => run.await,
                };
                gauge.set_reason(end.label());
                tracing::debug!(route = %route_id, reason = end.label(), "tunnel closed");
            }
            (client, upstream) => {
                if TUNNEL_FAILED.admit() {
                    tracing::info!(
                        route = %route_id,
                        client = ?client.err(),
                        upstream = ?upstream.err(),
                        "a side of the tunnel was gone before it started"
                    );
                }
            }
        }
    });
    Response::from_parts(rparts, body::empty())
}

/// `Connection: upgrade` and `Upgrade: websocket` (after the hop-by-hop
/// headers, these included, were removed).
fn set_upgrade_headers(h: &mut HeaderMap) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455
/// §4.1), from the standard library's randomly seeded hasher.
fn websocket_key() -> HeaderValue {
    use std::hash::BuildHasher;
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let state = std::collections::hash_map::RandomState::new();
    let mut raw = [0u8; 18];
    raw[..8].copy_from_slice(&state.hash_one(1u8).to_le_bytes());
    raw[8..16].copy_from_slice(&state.hash_one(2u8).to_le_bytes());
    let mut out = Vec::with_capacity(24);
    for c in raw.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        for shift in [18, 12, 6, 0] {
            out.push(B64[(n >> shift) as usize & 63]);
        }
    }
    // 16 bytes are 22 characters and `==`.
    out.truncate(22);
    out.extend_from_slice(b"==");
    HeaderValue::from_bytes(&out).expect("base64 is a valid header value")
}

/// A `101` switches to WebSocket only if its `Upgrade` says so.
fn is_websocket_switch(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// The upgrade request on a fresh connection to a target; the response
/// head within `timeout`. The connection lives on in a task of its own
/// (hyper hands its socket to the upgrade on a 101, or closes it once the
/// response ends).
async fn exchange(
    rt: &Generation,
    upstream: &str,
    req: Request<Body>,
    timeout: Duration,
) -> Result<Response<hyper::body::Incoming>, UpstreamError> {
    let conn = rt.upstreams().connect_tunnel(upstream).await?;
    let target = conn.target.clone();
    let failed = |source: hyper::Error| UpstreamError::Failed {
        upstream: upstream.to_string(),
        target: target.clone(),
        source: Box::new(source),
    };
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(conn))
        .await
        .map_err(failed)?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(error = %err, "upstream upgrade connection ended with an error");
        }
    });
    match tokio::time::timeout(timeout, sender.send_request(req)).await {
        Ok(resp) => resp.map_err(failed),
        Err(_) => Err(UpstreamError::Timeout {
            upstream: upstream.to_string(),
            timeout,
        }),
    }
}

/// How long a tunnel may go without moving a byte, and a write without
/// progress.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Nothing read or written either way for this long ends the tunnel.
    pub(crate) idle: Duration,
    /// A write that makes no progress for this long (its reader does not
    /// read) ends the tunnel.
    pub(crate) send: Duration,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    /// Both sides closed, the client first.
    ClientClosed,
    /// Both sides closed, the upstream first.
    UpstreamClosed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A side did not take bytes for the send timeout.
    Stalled,
    /// A read or write failed (a reset).
    Error,
    /// The gateway shut down and its grace period ended.
    Shutdown,
}

impl TunnelEnd {
    /// The `reason` label of `pylon_tunnels_closed_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            TunnelEnd::ClientClosed => "client_closed",
            TunnelEnd::UpstreamClosed => "upstream_closed",
            TunnelEnd::Idle => "idle",
            TunnelEnd::Stalled => "stalled",
            TunnelEnd::Error => "error",
            TunnelEnd::Shutdown => "shutdown",
        }
    }
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Half {
    Eof,
    Stalled,
    Error,
}

/// Copy bytes both ways between `client` and `upstream` until the
/// upstream's end, or the client's and then the upstream's (each passed on
/// as a write shutdown), a write makes no progress for `limits.send`, a
/// read or write fails, or nothing moves for `limits.idle`. Memory is two
/// fixed buffers.
pub(crate) async fn tunnel<C, U>(client: C, upstream: U, limits: Limits) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut upstream_r, mut upstream_w) = tokio::io::split(upstream);
    let up = copy(&mut client_r, &mut upstream_w, limits.send, start, &last);
    let down = copy(&mut upstream_r, &mut client_w, limits.send, start, &last);
    let idle = async {
        loop {
            let since = Duration::from_millis(last.load(Relaxed));
            let deadline = start + since + limits.idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    };
    tokio::pin!(up, down, idle);
    // The upstream's end (passed on as a write shutdown) ends the tunnel:
    // a WebSocket server closes the TCP connection after the close
    // handshake (RFC 6455 §7.1.1), while a client may keep its socket open
    // until it sees that close. A client's end is passed on and the
    // upstream's answer awaited, for at most the send timeout.
    tokio::select! {
        h = &mut down => {
            if h != Half::Eof {
                return end_of(h);
            }
            TunnelEnd::UpstreamClosed
        }
        h = &mut up => {
            if h != Half::Eof {
                return end_of(h);
            }
            match tokio::time::timeout(limits.send, &mut down).await {
                Ok(Half::Eof) => TunnelEnd::ClientClosed,
                Ok(h) => end_of(h),
                Err(_) => TunnelEnd::Stalled,
            }
        }
        () = &mut idle => TunnelEnd::Idle,
    }
}

fn end_of(h: Half) -> TunnelEnd {
    match h {
        Half::Stalled => TunnelEnd::Stalled,
        Half::Error | Half::Eof => TunnelEnd::Error,
    }
}

/// One direction: read, then write all of it within `send`; at the
/// reader's end, shut the writer down.
async fn copy<R, W>(r: &mut R, w: &mut W, send: Duration, start: Instant, last: &AtomicU64) -> Half
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let touch = || last.store(start.elapsed().as_millis() as u64, Relaxed);
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => {
                let _ = tokio::time::timeout(send, w.shutdown()).await;
                return Half::Eof;
            }
            Ok(n) => n,
            Err(_) => return Half::Error,
        };
        touch();
        match tokio::time::timeout(send, async {
            w.write_all(&buf[..n]).await?;
            w.flush().await
        })
        .await
        {
            Ok(Ok(())) => touch(),
            Ok(Err(_)) => return Half::Error,
            Err(_) => return Half::Stalled,
        }
    }
}
