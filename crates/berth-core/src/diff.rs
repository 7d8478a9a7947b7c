//! Differences between two snapshots' trees: added, removed and modified paths with sizes.
//! Two manifests are compared entry by entry; two trees of tree objects level by level, a
//! directory whose object is the same on both sides skipped with everything below it.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::BuildHasher;

use serde::Serialize;

use crate::id::ChunkId;
use crate::manifest::{Entry, EntryKind, Manifest};
use crate::path::RelPath;
use crate::tree::{self, NodeKind, TreeEntry, TreeNode};
use crate::FormatError;

/// How a path differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Only in the newer snapshot.
    Added,
    /// Only in the older snapshot.
    Removed,
    /// In both, with different content, type, link target or mode.
    Modified,
}

/// One changed path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The path.
    pub path: RelPath,
    /// How it changed.
    pub kind: ChangeKind,
    /// Size in the older snapshot (0 when absent or not a file).
    pub size_before: u64,
    /// Size in the newer snapshot (0 when absent or not a file).
    pub size_after: u64,
}

fn same(a: &Entry, b: &Entry) -> bool {
    let content = match (&a.kind, &b.kind) {
        (EntryKind::File { chunks: x, .. }, EntryKind::File { chunks: y, .. }) => x == y,
        (x, y) => x == y,
    };
    content && a.mode == b.mode
}

