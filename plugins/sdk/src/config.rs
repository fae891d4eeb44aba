//! Parsing the per-route JSON config: [`parse`] into a serde type with an
//! error that names the key, [`parse_duration`] / [`Duration`] for
//! durations such as `"250ms"`, `"10m"` or `"1h30m"`, and [`OneOrMany`] for
//! a key that takes `"a"` or `["a", "b"]`.
//!
//! Declare the config as a `#[derive(Deserialize)]` struct with
//! `#[serde(deny_unknown_fields)]` (and `#[serde(default)]` for optional
//! keys) and call [`parse`] from [`Plugin::configure`](crate::Plugin::configure):
//!
//! ```ignore
//! use pylon_plugin_sdk::config::{self, Duration, OneOrMany};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields, rename_all = "kebab-case")]
//! struct Config {
//!     #[serde(default)]
//!     greeting: Option<String>,
//!     ttl: Duration,             // "250ms", "10m", "1h30m"
//!     #[serde(default)]
//!     hosts: OneOrMany<String>,  // "a" or ["a", "b"]
//! }
//!
//! let config: Config = config::parse(text)?;
//! ```
//!
//! A plugin that reports every problem at once (rather than the first one
//! serde meets) keeps a key as a `String` and validates it afterwards with
//! [`parse_duration`], collecting the messages.
//!
//! Not for validation beyond the shape (ranges, cross-key rules): that is
//! the plugin's own.

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeOwned},
};

/// Deserialize `text` (JSON) into `T`. An empty or blank text counts as `{}`.
///
/// The error is a one-line message for the operator that names the key
/// (dotted, with list indexes) and, for an unknown key, the closest known
/// one, e.g.
/// ``invalid plugin config: limits[0]: unknown field `pre`, expected one of `requests`, `per` (did you mean `per`?) at line 1 column 30``.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| message(&e))?;
    de.end()
        .map_err(|e| format!("invalid plugin config: {e}"))?;
    Ok(value)
}

fn message(err: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = err.inner();
    let position = format!(" at line {} column {}", inner.line(), inner.column());
    let text = inner.to_string();
    let text = text.strip_suffix(&position).unwrap_or(&text);
    let hint = suggestion(text)
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default();
    let path = err.path().to_string();
    let at = if path == "." || path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    };
    let position = if inner.line() == 0 {
        String::new()
    } else {
        position
    };
    format!("invalid plugin config: {at}{text}{hint}{position}")
}

/// For serde's ``unknown field `x`, expected one of `a`, `b` ``: the known
/// field closest to `x`, when it is close enough to be a typo.
fn suggestion(text: &str) -> Option<&str> {
    let rest = text
        .strip_prefix("unknown field `")
        .or_else(|| text.strip_prefix("unknown variant `"))?;
    let (unknown, expected) = rest.split_once('`')?;
    let candidates = expected.split('`').skip(1).step_by(2);
    let (best, distance) = candidates
        .map(|c| (c, edit_distance(unknown, c)))
        .min_by_key(|&(_, d)| d)?;
    (distance > 0 && distance <= unknown.chars().count().div_ceil(3).max(1)).then_some(best)
}

/// Edit distance with adjacent transpositions counting one (optimal string
/// alignment), over chars; for short config keys only.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * width + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[(i - 1) * width + j] + 1)
                    .min(d[i * width + j - 1] + 1)
                    .min(d[(i - 1) * width + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * width + b.len()]
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

// ---------------------------------------------------------------- durations

/// The units [`parse_duration`] knows, longest suffix first.
const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// The longest text [`parse_duration`] reads: a config value is input.
const MAX_DURATION_TEXT: usize = 64;

/// Parse a duration written as whole numbers with units, largest unit
/// first: `"250ms"`, `"30s"`, `"10m"`, `"1h30m"`, `"1d"`, `"2m30s500ms"`.
/// Units: `ms`, `s`, `m`, `h`, `d`. Spaces around the text are ignored.
///
/// The error says what is wrong, starting with the text, e.g.
/// `"1.5s" is not a duration like "250ms", "10m" or "1h30m": no fractions; write "1500ms"`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    parse_ms(text)
        .map(std::time::Duration::from_millis)
        .map_err(|why| {
            let shown: String = text.chars().take(MAX_DURATION_TEXT).collect();
            format!("{shown:?} is not a duration like \"250ms\", \"10m\" or \"1h30m\": {why}")
        })
}

