//! The one module that runs `git`: clone with retries, capture and restore of git state, the
//! index stat refresh after a restore, work-in-progress commits and pushes.
//!
//! Every command runs with `GIT_TERMINAL_PROMPT=0` (never waits for a password), credentials
//! come from the helper in the environment (never argv), and every message passes through the
//! redactor before it is logged or returned.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_core::gitindex::{self, Stat};
use berth_core::repo::{classify_failure, strip_credentials, FailureKind, RepoSpec};
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::creds::{Creds, Redactor};

/// A failed git command.
#[derive(Debug, Clone, thiserror::Error)]
#[error("git {args}: {message}")]
pub struct GitError {
    /// The subcommand and arguments, redacted.
    pub args: String,
    /// Its stderr (redacted) or why it could not run.
    pub message: String,
    /// What kind of failure it looks like.
    pub kind: FailureKind,
}

/// Runs git.
#[derive(Clone, Debug, Default)]
pub struct Git {
    env: Vec<(String, String)>,
    redactor: Redactor,
    creds: Option<Creds>,
}

/// A repository's git state, as captured into `.berth/state/git/<repo>/state.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitState {
    /// HEAD's commit, `None` before the first commit.
    pub head: Option<String>,
    /// The checked-out branch, `None` when detached.
    pub branch: Option<String>,
    /// Local branches and their commits.
    pub branches: BTreeMap<String, String>,
    /// The upstream of the branch.
    pub upstream: Option<String>,
    /// `origin`'s URL, credentials removed.
    pub remote_url: Option<String>,
    /// An operation under way: merge, rebase, cherry-pick, revert, bisect.
    pub operation: Option<String>,
    /// Whether `index.lock` stayed held through the capture (the patches were not taken).
    pub index_locked: bool,
    /// Files with staged changes.
    pub staged: u64,
    /// Files with unstaged changes.
    pub unstaged: u64,
    /// Untracked files.
    pub untracked: u64,
    /// Whether `all.bundle` holds every ref.
    pub bundle: bool,
}

/// What a restore of git state found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GitRestore {
    /// HEAD recorded at capture.
    pub expected_head: Option<String>,
    /// HEAD after the restore.
    pub head: Option<String>,
    /// Whether they match.
    pub head_matches: bool,
    /// Whether `.git` was missing and rebuilt from the bundle.
    pub rebuilt_from_bundle: bool,
    /// Index entries whose stat data was refreshed.
    pub index_refreshed: usize,
}

/// What a push did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Pushed {
    /// Pushed to this branch on origin.
    To(String),
    /// No `origin`: kept as this local branch.
    Local(String),
}

fn is_repo(dir: &Path) -> bool {
    dir.join(".git").exists()
}

impl Git {
    /// A runner using `creds` (if any) through the credential helper.
    pub fn new(creds: Option<&Creds>) -> Git {
        Git {
            env: creds.map(Creds::git_env).unwrap_or_default(),
            redactor: creds.map(Creds::redactor).unwrap_or_default(),
            creds: creds.cloned(),
        }
    }

    /// Renews the credentials the helper hands git when they expire within `within` (see
    /// [`Creds::refresh_if_expiring`]); returns whether it did.
    pub async fn refresh_credentials(&self, within: Duration) -> Result<bool, crate::creds::CredError> {
        match &self.creds {
            Some(c) => c.refresh_if_expiring(within).await,
            None => Ok(false),
        }
    }

    /// Before git talks to a remote: renews a token with less than [`crate::creds::REMOTE_MIN`]
    /// left. A failed renewal is logged and git goes on with the token it has (its own
    /// failure, if any, says what the remote thought of it).
    async fn fresh_for_remote(&self) {
        if let Err(e) = self.refresh_credentials(crate::creds::REMOTE_MIN).await {
            tracing::warn!(event = "credentials_refresh_failed", error = %self.redactor.redact(&e.to_string()));
        }
    }