/// Lists the changes from `old` to `new`, in path order. Mtime-only changes are not listed.
pub fn diff(old: &Manifest, new: &Manifest) -> Vec<Change> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    let change =
        |e: &Entry, kind, before, after| Change { path: e.path.clone(), kind, size_before: before, size_after: after };
    while i < old.entries.len() || j < new.entries.len() {
        let ord = match (old.entries.get(i), new.entries.get(j)) {
            (Some(a), Some(b)) => a.path.cmp(&b.path),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match ord {
            Ordering::Less => {
                let a = &old.entries[i];
                out.push(change(a, ChangeKind::Removed, a.size(), 0));
                i += 1;
            }
            Ordering::Greater => {
                let b = &new.entries[j];
                out.push(change(b, ChangeKind::Added, 0, b.size()));
                j += 1;
            }
            Ordering::Equal => {
                let (a, b) = (&old.entries[i], &new.entries[j]);
                if !same(a, b) {
                    out.push(change(b, ChangeKind::Modified, a.size(), b.size()));
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Most entries a tree diff compares: both trees' whole, each at most `tree::MAX_ENTRIES`.
pub const ENTRIES_COMPARED: usize = 2 * tree::MAX_ENTRIES;

/// A directory two trees are compared at: its path (`None` for the root) and its first object
/// on each side (`None` where the directory is not there).
pub type DirPair = (Option<RelPath>, Option<ChunkId>, Option<ChunkId>);

/// The objects the directories of `level` need that `nodes` lacks: a first part, or the next
/// part of one already there. Loading them and asking again until none is missing readies a
/// level for `diff_level`.
pub fn missing<S: BuildHasher>(level: &[DirPair], nodes: &HashMap<ChunkId, TreeNode, S>) -> Vec<ChunkId> {
    let mut out = Vec::new();
    for id in level.iter().flat_map(|(_, a, b)| [a, b]).flatten() {
        let mut id = id;
        loop {
            match nodes.get(id) {
                None => {
                    out.push(*id);
                    break;
                }
                Some(TreeNode { next: Some(next), .. }) => id = next,
                Some(_) => break,
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Compares the directories of one level (their objects all in `nodes`), adds the changes
/// among their entries to `changes`, and returns the directories below them to compare next:
/// those on both sides with different objects, and those on one side only (whose every entry
/// is added or removed).
///
/// Each entry compared takes one from `budget`; none left is an error. Start it at
/// `ENTRIES_COMPARED`: two valid trees never use it up, while trees that share a subtree many
/// times (a hostile store's) cannot make the walk, or the list, grow without bound.
pub fn diff_level<S: BuildHasher>(
    level: Vec<DirPair>,
    nodes: &HashMap<ChunkId, TreeNode, S>,
    changes: &mut Vec<Change>,
    budget: &mut usize,
) -> Result<Vec<DirPair>, FormatError> {
    let mut next = Vec::new();
    for (dir, a, b) in level {
        let side = |id: Option<ChunkId>| match id {
            Some(id) => {
                tree::listing(&id, nodes).map_err(|reason| FormatError::new(format!("tree {}", id.short()), reason))
            }
            None => Ok(Vec::new()),
        };
        let (old, new) = (side(a)?, side(b)?);
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            *budget = budget.checked_sub(1).ok_or_else(|| {
                FormatError::new("tree", format!("the two trees hold more than {ENTRIES_COMPARED} entries to compare"))
            })?;
            let ord = match (old.get(i), new.get(j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            let (x, y) = match ord {
                Ordering::Less => (old.get(i).copied(), None),
                Ordering::Greater => (None, new.get(j).copied()),
                Ordering::Equal => (old.get(i).copied(), new.get(j).copied()),
            };
            i += usize::from(x.is_some());
            j += usize::from(y.is_some());
            let name = x.or(y).map(|e| e.name.as_slice()).unwrap_or_default();
            let path = RelPath::child(dir.as_ref(), name).map_err(|e| FormatError::new("tree", e.to_string()))?;
            let kind = match (x, y) {
                (Some(x), Some(y)) if same_entry(x, y) => None,
                (Some(_), Some(_)) => Some(ChangeKind::Modified),
                (Some(_), None) => Some(ChangeKind::Removed),
                _ => Some(ChangeKind::Added),
            };
            let (sub_a, sub_b) = (x.and_then(subtree), y.and_then(subtree));
            if (sub_a.is_some() || sub_b.is_some()) && sub_a != sub_b {
                next.push((Some(path.clone()), sub_a, sub_b));
            }
            if let Some(kind) = kind {
                changes.push(Change { path, kind, size_before: x.map_or(0, size), size_after: y.map_or(0, size) });
            }
        }
    }
    Ok(next)
}

/// The changes between the trees under `a` and `b`, every object of both in `nodes` (the
/// engine loads only what each level needs, and calls `diff_level` itself).
pub fn diff_trees<S: BuildHasher>(
    a: &ChunkId,
    b: &ChunkId,
    nodes: &HashMap<ChunkId, TreeNode, S>,
) -> Result<Vec<Change>, FormatError> {
    let (mut changes, mut budget) = (Vec::new(), ENTRIES_COMPARED);
    let mut level = vec![(None, Some(*a), Some(*b))];
    while !level.is_empty() {
        level = diff_level(level, nodes, &mut changes, &mut budget)?;
    }
    Ok(in_path_order(changes))
}

/// Sorts changes found level by level into path order, as `diff` lists them.
pub fn in_path_order(mut changes: Vec<Change>) -> Vec<Change> {
    changes.sort_unstable_by(|x, y| x.path.cmp(&y.path));
    changes
}

fn subtree(e: &TreeEntry) -> Option<ChunkId> {
    match &e.kind {
        NodeKind::Dir { tree } => Some(*tree),
        _ => None,
    }
}

fn size(e: &TreeEntry) -> u64 {
    match &e.kind {
        NodeKind::File { size, .. } => *size,
        _ => 0,
    }
}

/// `same` for tree entries: a directory is the same entry whatever its contents.
fn same_entry(a: &TreeEntry, b: &TreeEntry) -> bool {
    let content = match (&a.kind, &b.kind) {
        (NodeKind::Dir { .. }, NodeKind::Dir { .. }) => true,
        (NodeKind::File { chunks: x, .. }, NodeKind::File { chunks: y, .. }) => x == y,
        (x, y) => x == y,
    };
    content && a.mode == b.mode
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ChunkRef;

    fn file(path: &str, data: &[u8], mtime_ns: i64) -> Entry {
        let chunks = vec![ChunkRef { id: ChunkId::of(data), len: data.len() as u32 }];
        Entry {
            path: RelPath::new(path.as_bytes().to_vec()).unwrap(),
            mode: 0o644,
            mtime_ns,
            kind: EntryKind::File { size: data.len() as u64, chunks },
        }
    }

    #[test]
    fn changes() {
        let old = Manifest { entries: vec![file("a", b"1", 0), file("b", b"2", 0), file("c", b"3", 0)] };
        let new = Manifest { entries: vec![file("a", b"1", 99), file("c", b"33", 0), file("d", b"4", 0)] };
        let got: Vec<(String, ChangeKind, u64, u64)> =
            diff(&old, &new).into_iter().map(|c| (c.path.to_string(), c.kind, c.size_before, c.size_after)).collect();
        assert_eq!(
            got,
            vec![
                ("b".into(), ChangeKind::Removed, 1, 0),
                ("c".into(), ChangeKind::Modified, 1, 2),
                ("d".into(), ChangeKind::Added, 0, 1),
            ]
        );
    }

    /// Two trees that each share one subtree twice at every level (as a hostile store could
    /// write them) would make 2^40 comparisons: the budget stops the walk.
    #[test]
    fn a_tree_diff_stops_when_its_budget_is_spent() {
        let chain = |leaf: &[u8]| {
            let file = NodeKind::File { size: 1, chunks: vec![ChunkRef { id: ChunkId::of(leaf), len: 1 }] };
            let entry = |name: &[u8], kind| TreeEntry { name: name.to_vec(), mode: 0o755, mtime_ns: 0, kind };
            let mut node = TreeNode { entries: vec![entry(b"f", file)], next: None };
            let mut all = HashMap::new();
            for _ in 0..40 {
                let (id, _) = node.encode();
                all.insert(id, node);
                let sub = |name: &[u8]| entry(name, NodeKind::Dir { tree: id });
                node = TreeNode { entries: vec![sub(b"a"), sub(b"b")], next: None };
            }
            let (root, _) = node.encode();
            all.insert(root, node);
            (root, all)
        };
        let ((a, mut nodes), (b, other)) = (chain(b"x"), chain(b"y"));
        nodes.extend(other);
        let (mut changes, mut budget) = (Vec::new(), 10_000);
        let mut level = vec![(None, Some(a), Some(b))];
        let err = loop {
            match diff_level(level, &nodes, &mut changes, &mut budget) {
                Ok(next) => level = next,
                Err(e) => break e,
            }
        };
        assert!(err.reason.contains("entries to compare"), "{err}");
        assert!(changes.len() <= 10_000);
    }

    /// A name is one component on every level: a top-level "x/y" would otherwise be listed as
    /// a path below a directory neither tree has.
    #[test]
    fn a_tree_diff_refuses_a_slash_in_a_top_level_name() {
        let file = NodeKind::File { size: 1, chunks: vec![ChunkRef { id: ChunkId::of(b"f"), len: 1 }] };
        let node = |name: &[u8]| TreeNode {
            entries: vec![TreeEntry { name: name.to_vec(), mode: 0o644, mtime_ns: 0, kind: file.clone() }],
            next: None,
        };
        let (a, b) = (node(b"a"), node(b"x/y"));
        let (ia, ib) = (a.encode().0, b.encode().0);
        let nodes = HashMap::from([(ia, a), (ib, b)]);
        let err = diff_trees(&ia, &ib, &nodes).unwrap_err();
        assert!(err.reason.contains("a name contains '/'"), "{err}");
    }
}
