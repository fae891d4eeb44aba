//! gRPC through the proxy. Calls pass end to end over HTTP/2 (`h2c` or
//! `h2` upstreams) as any request does, streaming both ways, trailers
//! (`grpc-status`, `grpc-message`) included; what this module adds is what
//! gRPC needs beyond that:
//!
//! - recognising a gRPC request (`content-type: application/grpc`,
//!   optionally `+proto`, `+json`, ...; not gRPC-Web);
//! - an answer pylon gives itself to a gRPC request (an error, or a
//!   plugin's early response that is not already gRPC) becomes a gRPC
//!   trailers-only response: HTTP 200, `grpc-status` mapped from the HTTP
//!   status by [`crate::error::grpc_status`] (timeout → 4, unavailable →
//!   14, ...), `grpc-message`;
//! - bodies are never buffered for plugins on a gRPC call (a buffered body
//!   would lose its trailers and a streaming call would never end): the
//!   plugins see none, as for a body over the route's limit.
//!
//! Not here: the mapping itself ([`crate::error`]), the SDK helper for
//! plugins (`pylon_sdk::Response::grpc_status`).

use http::{HeaderMap, Response, StatusCode, header};

use crate::{
    body::{self, Body},
    error::{grpc_response, grpc_status},
};

/// The longest body of a plugin's early response that becomes the
/// `grpc-message` of its gRPC translation (longer ones give the status's
/// reason phrase).
const MAX_MESSAGE_BYTES: usize = 512;

/// Whether `headers` are a gRPC request's (or response's).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .and_then(|v| v.strip_prefix(b"application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

/// A plugin's early answer to a gRPC request as a gRPC response: kept when
/// it already is one, else trailers-only with the mapped status and its
/// body (short UTF-8 text) or reason phrase as the message.
pub(super) async fn local_reply(resp: Response<Body>) -> Response<Body> {
    if is_grpc(resp.headers()) {
        return resp;
    }
    let status = resp.status();
    let text = body::collect_limited(resp.into_body(), MAX_MESSAGE_BYTES)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .filter(|t| !t.trim().is_empty());
    let message = text.unwrap_or_else(|| reason(status).to_owned());
    grpc_response(grpc_status(status), message.trim())
}

fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::grpc_percent_encode;
    use http::HeaderValue;

    fn ct(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(&ct("application/grpc")));
        assert!(is_grpc(&ct("application/grpc+proto")));
        assert!(!is_grpc(&ct("application/grpc-web")));
        assert!(!is_grpc(&ct("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn statuses_map_as_documented() {
        for (http, grpc) in [
            (401, 16),
            (403, 7),
            (404, 12),
            (408, 4),
            (504, 4),
            (502, 14),
            (503, 14),
            (429, 14),
            (413, 8),
            (400, 3),
            (500, 13),
        ] {
            assert_eq!(
                grpc_status(StatusCode::from_u16(http).unwrap()),
                grpc,
                "{http}"
            );
        }
    }

    #[test]
    fn message_is_percent_encoded() {
        assert_eq!(grpc_percent_encode("a b%c\né"), "a b%25c%0A%C3%A9");
    }

    #[tokio::test]
    async fn plugin_json_answer_becomes_trailers_only() {
        let mut resp = Response::new(body::full(r#"{"error":"no key"}"#));
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        let g = local_reply(resp).await;
        assert_eq!(g.status(), 200);
        assert_eq!(g.headers()["grpc-status"], "16");
        assert_eq!(g.headers()["content-type"], "application/grpc");
        assert_eq!(g.headers()["grpc-message"], r#"{"error":"no key"}"#);
    }
}
