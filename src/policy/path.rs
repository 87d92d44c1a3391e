//! Request path normalization: the single canonical form that routes are matched against and
//! that the upstream receives, so that `/admin/../x`, `//admin` or `/%61dmin` cannot slip past
//! a rule.

use std::fmt;

/// Why a path was refused (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path starting with `/`.
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// `%2F` or `%5C`: an encoded separator that upstreams decode differently.
    EncodedSeparator,
    /// A raw backslash, which some upstreams treat as `/`.
    Backslash,
    /// A dot segment with `;` parameters (`/..;/`): Tomcat and Spring resolve it as `..`.
    DotSegmentParameters,
    /// A `;` in the path while `limits.path_parameters` is `reject`.
    Semicolon,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "path must start with /",
            PathError::BadPercentEncoding => "bad percent-encoding in path",
            PathError::EncodedSeparator => "encoded / or \\ in path",
            PathError::Backslash => "backslash in path",
            PathError::DotSegmentParameters => "dot segment with ; parameters in path",
            PathError::Semicolon => "; in path",
        })
    }
}

/// Normalizes a request path (without its query).
///
/// Decodes percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`), upper-cases the hex
/// of every other escape, merges duplicate slashes and removes `.` and `..` segments (never
/// above the root). A trailing slash is kept.
///
/// # Errors
/// A [`PathError`] for input that cannot be normalized safely.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: nothing to decode or collapse.
    if !bytes.iter().any(|b| matches!(b, b'%' | b'\\' | b';')) && !has_dot_or_empty_segment(raw) {
        return Ok(raw.to_owned());
    }
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadPercentEncoding);
                };
                let v = hi * 16 + lo;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        decoded.push(v as char);
                    }
                    _ => {
                        decoded.push('%');
                        decoded.push(HEX[(v >> 4) as usize] as char);
                        decoded.push(HEX[(v & 15) as usize] as char);
                    }
                }
                i += 3;
            }
            _ => {
                // Copy a run of ordinary bytes at once; they are ASCII or UTF-8 continuation
                // bytes of the original &str, so slicing at `%`/`\` boundaries is valid.
                let start = i;
                while i < bytes.len() && !matches!(bytes[i], b'%' | b'\\') {
                    i += 1;
                }
                decoded.push_str(&raw[start..i]);
            }
        }
    }
    check_dot_parameters(&decoded)?;
    Ok(remove_dot_segments(&decoded))
}

/// Refuses `..;x`, `.;`, `..%3B`: a dot segment once its parameters are removed, which Tomcat
/// and Spring resolve as a dot segment, so a prefix rule would see another path than they do.
fn check_dot_parameters(path: &str) -> Result<(), PathError> {
    if !path.contains(';') && !path.contains("%3B") {
        return Ok(());
    }
    for seg in path.split('/') {
        let base = seg.split(';').next().unwrap_or(seg);
        let base = base.split("%3B").next().unwrap_or(base);
        if base.len() != seg.len() && (base == "." || base == "..") {
            return Err(PathError::DotSegmentParameters);
        }
    }
    Ok(())
}

/// The form routes are matched against: a normalized path with each segment's `;` parameters
/// removed, as Tomcat and Spring resolve it (`/admin;x/users` is `/admin/users` to them, so it
/// must meet the admin rule). Borrowed when there are none, which is nearly always.
pub fn match_form(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains(';') {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut stripped = String::with_capacity(path.len());
    for seg in path.split('/').skip(1) {
        stripped.push('/');
        stripped.push_str(seg.split(';').next().unwrap_or(seg));
    }
    std::borrow::Cow::Owned(remove_dot_segments(&stripped))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn has_dot_or_empty_segment(path: &str) -> bool {
    path.contains("//")
        || path.contains("/./")
        || path.contains("/../")
        || path.ends_with("/.")
        || path.ends_with("/..")
}

fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in path.split('/').skip(1) {
        trailing_slash = false;
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                out.pop();
                trailing_slash = true;
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(path.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing_slash || result.is_empty() {
        result.push('/');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/admin/../public", "/public"),
            ("/admin/./x", "/admin/x"),
            ("/../../etc", "/etc"),
            ("/a/..", "/"),
            ("/a/.", "/a/"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf\u{e9}", "/caf\u{e9}"),
        ];
        for (input, want) in ok {
            assert_eq!(
                normalize_path(input).as_deref(),
                Ok(want),
                "input {input:?}"
            );
        }
        let bad = [
            ("admin", PathError::NotAbsolute),
            ("/admin%2f..", PathError::EncodedSeparator),
            ("/admin%2F", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a\\b", PathError::Backslash),
            ("/a%zz", PathError::BadPercentEncoding),
            ("/a%4", PathError::BadPercentEncoding),
            ("/public/..;/admin/x", PathError::DotSegmentParameters),
            ("/public/%2e%2e;/admin/x", PathError::DotSegmentParameters),
            ("/public/..%3b/admin/x", PathError::DotSegmentParameters),
            ("/public/.;x/admin", PathError::DotSegmentParameters),
        ];
        for (input, want) in bad {
            assert_eq!(normalize_path(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn parameters_are_removed_for_matching_only() {
        assert_eq!(
            normalize_path("/a;jsessionid=1/b").as_deref(),
            Ok("/a;jsessionid=1/b")
        );
        assert_eq!(match_form("/admin;x/users"), "/admin/users");
        assert_eq!(match_form("/a/;x/b;y"), "/a/b");
        assert_eq!(match_form("/plain/path"), "/plain/path");
        assert!(matches!(
            match_form("/plain"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::{match_form, normalize_path};

    /// Paths built from the pieces that matter to normalization: separators, dots, escapes
    /// (of dots and slashes, upper and lower case), `;` parameters and plain segments.
    fn tricky_path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2E".to_owned()),
            Just("%2f".to_owned()),
            Just("%5C".to_owned()),
            Just("%25".to_owned()),
            Just("%41".to_owned()),
            Just(";".to_owned()),
            Just("\\".to_owned()),
            "[a-z]{1,3}",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
    }

    proptest! {
        #[test]
        fn normalizing_is_idempotent_and_leaves_no_dot_segment(raw in tricky_path()) {
            if let Ok(path) = normalize_path(&raw) {
                prop_assert_eq!(normalize_path(&path), Ok(path.clone()));
                prop_assert!(path.starts_with('/'));
                prop_assert!(!path.contains("//") && !path.contains('\\'));
                let lower = path.to_ascii_lowercase();
                prop_assert!(!lower.contains("%2f") && !lower.contains("%5c"));
                for segment in match_form(&path).split('/') {
                    prop_assert!(segment != "." && segment != "..", "{} -> {}", raw, path);
                }
            }
        }
    }
}
