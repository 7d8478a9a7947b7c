//! `berth agent init`: sweep leftovers, fetch credentials, clone repos, restore the latest
//! snapshot of this generation, restore git state, write the ready marker (REQUIREMENTS 10-17).
//!
//! # Guarantees
//! - "Never backed up" proceeds empty; "backed up but unreadable" fails loudly and never
//!   re-clones over lost work, and the workspace is not marked ready.
//! - Cloning never needs the object store and restoring never needs the git host.
//! - A directory holding newer local work than the store (a volume that outlived its sandbox)
//!   is kept, not overwritten; a non-empty directory berth did not write is refused.
//! - The ready marker is written last and atomically; a cancelled init never writes it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::excludes::Excludes;
use berth_core::manifest::EntryKind;
use berth_core::repo::{strip_credentials, FailureKind, RepoSpec};
use berth_engine::error::EngineError;
use berth_engine::progress::Progress;
use berth_engine::repo::{Repo, Snapshot};
use berth_engine::restore::{self, RestoreOptions};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::control::Control;
use crate::creds::{self, Creds};
use crate::error::AgentError;
use crate::git::{Git, GitRestore};
use crate::job::Job;
use crate::layout;
use crate::persist::VolumeMarker;
use crate::sqlite;
use crate::sweep;

/// One phase of init.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    /// sweep, credentials, clone, restore, git, ready.
    pub name: &'static str,
    /// ok, failed, skipped.
    pub outcome: String,
    /// What happened.
    pub detail: String,
    /// How long it took.
    pub ms: u64,
}

/// One repository.
#[derive(Clone, Debug, Serialize)]
pub struct RepoReport {
    /// Path in the workspace.
    pub path: String,
    /// URL, credentials removed.
    pub url: String,
    /// cloned, reused (a checkout was there), from_snapshot, failed.
    pub outcome: &'static str,
    /// For failures: auth, network, not_found, other.
    pub failure: Option<FailureKind>,
    /// Why it failed.
    pub error: Option<String>,
    /// Clone attempts.
    pub attempts: u32,
    /// How long it took.
    pub ms: u64,
}

/// The git state restore of one repository.
#[derive(Clone, Debug, Serialize)]
pub struct GitReport {
    /// Path in the workspace.
    pub path: String,
    /// What was found and done.
    #[serde(flatten)]
    pub restore: Option<GitRestore>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The result of init, printed as a summary or JSON.
#[derive(Clone, Debug, Serialize)]
pub struct InitReport {
    /// Whether the workspace is usable (marked ready).
    pub ready: bool,
    /// The workspace.
    pub workspace: String,
    /// Its generation.
    pub generation: u64,
    /// The phases, in order.
    pub phases: Vec<Phase>,
    /// The repositories.
    pub repos: Vec<RepoReport>,
    /// never_backed_up, restored, kept_local, ephemeral.
    pub restore: String,
    /// The snapshot restored or kept.
    pub snapshot: Option<String>,
    /// Git state restores.
    pub git: Vec<GitReport>,
    /// SQLite databases put back.
    pub sqlite: Vec<String>,
    /// Why init failed, and what to do.
    pub error: Option<String>,
    /// Total wall time.
    pub ms: u64,
}

/// What the directory holds before init.
#[derive(Debug, PartialEq, Eq)]
enum DirState {
    /// Nothing (or only `lost+found` and berth's runtime files).
    Empty,
    /// Written by berth for this workspace and generation.
    Ours(VolumeMarker),
    /// Written by berth for another generation or workspace.
    Other(VolumeMarker),
    /// Files berth did not write.
    Foreign,
}

fn inspect(cfg: &AgentConfig) -> DirState {
    if let Some(m) = VolumeMarker::read(&cfg.dir) {
        if m.workspace == cfg.workspace.as_str() && m.generation == cfg.generation.0 {
            return DirState::Ours(m);
        }
        return DirState::Other(m);
    }
    let Ok(entries) = std::fs::read_dir(&cfg.dir) else { return DirState::Empty };
    let foreign = entries.flatten().any(|e| {
        let n = e.file_name();
        n != "lost+found" && n != ".berth"
    });
    if foreign {
        DirState::Foreign
    } else {
        DirState::Empty
    }
}

struct Reporter<'a> {
    report: InitReport,
    progress: &'a (dyn Fn(&Phase) + Sync),
    started: Instant,
}

