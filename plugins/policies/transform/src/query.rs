//! Query string edits that touch only the parameters they name.
//!
//! The query is split on `&` into raw `name=value` pieces; names are
//! compared after form-decoding (`+` is a space, `%XX` a byte), so
//! `a%20b=1` and `a+b=1` both match the configured name `a b`. A piece that
//! no edit names is kept byte for byte, in place; new names and values are
//! form-encoded. Nothing is ever re-encoded that was not edited.

use std::borrow::Cow;

/// One direction's query edits, applied in this order: remove, rename, set,
/// add.
#[derive(Debug, Clone, Default)]
pub(crate) struct Edits {
    /// Parameters to drop (every occurrence).
    pub(crate) remove: Vec<String>,
    /// Parameters to rename (every occurrence, raw value kept): from → to.
    pub(crate) rename: Vec<(String, String)>,
    /// Parameters to give exactly this value: the first occurrence is
    /// replaced in place and the others dropped; appended when absent.
    pub(crate) set: Vec<(String, String)>,
    /// Occurrences to append, keeping existing ones.
    pub(crate) add: Vec<(String, String)>,
}

/// A `name=value` piece: the raw text and its decoded name.
struct Piece<'a> {
    raw: Cow<'a, str>,
    name: String,
}

fn decoded_name(raw: &str) -> String {
    let name = raw.split_once('=').map_or(raw, |(n, _)| n);
    form_urlencoded::parse(name.as_bytes())
        .next()
        .map(|(n, _)| n.into_owned())
        .unwrap_or_default()
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Edits {
    /// True when no edit is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    /// The edited query (without `?`; empty when no parameter is left).
    pub(crate) fn apply(&self, query: Option<&str>) -> String {
        let mut pieces: Vec<Piece<'_>> = query
            .unwrap_or_default()
            .split('&')
            .filter(|raw| !raw.is_empty())
            .map(|raw| Piece {
                raw: Cow::Borrowed(raw),
                name: decoded_name(raw),
            })
            .collect();
        for name in &self.remove {
            pieces.retain(|p| p.name != *name);
        }
        for (from, to) in &self.rename {
            for p in pieces.iter_mut().filter(|p| p.name == *from) {
                let value = p.raw.split_once('=').map(|(_, v)| v);
                p.raw = Cow::Owned(match value {
                    Some(v) => format!("{}={v}", encode(to)),
                    None => encode(to),
                });
                p.name = to.clone();
            }
        }
        for (name, value) in &self.set {
            let fresh = format!("{}={}", encode(name), encode(value));
            match pieces.iter().position(|p| p.name == *name) {
                Some(first) => {
                    pieces[first].raw = Cow::Owned(fresh);
                    let mut i = 0;
                    pieces.retain(|p| {
                        i += 1;
                        i - 1 == first || p.name != *name
                    });
                }
                None => pieces.push(Piece {
                    raw: Cow::Owned(fresh),
                    name: name.clone(),
                }),
            }
        }
        for (name, value) in &self.add {
            pieces.push(Piece {
                raw: Cow::Owned(format!("{}={}", encode(name), encode(value))),
                name: name.clone(),
            });
        }
        let raw: Vec<&str> = pieces.iter().map(|p| p.raw.as_ref()).collect();
        raw.join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(a: &str, b: &str) -> (String, String) {
        (a.to_string(), b.to_string())
    }

    #[test]
    fn untouched_parameters_keep_order_and_encoding() {
        let edits = Edits {
            remove: vec!["drop".into()],
            rename: vec![s("old", "new name")],
            set: vec![s("page", "2"), s("lang", "fr & en")],
            add: vec![s("tag", "x"), s("tag", "y/z")],
        };
        let q = "z=%7e+raw&page=1&old=a%2Fb&drop=1&page=9&flag&drop&tag=w";
        assert_eq!(
            edits.apply(Some(q)),
            "z=%7e+raw&page=2&new+name=a%2Fb&flag&tag=w&lang=fr+%26+en&tag=x&tag=y%2Fz"
        );
    }

    #[test]
    fn names_match_after_decoding_and_empty_result_is_empty() {
        let edits = Edits {
            remove: vec!["a b".into()],
            ..Edits::default()
        };
        assert_eq!(edits.apply(Some("a+b=1&a%20b=2")), "");
        assert_eq!(edits.apply(None), "");
        assert_eq!(edits.apply(Some("x=1&&y")), "x=1&y");
    }
}
