//! Shared by the round-trip and hostile-store tests: a runtime, a memory repository, snapshot
//! and restore with test options, a byte-exact image of a directory tree read with `lstat`,
//! and deterministic test data.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fmt::{self, Write as _};
use std::fs::{self, File, FileTimes};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_core::excludes::Excludes;
use berth_core::path::escape;
use berth_core::workspace::{Generation, WorkspaceId};
use berth_engine::create::{self, CreateOptions, CreateSummary};
use berth_engine::progress::Progress;
use berth_engine::repo::Repo;
use berth_engine::restore::{self, RestoreOptions, RestoreSummary};
use berth_engine::store;

/// Returns a small multi-threaded runtime (the engine reads and writes on blocking threads).
pub fn runtime() -> tokio::runtime::Runtime {
    // Building a runtime only fails when the OS refuses threads; nothing can run then.
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// The workspace every test snapshots.
pub fn workspace() -> WorkspaceId {
    WorkspaceId::new("agent:test").expect("valid workspace id")
}

/// Opens a fresh repository in a memory store.
pub async fn memory_repo() -> Repo {
    Repo::open_or_init(store::memory()).await.expect("init memory repo")
}

/// Snapshot options for `dir`, with no excludes at all so every generated name is kept.
pub fn create_opts(dir: &Path, cache_dir: Option<&Path>) -> CreateOptions {
    CreateOptions {
        workspace: workspace(),
        generation: Generation(1),
        dir: dir.to_path_buf(),
        excludes: Excludes::new(&[], false).expect("no patterns"),
        budget: None,
        cache_dir: cache_dir.map(Path::to_path_buf),
        host: "test-host".into(),
        threads: 2,
    }
}

/// Restore options for the latest snapshot into `dir`.
pub fn restore_opts(dir: &Path, cache_dir: Option<&Path>) -> RestoreOptions {
    RestoreOptions {
        workspace: workspace(),
        generation: Generation(1),
        snapshot: "latest".into(),
        dir: dir.to_path_buf(),
        excludes: Excludes::new(&[], false).expect("no patterns"),
        cache_dir: cache_dir.map(Path::to_path_buf),
        threads: 2,
    }
}

/// Snapshots `dir`; a failure fails the test.
pub async fn snapshot(repo: &Repo, dir: &Path, cache_dir: Option<&Path>) -> CreateSummary {
    let progress = Arc::new(Progress::default());
    match create::create(repo, &create_opts(dir, cache_dir), &progress).await {
        Ok(s) => s,
        Err(e) => panic!("snapshot of {} failed: {e}", dir.display()),
    }
}

/// Restores the latest snapshot into `dir`.
pub async fn restore(repo: &Repo, dir: &Path, cache_dir: Option<&Path>) -> berth_engine::Result<RestoreSummary> {
    restore_with(repo, &restore_opts(dir, cache_dir)).await
}

/// Restores with explicit options.
pub async fn restore_with(repo: &Repo, opts: &RestoreOptions) -> berth_engine::Result<RestoreSummary> {
    restore::restore(repo, opts, &Arc::new(Progress::default())).await
}

/// What one path is, as `lstat` and the content show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file: its length and the BLAKE3 digest of its bytes.
    File { len: u64, digest: String },
    /// A symlink and its raw target.
    Symlink(Vec<u8>),
    /// A FIFO, socket or device.
    Special,
}

/// One path of a tree image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Modification time in ns (of the link itself for symlinks).
    pub mtime_ns: i64,
}

/// A directory tree as it is on disk, never following a link: every path below the root with
/// type, bytes, mode and mtime, plus which regular files share an inode.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TreeImage {
    /// Every path (relative, raw bytes) below the root.
    pub nodes: BTreeMap<Vec<u8>, Node>,
    /// Groups of two or more paths that are the same inode.
    pub links: BTreeSet<Vec<Vec<u8>>>,
}

impl TreeImage {
    /// Reads the tree below `root` (the root itself is not part of the image).
    pub fn read(root: &Path) -> TreeImage {
        Self::read_except(root, &[])
    }

