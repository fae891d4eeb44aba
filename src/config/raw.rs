//! The configuration file as written: serde structs that mirror the TOML
//! one to one, unknown keys rejected, with spans kept for error messages.
//! Nothing here is validated beyond types; see [`super::validate`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole document.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) runtime: Option<Spanned<RawRuntime>>,
    #[serde(default)]
    pub(crate) listeners: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub(crate) admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    pub(crate) access_log: Option<Spanned<RawAccessLog>>,
    #[serde(default)]
    pub(crate) tracing: Option<Spanned<RawTracing>>,
    #[serde(default)]
    pub(crate) upstreams: BTreeMap<Spanned<String>, Spanned<RawUpstream>>,
    #[serde(default)]
    pub(crate) plugins: BTreeMap<Spanned<String>, Spanned<RawPluginDef>>,
    #[serde(default)]
    pub(crate) routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub(crate) path_normalization: Option<Spanned<RawPathNormalization>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawPathNormalization {
    pub(crate) normalize: Option<bool>,
    pub(crate) merge_slashes: Option<bool>,
    pub(crate) escaped_slashes: Option<Spanned<String>>,
    pub(crate) backslashes: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawRuntime {
    pub(crate) cache_dir: Option<Spanned<String>>,
    pub(crate) max_instances: Option<Spanned<i64>>,
    pub(crate) max_memory: Option<Spanned<String>>,
    pub(crate) kv: Option<Spanned<RawKv>>,
    pub(crate) workers: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawKv {
    pub(crate) backend: Spanned<String>,
    pub(crate) url: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawListener {
    pub(crate) address: Spanned<String>,
    pub(crate) max_header_size: Option<Spanned<String>>,
    pub(crate) header_timeout: Option<Spanned<String>>,
    pub(crate) http2: Option<bool>,
    pub(crate) redirect_to_https: Option<Spanned<RawRedirect>>,
    pub(crate) hsts: Option<Spanned<String>>,
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) max_requests_in_flight: Option<Spanned<i64>>,
    pub(crate) max_requests_per_connection: Option<Spanned<i64>>,
    pub(crate) idle_timeout: Option<Spanned<String>>,
    pub(crate) send_timeout: Option<Spanned<String>>,
    pub(crate) stream_idle_timeout: Option<Spanned<String>>,
    pub(crate) http2_max_concurrent_streams: Option<Spanned<i64>>,
    pub(crate) http2_max_send_buffer: Option<Spanned<String>>,
    pub(crate) http2_max_resets: Option<Spanned<i64>>,
    pub(crate) http2_max_resets_per_second: Option<Spanned<i64>>,
    pub(crate) tls: Option<Spanned<RawListenerTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawListenerTls {
    pub(crate) certificates: Spanned<Vec<Spanned<RawCertKey>>>,
    pub(crate) unknown_sni: Option<Spanned<String>>,
    pub(crate) client_auth: Option<Spanned<String>>,
    pub(crate) client_ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawCertKey {
    pub(crate) cert: Spanned<String>,
    pub(crate) key: Spanned<String>,
}

/// `redirect-to-https = true` or a port.
#[derive(Debug)]
pub(crate) enum RawRedirect {
    Enabled(bool),
    Port(i64),
}

impl<'de> Deserialize<'de> for RawRedirect {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawRedirect;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or the HTTPS port")
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawRedirect, E> {
                Ok(RawRedirect::Enabled(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawRedirect, E> {
                Ok(RawRedirect::Port(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawRedirect, E> {
                Ok(RawRedirect::Port(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

/// `tls = true` or `tls = { ca = "…", … }`. Not `#[serde(untagged)]`:
/// that buffers the value, and the buffered table loses the spans its
/// `Spanned` fields need (every table failed to match).
#[derive(Debug)]
pub(crate) enum RawUpstreamTls {
    Enabled(bool),
    Settings(RawUpstreamTlsSettings),
}

impl<'de> Deserialize<'de> for RawUpstreamTls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawUpstreamTls;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or a table { ca, server-name, client-cert, client-key, insecure-skip-verify }")
            }

            fn visit_bool<E>(self, v: bool) -> Result<RawUpstreamTls, E> {
                Ok(RawUpstreamTls::Enabled(v))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawUpstreamTls, A::Error> {
                RawUpstreamTlsSettings::deserialize(serde::de::value::MapAccessDeserializer::new(
                    map,
                ))
                .map(RawUpstreamTls::Settings)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawUpstreamTlsSettings {
    pub(crate) ca: Option<Spanned<String>>,
    pub(crate) server_name: Option<Spanned<String>>,
    pub(crate) client_cert: Option<Spanned<String>>,
    pub(crate) client_key: Option<Spanned<String>>,
    pub(crate) insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawAdmin {
    pub(crate) address: Option<Spanned<String>>,
    pub(crate) token: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawAccessLog {
    pub(crate) path: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawTracing {
    pub(crate) otlp_endpoint: Spanned<String>,
    pub(crate) service_name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawUpstream {
    pub(crate) targets: Spanned<Vec<Spanned<String>>>,
    pub(crate) protocol: Option<Spanned<String>>,
    pub(crate) connect_timeout: Option<Spanned<String>>,
    pub(crate) dns_refresh: Option<Spanned<String>>,
    pub(crate) max_idle_per_target: Option<Spanned<i64>>,
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) max_pending: Option<Spanned<i64>>,
    pub(crate) queue_timeout: Option<Spanned<String>>,
    pub(crate) tls: Option<Spanned<RawUpstreamTls>>,
    /// Per-target weights, in the order of `targets` (default 1 each).
    pub(crate) weights: Option<Spanned<Vec<Spanned<i64>>>>,
    pub(crate) balance: Option<Spanned<String>>,
    pub(crate) hash_on: Option<Spanned<String>>,
    pub(crate) max_requests: Option<Spanned<i64>>,
    pub(crate) health_check: Option<Spanned<RawHealthCheck>>,
    pub(crate) outlier_detection: Option<Spanned<RawOutlier>>,
    pub(crate) circuit_breaker: Option<Spanned<RawBreaker>>,
    pub(crate) retry_budget: Option<Spanned<RawRetryBudget>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawHealthCheck {
    pub(crate) path: Spanned<String>,
    pub(crate) method: Option<Spanned<String>>,
    pub(crate) host: Option<Spanned<String>>,
    pub(crate) statuses: Option<Spanned<String>>,
    pub(crate) interval: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) healthy_threshold: Option<Spanned<i64>>,
    pub(crate) unhealthy_threshold: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawOutlier {
    pub(crate) consecutive_failures: Option<Spanned<i64>>,
    pub(crate) base_ejection_time: Option<Spanned<String>>,
    pub(crate) max_ejection_time: Option<Spanned<String>>,
    pub(crate) max_ejected_percent: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawBreaker {
    pub(crate) consecutive_failures: Option<Spanned<i64>>,
    pub(crate) backoff: Option<Spanned<String>>,
    pub(crate) max_backoff: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawRetryBudget {
    pub(crate) ratio: Option<Spanned<f64>>,
    pub(crate) min_concurrent: Option<Spanned<i64>>,
    pub(crate) min_per_second: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawRetry {
    pub(crate) retries: Option<Spanned<i64>>,
    pub(crate) statuses: Option<Spanned<Vec<Spanned<i64>>>>,
    pub(crate) non_idempotent: Option<Spanned<bool>>,
    pub(crate) backoff: Option<Spanned<String>>,
    pub(crate) max_backoff: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawPluginDef {
    pub(crate) component: Spanned<String>,
    pub(crate) isolation: Option<Spanned<String>>,
    pub(crate) pool_size: Option<Spanned<i64>>,
    pub(crate) recycle_memory_percent: Option<Spanned<i64>>,
    pub(crate) recycle_after_requests: Option<Spanned<i64>>,
    pub(crate) deadline: Option<Spanned<String>>,
    pub(crate) memory: Option<Spanned<String>>,
    pub(crate) max_body_size: Option<Spanned<String>>,
    pub(crate) max_concurrency: Option<Spanned<i64>>,
    pub(crate) kv_max_bytes: Option<Spanned<String>>,
    pub(crate) kv_max_entries: Option<Spanned<i64>>,
    pub(crate) kv_max_value_size: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) capabilities: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) http_upstreams: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawRoute {
    pub(crate) id: Spanned<String>,
    pub(crate) host: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) methods: Vec<Spanned<String>>,
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) path_prefix: Option<Spanned<String>>,
    pub(crate) strip_prefix: Option<Spanned<bool>>,
    pub(crate) rewrite: Option<Spanned<String>>,
    pub(crate) upstream: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) request_body_timeout: Option<Spanned<String>>,
    pub(crate) response_body_timeout: Option<Spanned<String>>,
    pub(crate) request_buffer_size: Option<Spanned<String>>,
    pub(crate) max_request_body: Option<Spanned<String>>,
    #[serde(rename = "match")]
    pub(crate) matches: Option<Spanned<RawRequestMatch>>,
    pub(crate) websocket: Option<Spanned<bool>>,
    pub(crate) tunnel_idle_timeout: Option<Spanned<String>>,
    pub(crate) retry: Option<Spanned<RawRetry>>,
    #[serde(default)]
    pub(crate) plugins: Vec<Spanned<RawPluginRef>>,
}

/// `[[routes]] match = { headers = { … }, query = { … } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRequestMatch {
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, Spanned<RawValueMatch>>,
    #[serde(default)]
    pub(crate) query: BTreeMap<String, Spanned<RawValueMatch>>,
}

/// A header or query parameter condition: a string (that exact value) or
/// `true` (present). A visitor rather than `#[serde(untagged)]`, which
/// would lose the spans.
#[derive(Debug)]
pub(crate) enum RawValueMatch {
    Exact(String),
    Present(bool),
}

impl<'de> Deserialize<'de> for RawValueMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawValueMatch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string (the exact value) or true (present)")
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawValueMatch, E> {
                Ok(RawValueMatch::Present(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawValueMatch, E> {
                Ok(RawValueMatch::Exact(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawPluginRef {
    pub(crate) plugin: Spanned<String>,
    pub(crate) on_error: Option<Spanned<String>>,
    pub(crate) config: Option<toml::Table>,
}
