//! The 0.3.0 types converted to and from their current twins: what the
//! guest returns and what its imports take -> current, import results ->
//! 0.3.0. Field by field; 0.3.0's `needs` has no fixed header edits, so a
//! 0.3.0 plugin declares none.
//!
//! Not a place for behaviour: an older plugin must see exactly what a
//! current plugin sees, only in the older shape.

use wasmtime::component::Resource;

use super::{super::current::pylon::plugin as current, bindings::pylon::plugin as v0_3};

/// Every item converted, in order.
pub(super) fn each<A: Into<B>, B>(items: Vec<A>) -> Vec<B> {
    items.into_iter().map(Into::into).collect()
}

/// A lent handle as an older version's resource type names it. Handles are
/// reps only (see `host::exchange`), the same in every version.
pub(crate) fn handle<A: 'static, B: 'static>(h: Resource<A>) -> Resource<B> {
    Resource::new_borrow(h.rep())
}

/// The conversions between an older version's generated types and the
/// current ones (the shapes are the same in every version served; the
/// record names are parameters so a later previous version can reuse it).
macro_rules! older_version_conversions {
    ($v:ident, header = $header:ident, response = $response:ident) => {
        // What an older guest returns -> current.

        impl From<$v::types::$header> for current::types::Header {
            fn from(h: $v::types::$header) -> Self {
                let $v::types::$header { name, value } = h;
                Self { name, value }
            }
        }

        impl From<$v::types::HeaderOp> for current::types::HeaderOp {
            fn from(op: $v::types::HeaderOp) -> Self {
                match op {
                    $v::types::HeaderOp::Set(h) => Self::Set(h.into()),
                    $v::types::HeaderOp::Append(h) => Self::Append(h.into()),
                    $v::types::HeaderOp::Remove(name) => Self::Remove(name),
                }
            }
        }

        impl From<$v::types::$response> for current::types::Response {
            fn from(r: $v::types::$response) -> Self {
                let $v::types::$response {
                    status,
                    headers,
                    body,
                } = r;
                Self {
                    status,
                    headers: each(headers),
                    body,
                }
            }
        }

        impl From<$v::types::RequestEdits> for current::types::RequestEdits {
            fn from(e: $v::types::RequestEdits) -> Self {
                let $v::types::RequestEdits {
                    headers,
                    path,
                    query,
                    upstream,
                    body,
                    response_headers,
                } = e;
                Self {
                    headers: each(headers),
                    path,
                    query,
                    upstream,
                    body,
                    response_headers: each(response_headers),
                }
            }
        }

        impl From<$v::types::RequestAction> for current::types::RequestAction {
            fn from(a: $v::types::RequestAction) -> Self {
                match a {
                    $v::types::RequestAction::Continue(edits) => Self::Continue(edits.into()),
                    $v::types::RequestAction::Respond(resp) => Self::Respond(resp.into()),
                }
            }
        }

        impl From<$v::types::ResponseEdits> for current::types::ResponseEdits {
            fn from(e: $v::types::ResponseEdits) -> Self {
                let $v::types::ResponseEdits {
                    status,
                    headers,
                    body,
                } = e;
                Self {
                    status,
                    headers: each(headers),
                    body,
                }
            }
        }

        /// The older versions had no fixed header edits: the plugin declares none.
        impl From<$v::types::Needs> for current::types::Needs {
            fn from(n: $v::types::Needs) -> Self {
                let $v::types::Needs {
                    request_phase,
                    request_body,
                    response_phase,
                    response_body,
                } = n;
                Self {
                    request_phase,
                    request_body,
                    response_phase,
                    response_body,
                    fixed_request_headers: Vec::new(),
                    fixed_response_headers: Vec::new(),
                }
            }
        }

        // Import arguments, older -> current.

        impl From<$v::log::Level> for current::log::Level {
            fn from(level: $v::log::Level) -> Self {
                match level {
                    $v::log::Level::Trace => Self::Trace,
                    $v::log::Level::Debug => Self::Debug,
                    $v::log::Level::Info => Self::Info,
                    $v::log::Level::Warn => Self::Warn,
                    $v::log::Level::Error => Self::Error,
                }
            }
        }

        impl From<$v::http_client::OutboundRequest> for current::http_client::OutboundRequest {
            fn from(r: $v::http_client::OutboundRequest) -> Self {
                let $v::http_client::OutboundRequest {
                    upstream,
                    method,
                    path_and_query,
                    headers,
                    body,
                    timeout_ms,
                } = r;
                Self {
                    upstream,
                    method,
                    path_and_query,
                    headers: each(headers),
                    body,
                    timeout_ms,
                }
            }
        }

        // Import results, current -> older.

        impl From<current::types::Header> for $v::types::$header {
            fn from(h: current::types::Header) -> Self {
                let current::types::Header { name, value } = h;
                Self { name, value }
            }
        }

        impl From<current::types::Response> for $v::types::$response {
            fn from(r: current::types::Response) -> Self {
                let current::types::Response {
                    status,
                    headers,
                    body,
                } = r;
                Self {
                    status,
                    headers: each(headers),
                    body,
                }
            }
        }

        impl From<current::kv::KvError> for $v::kv::KvError {
            fn from(e: current::kv::KvError) -> Self {
                match e {
                    current::kv::KvError::Denied => Self::Denied,
                    current::kv::KvError::Unavailable(detail) => Self::Unavailable(detail),
                    current::kv::KvError::NotANumber => Self::NotANumber,
                }
            }
        }

        impl From<current::http_client::HttpError> for $v::http_client::HttpError {
            fn from(e: current::http_client::HttpError) -> Self {
                use current::http_client::HttpError as E;
                match e {
                    E::Denied(upstream) => Self::Denied(upstream),
                    E::UnknownUpstream(upstream) => Self::UnknownUpstream(upstream),
                    E::Failed(detail) => Self::Failed(detail),
                    E::Timeout => Self::Timeout,
                    E::Invalid(detail) => Self::Invalid(detail),
                }
            }
        }
    };
}

