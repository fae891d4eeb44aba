//! `pylon:plugin/http-client`: outbound HTTP to the gateway's named
//! upstreams, only those in the plugin's `http_upstreams` grant.
//!
//! The transport is the [`OutboundHttp`] trait, implemented by the gateway
//! over its upstream pools (and by fakes in tests). `send-all` runs its
//! requests concurrently on the calling task (`join_all`): the guest waits
//! for all of them while the host thread serves other work. Serves
//! the current contract's `http-client`; older versions adapt onto it in
//! `contract`.

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http::{HeaderName, HeaderValue, Method, Uri};
use wasmtime::component::{HasData, Linker};

use crate::error::ErrorChain;
use crate::plugin::{
    contract::current::pylon::plugin::{
        http_client::{self, HttpError, OutboundRequest},
        types::{Header, Response},
    },
    services::{OutboundError, OutboundHttp},
    state::HostState,
};

/// Most requests one `send-all` call may carry; more are answered with
/// `invalid` without being sent.
pub const MAX_SEND_ALL: usize = 64;

/// What `http-client` sees of the store.
pub(crate) struct HttpView<'a> {
    allowed: &'a [String],
    client: &'a dyn OutboundHttp,
}

pub(crate) struct HttpData;

impl HasData for HttpData {
    type Data<'a> = HttpView<'a>;
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    http_client::add_to_linker::<HostState, HttpData>(linker, view)
}

/// The view of `s` every version's import functions get.
pub(crate) fn view(s: &mut HostState) -> HttpView<'_> {
    HttpView {
        allowed: &s.ctx.grants.http_upstreams,
        client: &*s.ctx.services.http,
    }
}

impl http_client::Host for HttpView<'_> {
    async fn send(&mut self, request: OutboundRequest) -> Result<Response, HttpError> {
        send_one(self.allowed, self.client, request).await
    }

    async fn send_all(
        &mut self,
        requests: Vec<OutboundRequest>,
    ) -> Vec<Result<Response, HttpError>> {
        send_many(self.allowed, self.client, requests).await
    }
}

/// `send-all`: every request at once, answers in request order.
async fn send_many(
    allowed: &[String],
    client: &dyn OutboundHttp,
    requests: Vec<OutboundRequest>,
) -> Vec<Result<Response, HttpError>> {
    if requests.len() > MAX_SEND_ALL {
        let err = format!("send-all accepts at most {MAX_SEND_ALL} requests");
        return requests
            .iter()
            .map(|_| Err(HttpError::Invalid(err.clone())))
            .collect();
    }
    join_all(
        requests
            .into_iter()
            .map(|request| send_one(allowed, client, request)),
    )
    .await
}

async fn send_one(
    allowed: &[String],
    client: &dyn OutboundHttp,
    request: OutboundRequest,
) -> Result<Response, HttpError> {
    if !allowed.contains(&request.upstream) {
        return Err(HttpError::Denied(request.upstream));
    }
    let timeout = request
        .timeout_ms
        .map(|ms| Duration::from_millis(ms.into()));
    let upstream = request.upstream.clone();
    let req = to_http(request)?;
    let resp = client
        .send(&upstream, req, timeout)
        .await
        .map_err(|err| match err {
            OutboundError::UnknownUpstream { upstream } => HttpError::UnknownUpstream(upstream),
            OutboundError::Timeout { .. } => HttpError::Timeout,
            OutboundError::Invalid { detail } => HttpError::Invalid(detail),
            OutboundError::Failed { .. } => HttpError::Failed(ErrorChain(&err).to_string()),
        })?;
    Ok(from_http(resp))
}

/// The guest's request as an `http::Request`, every part validated.
fn to_http(request: OutboundRequest) -> Result<http::Request<Bytes>, HttpError> {
    let method = Method::from_bytes(request.method.as_bytes())
        .map_err(|_| HttpError::Invalid(format!("bad method {:?}", request.method)))?;
    if !request.path_and_query.starts_with('/') {
        return Err(HttpError::Invalid(format!(
            "path {:?} does not start with `/`",
            request.path_and_query
        )));
    }
    let uri = Uri::try_from(request.path_and_query.as_str())
        .map_err(|e| HttpError::Invalid(format!("bad path {:?}: {e}", request.path_and_query)))?;
    let mut req = http::Request::new(request.body.map(Bytes::from).unwrap_or_default());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    for Header { name, value } in request.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| HttpError::Invalid(format!("bad header name {name:?}")))?;
        let value = HeaderValue::from_bytes(&value)
            .map_err(|_| HttpError::Invalid(format!("bad value for header `{name}`")))?;
        req.headers_mut().append(name, value);
    }
    Ok(req)
}

fn from_http(resp: http::Response<Bytes>) -> Response {
    let (parts, body) = resp.into_parts();
    Response {
        status: parts.status.as_u16(),
        headers: super::super::convert::headers_to_wit_owned(&parts.headers),
        body: Some(body.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: Vec<Header>) -> OutboundRequest {
        OutboundRequest {
            upstream: "u".into(),
            method: method.into(),
            path_and_query: path.into(),
            headers,
            body: None,
            timeout_ms: None,
        }
    }

    #[test]
    fn outbound_requests_are_validated() {
        assert!(to_http(req("GET", "/a?b=1", vec![])).is_ok());
        assert!(matches!(
            to_http(req("G ET", "/", vec![])),
            Err(HttpError::Invalid(_))
        ));
        assert!(matches!(
            to_http(req("GET", "http://evil/", vec![])),
            Err(HttpError::Invalid(_))
        ));
        let bad_value = Header {
            name: "x".into(),
            value: b"a\r\nb".to_vec(),
        };
        assert!(matches!(
            to_http(req("GET", "/", vec![bad_value])),
            Err(HttpError::Invalid(_))
        ));
    }
}
