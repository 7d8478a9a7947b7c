//! Paths a file watcher reported changed since the last snapshot: the hint that lets a snapshot
//! re-stat only those paths (and their parent directories) instead of walking the whole tree.

use std::collections::BTreeSet;

use crate::path::RelPath;

/// Changed paths, relative to the workspace root. A path stands for itself and everything
/// below it; `all` means the watcher lost track (an overflow) and only a full scan will do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangedPaths {
    paths: BTreeSet<RelPath>,
    all: bool,
}

impl ChangedPaths {
    /// Creates an empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a changed path.
    pub fn insert(&mut self, path: RelPath) {
        if !self.all {
            self.paths.insert(path);
        }
    }

    /// Says that changes were lost: the next snapshot must scan everything.
    pub fn lose_track(&mut self) {
        self.all = true;
        self.paths.clear();
    }

    /// Whether changes were lost since the set was last taken.
    pub fn lost_track(&self) -> bool {
        self.all
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.all && self.paths.is_empty()
    }

    /// Number of paths held.
    pub fn n_paths(&self) -> usize {
        self.paths.len()
    }

    /// Whether `path` or one of its ancestors is in the set.
    pub fn covers(&self, path: &RelPath) -> bool {
        self.all || ancestors_or_self(path).any(|p| self.paths.contains(&p))
    }

    /// Returns the smallest set of paths to look at again: no path below another one.
    pub fn roots(&self) -> Vec<RelPath> {
        let mut out: Vec<RelPath> = Vec::new();
        // Sorted by bytes, an ancestor can come after "a.b" siblings, so check ancestors by set.
        for p in &self.paths {
            if !ancestors_or_self(p).skip(1).any(|a| self.paths.contains(&a)) {
                out.push(p.clone());
            }
        }
        out
    }
}

/// Returns `path`, then its parent, up to its top-level component.
pub fn ancestors_or_self(path: &RelPath) -> impl Iterator<Item = RelPath> {
    std::iter::successors(Some(path.clone()), RelPath::parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn roots_drop_paths_below_others() {
        let mut c = ChangedPaths::new();
        for s in ["a/b/c", "a/b", "a.txt", "x/y", "a/bc"] {
            c.insert(p(s));
        }
        let roots: Vec<String> = c.roots().iter().map(|r| r.to_string()).collect();
        assert_eq!(roots, ["a.txt", "a/b", "a/bc", "x/y"]);
        assert!(c.covers(&p("a/b/c/d")) && c.covers(&p("x/y")) && !c.covers(&p("x")) && !c.covers(&p("a")));
        c.lose_track();
        assert!(c.lost_track() && c.covers(&p("anything")) && !c.is_empty() && c.n_paths() == 0);
        c.insert(p("q"));
        assert_eq!(c.n_paths(), 0, "once lost, paths add nothing");
    }
}
