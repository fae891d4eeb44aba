//! `[access-log]` and `[tracing]`.

use std::path::Path;

use toml::Spanned;

use super::Ctx;
use crate::config::{model::*, raw};

pub(super) fn access_log(
    cx: &mut Ctx<'_>,
    raw: &Spanned<raw::RawAccessLog>,
    base: &Path,
) -> AccessLogTarget {
    let path = &raw.get_ref().path;
    match path.get_ref().as_str() {
        "-" => AccessLogTarget::Stdout,
        "" => {
            cx.error(
                path,
                Some("access-log".into()),
                "path must be \"-\" (stdout) or a file path",
            );
            AccessLogTarget::Stdout
        }
        p => AccessLogTarget::File(base.join(p)),
    }
}

pub(super) fn tracing_config(
    cx: &mut Ctx<'_>,
    raw: &Spanned<raw::RawTracing>,
) -> Option<TracingConfig> {
    let r = raw.get_ref();
    let endpoint = r.otlp_endpoint.get_ref().trim_end_matches('/');
    let valid = endpoint
        .strip_prefix("http://")
        .is_some_and(|rest| !rest.is_empty() && endpoint.parse::<http::Uri>().is_ok());
    if !valid {
        let hint = if endpoint.starts_with("https://") {
            "https is not supported; use a local collector over http"
        } else {
            "expected an http:// URL, e.g. \"http://127.0.0.1:4318\""
        };
        cx.error(
            &r.otlp_endpoint,
            Some("tracing".into()),
            format!(
                "invalid otlp-endpoint {:?}: {hint}",
                r.otlp_endpoint.get_ref()
            ),
        );
        return None;
    }
    let service_name = match &r.service_name {
        None => "pylon".to_owned(),
        Some(s) if s.get_ref().trim().is_empty() => {
            cx.error(s, Some("tracing".into()), "service-name must not be empty");
            return None;
        }
        Some(s) => s.get_ref().clone(),
    };
    Some(TracingConfig {
        otlp_endpoint: endpoint.to_owned(),
        service_name,
    })
}
