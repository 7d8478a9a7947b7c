//! The credentials scan of the end-to-end tests: every secret a test made (git tokens, sandbox
//! and admin tokens, S3 keys) is looked for in every place it must never reach: logs at debug
//! level, the argv and environment of every git command berth runs (a recording `git` first on
//! `PATH`), the workspace, the store, and API and event outputs. A place the scan cannot read
//! fails it: a secret could hide there.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A directory holding a `git` that appends each invocation's argv and environment to a log,
/// then runs the real git. Put first on `PATH`, it shows every git command berth runs, however
/// short-lived (sampling `/proc` can miss one).
pub struct GitRecorder {
    /// The log of invocations.
    pub log: PathBuf,
    path: String,
}

impl GitRecorder {
    /// Installs the recorder under `root` (in `git-recorder/`, logging to `git-invocations.log`).
    pub fn install(root: &Path) -> GitRecorder {
        let bin = root.join("git-recorder");
        fs::create_dir_all(&bin).unwrap();
        let log = root.join("git-invocations.log");
        let real = std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join("git")).find(|g| g.is_file()))
            .expect("git on PATH");
        let script = format!(
            "#!/bin/sh\n{{ printf 'argv:'; for a in \"$@\"; do printf ' %s' \"$a\"; done; printf '\\n'; env; printf '\\n'; }} >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.display()
        );
        fs::write(bin.join("git"), script).unwrap();
        fs::set_permissions(bin.join("git"), fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        GitRecorder { log, path }
    }

    /// The `PATH` value that puts the recorder first.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Every recorded argv line (`argv: clone ...`), first to last.
    pub fn commands(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter(|l| l.starts_with("argv:")).map(str::to_string).collect()
    }

    /// Asserts a git command starting with each of `subcommands` was recorded (so a clean log
    /// means something).
    #[track_caller]
    pub fn assert_ran(&self, subcommands: &[&str]) {
        let commands = self.commands();
        for sub in subcommands {
            let prefix = format!("argv: {sub}");
            assert!(commands.iter().any(|c| c.starts_with(&prefix)), "no git {sub} recorded: {commands:#?}");
        }
    }
}

/// The secrets of one test and the places they must not be.
#[derive(Default)]
pub struct Scan {
    secrets: Vec<(String, String)>,
    places: Vec<(String, Vec<u8>)>,
}

impl Scan {
    /// An empty scan.
    pub fn new() -> Scan {
        Scan::default()
    }

    /// Looks for `value` (named `what` in failures). A value shorter than 8 bytes could match
    /// by accident and is refused.
    pub fn secret(&mut self, what: &str, value: &str) -> &mut Scan {
        assert!(value.len() >= 8, "the secret {what} ({value:?}) is too short to scan for");
        self.secrets.push((what.to_string(), value.to_string()));
        self
    }

    /// The S3 keys of the environment the test runs in (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`), when they are long enough to scan for.
    pub fn s3_keys(&mut self, env: &[(&str, &str)]) -> &mut Scan {
        for (k, v) in env {
            if matches!(*k, "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" | "AWS_SESSION_TOKEN") {
                self.secret(k, v);
            }
        }
        self
    }

    /// Scans `bytes`, named `place` in failures.
    pub fn text(&mut self, place: &str, bytes: impl AsRef<[u8]>) -> &mut Scan {
        self.places.push((place.to_string(), bytes.as_ref().to_vec()));
        self
    }

    /// Scans the file at `path`, which must be readable.
    pub fn file(&mut self, path: &Path) -> &mut Scan {
        let bytes = fs::read(path).unwrap_or_else(|e| panic!("the secret scan cannot read {}: {e}", path.display()));
        self.text(&path.display().to_string(), bytes)
    }

    /// Scans a log that must hold at least one line at debug level (JSON `"level":"DEBUG"`),
    /// so that what berth says only at debug level is scanned too.
    pub fn debug_log(&mut self, path: &Path) -> &mut Scan {
        let text =
            fs::read_to_string(path).unwrap_or_else(|e| panic!("the secret scan cannot read {}: {e}", path.display()));
        assert!(
            text.contains("\"level\":\"DEBUG\""),
            "{} has no debug line: run berth with BERTH_LOG=debug",
            path.display()
        );
        self.text(&path.display().to_string(), text)
    }

    /// Scans every file below `dir` (symlinks are not followed). A directory or file it cannot
    /// read fails the scan.
    pub fn tree(&mut self, dir: &Path) -> &mut Scan {
        let mut stack = vec![dir.to_path_buf()];
        let mut n = 0;
        while let Some(d) = stack.pop() {
            let entries =
                fs::read_dir(&d).unwrap_or_else(|e| panic!("the secret scan cannot list {}: {e}", d.display()));
            for e in entries {
                let e = e.unwrap_or_else(|e| panic!("the secret scan cannot list {}: {e}", d.display()));
                let p = e.path();
                let t = e.file_type().unwrap_or_else(|e| panic!("the secret scan cannot stat {}: {e}", p.display()));
                if t.is_dir() {
                    stack.push(p);
                } else if t.is_file() {
                    self.file(&p);
                    n += 1;
                } else if t.is_symlink() {
                    let target = fs::read_link(&p)
                        .unwrap_or_else(|e| panic!("the secret scan cannot read {}: {e}", p.display()));
                    self.text(&p.display().to_string(), target.as_os_str().as_encoded_bytes());
                }
            }
        }
        assert!(n > 0, "the secret scan found no file below {}", dir.display());
        self
    }

    /// Scans the recorder's log of every git invocation (argv and environment), which must
    /// hold at least one.
    pub fn git_invocations(&mut self, recorder: &GitRecorder) -> &mut Scan {
        assert!(!recorder.commands().is_empty(), "the git recorder saw no git command");
        self.file(&recorder.log.clone())
    }

    /// Scans `value`'s JSON.
    pub fn json(&mut self, place: &str, value: &impl serde::Serialize) -> &mut Scan {
        self.text(place, serde_json::to_vec(value).unwrap())
    }

    /// Asserts no secret is in any place; the failure lists every (secret, place) found.
    #[track_caller]
    pub fn assert_clean(&self) {
        assert!(!self.secrets.is_empty() && !self.places.is_empty(), "an empty secret scan proves nothing");
        let mut found = Vec::new();
        for (what, secret) in &self.secrets {
            for (place, bytes) in &self.places {
                if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                    found.push(format!("{what} in {place}"));
                }
            }
        }
        assert!(found.is_empty(), "secrets leaked:\n  {}", found.join("\n  "));
    }
}
