//! Helpers shared by the engine's integration tests (`roundtrip.rs`, `hostile.rs`,
//! `store_contract.rs`, `crash.rs`): a runtime, a memory repository, snapshot and restore with
//! test options, deterministic test data (seeded bytes and random trees), file metadata setters,
//! a byte-exact image of a directory tree read with `lstat` (content, modes, ns mtimes,
//! symlinks, empty directories, hard links) and its comparison, and an S3 bucket on the test
//! server.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fmt::{self, Write as _};
use std::fs;
use std::io::{Read, Write};
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
use berth_engine::restore::{self, RestoreOptions, RestoreSummary};
use berth_engine::snapshot_store::SnapshotStore;
use berth_engine::store;

// ---------------------------------------------------------------------------
// Runtime, repository, snapshot and restore
// ---------------------------------------------------------------------------

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
pub async fn memory_repo() -> SnapshotStore {
    SnapshotStore::open_or_init(store::memory()).await.expect("init memory snapshots")
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
        epoch: berth_core::lease::Epoch::ZERO,
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
        delete: false,
    }
}

/// Snapshots `dir`; a failure fails the test.
pub async fn snapshot(snapshots: &SnapshotStore, dir: &Path, cache_dir: Option<&Path>) -> CreateSummary {
    let progress = Arc::new(Progress::default());
    match create::create(snapshots, &create_opts(dir, cache_dir), &progress).await {
        Ok(s) => s,
        Err(e) => panic!("snapshot of {} failed: {e}", dir.display()),
    }
}

/// Restores the latest snapshot into `dir`.
pub async fn restore(
    snapshots: &SnapshotStore,
    dir: &Path,
    cache_dir: Option<&Path>,
) -> berth_engine::Result<RestoreSummary> {
    restore_with(snapshots, &restore_opts(dir, cache_dir)).await
}

/// Restores with explicit options.
pub async fn restore_with(snapshots: &SnapshotStore, opts: &RestoreOptions) -> berth_engine::Result<RestoreSummary> {
    restore::restore(snapshots, opts, &Arc::new(Progress::default())).await
}

// ---------------------------------------------------------------------------
// Test data
// ---------------------------------------------------------------------------

/// A small deterministic generator (splitmix64): the same seed gives the same tree.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Starts a sequence.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Returns the next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Returns `n` random (incompressible) bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(n);
        out
    }

    /// Returns an mtime (ns since the epoch) with a non-zero nanosecond part.
    pub fn mtime(&mut self) -> i64 {
        1_500_000_000_000_000_000 + (self.below(200_000_000_000_000_000) as i64)
    }
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

// ---------------------------------------------------------------------------
// Files and metadata
// ---------------------------------------------------------------------------

/// Sets the mtime (and atime) of `path`, a file, directory or symlink, without following a
/// symlink.
pub fn set_mtime(path: &Path, mtime_ns: i64) {
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &berth_engine::beneath::times(mtime_ns),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("setting mtime of {}: {e}", path.display()));
}

/// Sets permission bits (follows links: never call it on a symlink).
pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Writes a file with the given content, mode and mtime, creating its parent directories.
pub fn write_file(path: &Path, data: &[u8], mode: u32, mtime_ns: i64) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    set_mode(path, mode);
    set_mtime(path, mtime_ns);
}

/// Creates a symlink holding `target` and sets its mtime.
pub fn symlink(target: &str, path: &Path, mtime_ns: i64) {
    std::os::unix::fs::symlink(target, path).unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
    set_mtime(path, mtime_ns);
}

/// Sets random mtimes on every directory under `root` (not `root` itself), deepest first, so
/// that later changes inside a directory do not disturb them. Call after the last change.
pub fn stamp_dirs(root: &Path, rng: &mut Rng) {
    let mut dirs = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
            let e = e.expect("dir entry");
            if e.file_type().expect("file type").is_dir() {
                dirs.push(e.path());
                stack.push(e.path());
            }
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        set_mtime(&d, rng.mtime());
    }
}

/// Shape of a random tree.
#[derive(Debug, Clone, Copy)]
pub struct TreeShape {
    /// Regular files to create (besides the fixed special cases).
    pub files: usize,
    /// Largest size of a random file.
    pub max_file: usize,
}

impl Default for TreeShape {
    fn default() -> Self {
        TreeShape { files: 24, max_file: 48 * 1024 }
    }
}

