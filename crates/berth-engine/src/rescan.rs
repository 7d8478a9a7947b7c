//! Updating the previous scan of a directory from the paths a watcher reported changed, so a
//! snapshot re-stats those paths and their parent directories instead of the whole tree.
//!
//! # Guarantees
//! - The result equals a full scan of the directory, provided every change since the previous
//!   scan is covered by a reported path (a created or renamed directory is listed whole).
//! - Whatever does not fit that model (a parent that is no longer a directory) gives `None`,
//!   and the caller scans everything.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use berth_core::changes::{ancestors_or_self, ChangedPaths};
use berth_core::excludes::Excludes;
use berth_core::path::RelPath;

use crate::scan::{self, Scan, ScanEntry, ScanKind};

/// Returns the scan of `root` after `changed`, from `prev` (a scan of `root` taken before
/// those changes); `None` when only a full scan will do.
pub fn apply(
    root: &Path,
    prev: &Scan,
    changed: &ChangedPaths,
    excludes: &Excludes,
    skip: &[PathBuf],
    threads: usize,
) -> Option<Scan> {
    if changed.lost_track() {
        return None;
    }
    let dirs: HashSet<&RelPath> = prev.entries.iter().filter(|e| e.kind == ScanKind::Dir).map(|e| &e.path).collect();
    // A path whose parent the previous scan did not hold as a directory: look again from the
    // highest ancestor it did not hold (its creation event may have been missed).
    let mut targets = ChangedPaths::new();
    for p in changed.roots() {
        let mut chain: Vec<RelPath> = ancestors_or_self(&p).collect();
        chain.reverse();
        let top = chain.into_iter().find(|a| !dirs.contains(a));
        targets.insert(top.unwrap_or(p));
    }
    let targets = targets.roots();
    let gone: HashSet<&RelPath> = targets.iter().collect();
    let parents: HashSet<RelPath> = targets.iter().filter_map(RelPath::parent).collect();
    let mut out = Scan { problems: prev.problems.clone(), special: prev.special, ..Scan::default() };
    out.entries = prev
        .entries
        .iter()
        .filter(|e| !ancestors_or_self(&e.path).any(|a| gone.contains(&a)) && !parents.contains(&e.path))
        .cloned()
        .collect();
    for dir in &parents {
        // The parent's own metadata changed with its entries; it must still be a directory.
        match scan::stat_entry(&scan::join(root, dir), dir.clone(), excludes, skip, &mut out) {
            Some(e) if e.kind == ScanKind::Dir => out.entries.push(e),
            _ => return None,
        }
    }
    for target in &targets {
        let Some(entry) = scan::stat_entry(&scan::join(root, target), target.clone(), excludes, skip, &mut out) else {
            continue;
        };
        if entry.kind == ScanKind::Dir {
            let below = scan::scan_below(root, target, excludes, skip, threads);
            out.entries.extend(below.entries);
            out.problems.extend(below.problems);
            out.special += below.special;
        }
        out.entries.push(entry);
    }
    out.entries.sort_by(|a, b| a.path.cmp(&b.path));
    Some(out)
}

/// Returns the paths whose entries differ between two scans of the same directory (what a
/// watcher missed when `expected` was built from its reports and `actual` is a full scan).
pub fn differences(expected: &Scan, actual: &Scan) -> Vec<RelPath> {
    let key = |e: &ScanEntry| (e.kind.clone(), e.mode, e.stat);
    let a: std::collections::HashMap<&RelPath, _> = expected.entries.iter().map(|e| (&e.path, key(e))).collect();
    let b: std::collections::HashMap<&RelPath, _> = actual.entries.iter().map(|e| (&e.path, key(e))).collect();
    let mut out: Vec<RelPath> = a.iter().filter(|(p, k)| b.get(*p) != Some(k)).map(|(p, _)| (*p).clone()).collect();
    out.extend(b.keys().filter(|p| !a.contains_key(*p)).map(|p| (*p).clone()));
    out.sort();
    out
}
