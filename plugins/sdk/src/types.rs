//! The contract's data types (`pylon:plugin/types`) and helpers on them.
//!
//! The records are the generated bindings, so every field is public and can
//! be built or matched directly; the methods here only save boilerplate.
//!
//! The request and the response a hook is handed are resources
//! ([`Request`], [`ResponseView`]): every accessor asks the host for just
//! that part, so read what you need once and keep it in a local. Code that
//! should also run on plain values (unit tests on the native target, where
//! there is no host) takes `&impl ReadRequest` / `&impl ReadResponse`,
//! implemented by the resources and by [`RequestData`] / [`Response`].
//! Header names handed to the helpers are lowercased, as the contract wants;
//! lookups compare names ASCII-case-insensitively. Header values are bytes
//! (HTTP allows non-UTF-8 values): helpers take anything `AsRef<[u8]>`
//! (`&str`, `String`, `&[u8]`, `&Vec<u8>`, ...); `*_str` helpers return
//! `None` for values that are not UTF-8.

pub use crate::bindings::pylon::plugin::types::{
    ClientIdentity, Header, HeaderOp, Headers, Needs, Request, RequestAction, RequestEdits,
    Response, ResponseEdits, ResponseView,
};

fn lower(name: impl Into<String>) -> String {
    let mut name = name.into();
    name.make_ascii_lowercase();
    name
}

/// Lookups shared by every type that carries a header list.
fn first<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_slice())
}

fn all<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_slice())
}

impl Header {
    /// A header with `name` lowercased.
    pub fn new(name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        Header {
            name: lower(name),
            value: value.as_ref().to_vec(),
        }
    }

    /// The value as UTF-8, if it is.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }
}

impl HeaderOp {
    /// Replace every value of `name` with `value`.
    pub fn set(name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        HeaderOp::Set(Header::new(name, value))
    }

    /// Add a value to `name`, keeping the existing ones.
    pub fn append(name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        HeaderOp::Append(Header::new(name, value))
    }

    /// Remove every value of `name`.
    pub fn remove(name: impl Into<String>) -> Self {
        HeaderOp::Remove(lower(name))
    }
}

/// Read access to a request: the live [`Request`] a hook is handed (each
/// call asks the host) or a plain [`RequestData`].
pub trait ReadRequest {
    /// The matched route's id.
    fn route(&self) -> String;
    /// The method, exactly as sent.
    fn method(&self) -> String;
    /// The path, percent-encoding untouched, without the query.
    fn path(&self) -> String;
    /// The raw query string without `?`, if any.
    fn query(&self) -> Option<String>;
    /// The first value of header `name` (any case), if present.
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// Every value of header `name` (any case), in wire order.
    fn header_all(&self, name: &str) -> Vec<Vec<u8>>;
    /// Every header, in wire order.
    fn headers(&self) -> Headers;
    /// The peer's address, `ip:port`.
    fn client_addr(&self) -> String;
    /// `http` or `https`.
    fn scheme(&self) -> String;
    /// The client certificate the TLS connection was verified with
    /// (`client-auth` on the listener), if the client presented one. What an
    /// authorization decision on mTLS reads: match `dns_names` / `uris`
    /// (SPIFFE IDs) or pin `sha256`, rather than parse `subject`.
    fn client_identity(&self) -> Option<ClientIdentity>;
    /// The path parameter `name` captured by the route pattern.
    fn param(&self, name: &str) -> Option<String>;
    /// The body, when the plugin asked for it.
    fn body(&self) -> Option<Vec<u8>>;

    /// The first value of header `name`, if present and UTF-8.
    fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|v| String::from_utf8(v).ok())
    }

    /// The path plus `?query` when there is a query.
    fn path_and_query(&self) -> String {
        let mut path = self.path();
        if let Some(q) = self.query() {
            path.push('?');
            path.push_str(&q);
        }
        path
    }
}

