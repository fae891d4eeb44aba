//! Request path normalisation: the one form of a path that routes, that
//! plugins see and that goes upstream, so a route's policies cannot be
//! walked around by spelling its path another way (`/public/../admin`,
//! `/%61dmin`, `//admin`, `/admin%2Fusers`).
//!
//! In order: every `%XX` escape is checked (an invalid or truncated one is
//! refused); escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//! decoded and the others keep their escape with upper-case hex (RFC 3986
//! §6.2.2.1-2); `%2F`/`%5C` and a literal `\` are kept, refused or turned
//! into `/` as configured; runs of `/` are merged; `.` and `..` segments
//! are removed (RFC 3986 §5.2.4), and a `..` that would climb above the
//! root is refused rather than clamped. The query string is not this
//! module's concern: callers pass the path alone.
//!
//! Pure and allocation-free when the path is already normal (the common
//! case: a scan, then the input borrowed back). A leaf module: it imports
//! nothing from the crate, so configuration validation can check route
//! paths with it too. Not for: host names, the query, or case folding
//! (paths are case-sensitive).

use std::borrow::Cow;

/// How a request path is normalised (`[path-normalization]`). The defaults
/// are the safe choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathNormalization {
    /// Decode percent-escapes of unreserved characters, upper-case the hex
    /// of the others, remove `.` and `..` segments, and refuse invalid
    /// escapes and paths that climb above the root. Default on.
    pub normalize: bool,
    /// Merge runs of `/` into one. Default on.
    pub merge_slashes: bool,
    /// What to do with `%2F` and `%5C`. Default [`SlashAction::Reject`].
    pub escaped_slashes: SlashAction,
    /// What to do with a literal `\`. Default [`SlashAction::Reject`].
    pub backslashes: SlashAction,
}

impl Default for PathNormalization {
    fn default() -> Self {
        Self {
            normalize: true,
            merge_slashes: true,
            escaped_slashes: SlashAction::Reject,
            backslashes: SlashAction::Reject,
        }
    }
}

/// What happens to an encoded slash (`%2F`, `%5C`) or a backslash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlashAction {
    /// Leave it (an escape with its hex upper-cased): not a separator for
    /// routing. Safe only if the upstream does not treat it as one either.
    Keep,
    /// Refuse the request (400).
    Reject,
    /// Turn it into `/`, a segment separator, before anything else.
    Decode,
}

impl SlashAction {
    /// The configuration word for this action.
    pub fn as_str(self) -> &'static str {
        match self {
            SlashAction::Keep => "keep",
            SlashAction::Reject => "reject",
            SlashAction::Decode => "decode",
        }
    }

    /// The action a configuration word names.
    pub fn from_word(word: &str) -> Option<Self> {
        match word {
            "keep" => Some(SlashAction::Keep),
            "reject" => Some(SlashAction::Reject),
            "decode" => Some(SlashAction::Decode),
            _ => None,
        }
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-escape in the path")]
    InvalidEscape,
    /// `%2F` or `%5C` with `escaped-slashes = "reject"`.
    #[error("encoded slash (%2F or %5C) in the path")]
    EncodedSlash,
    /// `\` with `backslashes = "reject"`.
    #[error("backslash in the path")]
    Backslash,
    /// More `..` segments than segments before them.
    #[error("the path climbs above the root")]
    AboveRoot,
    /// A byte that cannot appear in a request path (space, control, `?`, `#`, …).
    #[error("invalid character in the path")]
    InvalidChar,
    /// A path (a plugin's rewrite) that does not start with `/`.
    #[error("the path does not start with '/'")]
    NotOriginForm,
}

