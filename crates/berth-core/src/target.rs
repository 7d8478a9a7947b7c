//! Where a restore may write: the rules, decided before a restore touches anything, that keep
//! it from deleting what berth did not write.
//!
//! A restore makes its target match the snapshot, so it removes what the snapshot lacks. That is
//! right for a directory berth restored into before, and wrong for anything else. The rules:
//! - a target that is a symlink is refused (it would be the directory it points to that changes);
//! - `/`, the home directory and any directory holding it are refused;
//! - a directory that holds the store or the cache, or lies inside either, is refused;
//! - a target that holds entries but no restore marker (see [`RESTORE_MARKER`]) is refused
//!   unless the caller asks for deletion explicitly (`--delete`);
//! - otherwise (missing, empty, or marked by an earlier restore) the restore goes ahead.
//!
//! **Invariant:** the first and third rules hold whatever the caller asks.

use std::path::Path;

/// The file a restore leaves in its target, relative to it. It lives under `.berth/run/`, which
/// no snapshot holds and no restore clears, and it is written before the first change to the
/// target, so an interrupted restore can be rerun.
pub const RESTORE_MARKER: &str = ".berth/run/restored";

/// Entries of a directory that do not make it "not empty" for a restore: a fresh volume's
/// `lost+found` and berth's own `.berth`.
pub fn is_ignorable(name: &[u8]) -> bool {
    name == b"lost+found" || name == b".berth"
}

/// A restore target as read from the file system.
#[derive(Clone, Debug)]
pub struct TargetFacts<'a> {
    /// The target as given, for messages.
    pub given: &'a Path,
    /// Whether the target itself (its last component) is a symlink.
    pub is_symlink: bool,
    /// The target with every symlink resolved.
    pub resolved: &'a Path,
    /// Whether it holds entries other than the ignorable ones.
    pub holds_entries: bool,
    /// Whether it carries the restore marker.
    pub has_marker: bool,
    /// The user's home directory, resolved, when known.
    pub home: Option<&'a Path>,
    /// Directories a restore must never clear, resolved, with what they are ("the store").
    pub protected: &'a [(&'a str, &'a Path)],
}

/// A restore target refused, with why and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refusing to restore into {target}: {reason}")]
pub struct Refused {
    /// The target as given (bounded for display).
    pub target: String,
    /// Why, and what to do instead.
    pub reason: String,
}

/// Decides whether a restore may go into the target; `delete` is the caller's explicit consent
/// to clearing a non-empty directory berth did not restore into.
pub fn check(f: &TargetFacts<'_>, delete: bool) -> Result<(), Refused> {
    let refuse = |reason: String| {
        Err(Refused { target: crate::bounded(&f.given.display().to_string(), crate::ECHO_MAX), reason })
    };
    if f.is_symlink {
        return refuse(format!(
            "it is a symlink (to {}); a restore would change the directory it points to. Give that directory itself",
            crate::bounded(&f.resolved.display().to_string(), crate::ECHO_MAX)
        ));
    }
    if f.resolved == Path::new("/") {
        return refuse("it is the root directory; restore into a new, empty directory".into());
    }
    if let Some(home) = f.home.filter(|h| h.starts_with(f.resolved)) {
        let what = if home == f.resolved { "is the home directory" } else { "holds the home directory" };
        return refuse(format!("it {what} ({}); restore into a new, empty directory", home.display()));
    }
    for (what, p) in f.protected {
        if p.starts_with(f.resolved) {
            return refuse(format!("it holds {what} ({}); restore somewhere else", p.display()));
        }
        if f.resolved.starts_with(p) {
            return refuse(format!("it is inside {what} ({}); restore somewhere else", p.display()));
        }
    }
    if f.holds_entries && !f.has_marker && !delete {
        return refuse(format!(
            "it is not empty and berth did not restore into it (no {RESTORE_MARKER}), and a restore \
             removes what the snapshot lacks. Restore into a new or empty directory, or pass --delete \
             to make this one match the snapshot"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(resolved: &'a Path, protected: &'a [(&'a str, &'a Path)]) -> TargetFacts<'a> {
        TargetFacts {
            given: resolved,
            is_symlink: false,
            resolved,
            holds_entries: false,
            has_marker: false,
            home: Some(Path::new("/home/u")),
            protected,
        }
    }

    #[test]
    fn rules() {
        let store: &[(&str, &Path)] = &[("the store", Path::new("/srv/store")), ("the cache", Path::new("/c/cache"))];
        let ok = |p: &str| check(&facts(Path::new(p), store), false);
        assert!(ok("/home/u/work").is_ok());
        assert!(ok("/srv/other").is_ok());
        for (p, why) in [
            ("/", "root directory"),
            ("/home/u", "is the home directory"),
            ("/home", "holds the home directory"),
            ("/srv", "holds the store"),
            ("/srv/store/x", "inside the store"),
            ("/c", "holds the cache"),
        ] {
            let e = ok(p).unwrap_err();
            assert!(e.reason.contains(why), "{p}: {e}");
            // No consent overrides these.
            assert!(check(&facts(Path::new(p), store), true).is_err(), "{p}");
        }
        let mut f = facts(Path::new("/w"), store);
        f.is_symlink = true;
        assert!(check(&f, true).unwrap_err().reason.contains("symlink"));
        let mut f = facts(Path::new("/w"), store);
        f.holds_entries = true;
        assert!(check(&f, false).unwrap_err().reason.contains("--delete"));
        assert!(check(&f, true).is_ok());
        f.has_marker = true;
        assert!(check(&f, false).is_ok());
        assert!(is_ignorable(b"lost+found") && !is_ignorable(b"src"));
    }
}