    /// The redactor errors pass through.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    fn command(&self, dir: &Path) -> Command {
        let mut c = Command::new("git");
        c.current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GCM_INTERACTIVE", "never")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Nothing of berth's own secrets or store credentials reaches git, its helpers or the
        // workspace's hooks.
        crate::supervise::scrub(&mut c);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs `git ARGS` in `dir` (with `extra_env`) and returns its stdout.
    pub async fn run_env<S: AsRef<OsStr>>(
        &self,
        dir: &Path,
        args: &[S],
        extra_env: &[(&str, &str)],
    ) -> Result<Vec<u8>, GitError> {
        let shown =
            self.redactor.redact(&args.iter().map(|a| a.as_ref().to_string_lossy()).collect::<Vec<_>>().join(" "));
        let mut c = self.command(dir);
        c.args(args);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let out = c.output().await.map_err(|e| GitError {
            args: shown.clone(),
            message: format!("cannot run git: {e} (is git installed and on PATH?)"),
            kind: FailureKind::Other,
        })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let stderr = self.redactor.redact(String::from_utf8_lossy(&out.stderr).trim());
        let message = if stderr.is_empty() { format!("exited with {}", out.status) } else { stderr };
        Err(GitError { kind: classify_failure(&message), args: shown, message })
    }

    /// Runs `git ARGS` in `dir` and returns its stdout.
    pub async fn run<S: AsRef<OsStr>>(&self, dir: &Path, args: &[S]) -> Result<Vec<u8>, GitError> {
        self.run_env(dir, args, &[]).await
    }

    async fn text<S: AsRef<OsStr>>(&self, dir: &Path, args: &[S]) -> Result<String, GitError> {
        Ok(String::from_utf8_lossy(&self.run(dir, args).await?).trim().to_string())
    }

    /// The trimmed output of `git ARGS`; `None` when it fails or says nothing.
    async fn value<S: AsRef<OsStr>>(&self, dir: &Path, args: &[S]) -> Option<String> {
        self.text(dir, args).await.ok().filter(|s| !s.is_empty())
    }

