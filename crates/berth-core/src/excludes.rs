//! Exclusion patterns in `.gitignore` syntax, with defaults for rebuildable caches and a set
//! that always applies to berth's own credential files.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// Rebuildable caches left out unless `--no-default-excludes`.
pub const DEFAULT: &[&str] = &["node_modules/", ".venv/", "__pycache__/", ".cache/", "target/", "dist/", "build/"];
/// Credential files, the agent's runtime state (ready marker, locks) and the file system's
/// `lost+found`: never in a snapshot, whatever the configuration says.
pub const ALWAYS: &[&str] = &[".berth-credentials/", ".git-credentials", "/.berth/run/", "/lost+found/"];

/// A pattern that could not be parsed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("exclude pattern '{pattern}' is invalid: {reason}")]
pub struct ExcludeError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A compiled set of exclusion patterns.
#[derive(Debug, Clone)]
pub struct Excludes {
    user: Gitignore,
    always: Gitignore,
}

fn build(patterns: &[String]) -> Result<Gitignore, ExcludeError> {
    let mut b = GitignoreBuilder::new("");
    for p in patterns {
        b.add_line(None, p)
            .map_err(|e| ExcludeError { pattern: crate::bounded(p, crate::ECHO_MAX), reason: e.to_string() })?;
    }
    b.build().map_err(|e| ExcludeError {
        pattern: crate::bounded(&patterns.join(","), crate::ECHO_MAX),
        reason: e.to_string(),
    })
}

impl Excludes {
    /// Compiles `patterns`, after the defaults unless `defaults` is false.
    pub fn new(patterns: &[String], defaults: bool) -> Result<Self, ExcludeError> {
        let mut all: Vec<String> = if defaults { DEFAULT.iter().map(|s| s.to_string()).collect() } else { vec![] };
        all.extend(patterns.iter().cloned());
        let always: Vec<String> = ALWAYS.iter().map(|s| s.to_string()).collect();
        Ok(Self { user: build(&all)?, always: build(&always)? })
    }

    /// Returns whether the entry at `rel` (relative to the root) is left out.
    pub fn is_excluded(&self, rel: &[u8], is_dir: bool) -> bool {
        let path = Path::new(OsStr::from_bytes(rel));
        self.always.matched(path, is_dir).is_ignore() || self.user.matched(path, is_dir).is_ignore()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_user_patterns_and_always() {
        let ex = Excludes::new(&["*.log".into(), "/secret".into(), "!keep.log".into()], true).unwrap();
        assert!(ex.is_excluded(b"node_modules", true));
        assert!(ex.is_excluded(b"web/node_modules", true));
        assert!(!ex.is_excluded(b"node_modules", false));
        assert!(ex.is_excluded(b"logs/a.log", false));
        assert!(!ex.is_excluded(b"keep.log", false));
        assert!(ex.is_excluded(b"secret", false));
        assert!(!ex.is_excluded(b"sub/secret", false));
        assert!(ex.is_excluded(b".git-credentials", false));
        assert!(!ex.is_excluded(b"src/main.rs", false));

        let none = Excludes::new(&["!.git-credentials".into()], false).unwrap();
        assert!(!none.is_excluded(b"node_modules", true));
        assert!(none.is_excluded(b".git-credentials", false), "credential files are always left out");
        assert!(none.is_excluded(b"a/.berth-credentials", true));
    }
}
