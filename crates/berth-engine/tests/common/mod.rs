//! Helpers shared by the engine's integration tests (`roundtrip.rs`, `hostile.rs`,
//! `store_contract.rs`, `crash.rs`): a runtime, a memory repository, snapshot and restore with
//! test options, deterministic test data (seeded bytes and random trees), file metadata setters,
//! and the shared test support of `berth-testkit` (tree images and their comparison, the seeded
//! generator, an S3 bucket on the test server) as this crate's tests use it.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]
// Likewise for what it re-exports from berth-testkit.
#![allow(unused_imports)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_core::excludes::Excludes;
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

/// Returns `len` pseudo-random (incompressible) bytes from `seed`.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

/// Returns `len` bytes of compressible text from `seed`.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed).text(len)
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
// Tree images (one implementation for every crate: berth-testkit)
// ---------------------------------------------------------------------------

pub use berth_testkit::tree::{assert_same, assert_same_dirs, differences, Kind, Node, TreeImage};
pub use berth_testkit::Rng;

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
    let endpoint = berth_testkit::services::s3_endpoint();
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

/// Creates a fresh bucket on the test server and returns its name.
pub fn s3_bucket(hint: &str) -> String {
    s3_endpoint();
    berth_testkit::services::s3_bucket(hint)
}
