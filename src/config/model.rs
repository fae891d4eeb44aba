//! The validated configuration: every cross reference checked, every value
//! in its domain type. Built from [`super::raw`] by [`super::load`].

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use http::Method;

pub use crate::router::path::{PathNormalization, SlashAction};

mod plugins;
pub use plugins::{Grants, Isolation, KvLimits, PluginDef, Recycle};

/// Where something was written: `file:line:column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The configuration file.
    pub file: Arc<str>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (relative paths inside resolve against its folder).
    pub file: PathBuf,
    /// Wasm runtime sizing and caching.
    pub runtime: ProcessSettings,
    /// Where to accept client traffic.
    pub listeners: Vec<Listener>,
    /// The admin API listener, if enabled.
    pub admin: Option<Admin>,
    /// Where the access log goes; `None` (the default) disables it.
    pub access_log: Option<AccessLogTarget>,
    /// OpenTelemetry span export; `None` (the default) exports nothing.
    pub tracing: Option<TracingConfig>,
    /// Named upstreams.
    pub upstreams: BTreeMap<String, Upstream>,
    /// Named plugin definitions.
    pub plugins: BTreeMap<String, PluginDef>,
    /// Routes, matched in order; the first match wins.
    pub routes: Vec<Route>,
    /// How request paths are normalised before routing (`[path-normalization]`).
    pub path_normalization: PathNormalization,
}

/// Sizing of the Wasm runtime, shared by every plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSettings {
    /// Where compiled components are cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Instances the pooling allocator can hold at once (all plugins).
    pub max_instances: u32,
    /// The largest linear memory any instance may have (per-plugin caps are lower).
    pub max_memory_bytes: usize,
    /// The key-value store backing the `kv` capability.
    pub kv: KvBackend,
    /// Data-plane worker threads; `None` means one per core.
    pub workers: Option<usize>,
}

impl ProcessSettings {
    /// Data-plane worker threads: as configured, else one per available core.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

/// The key-value store backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvBackend {
    /// In-process memory (the default).
    Memory,
    /// A Redis server shared by many gateway instances.
    Redis {
        /// `redis://host:port/db`.
        url: String,
    },
}

/// A client-facing listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// The socket address to bind.
    pub address: SocketAddr,
    /// Largest request head (request line + headers) accepted.
    pub max_header_bytes: usize,
    /// A client must send its whole request head within this time.
    pub header_timeout: Duration,
    /// Accept HTTP/2 (prior knowledge, h2c; `h2` in ALPN over TLS) besides
    /// HTTP/1.1.
    pub http2: bool,
    /// How a connection's use of the gateway is bounded.
    pub limits: ConnectionLimits,
    /// Terminate TLS on this listener.
    pub tls: Option<ListenerTls>,
    /// Answer every request with a 308 to `https://` (a cleartext
    /// listener only).
    pub redirect_to_https: Option<HttpsRedirect>,
    /// The `Strict-Transport-Security` value set on every response (a TLS
    /// listener only).
    pub hsts: Option<http::HeaderValue>,
}

/// Where a cleartext listener's 308 sends clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpsRedirect {
    /// The HTTPS port in the `Location` (none: the default, 443).
    pub port: Option<u16>,
}

