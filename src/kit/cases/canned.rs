//! The outbound HTTP mock of a case: canned answers, and the requests
//! that found none.

use std::{sync::Mutex, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode};

use super::spec::{Canned, header_map};
use crate::{
    plugin::{OutboundError, OutboundHttp},
    sync::lock,
};

/// Answers outbound requests from a case's canned list; a request that
/// matches none gets an unknown-upstream error (as an unconfigured
/// upstream would) and is reported as a failure of the case.
pub(super) struct CannedHttp {
    answers: Vec<(String, String, Option<Method>, http::Response<Bytes>)>,
    unmatched: Mutex<Vec<String>>,
}

impl CannedHttp {
    pub(super) fn new(canned: &[Canned]) -> Result<Self, String> {
        let mut answers = Vec::with_capacity(canned.len());
        for c in canned {
            let method = c
                .method
                .as_deref()
                .map(|m| {
                    Method::from_bytes(m.as_bytes()).map_err(|e| format!("http method {m:?}: {e}"))
                })
                .transpose()?;
            let status = StatusCode::from_u16(c.status)
                .map_err(|e| format!("http status {}: {e}", c.status))?;
            let mut resp = http::Response::new(Bytes::from(c.body.clone()));
            *resp.status_mut() = status;
            *resp.headers_mut() = header_map(&c.headers, "http")?;
            answers.push((c.upstream.clone(), c.path.clone(), method, resp));
        }
        Ok(Self {
            answers,
            unmatched: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn unmatched(&self) -> Option<String> {
        let unmatched = lock(&self.unmatched);
        (!unmatched.is_empty()).then(|| {
            format!(
                "outbound requests with no canned answer in `http`: {}",
                unmatched.join(", ")
            )
        })
    }
}

#[async_trait]
impl OutboundHttp for CannedHttp {
    async fn send(
        &self,
        upstream: &str,
        req: http::Request<Bytes>,
        _timeout: Option<Duration>,
    ) -> Result<http::Response<Bytes>, OutboundError> {
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
        let found = self.answers.iter().find(|(u, p, m, _)| {
            u == upstream && *p == target && m.as_ref().is_none_or(|m| m == req.method())
        });
        match found {
            Some((.., resp)) => Ok(resp.clone()),
            None => {
                lock(&self.unmatched).push(format!("{} {upstream}{target}", req.method()));
                Err(OutboundError::UnknownUpstream {
                    upstream: upstream.to_owned(),
                })
            }
        }
    }
}
