//! Differences between two manifests: added, removed and modified paths with sizes.

use std::cmp::Ordering;

use serde::Serialize;

use crate::manifest::{Entry, EntryKind, Manifest};
use crate::path::RelPath;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;
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
}