/// What one listener lets its clients hold: connections, requests, time.
/// See the README's Limits table for the reasoning behind each default.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionLimits {
    /// Client connections open at once on the listener (all workers); one
    /// more is accepted and closed at once, before anything is read.
    pub max_connections: usize,
    /// Requests being served at once on the listener; one more gets 503.
    pub max_requests_in_flight: usize,
    /// Requests served on one connection before it is closed gracefully
    /// (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY); 0 means no limit.
    pub max_requests_per_connection: u64,
    /// A connection with no request in flight and nothing read for this
    /// long is closed. Before its first request, `header_timeout` applies.
    pub idle_timeout: Duration,
    /// A write to the client (the socket, or one HTTP/2 stream's response)
    /// that makes no progress for this long closes the connection.
    pub send_timeout: Duration,
    /// A request with no body bytes moving either way for this long ends:
    /// 408 (request body unfinished) or 504 before its response starts, a
    /// reset stream after.
    pub stream_idle_timeout: Duration,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: requests in flight on one
    /// connection.
    pub http2_max_concurrent_streams: u32,
    /// Response bytes one HTTP/2 stream may buffer awaiting the client.
    pub http2_max_send_buffer: usize,
    /// Requests a client may cancel (reset) over a connection's life before
    /// it is closed.
    pub http2_max_resets: u64,
    /// Requests a client may cancel within one second before the connection
    /// is closed.
    pub http2_max_resets_per_second: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_requests_in_flight: 10_000,
            max_requests_per_connection: 1000,
            idle_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(300),
            http2_max_concurrent_streams: 128,
            http2_max_send_buffer: 64 << 10,
            http2_max_resets: 500,
            http2_max_resets_per_second: 100,
        }
    }
}

/// The admin API listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// The socket address (localhost by default).
    pub address: SocketAddr,
    /// If set, requests need `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// Where access log lines go (`[access-log] path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output (`path = "-"`).
    Stdout,
    /// Appended to this file (created if missing; relative to the config file's folder).
    File(PathBuf),
}

/// OpenTelemetry span export (`[tracing]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingConfig {
    /// The OTLP/HTTP collector's base URL, e.g. `http://127.0.0.1:4318`
    /// (spans go to `/v1/traces`).
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

/// A named group of targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// The upstream's name.
    pub name: String,
    /// `host:port` targets, balanced round robin.
    pub targets: Vec<String>,
    /// The HTTP version spoken to the targets.
    pub protocol: UpstreamProtocol,
    /// Give up connecting after this long (a 502).
    pub connect_timeout: Duration,
    /// How often targets given by host name are looked up again (their
    /// addresses feed the balancer).
    pub dns_refresh: Duration,
    /// Idle connections kept per target.
    pub max_idle_per_target: usize,
    /// Connections open at once to each target, all workers together
    /// (HTTP/1.1; an h2c upstream multiplexes one connection per worker).
    pub max_connections: usize,
    /// Requests that may wait for a connection to a target when all
    /// `max_connections` are busy; beyond, a 503.
    pub max_pending: usize,
    /// The longest a request waits for a connection before a 503.
    pub queue_timeout: Duration,
    /// Speak TLS to the targets.
    pub tls: Option<UpstreamTls>,
    /// Balancing, health checks, outlier detection, breaker, retry budget
    /// and `max-requests`.
    pub resilience: crate::upstream::policy::Resilience,
}

/// The protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (cleartext).
    H2c,
    /// HTTP/2 over TLS, agreed by ALPN (`h2`); needs `tls`. gRPC over TLS.
    H2,
}

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path starts with this at a segment boundary-free byte prefix.
    Prefix(String),
    /// Segments with `{name}` parameters, and optionally a final `{*rest}`.
    Pattern(String),
}

/// How a matched path is rewritten before it goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Remove the route's prefix (keeping a leading `/`).
    StripPrefix,
    /// Replace the path with this template; `{name}` inserts a captured parameter.
    Template(String),
}

/// One plugin on a route.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginRef {
    /// The referenced plugin definition.
    pub plugin: String,
    /// The per-route configuration handed to the plugin (as JSON).
    pub config: serde_json::Value,
    /// What happens when the plugin fails.
    pub on_error: FailurePolicy,
    /// Where it was written.
    pub location: Location,
}

