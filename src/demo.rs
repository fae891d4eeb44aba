//! A tiny demo upstream (`pylon demo-upstream`): answers every request with
//! a JSON description of what it received, so the example configuration has
//! something to talk to. `GET /ping` answers a constant `pong`, which the
//! benchmark uses as its cheapest possible backend. Not for production.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

use crate::body::{self, Body};

/// Serve the demo upstream on `listener` until the task is dropped.
/// `name` is echoed in every answer; `delay` is waited before answering.
pub async fn serve(listener: TcpListener, name: String, delay: Duration) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(answer(req, &name, peer, delay).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Bind `addr` and serve (for the CLI).
pub async fn run(addr: SocketAddr, name: String, delay: Duration) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, %name, "demo upstream listening");
    serve(listener, name, delay).await;
    Ok(())
}

async fn answer(
    req: Request<Incoming>,
    name: &str,
    peer: SocketAddr,
    delay: Duration,
) -> Response<Body> {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if req.uri().path() == "/ping" {
        return Response::new(body::full(Bytes::from_static(b"pong")));
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let json = serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "peer": peer.to_string(),
        "body_bytes": body.len(),
        "body": String::from_utf8_lossy(&body),
    });
    let mut resp = Response::new(body::full(json.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
