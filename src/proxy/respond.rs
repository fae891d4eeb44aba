//! Phase 4, respond: buffer the upstream's body when a plugin on the route
//! asked for it (a body over the route's limit streams through unaltered
//! and the plugins see none), run the response phase in reverse, and frame
//! what goes back (`Content-Length` matching the body the plugins left).

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::request::Exchange;
use crate::{
    body::{self, Body, Buffered, IdleTimeout},
    error::ProxyError,
    pipeline::{PluginResponse, Sessions},
    upstream::UpstreamError,
};

/// The upstream's response as the plugins see it, and the body stream
/// when it goes through unbuffered.
pub(super) type ForPlugins = (PluginResponse, Option<Body>);

/// Read `resp` for the response phase. `upstream` is a plugin's choice of
/// upstream, to name in an error.
pub(super) async fn read_for_plugins(
    exchange: &Exchange<'_>,
    upstream: Option<&str>,
    resp: Response<Body>,
) -> Result<ForPlugins, ProxyError> {
    let route = exchange.route;
    let (rparts, rbody) = resp.into_parts();
    // A gRPC response ends in trailers a buffered copy would lose.
    let buffer_it = route.pipeline.wants_response_body()
        && !exchange.is_head
        && !super::grpc::is_grpc(&rparts.headers);
    let (body, passthrough) = if buffer_it {
        match body::buffer_or_stream(rbody, route.response_body_limit).await {
            Ok(Buffered::Full(b)) => (Some(b), None),
            Ok(Buffered::TooLarge(stream)) => (None, Some(stream)),
            Err(source) => {
                let upstream = upstream
                    .or(route.config.upstream.as_deref())
                    .unwrap_or_default()
                    .to_owned();
                return Err(ProxyError::Upstream {
                    route: route.id.to_string(),
                    source: match source.downcast_ref::<IdleTimeout>() {
                        Some(IdleTimeout(timeout)) => UpstreamError::BodyTimeout {
                            upstream,
                            timeout: *timeout,
                        },
                        None => UpstreamError::Failed {
                            upstream,
                            target: "response body".into(),
                            source,
                        },
                    },
                });
            }
        }
    } else {
        (None, Some(rbody))
    };
    let presp = PluginResponse {
        status: rparts.status,
        headers: rparts.headers,
        body,
    };
    Ok((presp, passthrough))
}

/// Run the response phase on `presp` and build the client's response.
pub(super) async fn response_phase(
    exchange: &mut Exchange<'_>,
    sessions: &mut Sessions,
    (mut presp, passthrough): ForPlugins,
) -> Result<Response<Body>, ProxyError> {
    let route = exchange.route;
    route
        .pipeline
        .on_response(&mut exchange.preq, sessions, &mut presp)
        .await
        .map_err(|source| ProxyError::Plugin {
            route: route.id.to_string(),
            source,
        })?;
    let mut headers = presp.headers;
    let body = match (presp.body, passthrough) {
        (Some(b), _) => {
            if !exchange.is_head {
                fix_length(&mut headers, presp.status, b.len());
            }
            body::full(b)
        }
        (None, Some(stream)) => stream,
        (None, None) => {
            fix_length(&mut headers, presp.status, 0);
            body::empty()
        }
    };
    Ok(Response::from_parts(
        rparts_with(presp.status, headers),
        body,
    ))
}

fn rparts_with(status: StatusCode, headers: HeaderMap) -> http::response::Parts {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.headers = headers;
    parts
}

fn fix_length(headers: &mut HeaderMap, status: StatusCode, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        headers.remove(header::CONTENT_LENGTH);
    } else {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}
