//! Updating the previous scan of a directory from the paths a watcher reported changed, so a
//! snapshot re-stats those paths and their parent directories instead of the whole tree.
//!
//! # Guarantees
//! - The result equals a full scan of the directory, provided every change since the previous
//!   scan is covered by a reported path (a created or renamed directory is listed whole).
//! - Whatever does not fit that model (a parent that is no longer a directory) gives `None`,
//!   and the caller scans everything.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use berth_core::changes::{ancestors_or_self, ChangedPaths};
use berth_core::excludes::Excludes;
use berth_core::path::RelPath;
use berth_core::sync;

use crate::scan::{self, Scan, ScanEntry, ScanKind};

/// What an update looked at again.
#[derive(Debug, Default)]
pub struct Update {
    /// The previous scan's entries where the update looked again (each changed path with
    /// everything below it, and their parent directories), sorted by path.
    pub replaced: Vec<ScanEntry>,
    /// The entries found there now, sorted by path.
    pub inserted: Vec<ScanEntry>,
}

/// Returns the scan of `root` after `changed`, from `prev` (a scan of `root` taken before
/// those changes), with what it looked at again; `None` when only a full scan will do.
/// Apart from re-stating the changed paths, it costs a pass that moves `prev`'s entries.
pub fn apply(
    root: &Path,
    prev: Scan,
    changed: &ChangedPaths,
    excludes: &Excludes,
    skip: &[PathBuf],
    threads: usize,
) -> Option<(Scan, Update)> {
    if changed.lost_track() {
        return None;
    }
    let entries = &prev.entries;
    let lower = |key: &[u8]| entries.partition_point(|e| e.path.as_bytes() < key);
    let at = |p: &RelPath| Some(lower(p.as_bytes())).filter(|i| entries.get(*i).is_some_and(|e| e.path == *p));
    let is_dir = |p: &RelPath| at(p).is_some_and(|i| entries[i].kind == ScanKind::Dir);
    // A path whose parent the previous scan did not hold as a directory: look again from the
    // highest ancestor it did not hold (its creation event may have been missed).
    let mut targets = ChangedPaths::new();
    for p in changed.roots() {
        let mut chain: Vec<RelPath> = ancestors_or_self(&p).collect();
        chain.reverse();
        let top = chain.into_iter().find(|a| !is_dir(a));
        targets.insert(top.unwrap_or(p));
    }
    let targets = targets.roots();
    let parents: BTreeSet<RelPath> = targets.iter().filter_map(RelPath::parent).collect();
    // Take out each target with everything below it ("t/" up to "t0"), and each parent alone.
    let mut looked = vec![false; entries.len()];
    let mut mark = |range: std::ops::Range<usize>| looked[range].iter_mut().for_each(|l| *l = true);
    for t in &targets {
        if let Some(i) = at(t) {
            mark(i..i + 1);
        }
        mark(lower(&[t.as_bytes(), b"/"].concat())..lower(&[t.as_bytes(), b"0"].concat()));
    }
    for d in &parents {
        if let Some(i) = at(d) {
            mark(i..i + 1);
        }
    }
    let Scan { entries, problems, special } = prev;
    let mut update = Update::default();
    let mut kept = Vec::with_capacity(entries.len());
    for (e, out) in entries.into_iter().zip(looked) {
        if out {
            update.replaced.push(e);
        } else {
            kept.push(e);
        }
    }
    let mut out = Scan { problems, special, ..Scan::default() };
    for dir in &parents {
        // The parent's own metadata changed with its entries; it must still be a directory.
        match scan::stat_entry(&scan::join(root, dir), dir.clone(), excludes, skip, &mut out) {
            Some(e) if e.kind == ScanKind::Dir => update.inserted.push(e),
            _ => return None,
        }
    }
    for target in &targets {
        let Some(entry) = scan::stat_entry(&scan::join(root, target), target.clone(), excludes, skip, &mut out) else {
            continue;
        };
        if entry.kind == ScanKind::Dir {
            let below = scan::scan_below(root, target, excludes, skip, threads);
            update.inserted.extend(below.entries);
            out.problems.extend(below.problems);
            out.special += below.special;
        }
        update.inserted.push(entry);
    }
    update.inserted.sort_by(|a, b| a.path.cmp(&b.path));
    out.entries = sync::splice(kept, &[], update.inserted.clone(), |e| &e.path);
    // berth's own directory is left out once nothing else is below it, as a full scan does.
    if let Some(i) = scan::bare_berth_dir(&out.entries) {
        let dir = out.entries.remove(i);
        match update.inserted.iter().position(|e| e.path == dir.path) {
            Some(j) => drop(update.inserted.remove(j)),
            None => {
                let j = update.replaced.partition_point(|e| e.path < dir.path);
                update.replaced.insert(j, dir);
            }
        }
    }
    Some((out, update))
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
