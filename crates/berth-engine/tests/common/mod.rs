//! Helpers shared by `store_contract.rs` and `crash.rs`: a seeded byte generator, random trees
//! in a directory, a byte-for-byte tree comparison (content, modes, mtimes, symlinks, empty
//! directories, hard links), and an S3 bucket on the test server.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Sets the mtime of `path` without following a symlink.
pub fn set_mtime(path: &Path, mtime_ns: i64) {
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &berth_engine::beneath::times(mtime_ns),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("setting mtime of {}: {e}", path.display()));
}

/// Sets the permission bits of `path` (not a symlink).
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

/// What a tree entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file: its size, content hash, and the first path (in sorted order) of its
    /// hard-link group, when it has more than one name.
    File { size: u64, hash: String, link_group: Option<PathBuf> },
    /// A symlink and its target.
    Symlink(PathBuf),
}

/// One entry of a captured tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Permission bits (0 for symlinks, whose mode means nothing on Linux).
    pub mode: u32,
    /// Modification time in ns.
    pub mtime_ns: i64,
}

/// Everything below a directory (not the directory itself), by relative path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree(pub BTreeMap<PathBuf, Node>);

impl Tree {
    /// Reads the tree under `root` without following symlinks.
    pub fn capture(root: &Path) -> Tree {
        let mut out = BTreeMap::new();
        let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let dir = root.join(&rel);
            for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
                let e = e.expect("dir entry");
                let r = rel.join(e.file_name());
                let m = fs::symlink_metadata(e.path()).expect("lstat");
                let mtime_ns = m.mtime() * 1_000_000_000 + m.mtime_nsec();
                let ft = m.file_type();
                let (kind, mode) = if ft.is_dir() {
                    stack.push(r.clone());
                    (Kind::Dir, m.mode() & 0o7777)
                } else if ft.is_symlink() {
                    (Kind::Symlink(fs::read_link(e.path()).expect("readlink")), 0)
                } else if ft.is_file() {
                    let data = fs::read(e.path()).unwrap_or_else(|err| panic!("reading {}: {err}", r.display()));
                    if m.nlink() > 1 {
                        inodes.entry((m.dev(), m.ino())).or_default().push(r.clone());
                    }
                    let hash = blake3::hash(&data).to_hex().to_string();
                    (Kind::File { size: m.len(), hash, link_group: None }, m.mode() & 0o7777)
                } else {
                    panic!("unexpected file type at {}", r.display());
                };
                out.insert(r, Node { kind, mode, mtime_ns });
            }
        }
        // Name each hard-link group by its first path; groups of one (the other names are
        // outside the tree) are not groups.
        for mut paths in inodes.into_values().filter(|p| p.len() > 1) {
            paths.sort();
            let first = paths[0].clone();
            for p in paths {
                if let Some(Node { kind: Kind::File { link_group, .. }, .. }) = out.get_mut(&p) {
                    *link_group = Some(first.clone());
                }
            }
        }
        Tree(out)
    }

    /// Lists how `other` differs from `self`, one line per entry, empty when equal.
    pub fn diff(&self, other: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        for (p, a) in &self.0 {
            match other.0.get(p) {
                None => out.push(format!("missing: {} ({a:?})", p.display())),
                Some(b) if a != b => out.push(format!("differs: {}\n  expected {a:?}\n  actual   {b:?}", p.display())),
                Some(_) => {}
            }
        }
        for (p, b) in &other.0 {
            if !self.0.contains_key(p) {
                out.push(format!("unexpected: {} ({b:?})", p.display()));
            }
        }
        out
    }

    /// Returns the number of regular files (counting each hard-link name).
    pub fn files(&self) -> usize {
        self.0.values().filter(|n| matches!(n.kind, Kind::File { .. })).count()
    }
}

/// Panics with a readable list of differences unless the trees are identical.
#[track_caller]
pub fn assert_same_tree(expected: &Tree, actual: &Tree, what: &str) {
    let d = expected.diff(actual);
    if !d.is_empty() {
        let shown = d.iter().take(20).cloned().collect::<Vec<_>>().join("\n");
        panic!("{what}: trees differ in {} entries:\n{shown}", d.len());
    }
}

/// Compares the trees under two directories byte for byte, with modes, mtimes, symlinks, empty
/// directories and hard links.
#[track_caller]
pub fn assert_same_dirs(expected: &Path, actual: &Path) {
    assert_same_tree(
        &Tree::capture(expected),
        &Tree::capture(actual),
        &format!("{} vs {}", expected.display(), actual.display()),
    );
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