    /// Reads the tree below `root`, leaving out the top-level names in `skip` and all below them.
    pub fn read_except(root: &Path, skip: &[&[u8]]) -> TreeImage {
        let mut image = TreeImage::default();
        let mut inodes: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
        let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
            for entry in entries {
                let entry = entry.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
                let name = entry.file_name();
                if rel.is_empty() && skip.contains(&name.as_bytes()) {
                    continue;
                }
                let mut child = rel.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(name.as_bytes());
                let path = entry.path();
                let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
                let ft = meta.file_type();
                let kind = if ft.is_dir() {
                    stack.push((path.clone(), child.clone()));
                    Kind::Dir
                } else if ft.is_symlink() {
                    let target = fs::read_link(&path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()));
                    Kind::Symlink(target.as_os_str().as_bytes().to_vec())
                } else if ft.is_file() {
                    inodes.entry((meta.dev(), meta.ino())).or_default().push(child.clone());
                    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                    Kind::File { len: bytes.len() as u64, digest: blake3::hash(&bytes).to_hex().to_string() }
                } else {
                    Kind::Special
                };
                let node = Node {
                    kind,
                    mode: meta.mode() & 0o7777,
                    mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                };
                image.nodes.insert(child, node);
            }
        }
        for (_, mut paths) in inodes {
            if paths.len() > 1 {
                paths.sort();
                image.links.insert(paths);
            }
        }
        image
    }

    /// Returns the content digest of a regular file at `rel`.
    pub fn digest(&self, rel: &[u8]) -> Option<&str> {
        match &self.nodes.get(rel)?.kind {
            Kind::File { digest, .. } => Some(digest),
            _ => None,
        }
    }
}

impl fmt::Debug for TreeImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (path, node) in &self.nodes {
            writeln!(f, "{:?} {:o} {} {:?}", escape(path), node.mode, node.mtime_ns, node.kind)?;
        }
        for group in &self.links {
            let names: Vec<String> = group.iter().map(|p| escape(p)).collect();
            writeln!(f, "linked: {names:?}")?;
        }
        Ok(())
    }
}

/// Describes how two images differ (empty when they are equal), naming paths, not dumping trees.
pub fn differences(expected: &TreeImage, actual: &TreeImage) -> String {
    let mut out = String::new();
    for (path, want) in &expected.nodes {
        match actual.nodes.get(path) {
            None => writeln!(out, "missing {:?}: want {want:?}", escape(path)).unwrap_or(()),
            Some(got) if got != want => {
                writeln!(out, "differs {:?}: want {want:?}, got {got:?}", escape(path)).unwrap_or(())
            }
            Some(_) => {}
        }
    }
    for (path, got) in &actual.nodes {
        if !expected.nodes.contains_key(path) {
            writeln!(out, "extra {:?}: {got:?}", escape(path)).unwrap_or(());
        }
    }
    if expected.links != actual.links {
        let show = |l: &BTreeSet<Vec<Vec<u8>>>| -> Vec<Vec<String>> {
            l.iter().map(|g| g.iter().map(|p| escape(p)).collect()).collect()
        };
        writeln!(out, "hard links differ: want {:?}, got {:?}", show(&expected.links), show(&actual.links))
            .unwrap_or(());
    }
    out
}

/// Fails with a readable list of differences unless the images are equal.
#[track_caller]
pub fn assert_same(expected: &TreeImage, actual: &TreeImage, context: &str) {
    let diff = differences(expected, actual);
    assert!(diff.is_empty(), "{context}: trees differ:\n{diff}");
}

/// Returns `len` pseudo-random (incompressible) bytes from `seed`.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Returns `len` bytes of compressible text from `seed`.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    let words: [&[u8]; 8] = [b"alpha ", b"beta ", b"gamma\n", b"delta ", b"fn main() {}\n", b"x", b"  ", b"berth "];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % 8) as usize]);
    }
    out.truncate(len);
    out
}

/// Returns the time `ns` nanoseconds from the epoch (negative: before it).
pub fn system_time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// Sets the mtime (and atime) of a file or directory through `File::set_times`.
pub fn set_mtime(path: &Path, ns: i64) {
    let f = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let t = system_time(ns);
    f.set_times(FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap_or_else(|e| panic!("setting times of {}: {e}", path.display()));
}

/// Sets the mtime of a symlink itself (std cannot: it has no `lutimes`).
pub fn set_link_mtime(path: &Path, ns: i64) {
    let t = rustix::fs::Timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) as _ };
    let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("setting times of link {}: {e}", path.display()));
}

/// Sets permission bits (follows links: never call it on a symlink).
pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Joins raw relative path bytes to a root.
pub fn join(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(rel))
}

/// Returns the text of an error and its sources, for keyword assertions.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