impl PathError {
    /// The text a client is told (the same as the message: it names no internals).
    pub fn public_message(self) -> &'static str {
        match self {
            PathError::InvalidEscape => "invalid percent-escape in the path",
            PathError::EncodedSlash => "encoded slash (%2F or %5C) in the path",
            PathError::Backslash => "backslash in the path",
            PathError::AboveRoot => "the path climbs above the root",
            PathError::InvalidChar => "invalid character in the path",
            PathError::NotOriginForm => "the path does not start with '/'",
        }
    }
}

/// Normalise `path` (without its query). A path that does not start with
/// `/` (the `*` of `OPTIONS *`, an authority-form target) is returned as is:
/// no route can match it. Borrows when `path` is already normal.
pub fn normalize<'a>(path: &'a str, opts: &PathNormalization) -> Result<Cow<'a, str>, PathError> {
    if !path.starts_with('/') || is_normal(path, opts) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, opts)?;
    resolve(&decoded, opts).map(Cow::Owned)
}

/// Whether [`normalize`] would return `path` unchanged (for a path starting
/// with `/`): one scan, no allocation.
fn is_normal(path: &str, opts: &PathNormalization) -> bool {
    let b = path.as_bytes();
    let mut seg_start = 1;
    let mut i = 1;
    loop {
        if i == b.len() || b[i] == b'/' {
            let seg = &b[seg_start..i];
            let last = i == b.len();
            if seg.is_empty() && !last && opts.merge_slashes {
                return false;
            }
            if opts.normalize && (seg == b"." || seg == b"..") {
                return false;
            }
            if last {
                return true;
            }
            i += 1;
            seg_start = i;
            continue;
        }
        match b[i] {
            b'%' if opts.normalize => {
                let (Some(&h), Some(&l)) = (b.get(i + 1), b.get(i + 2)) else {
                    return false;
                };
                let (Some(hv), Some(lv)) = (upper_hex(h), upper_hex(l)) else {
                    return false;
                };
                let v = hv << 4 | lv;
                if is_unreserved(v) || (is_slash(v) && opts.escaped_slashes != SlashAction::Keep) {
                    return false;
                }
                i += 3;
                continue;
            }
            b'%' if slash_escape_at(b, i) && opts.escaped_slashes != SlashAction::Keep => {
                return false;
            }
            b'\\' if opts.backslashes != SlashAction::Keep => return false,
            c if !is_path_byte(c) => return false,
            _ => {}
        }
        i += 1;
    }
}

/// Step one: escapes, encoded slashes and backslashes. The result has real
/// separators as `/` and nothing left to decode.
fn decode(path: &str, opts: &PathNormalization) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    // `copied..i` is pending input copied as is; cuts fall only on ASCII
    // bytes, so every slice is on a char boundary.
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if opts.normalize => {
                let v = match (
                    b.get(i + 1).and_then(|&h| hex(h)),
                    b.get(i + 2).and_then(|&l| hex(l)),
                ) {
                    (Some(h), Some(l)) => h << 4 | l,
                    _ => return Err(PathError::InvalidEscape),
                };
                out.push_str(&path[copied..i]);
                if is_slash(v) {
                    match opts.escaped_slashes {
                        SlashAction::Reject => return Err(PathError::EncodedSlash),
                        SlashAction::Decode => out.push('/'),
                        SlashAction::Keep => push_escape(&mut out, v),
                    }
                } else if is_unreserved(v) {
                    out.push(char::from(v));
                } else {
                    push_escape(&mut out, v);
                }
                i += 3;
                copied = i;
            }
            b'%' => {
                if slash_escape_at(b, i) {
                    match opts.escaped_slashes {
                        SlashAction::Reject => return Err(PathError::EncodedSlash),
                        SlashAction::Decode => {
                            out.push_str(&path[copied..i]);
                            out.push('/');
                            i += 3;
                            copied = i;
                            continue;
                        }
                        SlashAction::Keep => {}
                    }
                }
                i += 1;
            }
            b'\\' => {
                match opts.backslashes {
                    SlashAction::Reject => return Err(PathError::Backslash),
                    SlashAction::Decode => {
                        out.push_str(&path[copied..i]);
                        out.push('/');
                        copied = i + 1;
                    }
                    SlashAction::Keep => {}
                }
                i += 1;
            }
            c if !is_path_byte(c) => return Err(PathError::InvalidChar),
            _ => i += 1,
        }
    }
    out.push_str(&path[copied..]);
    Ok(out)
}

