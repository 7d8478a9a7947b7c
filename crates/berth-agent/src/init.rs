//! `berth agent init`: reads what the directory and the store hold, plans (`berth_core::init`),
//! then carries out the plan in phases: sweep leftovers, fetch credentials, clone repos, restore
//! the latest snapshot of this generation, restore git state and databases, write the ready
//! marker, acknowledge a handover.
//!
//! # Guarantees
//! - "Never backed up" proceeds empty; "backed up but unreadable" fails loudly and never
//!   re-clones over lost work, and the workspace is not marked ready.
//! - Cloning never needs the object store and restoring never needs the git host.
//! - A directory holding newer local work than the store (a volume that outlived its sandbox)
//!   is kept, not overwritten; a non-empty directory berth did not write is refused.
//! - The ready marker is written last and atomically; a cancelled init never writes it.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::excludes::Excludes;
use berth_core::id::SnapshotId;
use berth_core::init::{
    self, DirState, InitPlan, Latest, LatestSnapshot, PhaseName, PhaseOutcome, PointerUse, Refusal, RepoAction,
    RepoOutcome, RepoPlace, RepoStep, RestoreOutcome, RestorePlan, VolumeMarker,
};
use berth_core::manifest::Manifest;
use berth_core::repo::{strip_credentials, FailureKind};
use berth_engine::error::EngineError;
use berth_engine::progress::Progress;
use berth_engine::restore::{self, RestoreOptions, RestoreSummary};
use berth_engine::snapshot_store::SnapshotStore;
use serde::{Serialize, Serializer};
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::control::Control;
use crate::creds::{self, Creds};
use crate::error::AgentError;
use crate::git::{Git, GitRestore};
use crate::job::Job;
use crate::layout;
use crate::sqlite;
use crate::sweep;

/// How long init waits for the store to name the latest snapshot.
const LATEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One phase of init.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    /// Which phase.
    pub name: PhaseName,
    /// How it went.
    pub outcome: PhaseOutcome,
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
    /// What became of it.
    pub outcome: RepoOutcome,
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
    /// What was done about the latest snapshot; `None` (shown as "") before the restore phase.
    #[serde(serialize_with = "restore_word")]
    pub restore: Option<RestoreOutcome>,
    /// The snapshot restored or kept.
    pub snapshot: Option<SnapshotId>,
    /// Git state restores.
    pub git: Vec<GitReport>,
    /// SQLite databases put back.
    pub sqlite: Vec<String>,
    /// Why init failed, and what to do.
    pub error: Option<String>,
    /// Total wall time.
    pub ms: u64,
}

