//! Planning a snapshot run from a directory scan: what goes into the manifest as scanned, which
//! files are reused from the local cache, which must be read, which the size budget leaves out;
//! then assembling the manifest once the reads are done.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::budget;
use crate::id::ChunkId;
use crate::manifest::{ChunkRef, Entry, EntryKind, Manifest};
use crate::path::RelPath;

/// The metadata that decides whether a file changed since it was last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
}

/// What a scanned entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanKind {
    /// A directory.
    Dir,
    /// A regular file; `dev` and `nlink` identify hard links.
    File {
        /// Device number.
        dev: u64,
        /// Link count.
        nlink: u64,
    },
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
}

/// One scanned entry.
#[derive(Clone, Debug)]
pub struct ScanEntry {
    /// Path relative to the root.
    pub path: RelPath,
    /// What it is.
    pub kind: ScanKind,
    /// Permission bits.
    pub mode: u32,
    /// Change-detection metadata.
    pub stat: FileStat,
}

/// What a run has to do; one slot per scanned entry.
#[derive(Debug, Default)]
pub struct SyncPlan {
    /// The manifest entry of each slot when it is known without reading (directories, symlinks,
    /// hard links, files reused from the cache); `None` for files to read or left out.
    pub slots: Vec<Option<Entry>>,
    /// The metadata to remember in the cache for each slot known so far.
    pub stats: Vec<Option<FileStat>>,
    /// Slots of the files to read, in path order.
    pub read: Vec<usize>,
    /// Bytes of the files to read.
    pub bytes_to_read: u64,
    /// Slots the size budget leaves out, largest first.
    pub over_budget: Vec<usize>,
}

/// Plans a run over `entries` (sorted by path).
///
/// `cached` returns the chunk list the cache remembers for a path when its metadata still
/// matches; the list is reused only if `reusable` holds for every chunk (the store still has
/// it in a pack no prune is about to delete).
pub fn plan(
    entries: &[ScanEntry],
    budget: Option<u64>,
    cached: impl Fn(&RelPath, &FileStat) -> Option<Vec<ChunkRef>>,
    reusable: impl Fn(&ChunkId) -> bool,
) -> SyncPlan {
    let mut plan =
        SyncPlan { slots: vec![None; entries.len()], stats: vec![None; entries.len()], ..SyncPlan::default() };
    let mut first_link: HashMap<(u64, u64), &RelPath> = HashMap::new();
    let mut files = Vec::new();
    for (slot, e) in entries.iter().enumerate() {
        let kind = match &e.kind {
            ScanKind::Dir => EntryKind::Dir,
            ScanKind::Symlink(target) => EntryKind::Symlink { target: target.clone() },
            ScanKind::File { dev, nlink } => match first_link.get(&(*dev, e.stat.ino)) {
                Some(first) if *nlink > 1 => EntryKind::Hardlink { target: (*first).clone() },
                _ => {
                    if *nlink > 1 {
                        first_link.insert((*dev, e.stat.ino), &e.path);
                    }
                    files.push(slot);
                    continue;
                }
            },
        };
        plan.slots[slot] = Some(Entry { path: e.path.clone(), mode: e.mode, mtime_ns: e.stat.mtime_ns, kind });
    }
    let sizes: Vec<u64> = files.iter().map(|s| entries[*s].stat.size).collect();
    plan.over_budget = budget::plan(&sizes, budget).skipped.iter().map(|i| files[*i]).collect();
    let over: HashSet<usize> = plan.over_budget.iter().copied().collect();
    for slot in files.into_iter().filter(|s| !over.contains(s)) {
        let e = &entries[slot];
        match cached(&e.path, &e.stat) {
            Some(chunks) if chunks.iter().all(|c| reusable(&c.id)) => {
                let size = chunks.iter().map(|c| c.len as u64).sum();
                let kind = EntryKind::File { size, chunks };
                plan.slots[slot] = Some(Entry { path: e.path.clone(), mode: e.mode, mtime_ns: e.stat.mtime_ns, kind });
                plan.stats[slot] = Some(e.stat);
            }
            _ => {
                plan.bytes_to_read += e.stat.size;
                plan.read.push(slot);
            }
        }
    }
    plan
}

