//! JSON documents that keep their members' order, JSON pointers (RFC 6901)
//! and the edits the plugin applies to a body.
//!
//! `serde_json::Value` sorts object keys unless its workspace-wide
//! `preserve_order` feature is on, which would change every other plugin
//! built in the same workspace; so bodies are parsed into [`Json`], whose
//! objects are member lists in document order. Members nobody edits come
//! out in the order (and with the duplicates) they came in. Numbers go
//! through `serde_json::Number` (`i64`/`u64`/`f64`).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A JSON value whose objects keep their members in document order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// Any number.
    Number(serde_json::Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object: members in document order.
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
                Json::deserialize(d)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Json, E> {
                serde_json::Number::from_f64(n)
                    .map(Json::Number)
                    .ok_or_else(|| E::custom("a number that is not finite"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::String(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Json, E> {
                Ok(Json::String(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry()? {
                    members.push((k, v));
                }
                Ok(Json::Object(members))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(v) => s.serialize_str(v),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// A parsed JSON pointer (RFC 6901): its reference tokens, unescaped.
/// Never the root pointer `""`: every edit names a member or an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    /// Parse `text`; the error says what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<Pointer, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(if text.is_empty() {
                "the root pointer \"\" cannot be edited".to_string()
            } else {
                format!("{text:?} is not a JSON pointer (it must start with '/')")
            });
        };
        let tokens = rest
            .split('/')
            .map(|raw| {
                let mut out = String::with_capacity(raw.len());
                let mut chars = raw.chars();
                while let Some(c) = chars.next() {
                    if c != '~' {
                        out.push(c);
                        continue;
                    }
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "{text:?} is not a JSON pointer ('~' must be followed by 0 or 1)"
                            ));
                        }
                    }
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pointer {
            text: text.to_string(),
            tokens,
        })
    }

    /// The pointer as written in the config.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// True when `self` points strictly inside `other`'s value.
    pub(crate) fn is_inside(&self, other: &Pointer) -> bool {
        self.tokens.len() > other.tokens.len() && self.tokens.starts_with(&other.tokens)
    }

    fn split_last(&self) -> (&[String], &str) {
        let (last, parent) = self
            .tokens
            .split_last()
            .expect("a pointer is never the root");
        (parent, last)
    }
}

/// An array index token: digits without a leading zero (RFC 6901 §4).
fn index(token: &str) -> Option<usize> {
    let ok = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    if ok { token.parse().ok() } else { None }
}

impl Json {
    fn child_mut(&mut self, token: &str) -> Option<&mut Json> {
        match self {
            Json::Object(members) => members
                .iter_mut()
                .rev()
                .find(|(k, _)| k == token)
                .map(|(_, v)| v),
            Json::Array(items) => index(token).and_then(|i| items.get_mut(i)),
            _ => None,
        }
    }

    fn walk_mut(&mut self, tokens: &[String]) -> Option<&mut Json> {
        tokens.iter().try_fold(self, |v, t| v.child_mut(t))
    }

    /// The value at `ptr`, if any.
    pub(crate) fn get(&self, ptr: &Pointer) -> Option<&Json> {
        ptr.tokens.iter().try_fold(self, |v, t| match v {
            Json::Object(members) => members.iter().rev().find(|(k, _)| k == t).map(|(_, v)| v),
            Json::Array(items) => index(t).and_then(|i| items.get(i)),
            _ => None,
        })
    }

    /// Remove and return the value at `ptr` (every member of that name, the
    /// last one returned, when an object repeats a key).
    pub(crate) fn take(&mut self, ptr: &Pointer) -> Option<Json> {
        let (parent, last) = ptr.split_last();
        match self.walk_mut(parent)? {
            Json::Object(members) => {
                let mut taken = None;
                members.retain_mut(|(k, v)| {
                    if k == last {
                        taken = Some(std::mem::replace(v, Json::Null));
                        false
                    } else {
                        true
                    }
                });
                taken
            }
            Json::Array(items) => {
                let i = index(last)?;
                (i < items.len()).then(|| items.remove(i))
            }
            _ => None,
        }
    }

    /// Put `value` at `ptr`, replacing what is there. Missing parent
    /// members are created as objects. In an array the last token is an
    /// index to replace (or, equal to the length, to append) or `-` to
    /// append. False when the place cannot exist (a parent is a scalar, an
    /// index is out of range).
    pub(crate) fn set(&mut self, ptr: &Pointer, value: Json) -> bool {
        let (parent_tokens, last) = ptr.split_last();
        let mut node = self;
        for token in parent_tokens {
            if let Json::Object(members) = node
                && !members.iter().any(|(k, _)| k == token)
            {
                members.push((token.clone(), Json::Object(Vec::new())));
            }
            match node.child_mut(token) {
                Some(next) => node = next,
                None => return false,
            }
        }
        match node {
            Json::Object(members) => {
                match members.iter_mut().rev().find(|(k, _)| k == last) {
                    Some((_, v)) => *v = value,
                    None => members.push((last.to_string(), value)),
                }
                true
            }
            Json::Array(items) => {
                let len = items.len();
                match if last == "-" { Some(len) } else { index(last) } {
                    Some(i) if i < len => items[i] = value,
                    Some(i) if i == len => items.push(value),
                    _ => return false,
                }
                true
            }
            _ => false,
        }
    }

    /// Rename the object member at `ptr` to `name`, in place (its position
    /// kept). A member already called `name` in the same object is dropped.
    /// False when there is no such object member.
    pub(crate) fn rename(&mut self, ptr: &Pointer, name: &str) -> bool {
        let (parent, last) = ptr.split_last();
        let Some(Json::Object(members)) = self.walk_mut(parent) else {
            return false;
        };
        if !members.iter().any(|(k, _)| k == last) {
            return false;
        }
        if last != name {
            members.retain(|(k, _)| k != name);
        }
        for (k, _) in members.iter_mut().filter(|(k, _)| k == last) {
            *k = name.to_string();
        }
        true
    }
}

/// One direction's JSON body edits, applied in this order: remove, rename,
/// move, set, add.
#[derive(Debug, Clone, Default)]
pub(crate) struct Edits {
    /// Members or elements to delete.
    pub(crate) remove: Vec<Pointer>,
    /// Object members to rename in place: pointer → new member name.
    pub(crate) rename: Vec<(Pointer, String)>,
    /// Values to move: from → to (a missing `from` moves nothing).
    pub(crate) moves: Vec<(Pointer, Pointer)>,
    /// Values to put, replacing what is there.
    pub(crate) set: Vec<(Pointer, Json)>,
    /// Values to put only where nothing is.
    pub(crate) add: Vec<(Pointer, Json)>,
}

impl Edits {
    /// True when no edit is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.moves.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    /// Apply every edit to `doc`. Edits whose target does not exist (or
    /// cannot, like a member of a string) are skipped: a body is edited as
    /// far as its shape allows.
    pub(crate) fn apply(&self, doc: &mut Json) {
        for ptr in &self.remove {
            doc.take(ptr);
        }
        for (ptr, name) in &self.rename {
            doc.rename(ptr, name);
        }
        for (from, to) in &self.moves {
            if doc.get(from).is_none() || !can_set(doc, to) {
                continue;
            }
            if let Some(v) = doc.take(from) {
                doc.set(to, v);
            }
        }
        for (ptr, value) in &self.set {
            doc.set(ptr, value.clone());
        }
        for (ptr, value) in &self.add {
            if doc.get(ptr).is_none() {
                doc.set(ptr, value.clone());
            }
        }
    }
}

/// Whether [`Json::set`] at `ptr` would succeed, without changing `doc`.
fn can_set(doc: &Json, ptr: &Pointer) -> bool {
    let (parent_tokens, last) = ptr.split_last();
    let mut node = doc;
    for token in parent_tokens {
        let next = match node {
            Json::Object(members) => match members.iter().rev().find(|(k, _)| k == token) {
                Some((_, v)) => v,
                // Every further parent would be created as an object.
                None => return true,
            },
            Json::Array(items) => match index(token).and_then(|i| items.get(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
        node = next;
    }
    match node {
        Json::Object(_) => true,
        Json::Array(items) => last == "-" || index(last).is_some_and(|i| i <= items.len()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Json {
        serde_json::from_str(text).unwrap()
    }

    fn out(doc: &Json) -> String {
        serde_json::to_string(doc).unwrap()
    }

    fn p(text: &str) -> Pointer {
        Pointer::parse(text).unwrap()
    }

    #[test]
    fn pointers_parse_per_rfc_6901() {
        assert_eq!(p("/a~1b/~0c").tokens, ["a/b", "~c"]);
        assert_eq!(p("/").tokens, [""]);
        assert!(Pointer::parse("").unwrap_err().contains("root"));
        assert!(
            Pointer::parse("a/b")
                .unwrap_err()
                .contains("must start with '/'")
        );
        assert!(
            Pointer::parse("/a~2")
                .unwrap_err()
                .contains("'~' must be followed")
        );
        assert!(p("/a/b").is_inside(&p("/a")));
        assert!(!p("/a").is_inside(&p("/a")));
        assert!(!p("/ab").is_inside(&p("/a")));
    }

    #[test]
    fn edits_keep_untouched_members_in_order() {
        let mut d = doc(r#"{"z":1,"a":{"old":2,"keep":3},"m":[1,2,3],"drop":true}"#);
        let edits = Edits {
            remove: vec![p("/drop"), p("/m/0"), p("/missing/x")],
            rename: vec![(p("/a/old"), "new".into())],
            moves: vec![(p("/z"), p("/a/z")), (p("/nothing"), p("/x"))],
            set: vec![(p("/deep/er/x"), doc("true")), (p("/m/-"), doc("4"))],
            add: vec![
                (p("/a/keep"), doc("0")),
                (p("/added"), doc(r#"{"k":null}"#)),
            ],
        };
        edits.apply(&mut d);
        assert_eq!(
            out(&d),
            r#"{"a":{"new":2,"keep":3,"z":1},"m":[2,3,4],"deep":{"er":{"x":true}},"added":{"k":null}}"#
        );
    }

    #[test]
    fn impossible_edits_are_skipped_without_loss() {
        let mut d = doc(r#"{"s":"str","arr":[1],"v":5}"#);
        let edits = Edits {
            set: vec![(p("/s/x"), doc("1")), (p("/arr/5"), doc("1"))],
            moves: vec![(p("/v"), p("/s/inner"))],
            rename: vec![(p("/arr/0"), "x".into())],
            ..Edits::default()
        };
        edits.apply(&mut d);
        assert_eq!(out(&d), r#"{"s":"str","arr":[1],"v":5}"#);
    }

    #[test]
    fn numbers_and_non_ascii_round_trip() {
        let text = r#"{"big":18446744073709551615,"neg":-3,"f":1.5,"s":"é\u0000"}"#;
        let d = doc(text);
        assert_eq!(
            out(&d),
            "{\"big\":18446744073709551615,\"neg\":-3,\"f\":1.5,\"s\":\"é\\u0000\"}"
        );
    }
}
