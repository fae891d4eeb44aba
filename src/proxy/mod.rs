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
mod request;
mod respond;
mod route;

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use http::{HeaderValue, Request, Response};

use crate::{
    body::Body,
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
}

impl ConnInfo {
    /// A cleartext connection from `client`.
    pub fn new(client: SocketAddr, scheme: &'static str) -> Self {
        Self {
            client,
            scheme,
            identity: None,
            client_ip: headers::client_ip_value(client.ip()),
        }
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
    // Boxing as `dyn Future + Send` proves `Send` here, with concrete
    // lifetimes; left to hyper's higher-ranked service bounds, rustc cannot.
    let fut: Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send + '_>> =
        Box::pin(proxy(&rt, req, conn));
    match fut.await {
        Ok(resp) => resp,
        Err(err) => err.into_response(),
    }
}

async fn proxy(
    rt: &Generation,
    req: Request<Body>,
    conn: ConnInfo,
) -> Result<Response<Body>, ProxyError> {
    let routed = route::route(rt, req)?;
    if routed.route.pipeline.is_empty() {
        return forward::forward(rt, straight(routed, &conn)).await;
    }
    let mut sessions = Sessions::default();
    let (mut exchange, onward, outcome) =
        request::request_phase(routed, &conn, &mut sessions).await?;
    let for_plugins = match outcome {
        RequestOutcome::Respond(resp) => (resp, None),
        RequestOutcome::Forward { upstream } => {
            let out = onward.outbound(rt, &mut exchange, upstream.as_deref(), &sessions, &conn)?;
            let resp = forward::forward(rt, out).await?;
            if sessions.is_empty() {
                return Ok(resp);
            }
            respond::read_for_plugins(&exchange, upstream.as_deref(), resp).await?
        }
    };
    respond::response_phase(&mut exchange, &mut sessions, for_plugins).await
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
    }
}