fn restore_word<S: Serializer>(restore: &Option<RestoreOutcome>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(restore.map_or("", RestoreOutcome::as_str))
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

/// Runs init. `progress` is called after each phase. Returns the credentials fetched (the
/// caller keeps them for the run) with the report.
pub async fn init(
    cfg: &AgentConfig,
    job: &Job,
    store: Result<Option<&SnapshotStore>, &EngineError>,
    control: Option<&Arc<Control>>,
    cancel: &CancellationToken,
    progress: &(dyn Fn(&Phase) + Sync),
) -> Result<(InitReport, Option<Creds>), InitError> {
    let mut run = Init::new(cfg, cancel, progress);
    run.start()?;
    run.sweep(job);
    let creds = run.credentials(job).await;
    let git = Git::new(creds.as_ref());
    run.checkpoint()?;
    // What the store holds is read before cloning (so repos the snapshot has are not cloned),
    // but cloning never needs it.
    let dir = inspect(cfg);
    dir.check().map_err(|r| run.refused(r))?;
    let latest = read_latest(cfg, store).await;
    let plan = init::plan(&dir, &latest, &cfg.repos).map_err(|r| run.refused(r))?;
    // Only cloning reads it (whether the snapshot holds a repo); the restore reads its own.
    let manifest = if plan.repos.is_empty() { None } else { run.manifest(store, &plan.restore).await? };
    let fresh = run.clone_repos(&git, &plan, manifest.as_ref()).await?;
    run.restore(store, &plan.restore, &fresh).await?;
    run.checkpoint()?;
    run.git_state(&git).await;
    run.checkpoint()?;
    run.ready(&plan)?;
    ack_handover(cfg, control).await;
    Ok((run.report, creds))
}

/// What the directory holds: berth's volume marker, or whether anything else is there.
fn inspect(cfg: &AgentConfig) -> DirState {
    let marker = layout::read_marker(&cfg.dir);
    let other_files = marker.is_none()
        && std::fs::read_dir(&cfg.dir)
            .is_ok_and(|entries| entries.flatten().any(|e| !init::is_preexisting(e.file_name().as_bytes())));
    DirState::classify(&cfg.workspace, cfg.generation, marker, other_files)
}

/// What the store says about this workspace and generation, within [`LATEST_TIMEOUT`]: the
/// record to restore, chosen with the control plane's pointer when there is one
/// ([`init::choose_latest`]).
async fn read_latest(cfg: &AgentConfig, store: Result<Option<&SnapshotStore>, &EngineError>) -> Latest {
    let unreadable = |e: &EngineError| Latest::Unreadable { reason: e.to_string(), temporary: e.is_temporary() };
    let store = match store {
        Err(e) => return unreadable(e),
        Ok(None) => return Latest::NoStore,
        Ok(Some(store)) => store,
    };
    let listed =
        match tokio::time::timeout(LATEST_TIMEOUT, store.list(Some(&cfg.workspace), Some(cfg.generation))).await {
            Ok(Ok(listed)) => listed,
            Ok(Err(e)) => return unreadable(&e),
            Err(_) => {
                return Latest::Unreadable {
                    reason: format!("the object store did not answer within {} s", LATEST_TIMEOUT.as_secs()),
                    temporary: true,
                }
            }
        };
    let records: Vec<LatestSnapshot> = listed
        .into_iter()
        .map(|s| LatestSnapshot {
            id: s.id,
            seq: s.record.seq,
            epoch: s.record.epoch,
            host: s.record.host,
            contents: s.record.contents,
        })
        .collect();
    let pointer = cfg.control.as_ref().and_then(|c| c.pointer.as_ref());
    let (latest, how) = init::choose_latest(&records, pointer);
    let chosen = match &latest {
        Latest::Snapshot(s) => s.id.to_string(),
        _ => String::new(),
    };
    match how {
        PointerUse::StoreAhead => tracing::warn!(
            event = "store_ahead_of_pointer",
            pointer = %pointer.map(|p| p.to_string()).unwrap_or_default(),
            restoring = %chosen,
            hint = "the store holds a later record of a lease holder whose publish did not reach the control plane"
        ),
        PointerUse::PointerMissing => tracing::warn!(
            event = "pointer_not_in_store",
            pointer = %pointer.map(|p| p.to_string()).unwrap_or_default(),
            restoring = %chosen,
        ),
        PointerUse::NoPointer | PointerUse::Pointer => {}
    }
    latest
}

/// What the repo's target holds now.
fn place(dest: &Path) -> RepoPlace {
    if dest.join(".git").exists() {
        RepoPlace::Checkout
    } else if dest.exists() && std::fs::read_dir(dest).map_or(true, |mut d| d.next().is_some()) {
        RepoPlace::Occupied
    } else {
        RepoPlace::Free
    }
}

/// Init under way: the settings, the report so far, and how to say what happened.
struct Init<'a> {
    cfg: &'a AgentConfig,
    cancel: &'a CancellationToken,
    progress: &'a (dyn Fn(&Phase) + Sync),
    report: InitReport,
    started: Instant,
}

impl<'a> Init<'a> {
    fn new(cfg: &'a AgentConfig, cancel: &'a CancellationToken, progress: &'a (dyn Fn(&Phase) + Sync)) -> Self {
        let report = InitReport {
            ready: false,
            workspace: cfg.workspace.to_string(),
            generation: cfg.generation.0,
            phases: Vec::new(),
            repos: Vec::new(),
            restore: None,
            snapshot: None,
            git: Vec::new(),
            sqlite: Vec::new(),
            error: None,
            ms: 0,
        };
        Init { cfg, cancel, progress, report, started: Instant::now() }
    }

    fn phase(&mut self, name: PhaseName, outcome: PhaseOutcome, detail: String, since: Instant) {
        let p = Phase { name, outcome, detail, ms: since.elapsed().as_millis() as u64 };
        tracing::info!(event = "init_phase", phase = %name, outcome = %outcome, detail = %p.detail, ms = p.ms);
        (self.progress)(&p);
        self.report.phases.push(p);
    }

