//! Helpers shared by the end-to-end tests: run the real `berth` binary against a local store,
//! build trees, and read trees back for comparison.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

pub mod git;
pub mod proxy;
pub mod serve;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// Environment variables the binary reads; cleared so the caller's shell cannot leak in.
const BERTH_VARS: &[&str] =
    &["BERTH_STORE", "BERTH_WORKSPACE", "BERTH_GENERATION", "BERTH_CACHE_DIR", "BERTH_LOG", "BERTH_LOG_FORMAT"];

/// A `berth` command with a clean environment. `XDG_CACHE_HOME` and `HOME` point into `home` so
/// that a missing `--cache-dir` could never reach the real `~/.cache`.
pub fn berth(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    for v in BERTH_VARS {
        c.env_remove(v);
    }
    c.env("HOME", home).env("XDG_CACHE_HOME", home.join("xdg-cache"));
    c
}

/// The outcome of one run of the binary.
pub struct Run {
    /// What was run, for messages.
    pub what: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

impl Run {
    /// Runs `cmd` to completion.
    pub fn of(mut cmd: Command) -> Run {
        let what =
            format!("berth {}", cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "));
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        Run {
            what,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts exit code 0.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.status.code(), Some(0), "expected success: {self:?}");
        self
    }

    /// Asserts the exit code `code` and, for failures, an `error: ` message on stderr.
    #[track_caller]
    pub fn fails(self, code: i32) -> Run {
        assert_eq!(self.status.code(), Some(code), "expected exit code {code}: {self:?}");
        assert!(self.stderr.starts_with("error: "), "stderr must start with 'error: ': {self:?}");
        self
    }

    /// Asserts that stderr contains every one of `parts`.
    #[track_caller]
    pub fn stderr_has(self, parts: &[&str]) -> Run {
        for p in parts {
            assert!(self.stderr.contains(p), "stderr should mention {p:?}: {self:?}");
        }
        self
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// A temporary directory holding a file store, a cache directory and room for trees.
pub struct Env {
    /// Everything lives in here.
    pub tmp: tempfile::TempDir,
    /// The store's directory.
    pub store: PathBuf,
    /// The store's URL.
    pub url: String,
    /// The cache directory passed to create and restore.
    pub cache: PathBuf,
}

impl Env {
    /// A fresh environment with an empty (not yet initialised) store.
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = fs::canonicalize(tmp.path()).expect("canonical tempdir");
        let store = root.join("store");
        let url = format!("file://{}", store.display());
        let cache = root.join("cache");
        Env { tmp, store, url, cache }
    }

    /// A path inside the environment.
    pub fn path(&self, name: &str) -> PathBuf {
        fs::canonicalize(self.tmp.path()).expect("canonical tempdir").join(name)
    }

    /// A bare `berth` command in this environment (no arguments added).
    pub fn raw(&self) -> Command {
        berth(self.tmp.path())
    }

    /// Runs `berth <args>` exactly as given.
    pub fn run_raw(&self, args: &[&str]) -> Run {
        let mut c = self.raw();
        c.args(args);
        Run::of(c)
    }

    /// `berth snapshot <sub> --store URL [--cache-dir DIR] <args>`; the cache directory is
    /// passed to the subcommands that take one.
    pub fn command(&self, sub: &str, args: &[&str]) -> Command {
        let mut c = self.raw();
        c.args(["snapshot", sub, "--store", &self.url]);
        if matches!(sub, "create" | "restore") {
            c.arg("--cache-dir").arg(&self.cache);
        }
        c.args(args);
        c
    }

    /// Runs `berth snapshot <sub>` as [`Env::command`] builds it.
    pub fn run(&self, sub: &str, args: &[&str]) -> Run {
        Run::of(self.command(sub, args))
    }

    /// The store's pack objects (temporary files left by interrupted writes excluded).
    pub fn packs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.store.join("packs")) else { return out };
        for d in rd {
            let d = d.expect("packs entry").path();
            for f in fs::read_dir(&d).expect("packs subdir") {
                let f = f.expect("pack entry").path();
                if !f.file_name().unwrap().to_string_lossy().starts_with(".berth-tmp.") {
                    out.push(f);
                }
            }
        }
        out.sort();
        out
    }
}

/// Turns a path into a `&str` for an argument list.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// One entry of a tree as read back from disk.
#[derive(Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory with its permission bits and mtime.
    Dir { mode: u32, mtime_ns: i64 },
    /// A regular file with its permission bits, mtime and content.
    File { mode: u32, mtime_ns: i64, data: Vec<u8> },
    /// A symbolic link and its target.
    Symlink(PathBuf),
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Dir { mode, mtime_ns } => write!(f, "dir {mode:o} mtime {mtime_ns}"),
            Node::File { mode, mtime_ns, data } => {
                let mut h = FNV_OFFSET;
                hash_bytes(&mut h, data);
                write!(f, "file {mode:o} mtime {mtime_ns} {} bytes (hash {h:016x})", data.len())
            }
            Node::Symlink(t) => write!(f, "symlink -> {}", t.display()),
        }
    }
}

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

