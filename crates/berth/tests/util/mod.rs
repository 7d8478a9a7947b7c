//! Helpers shared by the end-to-end tests: run the real `berth` binary against a local store,
//! build trees, and read trees back for comparison.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]
// Likewise for what it re-exports from berth-testkit.
#![allow(unused_imports)]

pub mod fsync;
pub mod git;
pub mod kubelet;
pub mod proxy;
pub mod secrets;
pub mod serve;
pub mod webdriver;

use std::fmt;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// A `berth` command with no `BERTH_*` variable of the test's environment (the one builder of
/// the end-to-end tests; see `berth_testkit::berth_command`).
pub fn berth_command() -> Command {
    berth_testkit::berth_command(env!("CARGO_BIN_EXE_berth"))
}

/// A [`berth_command`] whose `XDG_CACHE_HOME` and `HOME` point into `home`, so that a missing
/// `--cache-dir` could never reach the real `~/.cache`.
pub fn berth(home: &Path) -> Command {
    let mut c = berth_command();
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

pub use berth_testkit::tree::{Kind, TreeImage};
pub use berth_testkit::{eventually, Rng};

/// Reads the tree below `root` (see [`TreeImage::read`]: content, modes, mtimes, symlinks,
/// empty directories, hard links; `.berth/run/` left out as a snapshot leaves it out).
pub fn read_tree(root: &Path) -> TreeImage {
    TreeImage::read(root)
}

/// Asserts two trees are equal, listing every difference when not.
#[track_caller]
pub fn assert_same_tree(expected: &TreeImage, actual: &TreeImage) {
    berth_testkit::assert_same(expected, actual, "restored tree");
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

/// Decodes standard base64 (what WebDriver returns screenshots in, and Kubernetes secret data); padding and anything
/// outside the alphabet are skipped.
pub fn decode_base64(s: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
