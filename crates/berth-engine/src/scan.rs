//! Scanning a workspace directory: every entry with its metadata, without following links and
//! without reading file contents.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_core::excludes::Excludes;
use berth_core::path::{escape, RelPath};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

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

impl FileStat {
    /// Extracts the fields from file metadata.
    pub fn of(m: &fs::Metadata) -> Self {
        FileStat {
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
        }
    }
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

/// The result of a scan.
#[derive(Debug, Default)]
pub struct Scan {
    /// Entries sorted by path.
    pub entries: Vec<ScanEntry>,
    /// Entries that could not be read, with why; left out of the snapshot and reported.
    pub problems: Vec<String>,
    /// Sockets, FIFOs and device nodes, which are not snapshotted.
    pub special: u64,
}

/// Scans `root`, leaving out excluded entries and the paths in `skip` (absolute).
pub fn scan(root: &Path, excludes: &Excludes, skip: &[PathBuf]) -> Result<Scan> {
    let meta = fs::metadata(root).map_err(|e| EngineError::io("reading directory", root, e))?;
    if !meta.is_dir() {
        return Err(EngineError::Invalid(format!("{} is not a directory", root.display())));
    }
    let mut out = Scan::default();
    let mut stack: Vec<(PathBuf, Option<RelPath>)> = vec![(root.to_path_buf(), None)];
    while let Some((dir, rel)) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                out.problems.push(format!("{}: cannot list directory: {e}", dir.display()));
                continue;
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
            let child_rel = match &rel {
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
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    out.problems.push(format!("{child_rel}: {e}"));
                    continue;
                }
            };
            let ft = meta.file_type();
            if excludes.is_excluded(child_rel.as_bytes(), ft.is_dir()) || skip.contains(&path) {
                continue;
            }
            let kind = if ft.is_dir() {
                stack.push((path, Some(child_rel.clone())));
                ScanKind::Dir
            } else if ft.is_file() {
                ScanKind::File { dev: meta.dev(), nlink: meta.nlink() }
            } else if ft.is_symlink() {
                match fs::read_link(&path) {
                    Ok(t) => ScanKind::Symlink(t.into_os_string().into_vec()),
                    Err(e) => {
                        out.problems.push(format!("{child_rel}: cannot read link: {e}"));
                        continue;
                    }
                }
            } else {
                out.special += 1;
                continue;
            };
            out.entries.push(ScanEntry {
                path: child_rel,
                kind,
                mode: meta.mode() & 0o7777,
                stat: FileStat::of(&meta),
            });
        }
    }
    out.entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Returns the absolute path of `rel` below `root`.
pub fn join(root: &Path, rel: &RelPath) -> PathBuf {
    root.join(OsStr::from_bytes(rel.as_bytes()))
}

/// Returns a path for messages.
pub fn show(rel: &RelPath) -> String {
    escape(rel.as_bytes())
}