/// Reads every entry below `root` (not `root` itself), keyed by relative path; like a snapshot,
/// it leaves out `.berth/run/` (where a restore leaves its marker) and a `.berth` holding nothing
/// else.
pub fn read_tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())) {
            let p = e.expect("dir entry").path();
            let rel = p.strip_prefix(root).expect("below root").to_string_lossy().into_owned();
            if rel == ".berth/run" {
                continue;
            }
            let m = fs::symlink_metadata(&p).expect("metadata");
            let mode = m.permissions().mode() & 0o7777;
            let node = if m.file_type().is_symlink() {
                Node::Symlink(fs::read_link(&p).expect("readlink"))
            } else if m.is_dir() {
                stack.push(p.clone());
                Node::Dir { mode, mtime_ns: mtime_ns(&m) }
            } else {
                Node::File { mode, mtime_ns: mtime_ns(&m), data: fs::read(&p).expect("read file") }
            };
            out.insert(rel, node);
        }
    }
    if !out.keys().any(|k| k.starts_with(".berth/")) {
        out.remove(".berth");
    }
    out
}

/// Asserts two trees are equal, listing every difference when not.
#[track_caller]
pub fn assert_same_tree(expected: &BTreeMap<String, Node>, actual: &BTreeMap<String, Node>) {
    let mut problems = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => problems.push(format!("missing: {p} ({e:?})")),
            Some(a) if a != e => problems.push(format!("differs: {p}\n    expected {e:?}\n    actual   {a:?}")),
            Some(_) => {}
        }
    }
    for (p, a) in actual {
        if !expected.contains_key(p) {
            problems.push(format!("unexpected: {p} ({a:?})"));
        }
    }
    assert!(problems.is_empty(), "trees differ:\n  {}", problems.join("\n  "));
}

/// Writes a file with the given content and permission bits, creating parent directories.
pub fn write_file(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir -p");
    fs::write(&p, data).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Creates a symlink at `rel` pointing at `target`.
pub fn write_symlink(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir -p");
    symlink(target, &p).expect("symlink");
}

/// A small deterministic xorshift64* generator, so that a failing seed reproduces.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> Rng {
        let mut r = Rng(seed ^ 0x9E37_79B9_7F4A_7C15);
        if r.0 == 0 {
            r.0 = 1;
        }
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// Start value of [`hash_bytes`].
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Mixes `data` into `h`, a word at a time (fast enough unoptimised). Not cryptographic; it
/// tells apart the random trees these tests build.
pub fn hash_bytes(h: &mut u64, data: &[u8]) {
    const P: u64 = 0x0000_0100_0000_01B3;
    let word = |w: &[u8]| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
    let mut lanes = [*h ^ (data.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15), 1, 2, 3];
    // Four independent lanes over 32-byte blocks: few iterator steps per byte.
    let mut blocks = data.chunks_exact(32);
    for b in &mut blocks {
        lanes[0] = (lanes[0] ^ word(&b[0..8])).wrapping_mul(P).rotate_left(31);
        lanes[1] = (lanes[1] ^ word(&b[8..16])).wrapping_mul(P).rotate_left(31);
        lanes[2] = (lanes[2] ^ word(&b[16..24])).wrapping_mul(P).rotate_left(31);
        lanes[3] = (lanes[3] ^ word(&b[24..32])).wrapping_mul(P).rotate_left(31);
    }
    let mut x = lanes[0];
    for l in &lanes[1..] {
        x = (x ^ l).wrapping_mul(P).rotate_left(29);
    }
    for &b in blocks.remainder() {
        x = (x ^ b as u64).wrapping_mul(P);
    }
    *h = x ^ (x >> 29);
}

/// A digest of a whole tree: every path with its kind, permission bits and content (file data
/// or link target). Mtimes are left out, and so is what a snapshot leaves out of berth's own
/// directory (see [`read_tree`]).
pub fn tree_digest(root: &Path) -> u64 {
    let mut entries = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let runtime = root.join(".berth/run");
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())) {
            let p = e.expect("dir entry").path();
            if p == runtime {
                continue;
            }
            let m = fs::symlink_metadata(&p).expect("metadata");
            if m.is_dir() {
                stack.push(p.clone());
            }
            entries.push((p, m));
        }
    }
    let berth_dir = root.join(".berth");
    if !entries.iter().any(|(p, _)| p.starts_with(&berth_dir) && *p != berth_dir) {
        entries.retain(|(p, _)| *p != berth_dir);
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = FNV_OFFSET;
    for (p, m) in entries {
        let rel = p.strip_prefix(root).expect("below root");
        hash_bytes(&mut h, rel.as_os_str().as_encoded_bytes());
        let mode = m.permissions().mode() & 0o7777;
        if m.file_type().is_symlink() {
            hash_bytes(&mut h, b"L");
            hash_bytes(&mut h, fs::read_link(&p).expect("readlink").as_os_str().as_encoded_bytes());
        } else if m.is_dir() {
            hash_bytes(&mut h, format!("D{mode:o}").as_bytes());
        } else {
            hash_bytes(&mut h, format!("F{mode:o}").as_bytes());
            hash_bytes(&mut h, &fs::read(&p).expect("read file"));
        }
    }
    h
}