    fn fail(&mut self, error: AgentError) -> InitError {
        tracing::error!(event = "init_failed", error = %error);
        self.report.error = Some(error.to_string());
        self.report.ms = self.started.elapsed().as_millis() as u64;
        InitError { report: Box::new(self.report.clone()), error }
    }

    fn refused(&mut self, refusal: Refusal) -> InitError {
        let (dir, workspace) = (self.cfg.dir.clone(), self.cfg.workspace.clone());
        self.fail(match refusal {
            Refusal::OtherWorkspace { workspace: found, generation: found_generation } => {
                AgentError::OtherWorkspace { dir, found, found_generation, workspace, generation: self.cfg.generation }
            }
            Refusal::Foreign => AgentError::Foreign { dir, workspace },
        })
    }

    /// The store a restore reads; the plan restores only what a readable store named.
    fn readable<'s>(
        &mut self,
        store: Result<Option<&'s SnapshotStore>, &EngineError>,
    ) -> Result<&'s SnapshotStore, InitError> {
        match store {
            Ok(Some(store)) => Ok(store),
            _ => Err(self.fail(AgentError::Config("internal: a snapshot to restore without a store".into()))),
        }
    }

    /// Fails when SIGTERM or SIGINT arrived.
    fn checkpoint(&mut self) -> Result<(), InitError> {
        if self.cancel.is_cancelled() {
            return Err(self.fail(AgentError::Interrupted));
        }
        Ok(())
    }

    /// Takes back any ready marker an earlier sandbox left: it must not say ready before
    /// this init is done.
    fn start(&mut self) -> Result<(), InitError> {
        let _ = std::fs::remove_file(layout::ready(&self.cfg.dir));
        let run_dir = layout::run_dir(&self.cfg.dir);
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| self.fail(AgentError::io("use the workspace directory", run_dir, e)))
    }

    fn sweep(&mut self, job: &Job) {
        let t = Instant::now();
        let swept = sweep::sweep(&self.cfg.base, self.cfg.ttl_secs, false, Some(&job.id));
        let outcome = if swept.unreadable.is_some() { PhaseOutcome::Failed } else { PhaseOutcome::Ok };
        let detail = format!("swept {} leftover(s), {} live", swept.swept.len(), swept.skipped_live);
        self.phase(PhaseName::Sweep, outcome, detail, t);
    }

    /// Fetches git credentials; a failure is reported, not fatal: public repos still clone.
    async fn credentials(&mut self, job: &Job) -> Option<Creds> {
        let t = Instant::now();
        let (outcome, detail, creds) = match creds::fetch(&self.cfg.credentials, job).await {
            Ok(Some(c)) => (PhaseOutcome::Ok, format!("git token from the {}", c.source), Some(c)),
            Ok(None) => (PhaseOutcome::Skipped, "none configured".into(), None),
            Err(e) => (PhaseOutcome::Failed, e.to_string(), None),
        };
        self.phase(PhaseName::Credentials, outcome, detail, t);
        creds
    }

    /// Reads the tree of the snapshot to restore, to know which repos it holds. A snapshot
    /// that exists but cannot be read fails init before anything is cloned over it.
    async fn manifest(
        &mut self,
        store: Result<Option<&SnapshotStore>, &EngineError>,
        plan: &RestorePlan,
    ) -> Result<Option<Manifest>, InitError> {
        let RestorePlan::Restore(s) = plan else { return Ok(None) };
        let store = self.readable(store)?;
        store.tree(&s.contents, None).await.map(Some).map_err(|e| {
            let workspace = self.cfg.workspace.clone();
            self.fail(AgentError::SnapshotUnreadable { snapshot: s.id, workspace, source: Box::new(e) })
        })
    }

    /// Puts each repo in place; returns the paths cloned now. A repo that fails is reported
    /// and does not stop the others.
    async fn clone_repos(
        &mut self,
        git: &Git,
        plan: &InitPlan,
        manifest: Option<&Manifest>,
    ) -> Result<Vec<String>, InitError> {
        let t = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(self.cfg.clone_retry_secs);
        let mut fresh = Vec::new();
        for step in &plan.repos {
            let report = self.clone_repo(git, step, manifest, deadline).await;
            if report.outcome == RepoOutcome::Cloned {
                fresh.push(report.path.clone());
            }
            self.report.repos.push(report);
            self.checkpoint()?;
        }
        let failed = self.report.repos.iter().filter(|x| x.outcome == RepoOutcome::Failed).count();
        let outcome = match (failed, plan.repos.len()) {
            (0, 0) => PhaseOutcome::Skipped,
            (0, _) => PhaseOutcome::Ok,
            _ => PhaseOutcome::Failed,
        };
        self.phase(PhaseName::Clone, outcome, format!("{} repo(s), {failed} failed", plan.repos.len()), t);
        Ok(fresh)
    }

    async fn clone_repo(
        &self,
        git: &Git,
        step: &RepoStep,
        manifest: Option<&Manifest>,
        deadline: Instant,
    ) -> RepoReport {
        let t = Instant::now();
        let url = strip_credentials(&step.spec.url);
        let target = match &step.target {
            Ok(target) => target,
            Err(e) => {
                let error = Some(e.to_string());
                let (path, failure) = (String::new(), Some(FailureKind::Other));
                return RepoReport { path, url, outcome: RepoOutcome::Failed, failure, error, attempts: 0, ms: 0 };
            }
        };
        let path = String::from_utf8_lossy(target.as_bytes()).into_owned();
        let dest = self.cfg.dir.join(std::ffi::OsStr::from_bytes(target.as_bytes()));
        let in_snapshot = manifest.is_some_and(|m| init::in_snapshot(m, target));
        let action = RepoStep::action(place(&dest), in_snapshot);
        let mut report =
            RepoReport { path, url, outcome: action.outcome(), failure: None, error: None, attempts: 0, ms: 0 };
        match action {
            RepoAction::Reuse | RepoAction::FromSnapshot => {}
            RepoAction::Refuse => {
                report.failure = Some(FailureKind::Other);
                report.error =
                    Some(format!("{} exists and is not a git checkout; move it away to clone there", report.path));
            }
            RepoAction::Clone => {
                let scratch = layout::run_dir(&self.cfg.dir);
                match git.clone_repo(&step.spec, &dest, &scratch, deadline, self.cancel).await {
                    Ok(n) => report.attempts = n,
                    Err(e) => {
                        (report.outcome, report.failure, report.error, report.attempts) =
                            (RepoOutcome::Failed, Some(e.kind), Some(e.message), 1)
                    }
                }
            }
        }
        report.ms = t.elapsed().as_millis() as u64;
        let error = report.error.as_deref().unwrap_or("");
        tracing::info!(event = "init_repo", path = %report.path, url = %report.url, outcome = %report.outcome, error);
        report
    }

    /// Carries out the restore plan.
    async fn restore(
        &mut self,
        store: Result<Option<&SnapshotStore>, &EngineError>,
        plan: &RestorePlan,
        fresh: &[String],
    ) -> Result<(), InitError> {
        let t = Instant::now();
        self.report.restore = plan.outcome();
        let (outcome, detail) = match plan {
            RestorePlan::Ephemeral => {
                (PhaseOutcome::Skipped, "no object store: the workspace is ephemeral".to_string())
            }
            RestorePlan::NeverBackedUp => (PhaseOutcome::Ok, "never backed up: starting empty".to_string()),
            RestorePlan::KeepLocal { snapshot: Some(s), .. } => {
                self.report.snapshot = Some(s.id);
                (PhaseOutcome::Ok, format!("the directory already holds snapshot {} or newer", s.seq))
            }
            RestorePlan::KeepLocal { store_error, .. } => {
                let e = store_error.as_deref().unwrap_or("");
                (PhaseOutcome::Ok, format!("kept the local copy; the store could not be read: {e}"))
            }
            RestorePlan::Fail { reason, temporary } => {
                return Err(self.fail(AgentError::StoreUnreadable { reason: reason.clone(), temporary: *temporary }))
            }
            RestorePlan::Restore(s) => {
                let sum = self.restore_snapshot(store, s, fresh).await?;
                self.report.snapshot = Some(sum.snapshot);
                (
                    PhaseOutcome::Ok,
                    format!("snapshot {} (seq {}): {} files, {} bytes", sum.snapshot, sum.seq, sum.files, sum.bytes),
                )
            }
        };
        self.phase(PhaseName::Restore, outcome, detail, t);
        Ok(())
    }

    /// Restores snapshot `s` around the fresh clones (the restore leaves excluded paths alone)
    /// and marks the directory as holding it.
    async fn restore_snapshot(
        &mut self,
        store: Result<Option<&SnapshotStore>, &EngineError>,
        s: &LatestSnapshot,
        fresh: &[String],
    ) -> Result<RestoreSummary, InitError> {
        let store = self.readable(store)?;
        let mut keep = self.cfg.excludes.clone();
        keep.extend(fresh.iter().map(|p| format!("/{p}")));
        let excludes = Excludes::new(&keep, self.cfg.default_excludes).map_err(|e| self.fail(e.into()))?;
        let opts = RestoreOptions {
            workspace: self.cfg.workspace.clone(),
            generation: self.cfg.generation,
            snapshot: s.id.to_string(),
            dir: self.cfg.dir.clone(),
            excludes,
            cache_dir: self.cfg.cache_dir.clone(),
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            // Init's plan already holds the directory to be empty or berth's own (volume marker).
            delete: true,
        };
        let progress = Arc::new(Progress::default());
        let restored = tokio::select! {
            x = restore::restore(store, &opts, &progress) => x,
            _ = self.cancel.cancelled() => return Err(self.fail(AgentError::Interrupted)),
        };
        let sum = restored.map_err(|e| {
            let workspace = self.cfg.workspace.clone();
            self.fail(AgentError::RestoreFailed { snapshot: s.id, workspace, source: Box::new(e) })
        })?;
        let marker = VolumeMarker { snapshot: Some(sum.snapshot), seq: sum.seq, epoch: s.epoch, ..self.fresh_marker() };
        layout::write_marker(&self.cfg.dir, &marker);
        Ok(sum)
    }

    fn fresh_marker(&self) -> VolumeMarker {
        VolumeMarker::new(self.cfg.workspace.clone(), self.cfg.generation)
    }

    /// After a restore: puts the SQLite databases back and restores each repo's git state.
    async fn git_state(&mut self, git: &Git) {
        let t = Instant::now();
        if self.report.restore == Some(RestoreOutcome::Restored) {
            let dbs = sqlite::restore(&self.cfg.dir);
            self.report.sqlite = dbs.iter().map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned()).collect();
            for (repo, state_dir) in layout::git_states(&self.cfg.dir) {
                let report = restore_git(git, &self.cfg.dir, &repo, &state_dir).await;
                self.report.git.push(report);
            }
        }
        let git = &self.report.git;
        let mismatches =
            git.iter().filter(|g| g.error.is_some() || g.restore.as_ref().is_some_and(|x| !x.head_matches)).count();
        let outcome = match (git.len(), mismatches) {
            (0, _) => PhaseOutcome::Skipped,
            (_, 0) => PhaseOutcome::Ok,
            _ => PhaseOutcome::Failed,
        };
        let detail = format!(
            "{} repo(s), {mismatches} with a HEAD mismatch or error; {} database(s)",
            git.len(),
            self.report.sqlite.len()
        );
        self.phase(PhaseName::Git, outcome, detail, t);
    }

    /// Marks the directory as this workspace's (when the plan says so), then writes the ready
    /// marker, last and atomically.
    fn ready(&mut self, plan: &InitPlan) -> Result<(), InitError> {
        if self.cfg.dir.join(".git").is_dir() {
            crate::git::ignore_berth_dir(&self.cfg.dir);
        }
        let t = Instant::now();
        if plan.mark {
            layout::write_marker(&self.cfg.dir, &self.fresh_marker());
        }
        self.report.ready = true;
        self.report.ms = self.started.elapsed().as_millis() as u64;
        let body = serde_json::to_vec_pretty(&self.report).unwrap_or_default();
        let ready = layout::ready(&self.cfg.dir);
        if let Err(e) = layout::write_atomic(&ready, &body) {
            self.report.ready = false;
            return Err(self.fail(AgentError::io("write the ready marker", ready, e)));
        }
        self.phase(PhaseName::Ready, PhaseOutcome::Ok, ready.display().to_string(), t);
        Ok(())
    }
}

/// Restores the git state captured for `repo` from `state_dir`.
async fn restore_git(git: &Git, dir: &Path, repo: &Path, state_dir: &Path) -> GitReport {
    let path = repo.strip_prefix(dir).map(|p| p.display().to_string()).unwrap_or_default();
    match git.restore(repo, state_dir).await {
        Ok(g) => {
            if !g.head_matches {
                tracing::warn!(event = "git_head_mismatch", repo = %path, expected = ?g.expected_head, actual = ?g.head);
            }
            GitReport { path, restore: Some(g), error: None }
        }
        Err(e) => GitReport { path, restore: None, error: Some(e.to_string()) },
    }
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