fn parse_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("it is empty".to_owned());
    }
    if t.len() > MAX_DURATION_TEXT {
        return Err(format!("longer than {MAX_DURATION_TEXT} characters"));
    }
    let mut rest = t;
    let mut total: u64 = 0;
    let mut last_scale = u64::MAX;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let (num, tail) = rest.split_at(digits);
        if let Some(frac) = tail.strip_prefix('.') {
            let unit_at = frac
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(frac.len());
            return Err(match unit_lookup(&frac[unit_at..]) {
                Some((unit, scale)) if scale > 1 => {
                    let whole = format!("{num}.{}{unit}", &frac[..unit_at]);
                    let smaller = UNITS.iter().rev().find(|(_, s)| *s < scale);
                    match smaller {
                        Some((small, _)) => {
                            format!(
                                "no fractions ({whole}); use a smaller unit such as \"{small}\""
                            )
                        }
                        None => "no fractions".to_owned(),
                    }
                }
                _ => "no fractions".to_owned(),
            });
        }
        let Some((unit, scale)) = unit_lookup(tail) else {
            let next: String = tail.chars().take(8).collect();
            return Err(if tail.is_empty() {
                format!("{num} has no unit (ms, s, m, h or d), e.g. \"{num}s\"")
            } else {
                format!("unknown unit at {next:?} (use ms, s, m, h or d)")
            });
        };
        if scale >= last_scale {
            return Err(format!(
                "units must go from largest to smallest, each once (\"{unit}\" comes too late)"
            ));
        }
        last_scale = scale;
        let n: u64 = num.parse().map_err(|_| "too large".to_owned())?;
        total = n
            .checked_mul(scale)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| "too large".to_owned())?;
        rest = &tail[unit.len()..];
    }
    Ok(total)
}

/// The unit `text` starts with (`"ms"` before `"m"`).
fn unit_lookup(text: &str) -> Option<(&'static str, u64)> {
    let end = text
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let word = &text[..end];
    // "1h30m": the letters run until the next digit, so "ms" is one unit
    // and "m" another; anything else is unknown.
    UNITS.iter().find(|(u, _)| *u == word).copied()
}

/// A duration in a config, written as text: `"250ms"`, `"10m"`, `"1h30m"`
/// (see [`parse_duration`]). A serde field of this type rejects anything
/// else with the key named by [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// Whole milliseconds (saturating at `u64::MAX`).
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whole seconds (rounded down).
    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like \"250ms\", \"10m\" or \"1h30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v).map(Duration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A duration key that also takes a bare number in a unit the plugin
/// chooses (older configs wrote `"max-age": 600` for seconds): read it as
/// `Option<DurationOrNumber>` and convert with [`DurationOrNumber::to_duration`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "a duration like \"250ms\", \"10m\" or \"1h30m\", or a number"
)]
pub enum DurationOrNumber {
    /// A bare number, in the unit given to [`DurationOrNumber::to_duration`].
    Number(u64),
    /// Text for [`parse_duration`] (a bare number as text also counts in
    /// the plugin's unit).
    Text(String),
}

impl DurationOrNumber {
    /// The duration, a bare number counting in `unit` (e.g.
    /// `Duration::from_secs(1)`). The error starts with the text as written.
    pub fn to_duration(&self, unit: std::time::Duration) -> Result<std::time::Duration, String> {
        let number = |n: u64| {
            u32::try_from(n)
                .ok()
                .and_then(|n| unit.checked_mul(n))
                .ok_or_else(|| format!("{n} is too large"))
        };
        match self {
            DurationOrNumber::Number(n) => number(*n),
            DurationOrNumber::Text(t) => match t.trim().parse::<u64>() {
                Ok(n) => number(n),
                Err(_) => parse_duration(t),
            },
        }
    }
}

// ------------------------------------------------------------ one or many

