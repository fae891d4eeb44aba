//! Sending one attempt's request to its target over the upstream's
//! transport (pylon's HTTP/1.1 pools, or hyper-util's HTTP/2 client), with
//! the response-head deadline counted from the end of the request body.

use std::time::Duration;

use http::{Request, Response, Uri, uri::Scheme};

use super::{Attempt, AttemptError, Transport, UpstreamError, UpstreamPool, error::SendError};
use crate::body::{Body, RequestBodyState};

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
        self.send_to(attempt.index, req, timeout, body).await
    }

    pub(super) async fn send_to(
        &self,
        n: usize,
        mut req: Request<Body>,
        timeout: Duration,
        body: Option<&RequestBodyState>,
    ) -> Result<Response<Body>, AttemptError> {
        let upstream = self.config.name.as_str();
        let target = &self.config.targets[n];
        let fail = |error| AttemptError {
            error,
            unsent: None,
        };
        let invalid_target = || UpstreamError::InvalidRequest {
            upstream: upstream.to_string(),
            detail: format!("invalid target {target:?}"),
        };
        if req.uri().path_and_query().is_none() {
            *req.uri_mut() = Uri::from_static("/");
        }
        if let Some(b) = body {
            b.touch();
        }
        let deadline = head_deadline(timeout, body);
        let sent = match self.transport() {
            Transport::Http1(targets) => {
                let target_pool = targets[n]
                    .as_ref()
                    .ok_or_else(invalid_target)
                    .map_err(fail)?;
                *req.version_mut() = http::Version::HTTP_11;
                tokio::select! {
                    sent = target_pool.send(req) => Ok(sent),
                    () = deadline => Err(()),
                }
            }
            Transport::H2c(_) | Transport::H2(_) => {
                let mut uri = std::mem::take(req.uri_mut()).into_parts();
                uri.scheme = Some(match self.tls {
                    Some(_) => Scheme::HTTPS,
                    None => Scheme::HTTP,
                });
                uri.authority = Some(
                    self.authorities[n]
                        .clone()
                        .ok_or_else(invalid_target)
                        .map_err(fail)?,
                );
                *req.uri_mut() = Uri::from_parts(uri).map_err(|e| {
                    fail(UpstreamError::InvalidRequest {
                        upstream: upstream.to_string(),
                        detail: format!("{e}"),
                    })
                })?;
                *req.version_mut() = http::Version::HTTP_2;
                let send = async {
                    match self.transport() {
                        Transport::H2(client) => client.request(req).await,
                        Transport::H2c(client) => client.request(req).await,
                        Transport::Http1(_) => unreachable!("matched above"),
                    }
                    .map(|resp| resp.map(crate::body::boxed))
                    .map_err(|err| {
                        if err.is_connect() {
                            (SendError::Connect(Box::new(err)), None)
                        } else {
                            (SendError::Failed(Box::new(err)), None)
                        }
                    })
                };
                tokio::select! {
                    sent = send => Ok(sent),
                    () = deadline => Err(()),
                }
            }
        };
        let (err, unsent) = match sent {
            Err(()) => {
                return Err(fail(UpstreamError::Timeout {
                    upstream: upstream.to_string(),
                    timeout,
                }));
            }
            Ok(Ok(resp)) => return Ok(resp),
            Ok(Err(e)) => e,
        };
        let error = match err {
            SendError::Connect(source) => UpstreamError::Connect {
                upstream: upstream.to_string(),
                target: target.clone(),
                source,
            },
            SendError::Failed(source) => UpstreamError::Failed {
                upstream: upstream.to_string(),
                target: target.clone(),
                source,
            },
            SendError::Overflow(reason) => UpstreamError::Overflow {
                upstream: upstream.to_string(),
                target: target.clone(),
                reason,
            },
        };
        Err(AttemptError { error, unsent })
    }
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
