//! Scanning a workspace directory: every entry with its metadata, without following links and
//! without reading file contents.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use berth_core::excludes::Excludes;
use berth_core::path::{escape, RelPath};

use crate::error::{EngineError, Result};

pub use berth_core::sync::{FileStat, ScanEntry, ScanKind};

/// Extracts the change-detection fields from file metadata.
pub fn stat_of(m: &fs::Metadata) -> FileStat {
    FileStat {
        size: m.len(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        ino: m.ino(),
    }
}

/// The result of a scan.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Entries sorted by path.
    pub entries: Vec<ScanEntry>,
    /// Entries that could not be read, with why; left out of the snapshot and reported.
    pub problems: Vec<String>,
    /// Sockets, FIFOs and device nodes, which are not snapshotted.
    pub special: u64,
}

/// Scans `root`, leaving out excluded entries and the paths in `skip` (absolute).
///
/// Directories are listed by `threads` workers sharing a queue (metadata calls dominate, and
/// they run in parallel well); the result is sorted, so it does not depend on the schedule.
pub fn scan(root: &Path, excludes: &Excludes, skip: &[PathBuf], threads: usize) -> Result<Scan> {
    let meta = fs::metadata(root).map_err(|e| EngineError::io("reading directory", root, e))?;
    if !meta.is_dir() {
        return Err(EngineError::Invalid(format!("{} is not a directory", root.display())));
    }
    Ok(scan_from(root.to_path_buf(), None, excludes, skip, threads))
}

/// Scans what lies below the directory `rel` of `root` (not `rel` itself), with paths and
/// excludes relative to `root`.
pub fn scan_below(root: &Path, rel: &RelPath, excludes: &Excludes, skip: &[PathBuf], threads: usize) -> Scan {
    scan_from(join(root, rel), Some(rel.clone()), excludes, skip, threads)
}

fn scan_from(dir: PathBuf, rel: Option<RelPath>, excludes: &Excludes, skip: &[PathBuf], threads: usize) -> Scan {
    let queue = Queue { state: Mutex::new((vec![(dir, rel)], 0)), ready: Condvar::new() };
    let parts: Vec<Scan> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(|| scan_worker(&queue, excludes, skip))).collect();
        workers.into_iter().filter_map(|w| w.join().ok()).collect()
    });
    let mut out = Scan::default();
    for p in parts {
        out.entries.extend(p.entries);
        out.problems.extend(p.problems);
        out.special += p.special;
    }
    out.entries.sort_by(|a, b| a.path.cmp(&b.path));
    drop_bare_berth_dir(&mut out.entries);
    out.problems.sort();
    out
}

/// berth's own top-level directory, `.berth`: its `run/` (runtime state, the restore marker)
/// is never scanned, and when nothing else is below it, the directory is left out too, so a
/// restore's marker never shows up in a snapshot or in what a restore removes.
pub const BERTH_DIR: &[u8] = b".berth";

fn drop_bare_berth_dir(entries: &mut Vec<ScanEntry>) {
    if let Some(i) = bare_berth_dir(entries) {
        entries.remove(i);
    }
}

/// Returns where `.berth` is in sorted `entries` when it is a directory with nothing below it.
pub(crate) fn bare_berth_dir(entries: &[ScanEntry]) -> Option<usize> {
    let lower = |key: &[u8]| entries.partition_point(|e| e.path.as_bytes() < key);
    let i = lower(BERTH_DIR);
    let dir = entries.get(i).is_some_and(|e| e.path.as_bytes() == BERTH_DIR && matches!(e.kind, ScanKind::Dir));
    let below = [BERTH_DIR, b"/"].concat();
    let holds_more = entries.get(lower(&below)).is_some_and(|e| e.path.as_bytes().starts_with(&below));
    Some(i).filter(|_| dir && !holds_more)
}

type DirJob = (PathBuf, Option<RelPath>);

/// Directories waiting to be listed, and how many workers are listing one right now.
struct Queue {
    state: Mutex<(Vec<DirJob>, usize)>,
    ready: Condvar,
}

impl Queue {
    /// Takes the next directory, waiting while others may still add some; `None` when done.
    fn take(&self) -> Option<DirJob> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = state.0.pop() {
                state.1 += 1;
                return Some(job);
            }
            if state.1 == 0 {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Adds the subdirectories found and marks one listing finished.
    fn finish(&self, found: Vec<DirJob>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0.extend(found);
        state.1 -= 1;
        self.ready.notify_all();
    }
}

fn scan_worker(queue: &Queue, excludes: &Excludes, skip: &[PathBuf]) -> Scan {
    let mut out = Scan::default();
    while let Some((dir, rel)) = queue.take() {
        let mut found = Vec::new();
        list_dir(&dir, rel.as_ref(), excludes, skip, &mut out, &mut found);
        queue.finish(found);
    }
    out
}

fn list_dir(
    dir: &Path,
    rel: Option<&RelPath>,
    excludes: &Excludes,
    skip: &[PathBuf],
    out: &mut Scan,
    found: &mut Vec<DirJob>,
) {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            out.problems.push(format!("{}: cannot list directory: {e}", dir.display()));
            return;
        }
    };
    for entry in rd {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.problems.push(format!("{}: cannot list directory: {e}", dir.display()));
                break;
            }
        };
        let name = entry.file_name();
        let child_rel = match rel {
            None => RelPath::new(name.as_bytes().to_vec()),
            Some(r) => r.join(name.as_bytes()),
        };
        let child_rel = match child_rel {
            Ok(r) => r,
            Err(e) => {
                out.problems.push(e.to_string());
                continue;
            }
        };
        let path = entry.path();
        if let Some(e) = stat_entry(&path, child_rel, excludes, skip, out) {
            if e.kind == ScanKind::Dir {
                found.push((path, Some(e.path.clone())));
            }
            out.entries.push(e);
        }
    }
}

/// Stats one entry (without following a link): `None` when it is gone, excluded, skipped,
/// special (counted) or unreadable (reported in `out`).
pub fn stat_entry(
    path: &Path,
    rel: RelPath,
    excludes: &Excludes,
    skip: &[PathBuf],
    out: &mut Scan,
) -> Option<ScanEntry> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            out.problems.push(format!("{rel}: {e}"));
            return None;
        }
    };
    let ft = meta.file_type();
    if excludes.is_excluded(rel.as_bytes(), ft.is_dir()) || skip.iter().any(|s| s == path) {
        return None;
    }
    let kind = if ft.is_dir() {
        ScanKind::Dir
    } else if ft.is_file() {
        ScanKind::File { dev: meta.dev(), nlink: meta.nlink() }
    } else if ft.is_symlink() {
        match fs::read_link(path) {
            Ok(t) => ScanKind::Symlink(t.into_os_string().into_vec()),
            Err(e) => {
                out.problems.push(format!("{rel}: cannot read link: {e}"));
                return None;
            }
        }
    } else {
        out.special += 1;
        return None;
    };
    Some(ScanEntry { path: rel, kind, mode: meta.mode() & 0o7777, stat: stat_of(&meta) })
}

/// Returns the absolute path of `rel` below `root`.
pub fn join(root: &Path, rel: &RelPath) -> PathBuf {
    root.join(OsStr::from_bytes(rel.as_bytes()))
}

/// Returns a path for messages.
pub fn show(rel: &RelPath) -> String {
    escape(rel.as_bytes())
}