/// A key that takes one value or a list: `"a"` or `["a", "b"]` (an empty
/// list is an empty list). Read the values with [`OneOrMany::as_slice`] or
/// [`OneOrMany::into_vec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T> OneOrMany<T> {
    /// The values, in order.
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    /// The values, in order.
    pub fn into_vec(self) -> Vec<T> {
        self.0
    }
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Not `#[serde(untagged)]`, which would only say "data did not
        // match any variant": the error names what was wrong.
        let value = serde_json::Value::deserialize(deserializer)?;
        let values = if value.is_array() {
            Vec::<T>::deserialize(value)
        } else {
            T::deserialize(value).map(|v| vec![v])
        };
        values.map(OneOrMany).map_err(|e| {
            de::Error::custom(format_args!("expected one value or a list of values: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as StdDuration;

    fn ms(text: &str) -> Result<u64, String> {
        parse_duration(text).map(|d| d.as_millis() as u64)
    }

    #[test]
    fn durations_with_units_and_compounds() {
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("2s"), Ok(2_000));
        assert_eq!(ms("10m"), Ok(600_000));
        assert_eq!(ms(" 1h30m "), Ok(5_400_000));
        assert_eq!(ms("1d"), Ok(86_400_000));
        assert_eq!(ms("2m30s500ms"), Ok(150_500));
        assert_eq!(ms("0s"), Ok(0));
    }

    #[test]
    fn bad_durations_say_why() {
        for (text, why) in [
            (
                "1.5s",
                "no fractions (1.5s); use a smaller unit such as \"ms\"",
            ),
            ("1.5h", "use a smaller unit such as \"m\""),
            ("30", "30 has no unit"),
            ("", "it is empty"),
            ("s", "expected a number at \"s\""),
            ("10 minutes", "unknown unit"),
            ("5x", "unknown unit at \"x\""),
            ("30m1h", "largest to smallest"),
            ("1s1s", "largest to smallest"),
            ("99999999999999999999d", "too large"),
            ("999999999999999d", "too large"),
            ("-1s", "expected a number"),
        ] {
            let e = parse_duration(text).unwrap_err();
            assert!(
                e.starts_with(&format!("{text:?} is not a duration")),
                "{text}: {e}"
            );
            assert!(e.contains(why), "{text}: {why:?} not in {e}");
        }
        let long = "1".repeat(10_000);
        let e = parse_duration(&long).unwrap_err();
        assert!(e.len() < 300, "{e}");
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Limit {
        requests: u64,
        per: Duration,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Config {
        #[serde(default)]
        limits: Vec<Limit>,
        #[serde(default)]
        hosts: OneOrMany<String>,
        #[serde(default)]
        max_age: Option<DurationOrNumber>,
    }

    #[test]
    fn typed_config_names_the_key() {
        let c: Config =
            parse(r#"{"limits": [{"requests": 1, "per": "1h30m"}], "hosts": "a", "max-age": 30}"#)
                .unwrap();
        assert_eq!(c.limits[0].per.as_millis(), 5_400_000);
        assert_eq!(c.limits[0].requests, 1);
        assert_eq!(c.hosts.as_slice(), ["a"]);
        let max_age = c.max_age.unwrap();
        assert_eq!(
            max_age.to_duration(StdDuration::from_secs(1)),
            Ok(StdDuration::from_secs(30))
        );
        let c: Config = parse(r#"{"hosts": ["a", "b"], "max-age": "10m"}"#).unwrap();
        assert_eq!(c.hosts.into_vec(), ["a", "b"]);
        assert_eq!(
            c.max_age.unwrap().to_duration(StdDuration::from_secs(1)),
            Ok(StdDuration::from_secs(600))
        );
        assert!(parse::<Config>("  ").unwrap().limits.is_empty());

        let e = parse::<Config>(r#"{"limits": [{"requests": 1, "per": "1.5s"}]}"#).unwrap_err();
        assert!(
            e.starts_with("invalid plugin config: limits[0].per: \"1.5s\" is not a duration"),
            "{e}"
        );
        let e = parse::<Config>(r#"{"limits": [{"requests": 1, "pre": "1s"}]}"#).unwrap_err();
        assert!(
            e.starts_with("invalid plugin config: limits[0].pre: unknown field `pre`"),
            "{e}"
        );
        assert!(e.contains("(did you mean `per`?) at line 1 column"), "{e}");
        let e = parse::<Config>(r#"{"limts": []}"#).unwrap_err();
        assert!(e.contains("did you mean `limits`?"), "{e}");
        let e = parse::<Config>(r#"{"colour": 1}"#).unwrap_err();
        assert!(e.contains("unknown field `colour`"), "{e}");
        assert!(!e.contains("did you mean"), "{e}");
        let e = parse::<Config>(r#"{"hosts": 7}"#).unwrap_err();
        assert!(
            e.contains("hosts: expected one value or a list of values: invalid type: integer `7`"),
            "{e}"
        );
        let e = parse::<Config>(r#"{"hosts": []} trailing"#).unwrap_err();
        assert!(
            e.starts_with("invalid plugin config: trailing characters"),
            "{e}"
        );
        let e = parse::<Empty>(r#"{"x": 1}"#).unwrap_err();
        assert!(e.contains("unknown field `x`, there are no fields"), "{e}");
    }

    #[test]
    fn a_bare_number_counts_in_the_plugins_unit() {
        let ms = StdDuration::from_millis(1);
        assert_eq!(
            DurationOrNumber::Number(250).to_duration(ms),
            Ok(StdDuration::from_millis(250))
        );
        assert_eq!(
            DurationOrNumber::Text("30".into()).to_duration(StdDuration::from_secs(1)),
            Ok(StdDuration::from_secs(30))
        );
        assert!(
            DurationOrNumber::Number(u64::MAX)
                .to_duration(ms)
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn edit_distance_is_levenshtein() {
        assert_eq!(edit_distance("per", "per"), 0);
        assert_eq!(edit_distance("pre", "per"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("limts", "limits"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