/// Step two: merge slashes and remove dot segments. `path` starts with `/`.
fn resolve(path: &str, opts: &PathNormalization) -> Result<String, PathError> {
    let mut stack: Vec<&str> = Vec::new();
    let mut segs = path[1..].split('/').peekable();
    while let Some(seg) = segs.next() {
        let last = segs.peek().is_none();
        match seg {
            "" if opts.merge_slashes && !last => {}
            "." if opts.normalize => {
                if last {
                    stack.push("");
                }
            }
            ".." if opts.normalize => {
                if stack.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                if last {
                    stack.push("");
                }
            }
            s => stack.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in &stack {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// RFC 3986 unreserved: ALPHA / DIGIT / `-` / `.` / `_` / `~`.
fn is_unreserved(v: u8) -> bool {
    v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~')
}

fn is_slash(v: u8) -> bool {
    v == b'/' || v == b'\\'
}

/// `%2F`, `%2f`, `%5C` or `%5c` at `i`.
fn slash_escape_at(b: &[u8], i: usize) -> bool {
    matches!(
        (b.get(i + 1), b.get(i + 2)),
        (Some(b'2'), Some(b'f' | b'F')) | (Some(b'5'), Some(b'c' | b'C'))
    )
}

/// Bytes a request path may hold: what `http::uri` accepts in a path
/// (RFC 3986 pchar and `/`, plus `"`, `{`, `}`, `|`, `\`, `^`, `[`, `]`
/// that clients send unescaped), and UTF-8.
fn is_path_byte(c: u8) -> bool {
    matches!(c, 0x21 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E | b'"' | b'{' | b'}')
        || c >= 0x80
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn upper_hex(c: u8) -> Option<u8> {
    if c.is_ascii_lowercase() { None } else { hex(c) }
}

fn push_escape(out: &mut String, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(v >> 4)]));
    out.push(char::from(HEX[usize::from(v & 15)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: PathNormalization = PathNormalization {
        normalize: true,
        merge_slashes: true,
        escaped_slashes: SlashAction::Reject,
        backslashes: SlashAction::Reject,
    };

    fn norm(path: &str, opts: &PathNormalization) -> Result<String, PathError> {
        normalize(path, opts).map(Cow::into_owned)
    }

    #[test]
    fn default_table() {
        use PathError::*;
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/admin/users", Ok("/admin/users")),
            ("/admin/users/", Ok("/admin/users/")),
            // The bypasses of issue 15.
            ("/public/../admin/users", Ok("/admin/users")),
            ("/public/%2e%2e/admin/users", Ok("/admin/users")),
            ("/public/%2E%2e/admin/users", Ok("/admin/users")),
            ("/public/.%2e/admin/users", Ok("/admin/users")),
            ("/%61dmin/users", Ok("/admin/users")),
            ("//admin/users", Ok("/admin/users")),
            ("/admin%2fusers", Err(EncodedSlash)),
            ("/admin%2Fusers", Err(EncodedSlash)),
            ("/admin%5cusers", Err(EncodedSlash)),
            ("/admin\\users", Err(Backslash)),
            // Dot segments (RFC 3986 5.2.4), refused above the root.
            ("/a/./b", Ok("/a/b")),
            ("/a/b/.", Ok("/a/b/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/..", Ok("/")),
            ("/.", Ok("/")),
            ("/..", Err(AboveRoot)),
            ("/a/../..", Err(AboveRoot)),
            ("/a/../../b", Err(AboveRoot)),
            ("/%2e%2e/etc/passwd", Err(AboveRoot)),
            ("/a/.../b", Ok("/a/.../b")),
            ("/a/..b/.c", Ok("/a/..b/.c")),
            ("/a//..//b", Ok("/b")),
            // Escapes: unreserved decoded, others upper-cased, invalid refused.
            ("/%7e%5F%2D%2E%30%41%7A", Ok("/~_-.0Az")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%3fb%3F", Ok("/a%3Fb%3F")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/%25", Ok("/%25")),
            ("/%2541dmin", Ok("/%2541dmin")),
            ("/%252e%252e/x", Ok("/%252e%252e/x")),
            ("/%00", Ok("/%00")),
            ("/%zz", Err(InvalidEscape)),
            ("/%4", Err(InvalidEscape)),
            ("/%", Err(InvalidEscape)),
            ("/a%g1", Err(InvalidEscape)),
            ("/%%34%31", Err(InvalidEscape)),
            // Slashes merged, everywhere.
            ("///", Ok("/")),
            ("/a///b//", Ok("/a/b/")),
            // Bytes a path cannot hold (a plugin's rewrite could try).
            ("/a b", Err(InvalidChar)),
            ("/a?b", Err(InvalidChar)),
            ("/a#b", Err(InvalidChar)),
            ("/a\u{1}", Err(InvalidChar)),
            // UTF-8 passes unchanged.
            ("/café/./x", Ok("/café/x")),
            // Not origin-form: left for the router to refuse.
            ("*", Ok("*")),
            ("", Ok("")),
        ];
        for (input, want) in cases {
            let got = norm(input, &DEFAULT);
            assert_eq!(got.as_deref(), want.as_deref(), "normalize({input:?})");
        }
    }

    #[test]
    fn slash_actions() {
        let decode = PathNormalization {
            escaped_slashes: SlashAction::Decode,
            backslashes: SlashAction::Decode,
            ..DEFAULT
        };
        assert_eq!(norm("/admin%2fusers", &decode).unwrap(), "/admin/users");
        assert_eq!(norm("/admin%5Cusers", &decode).unwrap(), "/admin/users");
        assert_eq!(norm("/admin\\users", &decode).unwrap(), "/admin/users");
        assert_eq!(
            norm("/a/b%2F..%2F..%2F..", &decode),
            Err(PathError::AboveRoot)
        );
        assert_eq!(norm("/a\\..\\b", &decode).unwrap(), "/b");
        let keep = PathNormalization {
            escaped_slashes: SlashAction::Keep,
            backslashes: SlashAction::Keep,
            ..DEFAULT
        };
        assert_eq!(norm("/admin%2fusers", &keep).unwrap(), "/admin%2Fusers");
        assert_eq!(norm("/a%5c..", &keep).unwrap(), "/a%5C..");
        assert_eq!(norm("/a\\..\\b", &keep).unwrap(), "/a\\..\\b");
    }

    #[test]
    fn switches_off() {
        let raw = PathNormalization {
            normalize: false,
            merge_slashes: false,
            ..DEFAULT
        };
        assert_eq!(norm("//a/../%61/%zz", &raw).unwrap(), "//a/../%61/%zz");
        assert_eq!(norm("/a%2fb", &raw), Err(PathError::EncodedSlash));
        let merge_only = PathNormalization {
            normalize: false,
            ..DEFAULT
        };
        assert_eq!(norm("//a//../b", &merge_only).unwrap(), "/a/../b");
        let no_merge = PathNormalization {
            merge_slashes: false,
            ..DEFAULT
        };
        assert_eq!(norm("//a//b/", &no_merge).unwrap(), "//a//b/");
        assert_eq!(norm("/a//../b", &no_merge).unwrap(), "/a/b");
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/admin/users", "/a%20b/", "/~x.y_z-1/", "/café"] {
            assert!(
                matches!(normalize(p, &DEFAULT), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }
}
