//! The request path, in named phases (each a module with a typed input and
//! output, the way pingora names its phases):
//!
//! 1. [`route`]: host and normalised path → the route, the upstream path,
//!    the client body watched for the route's idle timeout;
//! 2. [`request`]: buffer the body when a plugin asked for it, then the
//!    pipeline's request phase → forward (maybe elsewhere, maybe rewritten)
//!    or a plugin's own response;
//! 3. [`forward`]: one call upstream with forwarding headers, tracing and
//!    the upstream's metrics;
//! 4. [`respond`]: buffer the upstream body when a plugin asked for it, the
//!    response phase in reverse, and the framing of what goes back.
//!
//! Errors go to [`crate::error`] for their status. A route without plugins
//! goes from phase 1 to phase 3 and streams both ways.
//!
//! The request path is normalised ([`crate::router::path`]) before anything
//! else sees it: the router matches it, plugins see it, the access log
//! shows it, and it (after strip-prefix, rewrite or a plugin's rewrite,
//! each normalised again) is what goes upstream.

mod forward;
mod grpc;
mod request;
mod respond;
mod retry;
mod route;
mod upgrade;

pub use grpc::is_grpc;

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use http::{HeaderValue, Request, Response};

use crate::{
    body::Body,
    config::ConnectionLimits,
    error::ProxyError,
    generation::Generation,
    pipeline::{RequestOutcome, Sessions},
    tls::ClientIdentity,
    upstream::headers,
};

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub client: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The verified client certificate of a TLS connection, when the
    /// client sent one (read once, at the handshake).
    pub identity: Option<Arc<ClientIdentity>>,
    /// The client's IP as a header value, for `X-Forwarded-For`.
    client_ip: HeaderValue,
    /// The listener's `send-timeout`: a tunnel's write that makes no
    /// progress for this long ends it.
    send_timeout: Duration,
    /// Held by the connection and its tunnels: the listener's shutdown
    /// waits (its grace period) while any is held, then drops the
    /// receiver, which ends the tunnels still open.
    drain: Option<tokio::sync::mpsc::Sender<()>>,
}

impl ConnInfo {
    /// A cleartext connection from `client`.
    pub fn new(client: SocketAddr, scheme: &'static str) -> Self {
        Self {
            client,
            scheme,
            identity: None,
            client_ip: headers::client_ip_value(client.ip()),
            send_timeout: ConnectionLimits::default().send_timeout,
            drain: None,
        }
    }

    /// The listener's `send-timeout`, for tunnels.
    pub fn with_send_timeout(mut self, send_timeout: Duration) -> Self {
        self.send_timeout = send_timeout;
        self
    }

    /// The listener's drain handle (see the field), for tunnels.
    pub fn with_drain(mut self, drain: tokio::sync::mpsc::Sender<()>) -> Self {
        self.drain = Some(drain);
        self
    }

    /// A TLS connection from `client`, with its verified certificate.
    pub fn tls(client: SocketAddr, identity: Option<Arc<ClientIdentity>>) -> Self {
        Self {
            identity,
            ..Self::new(client, "https")
        }
    }
}

/// Handle one client request to completion.
pub async fn handle(rt: Arc<Generation>, req: Request<Body>, conn: ConnInfo) -> Response<Body> {
    let grpc = grpc::is_grpc(req.headers());
    let (routed, upgrade) = match routed(&rt, req) {
        Ok(routed) => routed,
        Err(err) => return err.into_response_for(grpc),
    };
    // Each path boxed on its own: a future is as large as the largest
    // state of any path through it, and boxing moves it whole, so one
    // future for both paths copied tens of KB into its box per request
    // whatever the route. Boxing as `dyn Future + Send` also proves `Send`
    // here, with concrete lifetimes; left to hyper's higher-ranked service
    // bounds, rustc cannot.
    let fut: Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send + '_>> =
        if routed.route.pipeline.is_empty() {
            Box::pin(send_upstream(&rt, straight(routed, &conn), upgrade))
        } else {
            Box::pin(with_plugins(&rt, routed, upgrade, &conn, grpc))
        };
    match fut.await {
        Ok(resp) => resp,
        Err(err) => err.into_response_for(grpc),
    }
}

/// Phase 1: the route, and the upgrade the client asked for, if any.
fn routed(
    rt: &Generation,
    req: Request<Body>,
) -> Result<(route::Routed<'_>, Option<upgrade::Wanted>), ProxyError> {
    let mut routed = route::route(rt, req)?;
    let upgrade = upgrade::wanted(&mut routed)?;
    Ok((routed, upgrade))
}

/// Phase 3: `out` upstream, as the protocol switch the client asked for
/// or as a request (a route without plugins streams both ways).
async fn send_upstream(
    rt: &Generation,
    out: forward::Outbound<'_>,
    upgrade: Option<upgrade::Wanted>,
) -> Result<Response<Body>, ProxyError> {
    match upgrade {
        // Boxed: rare, and its future would size every request's.
        Some(wanted) => Box::pin(upgrade::forward(rt, out, wanted)).await,
        None => forward::forward(rt, out).await,
    }
}

/// A route with plugins: phases 2, 3 and 4.
async fn with_plugins(
    rt: &Generation,
    routed: route::Routed<'_>,
    upgrade: Option<upgrade::Wanted>,
    conn: &ConnInfo,
    grpc: bool,
) -> Result<Response<Body>, ProxyError> {
    let mut sessions = Sessions::default();
    let (mut exchange, onward, outcome) =
        request::request_phase(routed, conn, &mut sessions).await?;
    let local = matches!(outcome, RequestOutcome::Respond(_));
    let for_plugins = match outcome {
        RequestOutcome::Respond(resp) => (resp, None),
        RequestOutcome::Forward { upstream } => {
            let out = onward.outbound(rt, &mut exchange, upstream.as_deref(), &sessions, conn)?;
            let resp = send_upstream(rt, out, upgrade).await?;
            // Switched: there is no response left for the plugins to edit.
            if sessions.is_empty() || resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                return Ok(resp);
            }
            respond::read_for_plugins(&exchange, upstream.as_deref(), resp).await?
        }
    };
    let resp = respond::response_phase(&mut exchange, &mut sessions, for_plugins).await?;
    Ok(if local && grpc {
        grpc::local_reply(resp).await
    } else {
        resp
    })
}

/// Straight upstream, as the client sent it (a route without plugins).
fn straight<'rt>(routed: route::Routed<'rt>, conn: &'rt ConnInfo) -> forward::Outbound<'rt> {
    let query = routed.parts.uri.query();
    let path_and_query = route::path_and_query(&routed.upstream_path, query);
    forward::Outbound {
        route: routed.route,
        upstream: routed.route.config.upstream.as_deref(),
        parts: routed.parts,
        path_and_query,
        host: routed.host,
        conn,
        body: routed.body,
        body_state: Some(routed.body_state),
        params: routed.params,
    }
}