/// Fills `root` (an existing, empty directory) with a random tree: nested directories, files
/// of sizes 0 to `max_file` with assorted modes, empty directories, relative, absolute and
/// dangling symlinks, a hard-linked pair, odd but valid names, and random mtimes everywhere.
pub fn random_tree(root: &Path, rng: &mut Rng, shape: TreeShape) {
    let dirs = ["", "src", "src/deep", "src/deep/er", "docs", "with space", "ünïcödé"];
    for d in &dirs[1..] {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    let modes = [0o644, 0o600, 0o755, 0o700, 0o640, 0o444, 0o4755];
    let names = ["a.txt", "b.rs", "data.bin", "x", "-dash", ".hidden", "tab\tname", "long-name-of-a-file.json"];
    let mut files = Vec::new();
    for i in 0..shape.files {
        let dir = dirs[rng.below(dirs.len() as u64) as usize];
        let name = format!("{i}-{}", names[rng.below(names.len() as u64) as usize]);
        let rel = if dir.is_empty() { PathBuf::from(name) } else { Path::new(dir).join(name) };
        let size = match rng.below(5) {
            0 => 0,
            1 => rng.below(100) as usize,
            _ => rng.below(shape.max_file as u64 + 1) as usize,
        };
        let data = rng.bytes(size);
        let mode = modes[rng.below(modes.len() as u64) as usize];
        write_file(&root.join(&rel), &data, mode, rng.mtime());
        files.push(rel);
    }
    // Empty directories, one nested inside another.
    fs::create_dir_all(root.join("empty/also-empty")).expect("mkdir");
    fs::create_dir_all(root.join("src/empty")).expect("mkdir");
    set_mode(&root.join("src/empty"), 0o750);
    // Symlinks: relative to a file, to a directory, dangling, absolute.
    let first = files.first().cloned().unwrap_or_else(|| PathBuf::from("nothing"));
    symlink(&first.to_string_lossy(), &root.join("link-to-file"), rng.mtime());
    symlink("../docs", &root.join("src/link-to-dir"), rng.mtime());
    symlink("does/not/exist", &root.join("dangling"), rng.mtime());
    symlink("/etc/hostname", &root.join("docs/absolute"), rng.mtime());
    // A hard-linked pair.
    let hl = root.join("docs/hard-a");
    write_file(&hl, &rng.bytes(777), 0o644, rng.mtime());
    fs::hard_link(&hl, root.join("src/hard-b")).expect("hard link");
    stamp_dirs(root, rng);
}

// ---------------------------------------------------------------------------
// Tree images
// ---------------------------------------------------------------------------

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

    /// Reads the tree below `root`, leaving out the top-level names in `skip` and all below them,
    /// and, as a snapshot does, `.berth/run/` (where a restore leaves its marker) and a `.berth`
    /// that holds nothing else.
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
                if child == b".berth/run" {
                    continue;
                }
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
        if !image.nodes.keys().any(|k| k.starts_with(b".berth/")) {
            image.nodes.remove(b".berth".as_slice());
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

    /// Returns whether `rel` is in a hard-link group (with another path of the image).
    pub fn is_linked(&self, rel: &[u8]) -> bool {
        self.links.iter().any(|group| group.iter().any(|p| p == rel))
    }

    /// Returns the number of regular files (counting each hard-link name).
    pub fn files(&self) -> usize {
        self.nodes.values().filter(|n| matches!(n.kind, Kind::File { .. })).count()
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

/// Compares the trees under two directories byte for byte, with modes, mtimes, symlinks, empty
/// directories and hard links.
#[track_caller]
pub fn assert_same_dirs(expected: &Path, actual: &Path) {
    assert_same(
        &TreeImage::read(expected),
        &TreeImage::read(actual),
        &format!("{} vs {}", expected.display(), actual.display()),
    );
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

// ---------------------------------------------------------------------------
// S3 (moto, started by `./dev test` or `./dev s3 -- CMD`)
// ---------------------------------------------------------------------------

/// Returns the test S3 endpoint and points berth's S3 client at it (`AWS_ENDPOINT_URL`).
/// Panics, failing the test, when no server was provided.
pub fn s3_endpoint() -> String {
    let Ok(endpoint) = std::env::var("BERTH_TEST_S3_ENDPOINT") else {
        panic!(
            "BERTH_TEST_S3_ENDPOINT is not set: this test needs the S3 test server. Run the suite with \
             `./dev test`, or this file with `./dev s3 -- cargo nextest run -p berth-engine --test <NAME>`"
        );
    };
    // Each test runs in its own process under nextest; under `cargo test` every thread sets
    // the same value, which is harmless.
    std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
    for (var, default) in [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, default);
        }
    }
    endpoint
}

/// Creates a fresh bucket on the test server and returns its name. moto accepts an unsigned
/// `PUT /bucket`, so a raw HTTP/1.1 request is enough.
pub fn s3_bucket(hint: &str) -> String {
    let endpoint = s3_endpoint();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
    let hint: String =
        hint.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let mut bucket = format!("berth-{hint}-{}-{nanos}", std::process::id());
    bucket.truncate(63);
    let bucket = bucket.trim_end_matches('-').to_string();

    let authority = endpoint
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("BERTH_TEST_S3_ENDPOINT must be http://HOST:PORT, got {endpoint}"))
        .trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(authority)
        .unwrap_or_else(|e| panic!("connecting to the S3 test server at {endpoint}: {e} (is it running?)"));
    conn.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let request =
        format!("PUT /{bucket} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).expect("sending bucket creation");
    let mut response = Vec::new();
    conn.read_to_end(&mut response).expect("reading bucket creation answer");
    let status_line = response.split(|b| *b == b'\n').next().unwrap_or_default();
    let status = String::from_utf8_lossy(status_line);
    assert!(
        status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200"),
        "creating bucket {bucket} at {endpoint}: {}",
        String::from_utf8_lossy(&response)
    );
    bucket
}