/// Groups consecutive files into batches of about `target` bytes (at least one file each).
/// A reader takes a whole batch, so neighbouring files (which resemble each other) land in the
/// same compression frame, as they would in a tar archive.
pub fn batches(sizes: &[u64], target: u64) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, size) in sizes.iter().enumerate() {
        bytes += size;
        if bytes >= target {
            out.push(start..i + 1);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// The manifest of a run and what to remember of it.
#[derive(Debug, Default)]
pub struct Assembled {
    /// The tree to publish.
    pub manifest: Manifest,
    /// Files to remember in the cache: path, metadata, chunks.
    pub cache: Vec<(RelPath, FileStat, Vec<ChunkRef>)>,
    /// Entries left out because what they depend on could not be read.
    pub skipped: Vec<String>,
}

/// Builds the manifest from the planned slots, once every read file has filled its slot.
/// A hard link whose first name could not be read is left out with it.
pub fn assemble(slots: Vec<Option<Entry>>, stats: &[Option<FileStat>]) -> Assembled {
    let present: HashSet<RelPath> =
        slots.iter().flatten().filter(|e| matches!(e.kind, EntryKind::File { .. })).map(|e| e.path.clone()).collect();
    let mut out = Assembled::default();
    for (slot, entry) in slots.into_iter().enumerate() {
        let Some(entry) = entry else { continue };
        if let EntryKind::Hardlink { target } = &entry.kind {
            if !present.contains(target) {
                out.skipped.push(format!("{}: hard link to an unreadable file", entry.path));
                continue;
            }
        }
        if let (EntryKind::File { chunks, .. }, Some(stat)) = (&entry.kind, stats.get(slot).copied().flatten()) {
            out.cache.push((entry.path.clone(), stat, chunks.clone()));
        }
        out.manifest.entries.push(entry);
    }
    out.manifest.sort();
    out
}

/// Replaces entries of a sorted list: drops those at `removed` paths (sorted), puts in
/// `inserted` (sorted; an inserted entry replaces a kept one at the same path). Entries move,
/// none is copied, so the cost is a pass over `old`, whatever it holds.
pub fn splice<T>(old: Vec<T>, removed: &[RelPath], inserted: Vec<T>, path: impl Fn(&T) -> &RelPath) -> Vec<T> {
    let mut out = Vec::with_capacity(old.len() + inserted.len());
    let mut removed = removed.iter().peekable();
    let mut inserted = inserted.into_iter().peekable();
    for e in old {
        while removed.next_if(|r| *r < path(&e)).is_some() {}
        if removed.peek().is_some_and(|r| *r == path(&e)) {
            continue;
        }
        while let Some(n) = inserted.next_if(|n| path(n) < path(&e)) {
            out.push(n);
        }
        if inserted.peek().is_some_and(|n| path(n) == path(&e)) {
            continue;
        }
        out.push(e);
    }
    out.extend(inserted);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(size: u64, ino: u64) -> FileStat {
        FileStat { size, mtime_ns: 1, ctime_ns: 2, ino }
    }

    fn entry(path: &str, kind: ScanKind, size: u64, ino: u64) -> ScanEntry {
        ScanEntry { path: RelPath::new(path.as_bytes().to_vec()).unwrap(), kind, mode: 0o644, stat: stat(size, ino) }
    }

    fn file(path: &str, size: u64, ino: u64, nlink: u64) -> ScanEntry {
        entry(path, ScanKind::File { dev: 1, nlink }, size, ino)
    }

    fn chunk(n: u8, len: u32) -> ChunkRef {
        ChunkRef { id: ChunkId::of(&[n]), len }
    }

    #[test]
    fn splice_replaces_and_keeps_order() {
        let p = |s: &str| RelPath::new(s.as_bytes().to_vec()).unwrap();
        let old: Vec<RelPath> = ["a", "a/x", "b", "c", "d"].iter().map(|s| p(s)).collect();
        let removed = [p("a/x"), p("aa"), p("c")];
        let inserted = vec![p("a/w"), p("c"), p("e")];
        let out = splice(old, &removed, inserted, |e| e);
        let names: Vec<String> = out.iter().map(|e| e.to_string()).collect();
        assert_eq!(names, ["a", "a/w", "b", "c", "d", "e"]);
    }

    #[test]
    fn batches_cover_every_file_once() {
        assert_eq!(batches(&[], 10), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(batches(&[3, 3, 3, 20, 1], 5), vec![0..2, 2..4, 4..5]);
        assert_eq!(batches(&[50], 5), vec![0..1]);
    }

    #[test]
    fn reuse_read_links_and_budget() {
        let entries = vec![
            entry("d", ScanKind::Dir, 0, 1),
            file("d/cached", 10, 2, 1),
            file("d/doomed", 10, 3, 1),
            file("d/huge", 1000, 4, 1),
            file("d/link1", 5, 9, 2),
            file("d/link2", 5, 9, 2),
            file("d/new", 7, 5, 1),
            entry("d/sym", ScanKind::Symlink(b"new".to_vec()), 0, 6),
        ];
        let cached = |p: &RelPath, s: &FileStat| match p.as_bytes() {
            b"d/cached" if *s == stat(10, 2) => Some(vec![chunk(1, 10)]),
            b"d/doomed" => Some(vec![chunk(2, 10)]),
            _ => None,
        };
        let plan = plan(&entries, Some(100), cached, |c| *c != ChunkId::of(&[2]));
        let names = |slots: &[usize]| slots.iter().map(|s| entries[*s].path.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&plan.over_budget), ["d/huge"]);
        assert_eq!(names(&plan.read), ["d/doomed", "d/link1", "d/new"], "a chunk prune may delete is read again");
        assert_eq!(plan.bytes_to_read, 22);
        assert!(
            matches!(&plan.slots[5].as_ref().unwrap().kind, EntryKind::Hardlink { target } if target.to_string() == "d/link1")
        );
        assert_eq!(plan.stats[1], Some(stat(10, 2)));

        // The first name of the hard link could not be read: both names are left out.
        let mut slots = plan.slots.clone();
        for slot in [2, 6] {
            let e = &entries[slot];
            let kind = EntryKind::File { size: e.stat.size, chunks: vec![chunk(slot as u8, e.stat.size as u32)] };
            slots[slot] = Some(Entry { path: e.path.clone(), mode: e.mode, mtime_ns: 1, kind });
        }
        let out = assemble(slots, &plan.stats);
        let paths: Vec<String> = out.manifest.entries.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(paths, ["d", "d/cached", "d/doomed", "d/new", "d/sym"]);
        assert_eq!(out.skipped.len(), 1);
        assert_eq!(out.cache.len(), 1, "only files with known-stable metadata are cached");
        out.manifest.validate().unwrap();
    }
}