/// A route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The route's id.
    pub id: String,
    /// Host to match (exact, or `*.example.com`); `None` matches any.
    pub host: Option<String>,
    /// Methods to match; empty matches any.
    pub methods: Vec<Method>,
    /// Path to match.
    pub path: PathMatch,
    /// Path rewrite.
    pub rewrite: Option<Rewrite>,
    /// The upstream; `None` when a plugin always answers (e.g. aggregation).
    pub upstream: Option<String>,
    /// Time allowed for the upstream's response head once the request
    /// body has been sent (a 504 past it).
    pub timeout: Duration,
    /// Longest wait for the next chunk of the client's request body (a
    /// 408, or the response cut if it had started).
    pub request_body_timeout: Duration,
    /// Longest wait for the next chunk of the upstream's response body
    /// (the response is cut; a 504 if a plugin was buffering it).
    pub response_body_timeout: Duration,
    /// A request body declared (`Content-Length`) no larger than this is
    /// read whole before the upstream is connected to; 0 disables it.
    pub request_buffer_bytes: usize,
    /// The largest request body the route takes (`None`: no limit): a
    /// larger `Content-Length` is answered 413 at once, and a body that
    /// grows past it as it streams is cut (413 if no response has begun;
    /// the upstream request is aborted either way).
    pub max_request_body: Option<u64>,
    /// Conditions on headers and query parameters (`match`), all of
    /// which must hold; empty matches any request.
    pub matches: RequestMatch,
    /// WebSocket upgrades (HTTP/1.1 `Upgrade: websocket`) are tunnelled to
    /// the upstream; otherwise an upgrade request goes as an ordinary one.
    pub websocket: bool,
    /// A tunnel with no byte moving either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// When and how its upstream calls are retried.
    pub retry: crate::upstream::policy::RetryPolicy,
    /// The plugin pipeline, in order.
    pub plugins: Vec<PluginRef>,
    /// Where it was defined.
    pub location: Location,
}

/// A route's `match = { headers = { … }, query = { … } }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMatch {
    /// Header conditions (names lower case). A header sent several times
    /// is matched on its values joined with `,` (RFC 9110 5.3, as Envoy).
    pub headers: Vec<(http::HeaderName, ValueMatch)>,
    /// Query parameter conditions, on the percent-decoded names and values
    /// (`+` is a space); a parameter sent several times matches if any of
    /// its values does.
    pub query: Vec<(String, ValueMatch)>,
}

impl RequestMatch {
    /// How many conditions there are.
    pub fn len(&self) -> usize {
        self.headers.len() + self.query.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One header or query parameter condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// Present, with any value (even empty).
    Present,
    /// Present with exactly this value (case-sensitive).
    Exact(String),
}

/// What the route does when one of its plugins fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Answer with a 5xx whose body names no internals.
    #[default]
    FailClosed,
    /// Skip the plugin (log it) and go on as if it had continued unchanged.
    FailOpen,
}

/// TLS on a listener (`[listeners.tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Certificates with their keys. Each serves the DNS names of its own
    /// subjectAltName (exact and `*.` wildcards); the first is the default.
    pub certificates: Vec<CertKeyFiles>,
    /// What a client without SNI, or naming no configured name, gets.
    pub unknown_sni: UnknownSni,
    /// Client certificates (mTLS), when asked for.
    pub client_auth: Option<ClientAuth>,
}

/// A PEM certificate chain and its PEM private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyFiles {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The answer to a ClientHello whose server name matches no certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownSni {
    /// Serve the first certificate (what nginx and Envoy do).
    Default,
    /// Fail the handshake (`unrecognized_name`).
    Refuse,
}

/// Client certificate authentication on a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// Whether a client without a certificate is refused.
    pub mode: ClientAuthMode,
    /// The PEM bundle of CAs a client certificate must chain to.
    pub ca: PathBuf,
}

/// Whether a client certificate is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// No certificate, or an untrusted one: the handshake fails.
    Required,
    /// No certificate is allowed (plugins see none); an untrusted one still
    /// fails the handshake.
    Optional,
}

/// TLS toward an upstream's targets (`[upstreams.NAME] tls`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    /// A PEM bundle of CAs trusted besides the system and webpki roots.
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and verified in the certificate (default: the
    /// target's host).
    pub server_name: Option<String>,
    /// A client certificate for upstreams that ask for one.
    pub client_cert: Option<CertKeyFiles>,
    /// Accept any certificate the targets present (signatures are still
    /// checked, names and issuers are not). Never a default; logged as a
    /// warning every time the configuration loads.
    pub insecure_skip_verify: bool,
}
