//! Raw → validated: checks values and cross references (routes → upstreams
//! and plugins, plugins → upstreams) and collects every problem.
//!
//! One file per section of the configuration; this one holds the shared
//! [`Ctx`] (where problems are collected, with their file and line), the
//! order in which sections are validated, and the checks that span sections.

mod listeners;
mod matching;
mod plugins;
mod process;
mod resilience;
mod routes;
mod telemetry;
mod upstreams;

use listeners::{admin, listeners};
use matching::path_normalization;
use plugins::plugins;
use process::runtime;
use routes::routes;
use telemetry::{access_log, tracing_config};
use upstreams::upstreams;

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use toml::Spanned;

use super::{
    ConfigError, Diagnostic, LineIndex,
    model::*,
    raw::RawConfig,
    units::{parse_duration, parse_size},
};

/// The largest whole number TOML can hold, as an upper bound for counts.
const TOML_MAX: usize = i64::MAX as usize;

struct Ctx<'a> {
    file: &'a Arc<str>,
    index: &'a LineIndex,
    problems: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn loc<T>(&self, s: &Spanned<T>) -> Location {
        self.index.location(self.file, s.span().start)
    }

    fn error<T>(&mut self, at: &Spanned<T>, subject: Option<String>, message: impl Into<String>) {
        let location = Some(self.loc(at));
        self.problems.push(Diagnostic {
            location,
            subject,
            message: message.into(),
        });
    }

    fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        subject: &str,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.error(
                        s,
                        Some(subject.into()),
                        "duration must be greater than zero",
                    );
                    default
                }
                Err(e) => {
                    self.error(s, Some(subject.into()), e);
                    default
                }
            },
        }
    }

    fn size(&mut self, v: &Option<Spanned<String>>, subject: &str, default: usize) -> usize {
        match v {
            None => default,
            Some(s) => match parse_size(s.get_ref()) {
                Ok(n) if n > 0 => n,
                Ok(_) => {
                    self.error(s, Some(subject.into()), "size must be greater than zero");
                    default
                }
                Err(e) => {
                    self.error(s, Some(subject.into()), e);
                    default
                }
            },
        }
    }

    /// A whole number in `range`, or `default` when unset.
    fn count(
        &mut self,
        v: &Option<Spanned<i64>>,
        subject: &str,
        key: &str,
        range: std::ops::RangeInclusive<usize>,
        default: usize,
    ) -> usize {
        let (start, end) = (*range.start(), *range.end());
        self.whole(v, subject, range, default, || {
            format!("{key} must be between {start} and {end}")
        })
    }

    /// A whole number in `range`, or `default` when unset; out of range
    /// (or negative), the `problem` is reported and `default` returned.
    fn whole(
        &mut self,
        v: &Option<Spanned<i64>>,
        subject: &str,
        range: std::ops::RangeInclusive<usize>,
        default: usize,
        problem: impl FnOnce() -> String,
    ) -> usize {
        let Some(n) = v else { return default };
        match usize::try_from(*n.get_ref()) {
            Ok(v) if range.contains(&v) => v,
            _ => {
                self.error(n, Some(subject.into()), problem());
                default
            }
        }
    }

    fn id(&mut self, s: &Spanned<String>, kind: &str) -> bool {
        let name = s.get_ref();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok {
            self.error(
                s,
                None,
                format!(
                    "invalid {kind} name {name:?}: use 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
                ),
            );
        }
        ok
    }
}

pub(super) fn validate(
    raw: RawConfig,
    file: &Path,
    file_name: &Arc<str>,
    base_dir: &Path,
    index: &LineIndex,
) -> Result<Config, ConfigError> {
    let mut cx = Ctx {
        file: file_name,
        index,
        problems: Vec::new(),
    };

    let runtime = runtime(&mut cx, raw.runtime.as_ref(), base_dir);
    let listeners = listeners(&mut cx, &raw.listeners, base_dir);
    let admin = raw.admin.as_ref().map(|a| admin(&mut cx, a));
    let access_log = raw
        .access_log
        .as_ref()
        .map(|a| access_log(&mut cx, a, base_dir));
    let tracing = raw
        .tracing
        .as_ref()
        .and_then(|t| tracing_config(&mut cx, t));
    let upstreams = upstreams(&mut cx, &raw.upstreams, base_dir);
    let plugins = plugins(&mut cx, &raw.plugins, &upstreams, &runtime, base_dir);
    let path_normalization = path_normalization(&mut cx, raw.path_normalization.as_ref());
    let routes = routes(
        &mut cx,
        &raw.routes,
        &upstreams,
        &plugins,
        &path_normalization,
    );
    instance_budget(&mut cx, &runtime, &plugins, &routes);

    if cx.problems.is_empty() {
        Ok(Config {
            file: file.to_path_buf(),
            runtime,
            listeners,
            admin,
            access_log,
            tracing,
            upstreams,
            plugins,
            routes,
            path_normalization,
        })
    } else {
        cx.problems.sort_by_key(|d| {
            d.location
                .as_ref()
                .map(|l| (l.line, l.column))
                .unwrap_or_default()
        });
        Err(ConfigError {
            diagnostics: cx.problems,
        })
    }
}

/// Every pooled plugin on a route keeps up to `pool-size` idle instances
/// for as long as the configuration lives, and they hold slots of the one
/// instance pool (`max-instances`). If the routes can keep more idle
/// instances than the pool holds, after a burst some routes' plugins could
/// no longer be instantiated at all: refuse that at load, at the route use
/// that goes over, rather than fail requests later. A fresh plugin counts
/// one slot per route (the instance serving a request).
fn instance_budget(
    cx: &mut Ctx<'_>,
    runtime: &ProcessSettings,
    plugins: &BTreeMap<String, PluginDef>,
    routes: &[Route],
) {
    let max = u64::from(runtime.max_instances);
    let mut reserved: u64 = 0;
    for route in routes {
        for r in &route.plugins {
            let Some(def) = plugins.get(&r.plugin) else {
                continue;
            };
            let slots = match def.isolation {
                Isolation::Pooled { max_idle } => max_idle as u64,
                Isolation::Fresh => 1,
            };
            reserved += slots;
            if reserved > max {
                cx.problems.push(Diagnostic {
                    location: Some(r.location.clone()),
                    subject: Some(format!("route {:?}, plugin {:?}", route.id, r.plugin)),
                    message: format!(
                        "the routes up to here keep up to {reserved} plugin instances \
                         (pool-size of each pooled plugin per route, 1 per fresh one), \
                         more than [runtime] max-instances = {max}; \
                         lower pool-size or raise max-instances"
                    ),
                });
                return;
            }
        }
    }
}
