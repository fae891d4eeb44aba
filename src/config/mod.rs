//! Configuration: read in two steps, the raw TOML document ([`raw`]) and
//! then the validated model ([`model`]) with every cross reference checked.
//! All problems are reported at once, each with `file:line:column` and the
//! route, upstream or plugin it concerns.
//!
//! Parsing works on `&str`, so tests never need the filesystem. Loading
//! plugins (compiling components, asking plugins to accept their per-route
//! config) is not done here but in [`crate::generation`], which reports its
//! problems in the same format.

mod model;
#[cfg(test)]
mod properties;
mod raw;
mod units;
mod validate;

use std::{fmt, path::Path, sync::Arc};

pub use model::*;
pub use units::{parse_duration, parse_size};

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where it was written, when known.
    pub location: Option<Location>,
    /// What it concerns, e.g. `route "users", plugin "auth"`.
    pub subject: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        if let Some(subject) = &self.subject {
            write!(f, "{subject}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    /// An error with a single problem.
    pub fn single(diagnostic: Diagnostic) -> Self {
        Self {
            diagnostics: vec![diagnostic],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.diagnostics.len();
        writeln!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.diagnostics {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

/// Read and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigError::single(Diagnostic {
            location: None,
            subject: None,
            message: format!("cannot read {}: {err}", path.display()),
        })
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, path, base)
}

/// Validate configuration text. `file` is used in messages and as
/// [`Config::file`]; relative paths inside resolve against `base_dir`.
pub fn parse(text: &str, file: &Path, base_dir: &Path) -> Result<Config, ConfigError> {
    let file_name: Arc<str> = file.display().to_string().into();
    let index = LineIndex::new(text);
    let raw: raw::RawConfig = toml::from_str(text).map_err(|err| {
        ConfigError::single(Diagnostic {
            location: err
                .span()
                .map(|span| index.location(&file_name, span.start)),
            subject: None,
            message: err.message().trim().to_string(),
        })
    })?;
    validate::validate(raw, file, &file_name, base_dir, &index)
}

/// Maps byte offsets to 1-based line and column.
pub(crate) struct LineIndex {
    line_starts: Vec<usize>,
    text: String,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            line_starts,
            text: text.to_string(),
        }
    }

    pub(crate) fn location(&self, file: &Arc<str>, offset: usize) -> Location {
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let end = offset.min(self.text.len());
        let column = self
            .text
            .get(start..end)
            .map_or(1, |s| s.chars().count() + 1);
        Location {
            file: file.clone(),
            line: line + 1,
            column,
        }
    }
}
