//! Validated relative paths inside a workspace, kept as raw bytes so non-UTF-8 names survive.
//!
//! **Invariant:** a `RelPath` never escapes its root: no leading `/`, no `.` or `..`
//! components, no empty components, no NUL bytes.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted path, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// Longest accepted component, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// A path that would escape its root, or is otherwise unusable.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("path {path} is not allowed: {reason}")]
pub struct PathError {
    /// The offending path, shown escaped.
    pub path: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A relative path below a workspace root, validated on construction.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// Validates `bytes` as a relative path that stays inside its root.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let bytes = bytes.into();
        let fail = |reason| Err(PathError { path: crate::bounded(&escape(&bytes), crate::ECHO_MAX), reason });
        if bytes.is_empty() {
            return fail("it is empty");
        }
        if bytes.len() > MAX_PATH {
            return fail("it is longer than 4096 bytes");
        }
        if bytes[0] == b'/' {
            return fail("it is absolute");
        }
        if bytes.contains(&0) {
            return fail("it contains a NUL byte");
        }
        for part in bytes.split(|b| *b == b'/') {
            match part {
                b"" => return fail("it has an empty component"),
                b"." | b".." => return fail("it has a '.' or '..' component"),
                p if p.len() > MAX_NAME => return fail("a component is longer than 255 bytes"),
                _ => {}
            }
        }
        Ok(Self(bytes))
    }

    /// Returns the raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Returns the parent path, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<RelPath> {
        let pos = self.0.iter().rposition(|b| *b == b'/')?;
        Some(RelPath(self.0[..pos].to_vec()))
    }

    /// Returns the parent's bytes without copying them.
    pub fn parent_bytes(&self) -> Option<&[u8]> {
        let pos = self.0.iter().rposition(|b| *b == b'/')?;
        Some(&self.0[..pos])
    }

    /// Returns the last component.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(pos) => &self.0[pos + 1..],
            None => &self.0,
        }
    }

    /// Returns `self/name`, validating `name` as one component.
    pub fn join(&self, name: &[u8]) -> Result<RelPath, PathError> {
        if name.contains(&b'/') {
            return Err(PathError { path: escape(name), reason: "a name contains '/'" });
        }
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        bytes.push(b'/');
        bytes.extend_from_slice(name);
        // `self` is valid: only the new component and the length need checking (what `new`
        // would refuse, with its words), not every component again.
        let refused = match name {
            b"" => Some("it has an empty component"),
            b"." | b".." => Some("it has a '.' or '..' component"),
            _ if name.len() > MAX_NAME => Some("a component is longer than 255 bytes"),
            _ if name.contains(&0) => Some("it contains a NUL byte"),
            _ if bytes.len() > MAX_PATH => Some("it is longer than 4096 bytes"),
            _ => None,
        };
        match refused {
            Some(reason) => Err(PathError { path: crate::bounded(&escape(&bytes), crate::ECHO_MAX), reason }),
            None => Ok(Self(bytes)),
        }
    }

    /// Returns `name` inside `dir` (at the top when `None`), refusing a '/' in `name` at the
    /// top as `join` does below it: a tree's entry names one component, never a path.
    pub fn child(dir: Option<&RelPath>, name: &[u8]) -> Result<RelPath, PathError> {
        match dir {
            None if name.contains(&b'/') => Err(PathError { path: escape(name), reason: "a name contains '/'" }),
            None => RelPath::new(name.to_vec()),
            Some(d) => d.join(name),
        }
    }

    /// Returns the number of components.
    pub fn depth(&self) -> usize {
        self.0.iter().filter(|b| **b == b'/').count() + 1
    }

    /// Returns whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0 || (self.0.starts_with(&other.0) && self.0.get(other.0.len()) == Some(&b'/'))
    }
}

/// Escapes bytes for display: valid UTF-8 as is, other bytes as `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(&self.0))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", escape(&self.0))
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&escape(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> =
            if d.is_human_readable() { String::deserialize(d)?.into_bytes() } else { serde_bytes_vec(d)? };
        RelPath::new(bytes).map_err(de::Error::custom)
    }
}

/// Deserializes a byte string (postcard writes `serialize_bytes` as length + bytes).
pub(crate) fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl<'de> de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
    d.deserialize_bytes(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[u8], ok: bool) {
        assert_eq!(RelPath::new(input).is_ok(), ok, "{}", escape(input));
    }

    #[test]
    fn validation() {
        check(b"a", true);
        check(b"a/b/c.txt", true);
        check(b"caf\xc3\xa9/\xff\xfe", true);
        check(b"", false);
        check(b"/etc/passwd", false);
        check(b"../x", false);
        check(b"a/../../x", false);
        check(b"a/./b", false);
        check(b"a//b", false);
        check(b"a/", false);
        check(b"a\0b", false);
        check(&[b'a'; 256], false);
    }

    #[test]
    fn parent_and_name() {
        let p = RelPath::new(b"a/b/c".to_vec()).unwrap();
        assert_eq!(p.parent().unwrap().as_bytes(), b"a/b");
        assert_eq!(p.file_name(), b"c");
        assert_eq!(RelPath::new(b"a".to_vec()).unwrap().parent(), None);
        assert!(p.starts_with(&RelPath::new(b"a/b".to_vec()).unwrap()));
        assert!(!p.starts_with(&RelPath::new(b"a/bc".to_vec()).unwrap()));
        assert_eq!(escape(b"x\xffy"), "x\\xffy");
    }
}