impl ReadRequest for Request {
    fn route(&self) -> String {
        Request::route(self)
    }
    fn method(&self) -> String {
        Request::method(self)
    }
    fn path(&self) -> String {
        Request::path(self)
    }
    fn query(&self) -> Option<String> {
        Request::query(self)
    }
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        Request::header(self, name)
    }
    fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        Request::header_all(self, name)
    }
    fn headers(&self) -> Headers {
        Request::headers(self)
    }
    fn client_addr(&self) -> String {
        Request::client_addr(self)
    }
    fn scheme(&self) -> String {
        Request::scheme(self)
    }
    fn client_identity(&self) -> Option<ClientIdentity> {
        Request::client_identity(self)
    }
    fn param(&self, name: &str) -> Option<String> {
        Request::param(self, name)
    }
    fn body(&self) -> Option<Vec<u8>> {
        Request::body(self)
    }
}

/// A request as a plain value: what a test hands to code written against
/// [`ReadRequest`], or a copy of the parts a plugin wants to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestData {
    /// The matched route's id.
    pub route: String,
    /// The method.
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query without `?`.
    pub query: Option<String>,
    /// Headers in wire order.
    pub headers: Headers,
    /// `ip:port`.
    pub client_addr: String,
    /// `http` or `https`.
    pub scheme: String,
    /// The verified client certificate.
    pub client_identity: Option<ClientIdentity>,
    /// Path parameters.
    pub params: Vec<(String, String)>,
    /// The body.
    pub body: Option<Vec<u8>>,
}

impl RequestData {
    /// A `method` request for `path_and_query` (split at the first `?`) on
    /// route `test` from `127.0.0.1:1`, no headers, no body.
    pub fn new(method: &str, path_and_query: &str) -> Self {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (path_and_query, None),
        };
        RequestData {
            route: "test".into(),
            method: method.into(),
            path: path.into(),
            query,
            headers: Vec::new(),
            client_addr: "127.0.0.1:1".into(),
            scheme: "http".into(),
            client_identity: None,
            params: Vec::new(),
            body: None,
        }
    }

    /// Append a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }

    /// Arrive over TLS (`https`) with this verified client certificate.
    pub fn with_client_identity(mut self, identity: ClientIdentity) -> Self {
        self.scheme = "https".into();
        self.client_identity = Some(identity);
        self
    }
}

impl ReadRequest for RequestData {
    fn route(&self) -> String {
        self.route.clone()
    }
    fn method(&self) -> String {
        self.method.clone()
    }
    fn path(&self) -> String {
        self.path.clone()
    }
    fn query(&self) -> Option<String> {
        self.query.clone()
    }
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        first(&self.headers, name).map(<[u8]>::to_vec)
    }
    fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        all(&self.headers, name).map(<[u8]>::to_vec).collect()
    }
    fn headers(&self) -> Headers {
        self.headers.clone()
    }
    fn client_addr(&self) -> String {
        self.client_addr.clone()
    }
    fn scheme(&self) -> String {
        self.scheme.clone()
    }
    fn client_identity(&self) -> Option<ClientIdentity> {
        self.client_identity.clone()
    }
    fn param(&self, name: &str) -> Option<String> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
    fn body(&self) -> Option<Vec<u8>> {
        self.body.clone()
    }
}

/// Read access to a response: the live [`ResponseView`] of the response
/// phase or a plain [`Response`].
pub trait ReadResponse {
    /// The status code.
    fn status(&self) -> u16;
    /// The first value of header `name` (any case), if present.
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// Every value of header `name` (any case), in wire order.
    fn header_all(&self, name: &str) -> Vec<Vec<u8>>;
    /// Every header, in wire order.
    fn headers(&self) -> Headers;
    /// The body, when present (for a [`ResponseView`]: when the plugin
    /// asked for it).
    fn body(&self) -> Option<Vec<u8>>;

