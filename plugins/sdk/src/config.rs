//! Parsing the per-route JSON config into a serde type.
//!
//! Declare the config as a `#[derive(Deserialize)]` struct with
//! `#[serde(deny_unknown_fields)]` (and `#[serde(default)]` for optional
//! keys) and call [`parse`] from [`Plugin::configure`](crate::Plugin::configure):
//!
//! ```ignore
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields, rename_all = "kebab-case")]
//! struct Config { #[serde(default)] greeting: Option<String> }
//!
//! let config: Config = pylon_plugin_sdk::config::parse(text)?;
//! ```

use serde::de::DeserializeOwned;

/// Deserialize `text` (JSON) into `T`. An empty or blank text counts as `{}`.
///
/// The error is a one-line message for the operator, e.g.
/// ``invalid plugin config: unknown field `colour`, expected `color` at line 1 column 9``.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|e| format!("invalid plugin config: {e}"))
}

/// The config of a plugin that takes none: accepts only `{}` (or a blank
/// text) and rejects any key, e.g.
/// ``invalid plugin config: unknown field `x`, there are no fields at line 1 column 4``.
///
/// ```ignore
/// let config::Empty {} = config::parse(text)?;
/// ```
#[derive(serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Empty {}