    /// Clones `spec` into `dest` (which must not exist), through a temporary directory in
    /// `scratch` so a failed clone leaves nothing behind. Transient failures are retried with
    /// backoff until `deadline`; authentication and not-found failures are final.
    pub async fn clone_repo(
        &self,
        spec: &RepoSpec,
        dest: &Path,
        scratch: &Path,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<u32, GitError> {
        let mut attempt = 0u32;
        let mut backoff = Duration::from_millis(500);
        loop {
            attempt += 1;
            self.fresh_for_remote().await;
            let tmp = scratch.join(format!("clone-{}-{attempt}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let mut args: Vec<String> = vec!["clone".into(), "--no-tags".into()];
            if let Some(b) = &spec.branch {
                args.extend(["--branch".into(), b.clone()]);
            }
            if let Some(d) = spec.depth {
                args.extend(["--depth".into(), d.to_string()]);
            }
            args.extend(["--".into(), spec.url.clone(), tmp.display().to_string()]);
            let result = tokio::select! {
                r = self.run(scratch, &args) => r,
                _ = cancel.cancelled() => Err(GitError { args: "clone".into(), message: "cancelled".into(), kind: FailureKind::Other }),
            };
            match result {
                Ok(_) => {
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| local_error("clone", &e))?;
                    }
                    // An empty directory in the way (a fresh mount point) is replaced.
                    let _ = std::fs::remove_dir(dest);
                    std::fs::rename(&tmp, dest).map_err(|e| local_error("clone", &e))?;
                    // Persisted metadata never carries credentials.
                    let clean = strip_credentials(&spec.url);
                    if clean != spec.url {
                        self.run(dest, &["remote", "set-url", "origin", &clean]).await?;
                    }
                    return Ok(attempt);
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&tmp);
                    let retry = e.kind.is_transient() && Instant::now() + backoff < deadline && !cancel.is_cancelled();
                    if !retry {
                        return Err(e);
                    }
                    tracing::warn!(event = "clone_retry", url = %strip_credentials(&spec.url), attempt, error = %e.message);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = cancel.cancelled() => return Err(e),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Returns the operation under way in `repo`, if any.
    fn operation(repo: &Path) -> Option<String> {
        let git = repo.join(".git");
        [
            ("rebase-merge", "rebase"),
            ("rebase-apply", "rebase"),
            ("MERGE_HEAD", "merge"),
            ("CHERRY_PICK_HEAD", "cherry-pick"),
            ("REVERT_HEAD", "revert"),
            ("BISECT_LOG", "bisect"),
        ]
        .iter()
        .find(|(f, _)| git.join(f).exists())
        .map(|(_, op)| op.to_string())
    }

    /// Waits up to `wait` for `index.lock` to go; returns whether it is still there.
    async fn index_locked(repo: &Path, wait: Duration) -> bool {
        let lock = repo.join(".git").join("index.lock");
        let until = Instant::now() + wait;
        while lock.exists() {
            if Instant::now() >= until {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Captures the git state of `repo` into `out`: state.json, the staged and unstaged
    /// changes as binary patches, and (with `bundle`) every ref in `all.bundle`. An index held
    /// locked by a git command for over two seconds is recorded as such, and its patches are
    /// not taken, so a torn index is never captured as if it were clean.
    pub async fn capture(&self, repo: &Path, out: &Path, bundle: bool) -> Result<GitState, GitError> {
        std::fs::create_dir_all(out).map_err(|e| local_error("capture", &e))?;
        let no_locks = |args: &[&str]| -> Vec<String> {
            std::iter::once("--no-optional-locks").chain(args.iter().copied()).map(String::from).collect()
        };
        let mut state = GitState {
            head: self.value(repo, &no_locks(&["rev-parse", "--verify", "-q", "HEAD"])).await,
            branch: self.value(repo, &no_locks(&["symbolic-ref", "-q", "--short", "HEAD"])).await,
            upstream: self.value(repo, &no_locks(&["rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}"])).await,
            remote_url: self
                .value(repo, &no_locks(&["remote", "get-url", "origin"]))
                .await
                .map(|u| strip_credentials(&u)),
            operation: Git::operation(repo),
            ..Default::default()
        };
        let refs = self
            .text(repo, &no_locks(&["for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads"]))
            .await?;
        state.branches =
            refs.lines().filter_map(|l| l.split_once(' ')).map(|(n, c)| (n.to_string(), c.to_string())).collect();
        state.index_locked = Git::index_locked(repo, Duration::from_secs(2)).await;
        if !state.index_locked {
            let staged = self.run(repo, &no_locks(&["diff", "--cached", "--binary"])).await?;
            let unstaged = self.run(repo, &no_locks(&["diff", "--binary"])).await?;
            let names = |p: &[u8]| p.split(|b| *b == b'\n').filter(|l| l.starts_with(b"diff --git ")).count() as u64;
            state.staged = names(&staged);
            state.unstaged = names(&unstaged);
            let untracked = self.run(repo, &no_locks(&["ls-files", "--others", "--exclude-standard", "-z"])).await?;
            state.untracked = untracked.split(|b| *b == 0).filter(|s| !s.is_empty()).count() as u64;
            write_file(&out.join("staged.patch"), &staged)?;
            write_file(&out.join("unstaged.patch"), &unstaged)?;
        }
        if bundle && state.head.is_some() && !state.branches.is_empty() {
            let tmp = out.join("all.bundle.tmp");
            let tmp_s = tmp.display().to_string();
            match self.run(repo, &no_locks(&["bundle", "create", &tmp_s, "--all"])).await {
                Ok(_) => {
                    std::fs::rename(&tmp, out.join("all.bundle")).map_err(|e| local_error("bundle", &e))?;
                    state.bundle = true;
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    tracing::warn!(event = "git_bundle_failed", repo = %repo.display(), error = %e);
                }
            }
        } else {
            state.bundle = out.join("all.bundle").exists();
        }
        let body = serde_json::to_vec_pretty(&state).unwrap_or_default();
        crate::layout::write_atomic(&out.join("state.json"), &body).map_err(|e| local_error("capture", &e))?;
        Ok(state)
    }

    /// Restores git state from `state_dir` into `repo` after its files were restored: checks
    /// HEAD against the capture, rebuilds `.git` from the bundle when it is missing, and
    /// refreshes the index's stat data so the first `git status` does not re-hash every file.
    pub async fn restore(&self, repo: &Path, state_dir: &Path) -> Result<GitRestore, GitError> {
        let state: GitState = match std::fs::read(state_dir.join("state.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| GitError {
                args: "restore".into(),
                message: format!("{} is unreadable: {e}", state_dir.join("state.json").display()),
                kind: FailureKind::Other,
            })?,
            Err(_) => GitState::default(),
        };
        let mut report = GitRestore { expected_head: state.head.clone(), ..Default::default() };
        if !is_repo(repo) && state_dir.join("all.bundle").exists() {
            self.rebuild_from_bundle(repo, state_dir, &state).await?;
            report.rebuilt_from_bundle = true;
        }
        if is_repo(repo) {
            report.head = self.value(repo, &["rev-parse", "--verify", "-q", "HEAD"]).await;
            report.index_refreshed = refresh_index(repo).unwrap_or_else(|e| {
                tracing::warn!(event = "index_refresh_skipped", repo = %repo.display(), reason = %e.message);
                0
            });
        }
        report.head_matches = report.head == state.head;
        Ok(report)
    }

    async fn rebuild_from_bundle(&self, repo: &Path, state_dir: &Path, state: &GitState) -> Result<(), GitError> {
        let bundle = state_dir.join("all.bundle").display().to_string();
        std::fs::create_dir_all(repo).map_err(|e| local_error("restore", &e))?;
        self.run(repo, &["init", "-q"]).await?;
        self.run(repo, &["fetch", "-q", &bundle, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]).await?;
        match (&state.branch, &state.head) {
            (Some(b), _) => self.run(repo, &["symbolic-ref", "HEAD", &format!("refs/heads/{b}")]).await.map(drop)?,
            (None, Some(h)) => self.run(repo, &["update-ref", "--no-deref", "HEAD", h]).await.map(drop)?,
            _ => {}
        }
        if let Some(url) = &state.remote_url {
            self.run(repo, &["remote", "add", "origin", url]).await?;
        }
        if state.head.is_some() {
            // The index as it was: HEAD, then the staged changes on top. The work tree came
            // back with the files.
            self.run(repo, &["read-tree", "HEAD"]).await?;
            let staged = state_dir.join("staged.patch");
            if std::fs::metadata(&staged).is_ok_and(|m| m.len() > 0) {
                self.run(repo, &["apply", "--cached", "--binary", &staged.display().to_string()]).await?;
            }
        }
        Ok(())
    }

    /// Commits everything in `repo` as `author`, hooks skipped: `git add -A` into a temporary
    /// copy of the index, then a commit on top of HEAD. The branch, the index and the work tree
    /// are left exactly as they were, so the snapshot that follows still holds the staged,
    /// unstaged and untracked changes as such. Returns the commit, or `None` when there is
    /// nothing to commit or an operation (rebase, merge) is under way.
    pub async fn wip_commit(
        &self,
        repo: &Path,
        scratch: &Path,
        author: &(String, String),
        message: &str,
    ) -> Result<Option<String>, GitError> {
        if let Some(op) = Git::operation(repo) {
            tracing::warn!(event = "wip_commit_skipped", repo = %repo.display(), reason = %format!("{op} in progress"));
            return Ok(None);
        }
        let index = scratch.join(format!("wip-index-{}", std::process::id()));
        let _ = std::fs::remove_file(&index);
        if repo.join(".git/index").exists() {
            std::fs::copy(repo.join(".git/index"), &index).map_err(|e| local_error("wip commit", &e))?;
        }
        let index_s = index.display().to_string();
        let result = async {
            let env = [("GIT_INDEX_FILE", index_s.as_str())];
            self.run_env(repo, &["add", "-A"], &env).await?;
            let tree = String::from_utf8_lossy(&self.run_env(repo, &["write-tree"], &env).await?).trim().to_string();
            let head = self.value(repo, &["rev-parse", "--verify", "-q", "HEAD"]).await;
            let head_tree = match &head {
                Some(h) => self.text(repo, &["rev-parse", &format!("{h}^{{tree}}")]).await.ok(),
                None => None,
            };
            if head_tree.as_deref() == Some(tree.as_str()) {
                return Ok(None);
            }
            let (name, email) = author;
            let env = [
                ("GIT_AUTHOR_NAME", name.as_str()),
                ("GIT_AUTHOR_EMAIL", email.as_str()),
                ("GIT_COMMITTER_NAME", name.as_str()),
                ("GIT_COMMITTER_EMAIL", email.as_str()),
            ];
            let mut args = vec!["commit-tree", tree.as_str(), "-m", message];
            if let Some(h) = &head {
                args.extend(["-p", h.as_str()]);
            }
            let commit = self.run_env(repo, &args, &env).await?;
            Ok(Some(String::from_utf8_lossy(&commit).trim().to_string()))
        }
        .await;
        let _ = std::fs::remove_file(&index);
        result
    }

    /// Saves `commit` (a work-in-progress commit on top of HEAD) as `berth/wip/<branch>`
    /// (`berth/wip/detached` when HEAD is detached): pushed to origin's
    /// `refs/heads/berth/wip/<branch>` (forced: berth owns that ref; hooks skipped), or kept as
    /// that local branch without an origin. The user's branch moves neither here nor on origin,
    /// so the snapshot that follows restores it equal to origin's, with the uncommitted changes
    /// as they were.
    pub async fn push(&self, repo: &Path, commit: &str) -> Result<Pushed, GitError> {
        let branch = self.value(repo, &["symbolic-ref", "-q", "--short", "HEAD"]).await;
        let wip = wip_ref(branch.as_deref());
        if self.run(repo, &["remote", "get-url", "origin"]).await.is_err() {
            self.run(repo, &["update-ref", &format!("refs/heads/{wip}"), commit]).await?;
            return Ok(Pushed::Local(wip));
        }
        self.fresh_for_remote().await;
        self.run(repo, &["push", "-q", "--no-verify", "origin", &format!("+{commit}:refs/heads/{wip}")]).await?;
        Ok(Pushed::To(wip))
    }
}

/// The branch a drain's work in progress goes to: `berth/wip/<branch>`.
pub fn wip_ref(branch: Option<&str>) -> String {
    format!("berth/wip/{}", branch.unwrap_or("detached"))
}

fn local_error(what: &str, e: &std::io::Error) -> GitError {
    GitError { args: what.into(), message: e.to_string(), kind: FailureKind::Other }
}

fn write_file(path: &Path, body: &[u8]) -> Result<(), GitError> {
    crate::layout::write_atomic(path, body).map_err(|e| local_error("capture", &e))
}

/// Makes git ignore `.berth/` in a repository at the workspace root (in `.git/info/exclude`,
/// which is local and never pushed), so berth's state never shows as untracked work.
pub fn ignore_berth_dir(repo: &Path) {
    let exclude = repo.join(".git/info/exclude");
    let current = std::fs::read_to_string(&exclude).unwrap_or_default();
    if current.lines().any(|l| l.trim() == "/.berth/") {
        return;
    }
    let _ = std::fs::create_dir_all(repo.join(".git/info"));
    let mut body = current;
    if !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    body.push_str("# berth's own state\n/.berth/\n");
    if let Err(e) = std::fs::write(&exclude, body) {
        tracing::warn!(event = "git_exclude_failed", repo = %repo.display(), error = %e);
    }
}

/// Finds git repositories in `dir` down to `depth` levels (not inside `.berth`, `.git` or
/// other repositories' `.git`).
pub fn find_repos(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, level)) = stack.pop() {
        if d.join(".git").is_dir() {
            out.push(d.clone());
        }
        if level >= depth {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let name = e.file_name();
            if name == ".git" || name == ".berth" || name == "node_modules" {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((e.path(), level + 1));
            }
        }
    }
    out.sort();
    out
}

/// Refreshes the stat data of `repo`'s index for files whose mtime and size match (see
/// `berth_core::gitindex`), writing it under git's own `index.lock`. Returns how many entries
/// were refreshed.
pub fn refresh_index(repo: &Path) -> Result<usize, GitError> {
    let fail = |message: String| GitError { args: "index refresh".into(), message, kind: FailureKind::Other };
    let git_dir = repo.join(".git");
    let config = std::fs::read_to_string(git_dir.join("config")).unwrap_or_default();
    if config.to_ascii_lowercase().contains("objectformat = sha256") {
        return Err(fail("SHA-256 repository: left to git".into()));
    }
    let index_path = git_dir.join("index");
    let meta = match std::fs::metadata(&index_path) {
        Ok(m) => m,
        Err(_) => return Ok(0),
    };
    let bytes = std::fs::read(&index_path).map_err(|e| fail(e.to_string()))?;
    let index_mtime = (meta.mtime() as u32, meta.mtime_nsec() as u32);
    let refreshed = gitindex::refresh(&bytes, index_mtime, |rel| {
        use std::os::unix::ffi::OsStrExt;
        let m = std::fs::symlink_metadata(repo.join(OsStr::from_bytes(rel))).ok()?;
        Some(Stat {
            ctime_s: m.ctime() as u32,
            ctime_ns: m.ctime_nsec() as u32,
            mtime_s: m.mtime() as u32,
            mtime_ns: m.mtime_nsec() as u32,
            dev: m.dev() as u32,
            ino: m.ino() as u32,
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size() as u32,
        })
    })
    .map_err(|e| fail(e.to_string()))?;
    let Some(new) = refreshed.index else { return Ok(0) };
    // Take git's lock the way git does, so a concurrent git command never interleaves.
    let lock = git_dir.join("index.lock");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
            .map_err(|e| fail(format!("index.lock: {e}")))?;
        let written = f.write_all(&new).and_then(|_| f.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&lock);
            return Err(fail(e.to_string()));
        }
    }
    std::fs::rename(&lock, &index_path).map_err(|e| {
        let _ = std::fs::remove_file(&lock);
        fail(e.to_string())
    })?;
    Ok(refreshed.refreshed)
}