    /// The first value of header `name`, if present and UTF-8.
    fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|v| String::from_utf8(v).ok())
    }
}

impl ReadResponse for ResponseView {
    fn status(&self) -> u16 {
        ResponseView::status(self)
    }
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        ResponseView::header(self, name)
    }
    fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        ResponseView::header_all(self, name)
    }
    fn headers(&self) -> Headers {
        ResponseView::headers(self)
    }
    fn body(&self) -> Option<Vec<u8>> {
        ResponseView::body(self)
    }
}

impl ReadResponse for Response {
    fn status(&self) -> u16 {
        self.status
    }
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        first(&self.headers, name).map(<[u8]>::to_vec)
    }
    fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        all(&self.headers, name).map(<[u8]>::to_vec).collect()
    }
    fn headers(&self) -> Headers {
        self.headers.clone()
    }
    fn body(&self) -> Option<Vec<u8>> {
        self.body.clone()
    }
}

impl Response {
    /// A response with `status`, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Some(Vec::new()),
        }
    }

    /// A response whose body is `body` with `content-type: text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// A response whose body is `value` serialised as JSON, with
    /// `content-type: application/json`.
    pub fn json<T: serde::Serialize + ?Sized>(status: u16, value: &T) -> Self {
        // Serialising plain data into a Vec cannot fail; a failing custom
        // `Serialize` impl is a plugin bug and traps.
        let body = serde_json::to_vec(value).expect("response body serialises to JSON");
        Response::new(status)
            .with_header("content-type", "application/json")
            .with_body(body)
    }

    /// A gRPC call refused with `code` and `message`: the trailers-only
    /// response gRPC clients read as a status (HTTP 200, `content-type:
    /// application/grpc`, `grpc-status`, `grpc-message` percent-encoded as
    /// the gRPC spec says, no body). Answer a request whose `content-type`
    /// starts with `application/grpc` with it; pylon itself turns any other
    /// early answer to a gRPC call into one too (401 → UNAUTHENTICATED, 403
    /// → PERMISSION_DENIED, 429 → UNAVAILABLE, ...), but only this one
    /// chooses the code.
    pub fn grpc_status(code: GrpcCode, message: &str) -> Self {
        let mut encoded = String::with_capacity(message.len());
        for b in message.bytes() {
            if (0x20..=0x7e).contains(&b) && b != b'%' {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        Response::new(200)
            .with_header("content-type", "application/grpc")
            .with_header("grpc-status", (code as u32).to_string())
            .with_header("grpc-message", encoded)
    }

    /// Append a header (repeated names are kept).
    pub fn with_header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }

    /// Replace the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// The first value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        first(&self.headers, name)
    }

    /// The first value of header `name`, if present and UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of header `name`, in wire order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        all(&self.headers, name)
    }

    /// The body as UTF-8, if present and valid (lossless: `None` otherwise).
    pub fn body_str(&self) -> Option<&str> {
        self.body
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// The builder methods for one header-edit list of an edits record: add an
/// op, set, append, remove. Three lists have them (request edits, response
/// edits, and the response edits given in the request phase).
macro_rules! header_edit_builders {
    ($ty:ty, $field:ident, $what:literal,
     $op:ident, $set:ident, $append:ident, $remove:ident) => {
        impl $ty {
            #[doc = concat!("Add an edit to ", $what, ".")]
            pub fn $op(mut self, op: HeaderOp) -> Self {
                self.$field.push(op);
                self
            }

            #[doc = concat!("Replace every value of header `name` with `value` in ", $what, ".")]
            pub fn $set(self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
                self.$op(HeaderOp::set(name, value))
            }

            #[doc = concat!("Add a value to header `name` in ", $what, ".")]
            pub fn $append(self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
                self.$op(HeaderOp::append(name, value))
            }

            #[doc = concat!("Remove every value of header `name` from ", $what, ".")]
            pub fn $remove(self, name: impl Into<String>) -> Self {
                self.$op(HeaderOp::remove(name))
            }
        }
    };
}

header_edit_builders!(
    RequestEdits,
    headers,
    "the request's headers",
    header_op,
    set_header,
    append_header,
    remove_header
);
header_edit_builders!(
    RequestEdits,
    response_headers,
    "the response's headers, applied on its way back as if `on_response` had \
     returned them, without an `on_response` call",
    response_header_op,
    set_response_header,
    append_response_header,
    remove_response_header
);
header_edit_builders!(
    ResponseEdits,
    headers,
    "the response's headers",
    header_op,
    set_header,
    append_header,
    remove_header
);

impl RequestEdits {
    /// No edits (same as `default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Send this path upstream instead (query unchanged).
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Replace the query string; `""` removes it.
    pub fn with_query(mut self, query: impl Into<String>) -> Self {
        self.query = Some(query.into());
        self
    }

    /// Send to this named upstream instead of the route's.
    pub fn with_upstream(mut self, upstream: impl Into<String>) -> Self {
        self.upstream = Some(upstream.into());
        self
    }

    /// Replace the body (honoured only with `Needs::request_body`).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
}

impl RequestAction {
    /// Continue without edits.
    pub fn proceed() -> Self {
        RequestAction::Continue(RequestEdits::default())
    }
}

impl From<RequestEdits> for RequestAction {
    /// Continue with these edits.
    fn from(edits: RequestEdits) -> Self {
        RequestAction::Continue(edits)
    }
}

impl From<Response> for RequestAction {
    /// Answer the client with this response.
    fn from(response: Response) -> Self {
        RequestAction::Respond(response)
    }
}

impl ResponseEdits {
    /// No edits (same as `default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the status code.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Replace the body (honoured only with `Needs::response_body`).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
}

impl Default for Needs {
    /// The request phase only: no bodies, no response phase.
    fn default() -> Self {
        Needs {
            request_phase: true,
            request_body: false,
            response_phase: false,
            response_body: false,
            fixed_request_headers: Vec::new(),
            fixed_response_headers: Vec::new(),
        }
    }
}

impl Needs {
    /// Nothing beyond the request phase (same as `default()`): no bodies, no
    /// response phase.
    pub fn none() -> Self {
        Self::default()
    }

    /// Do not call `on_request` (for plugins that only edit responses; the
    /// instance then serves only `on_response`).
    pub fn without_request_phase(mut self) -> Self {
        self.request_phase = false;
        self
    }

    /// Ask for the buffered request body in `on_request`.
    pub fn with_request_body(mut self) -> Self {
        self.request_body = true;
        self
    }

    /// Ask for `on_response` to be called.
    pub fn with_response_phase(mut self) -> Self {
        self.response_phase = true;
        self
    }

    /// Ask for the buffered response body in `on_response` (implies the
    /// response phase).
    pub fn with_response_body(mut self) -> Self {
        self.response_phase = true;
        self.response_body = true;
        self
    }

    /// Header edits for every request that reaches this plugin, applied by
    /// the host before `on_request` (if any) sees the request. A plugin
    /// whose request edits do not depend on the request declares them here
    /// and leaves out the request phase ([`Needs::without_request_phase`]):
    /// it then costs no call per request.
    pub fn with_fixed_request_headers(mut self, ops: impl IntoIterator<Item = HeaderOp>) -> Self {
        self.fixed_request_headers.extend(ops);
        self
    }

    /// Header edits for every response passing this plugin on the way back
    /// (from the upstream, or made by a later plugin), applied by the host
    /// before `on_response` (if any) sees it. Without a response phase the
    /// plugin is not called for them.
    pub fn with_fixed_response_headers(mut self, ops: impl IntoIterator<Item = HeaderOp>) -> Self {
        self.fixed_response_headers.extend(ops);
        self
    }
}

/// gRPC status codes, for [`Response::grpc_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}