older_version_conversions!(v0_3, header = Header, response = Response);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::StatusCode;

    use super::*;
    use crate::{
        pipeline::{HeaderOp, PluginError, RequestAction},
        plugin::convert::Validate,
    };

    #[test]
    fn guest_output_converts_and_validates_as_current_output_does() {
        let plugin: Arc<str> = Arc::from("legacy");
        let v = Validate {
            plugin: &plugin,
            max_body: 1 << 20,
        };
        let header = |name: &str, value: &[u8]| v0_3::types::Header {
            name: name.into(),
            value: value.to_vec(),
        };
        let edits = v0_3::types::RequestEdits {
            headers: vec![
                v0_3::types::HeaderOp::Set(header("x-a", b"1")),
                v0_3::types::HeaderOp::Append(header("x-a", b"\xff")),
                v0_3::types::HeaderOp::Remove("x-b".into()),
            ],
            path: Some("/new".into()),
            query: Some("q=1".into()),
            upstream: Some("other".into()),
            body: Some(b"body".to_vec()),
            response_headers: vec![v0_3::types::HeaderOp::Set(header("x-r", b"2"))],
        };
        let action = v0_3::types::RequestAction::Continue(edits);
        let RequestAction::Continue(edits) = v.action(action.into()).unwrap() else {
            panic!("continues");
        };
        assert_eq!(edits.headers.len(), 3);
        assert!(
            matches!(&edits.headers[1], HeaderOp::Append(n, v) if n == "x-a" && v.as_bytes() == b"\xff")
        );
        assert!(matches!(&edits.headers[2], HeaderOp::Remove(n) if n == "x-b"));
        assert_eq!(edits.path.as_deref(), Some("/new"));
        assert_eq!(edits.query.as_deref(), Some("q=1"));
        assert_eq!(edits.upstream.as_deref(), Some("other"));
        assert_eq!(edits.body.as_deref(), Some(&b"body"[..]));
        assert_eq!(edits.response_headers.len(), 1);

        let respond = v0_3::types::RequestAction::Respond(v0_3::types::Response {
            status: 418,
            headers: vec![header("x-c", b"3")],
            body: None,
        });
        let RequestAction::Respond(resp) = v.action(respond.into()).unwrap() else {
            panic!("responds");
        };
        assert_eq!(resp.status, StatusCode::IM_A_TEAPOT);
        assert_eq!(resp.headers["x-c"], "3");
        assert_eq!(resp.body.as_deref(), Some(&b""[..]));

        let bad = v0_3::types::ResponseEdits {
            status: Some(99),
            headers: vec![],
            body: None,
        };
        assert!(matches!(
            v.response_edits(bad.into()),
            Err(PluginError::InvalidOutput { what: "status", .. })
        ));
    }
}