impl Reporter<'_> {
    fn phase(&mut self, name: &'static str, outcome: &str, detail: String, since: Instant) {
        let p = Phase { name, outcome: outcome.to_string(), detail, ms: since.elapsed().as_millis() as u64 };
        tracing::info!(event = "init_phase", phase = name, outcome, detail = %p.detail, ms = p.ms);
        (self.progress)(&p);
        self.report.phases.push(p);
    }

    fn fail(mut self, error: AgentError) -> InitError {
        tracing::error!(event = "init_failed", error = %error);
        self.report.error = Some(error.to_string());
        self.report.ms = self.started.elapsed().as_millis() as u64;
        InitError { report: Box::new(self.report), error }
    }
}

/// Init did not leave a usable workspace; the report says why and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct InitError {
    /// The report, up to the failure.
    pub report: Box<InitReport>,
    /// Why init failed.
    pub error: AgentError,
}

fn repo_dir(dir: &Path, spec: &RepoSpec) -> Result<(String, PathBuf), String> {
    let rel = spec.target().map_err(|e| e.to_string())?;
    let shown = String::from_utf8_lossy(rel.as_bytes()).into_owned();
    Ok((shown.clone(), dir.join(shown)))
}

/// Runs init. `progress` is called after each phase. Returns the credentials fetched (the
/// caller keeps them for the run) with the report.
pub async fn init(
    cfg: &AgentConfig,
    job: &Job,
    repo: Result<Option<&Repo>, &EngineError>,
    control: Option<&Arc<Control>>,
    cancel: &CancellationToken,
    progress: &(dyn Fn(&Phase) + Sync),
) -> Result<(InitReport, Option<Creds>), InitError> {
    let started = Instant::now();
    let mut r = Reporter {
        report: InitReport {
            ready: false,
            workspace: cfg.workspace.to_string(),
            generation: cfg.generation.0,
            phases: Vec::new(),
            repos: Vec::new(),
            restore: String::new(),
            snapshot: None,
            git: Vec::new(),
            sqlite: Vec::new(),
            error: None,
            ms: 0,
        },
        progress,
        started,
    };
    let cancelled = |r: Reporter<'_>| r.fail(AgentError::Interrupted);
    // A marker left by an earlier sandbox must not say ready before this init is done.
    let _ = std::fs::remove_file(layout::ready(&cfg.dir));
    if let Err(e) = std::fs::create_dir_all(layout::run_dir(&cfg.dir)) {
        return Err(r.fail(AgentError::io("use the workspace directory", &cfg.dir, e)));
    }

    let t = Instant::now();
    let swept = sweep::sweep(&cfg.base, cfg.ttl_secs, false);
    let outcome = if swept.unreadable.is_some() { "failed" } else { "ok" };
    r.phase("sweep", outcome, format!("swept {} leftover(s), {} live", swept.swept.len(), swept.skipped_live), t);

    let t = Instant::now();
    let creds = match creds::fetch(&cfg.credentials, job).await {
        Ok(Some(c)) => {
            r.phase("credentials", "ok", format!("git token from the {}", c.source), t);
            Some(c)
        }
        Ok(None) => {
            r.phase("credentials", "skipped", "none configured".into(), t);
            None
        }
        Err(e) => {
            // Reported, not fatal: public repositories still clone.
            r.phase("credentials", "failed", e.to_string(), t);
            None
        }
    };
    let git = Git::new(creds.as_ref());
    if cancel.is_cancelled() {
        return Err(cancelled(r));
    }

    // What the store holds, read before cloning (so repos the snapshot has are not cloned)
    // but never needed for cloning.
    let state = inspect(cfg);
    if let DirState::Other(m) = &state {
        return Err(r.fail(AgentError::OtherWorkspace {
            dir: cfg.dir.clone(),
            found: m.workspace.clone(),
            found_generation: berth_core::workspace::Generation(m.generation),
            workspace: cfg.workspace.clone(),
            generation: cfg.generation,
        }));
    }
    let latest: Result<Option<Snapshot>, String> = match &repo {
        Err(e) => Err(e.to_string()),
        Ok(None) => Ok(None),
        Ok(Some(repo)) => {
            match tokio::time::timeout(Duration::from_secs(60), repo.latest(&cfg.workspace, cfg.generation)).await {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the object store did not answer within 60 s".into()),
            }
        }
    };
    let restore_from = match (&latest, &state) {
        (Ok(Some(s)), DirState::Empty) => Some(s.clone()),
        (Ok(Some(s)), DirState::Ours(m)) if !m.holds(s.record.seq, &s.record.host) => Some(s.clone()),
        (Ok(Some(_)), DirState::Foreign) => {
            return Err(r.fail(AgentError::Foreign { dir: cfg.dir.clone(), workspace: cfg.workspace.clone() }))
        }
        _ => None,
    };
    let manifest = match &restore_from {
        Some(s) => match repo.as_ref().ok().copied().flatten().map(|r| r.manifest(&s.record.manifest)) {
            None => return Err(r.fail(AgentError::Config("internal: a snapshot without a store".into()))),
            Some(fut) => match fut.await {
                Ok(m) => Some(m),
                Err(e) => {
                    return Err(r.fail(AgentError::SnapshotUnreadable {
                        snapshot: s.id,
                        workspace: cfg.workspace.clone(),
                        source: Box::new(e),
                    }))
                }
            },
        },
        None => None,
    };
    let in_snapshot = |rel: &str| {
        let git_dir = format!("{rel}/.git");
        manifest.as_ref().is_some_and(|m| {
            m.entries.iter().any(|e| e.path.as_bytes() == git_dir.as_bytes() && matches!(e.kind, EntryKind::Dir))
        })
    };

    let t_clone = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(cfg.clone_retry_secs);
    let mut fresh_clones = Vec::new();
    let scratch = layout::run_dir(&cfg.dir);
    for spec in &cfg.repos {
        let t = Instant::now();
        let url = strip_credentials(&spec.url);
        let (path, dest) = match repo_dir(&cfg.dir, spec) {
            Ok(x) => x,
            Err(e) => {
                r.report.repos.push(RepoReport {
                    path: String::new(),
                    url,
                    outcome: "failed",
                    failure: Some(FailureKind::Other),
                    error: Some(e),
                    attempts: 0,
                    ms: 0,
                });
                continue;
            }
        };
        let (outcome, failure, error, attempts) = if dest.join(".git").exists() {
            ("reused", None, None, 0)
        } else if in_snapshot(&path) {
            ("from_snapshot", None, None, 0)
        } else if dest.exists() && std::fs::read_dir(&dest).map_or(true, |mut d| d.next().is_some()) {
            (
                "failed",
                Some(FailureKind::Other),
                Some(format!("{path} exists and is not a git checkout; move it away to clone there")),
                0,
            )
        } else {
            match git.clone_repo(spec, &dest, &scratch, deadline, cancel).await {
                Ok(n) => {
                    fresh_clones.push(path.clone());
                    ("cloned", None, None, n)
                }
                Err(e) => ("failed", Some(e.kind), Some(e.message), 1),
            }
        };
        tracing::info!(event = "init_repo", path = %path, url = %url, outcome, error = error.as_deref().unwrap_or(""));
        r.report.repos.push(RepoReport {
            path,
            url,
            outcome,
            failure,
            error,
            attempts,
            ms: t.elapsed().as_millis() as u64,
        });
        if cancel.is_cancelled() {
            return Err(cancelled(r));
        }
    }
    let failed = r.report.repos.iter().filter(|x| x.outcome == "failed").count();
    let outcome = if failed > 0 {
        "failed"
    } else if cfg.repos.is_empty() {
        "skipped"
    } else {
        "ok"
    };
    r.phase("clone", outcome, format!("{} repo(s), {failed} failed", cfg.repos.len()), t_clone);

    let t = Instant::now();
    let store = repo.as_ref().ok().copied().flatten();
    match (&latest, &restore_from, store) {
        (Ok(_), _, None) => {
            r.report.restore = "ephemeral".into();
            r.phase("restore", "skipped", "no object store: the workspace is ephemeral".into(), t);
        }
        (Err(e), _, _) => {
            if let DirState::Ours(_) = state {
                // The directory is this workspace's own and at least as new as what it saved.
                r.report.restore = "kept_local".into();
                r.phase("restore", "ok", format!("kept the local copy; the store could not be read: {e}"), t);
            } else {
                return Err(r.fail(AgentError::StoreUnreadable { reason: e.clone(), temporary: false }));
            }
        }
        (Ok(None), _, Some(_)) => {
            r.report.restore = "never_backed_up".into();
            r.phase("restore", "ok", "never backed up: starting empty".into(), t);
        }
        (Ok(Some(s)), None, Some(_)) => {
            r.report.restore = "kept_local".into();
            r.report.snapshot = Some(s.id.to_string());
            r.phase("restore", "ok", format!("the directory already holds snapshot {} or newer", s.record.seq), t);
        }
        (Ok(Some(_)), Some(s), Some(repo)) => {
            // Fresh clones stay as they are: the restore leaves excluded paths alone.
            let mut keep: Vec<String> = cfg.excludes.clone();
            keep.extend(fresh_clones.iter().map(|p| format!("/{p}")));
            let excludes = match Excludes::new(&keep, cfg.default_excludes) {
                Ok(x) => x,
                Err(e) => return Err(r.fail(e.into())),
            };
            let opts = RestoreOptions {
                workspace: cfg.workspace.clone(),
                generation: cfg.generation,
                snapshot: s.id.to_string(),
                dir: cfg.dir.clone(),
                excludes,
                cache_dir: cfg.cache_dir.clone(),
                threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            };
            let progress = Arc::new(Progress::default());
            let restored = tokio::select! {
                x = restore::restore(repo, &opts, &progress) => x,
                _ = cancel.cancelled() => return Err(cancelled(r)),
            };
            match restored {
                Ok(sum) => {
                    r.report.restore = "restored".into();
                    r.report.snapshot = Some(sum.snapshot.to_string());
                    VolumeMarker {
                        workspace: cfg.workspace.to_string(),
                        generation: cfg.generation.0,
                        snapshot: Some(sum.snapshot.to_string()),
                        seq: sum.seq,
                        pending: None,
                    }
                    .write(&cfg.dir);
                    r.phase(
                        "restore",
                        "ok",
                        format!(
                            "snapshot {} (seq {}): {} files, {} bytes",
                            sum.snapshot, sum.seq, sum.files, sum.bytes
                        ),
                        t,
                    );
                }
                Err(e) => {
                    return Err(r.fail(AgentError::RestoreFailed {
                        snapshot: s.id,
                        workspace: cfg.workspace.clone(),
                        source: Box::new(e),
                    }))
                }
            }
        }
    }
    if cancel.is_cancelled() {
        return Err(cancelled(r));
    }

    let t = Instant::now();
    if r.report.restore == "restored" {
        r.report.sqlite =
            sqlite::restore(&cfg.dir).iter().map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned()).collect();
        for (repo_path, state_dir) in layout::git_states(&cfg.dir) {
            let path = repo_path.strip_prefix(&cfg.dir).map(|p| p.display().to_string()).unwrap_or_default();
            let report = match git.restore(&repo_path, &state_dir).await {
                Ok(g) => {
                    if !g.head_matches {
                        tracing::warn!(event = "git_head_mismatch", repo = %path, expected = ?g.expected_head, actual = ?g.head);
                    }
                    GitReport { path, restore: Some(g), error: None }
                }
                Err(e) => GitReport { path, restore: None, error: Some(e.to_string()) },
            };
            r.report.git.push(report);
        }
    }
    let mismatches = r
        .report
        .git
        .iter()
        .filter(|g| g.error.is_some() || g.restore.as_ref().is_some_and(|x| !x.head_matches))
        .count();
    let outcome = if r.report.git.is_empty() {
        "skipped"
    } else if mismatches > 0 {
        "failed"
    } else {
        "ok"
    };
    r.phase(
        "git",
        outcome,
        format!(
            "{} repo(s), {mismatches} with a HEAD mismatch or error; {} database(s)",
            r.report.git.len(),
            r.report.sqlite.len()
        ),
        t,
    );
    if cancel.is_cancelled() {
        return Err(cancelled(r));
    }

    if cfg.dir.join(".git").is_dir() {
        crate::git::ignore_berth_dir(&cfg.dir);
    }
    let t = Instant::now();
    if !matches!(state, DirState::Ours(_)) && r.report.restore != "restored" {
        VolumeMarker {
            workspace: cfg.workspace.to_string(),
            generation: cfg.generation.0,
            snapshot: r.report.snapshot.clone(),
            seq: 0,
            pending: None,
        }
        .write(&cfg.dir);
    }
    r.report.ready = true;
    r.report.ms = started.elapsed().as_millis() as u64;
    let body = serde_json::to_vec_pretty(&r.report).unwrap_or_default();
    if let Err(e) = layout::write_atomic(&layout::ready(&cfg.dir), &body) {
        r.report.ready = false;
        return Err(r.fail(AgentError::io("write the ready marker", layout::ready(&cfg.dir), e)));
    }
    r.phase("ready", "ok", layout::ready(&cfg.dir).display().to_string(), t);
    ack_handover(cfg, control).await;
    Ok((r.report, creds))
}

/// Acknowledges a drain handover (from the attach, or left by the drained sandbox in the
/// workspace). A failed report never fails init.
async fn ack_handover(cfg: &AgentConfig, control: Option<&Arc<Control>>) {
    let Some(c) = control else { return };
    let from_file: Option<berth_api::Handover> =
        std::fs::read(layout::handover(&cfg.dir)).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let mut tried = std::collections::BTreeSet::new();
    for h in c.handover().cloned().into_iter().chain(from_file) {
        if !tried.insert(h.nonce.clone()) {
            continue;
        }
        match c.ready(&h).await {
            Ok(cleared) => tracing::info!(event = "handover_acknowledged", scope = %h.scope, cleared),
            Err(e) => tracing::warn!(event = "handover_ack_failed", scope = %h.scope, error = %e),
        }
    }
    let _ = std::fs::remove_file(layout::handover(&cfg.dir));
}
