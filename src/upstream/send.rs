//! Sending one attempt's request to its target over the endpoint's
//! transport (pylon's HTTP/1.1 pools, or hyper-util's HTTP/2 client), with
//! the response-head deadline counted from the end of the request body.

use std::{future::Future, time::Duration};

use futures::future::Either;
use http::{Request, Response, Uri, uri::Authority, uri::Scheme};
use hyper::body::Incoming;

use super::{
    Attempt, AttemptError, UpstreamError, UpstreamPool,
    error::SendError,
    members::{Members, Transport},
};
use crate::body::{Body, RequestBodyState};

/// What a transport gives back: the response, or why not and (when none
/// of it was written) the request.
type Sent = Result<Response<Body>, (SendError, Option<Request<Body>>)>;

impl UpstreamPool {
    /// Send `req` (whose URI carries only path and query) to `attempt`'s
    /// target, waiting at most `timeout` for the response head after the
    /// request body (whose progress `body` reports, for a streamed one)
    /// has been sent.
    pub async fn send(
        &self,
        attempt: &Attempt<'_>,
        req: Request<Body>,
        timeout: Duration,
        body: Option<&RequestBodyState>,
    ) -> Result<Response<Body>, AttemptError> {
        self.send_to(&attempt.members, attempt.index, req, timeout, body)
            .await
    }

    /// [`UpstreamPool::send`] to endpoint `n` of `members`.
    pub(super) async fn send_to(
        &self,
        members: &Members,
        n: usize,
        mut req: Request<Body>,
        timeout: Duration,
        body: Option<&RequestBodyState>,
    ) -> Result<Response<Body>, AttemptError> {
        let endpoint = &members.endpoints[n];
        let target = &members.states[n].name;
        let Some(authority) = &endpoint.authority else {
            return Err(self.failed(UpstreamError::InvalidRequest {
                upstream: self.config.name.clone(),
                detail: format!("invalid target {target:?}"),
            }));
        };
        if req.uri().path_and_query().is_none() {
            *req.uri_mut() = Uri::from_static("/");
        }
        if let Some(b) = body {
            b.touch();
        }
        let sending = match endpoint.transport(self, authority) {
            Transport::Http1(pool) => {
                *req.version_mut() = http::Version::HTTP_11;
                Either::Left(pool.send(req))
            }
            Transport::H2c(client) => {
                let req = self
                    .h2_request(req, authority)
                    .map_err(|e| self.failed(e))?;
                Either::Right(Either::Left(h2(client.request(req))))
            }
            Transport::H2(client) => {
                let req = self
                    .h2_request(req, authority)
                    .map_err(|e| self.failed(e))?;
                Either::Right(Either::Right(h2(client.request(req))))
            }
        };
        let sent = tokio::select! {
            sent = sending => sent,
            () = head_deadline(timeout, body) => return Err(self.timed_out(timeout)),
        };
        sent.map_err(|(err, unsent)| AttemptError {
            error: self.upstream_error(err, target),
            unsent,
        })
    }

    /// `req` as HTTP/2 wants it: an absolute URI naming the target.
    fn h2_request(
        &self,
        mut req: Request<Body>,
        authority: &Authority,
    ) -> Result<Request<Body>, UpstreamError> {
        let mut uri = std::mem::take(req.uri_mut()).into_parts();
        uri.scheme = Some(match self.tls {
            Some(_) => Scheme::HTTPS,
            None => Scheme::HTTP,
        });
        uri.authority = Some(authority.clone());
        *req.uri_mut() = Uri::from_parts(uri).map_err(|e| UpstreamError::InvalidRequest {
            upstream: self.config.name.clone(),
            detail: format!("{e}"),
        })?;
        *req.version_mut() = http::Version::HTTP_2;
        Ok(req)
    }

    fn failed(&self, error: UpstreamError) -> AttemptError {
        AttemptError {
            error,
            unsent: None,
        }
    }

    fn timed_out(&self, timeout: Duration) -> AttemptError {
        self.failed(UpstreamError::Timeout {
            upstream: self.config.name.clone(),
            timeout,
        })
    }

    /// A transport's error as the proxy sees it, naming `target`.
    fn upstream_error(&self, err: SendError, target: &str) -> UpstreamError {
        let upstream = self.config.name.clone();
        let target = target.to_string();
        match err {
            SendError::Connect(source) => UpstreamError::Connect {
                upstream,
                target,
                source,
            },
            SendError::Failed(source) => UpstreamError::Failed {
                upstream,
                target,
                source,
            },
            SendError::Overflow(reason) => UpstreamError::Overflow {
                upstream,
                target,
                reason,
            },
        }
    }
}

/// hyper-util's HTTP/2 answer (it keeps no request to give back).
async fn h2(
    request: impl Future<Output = Result<Response<Incoming>, hyper_util::client::legacy::Error>>,
) -> Sent {
    request
        .await
        .map(|resp| resp.map(crate::body::boxed))
        .map_err(|err| {
            if err.is_connect() {
                (SendError::Connect(Box::new(err)), None)
            } else {
                (SendError::Failed(Box::new(err)), None)
            }
        })
}

/// Completes when the response head is late: `timeout` after the request
/// body was sent, or when the upstream has not taken any of the body for
/// the body's idle timeout. While the client is the one awaited, its own
/// idle timeout ([`crate::body::ClientBody`]) applies instead.
async fn head_deadline(timeout: Duration, body: Option<&RequestBodyState>) {
    if let Some(b) = body {
        loop {
            let finished = b.finished();
            tokio::pin!(finished);
            let idle_until = b.last_progress() + b.idle_timeout();
            let wait = if b.waiting_on_client() {
                tokio::time::Instant::now() + b.idle_timeout()
            } else if std::time::Instant::now() >= idle_until {
                return;
            } else {
                idle_until.into()
            };
            tokio::select! {
                () = &mut finished => break,
                () = tokio::time::sleep_until(wait) => {}
            }
        }
    }
    tokio::time::sleep(timeout).await;
}
