//! Continuous persistence: snapshots on an interval and soon after changes (file watching with
//! a debounce; a periodic scan when watches cannot be had), with consistent SQLite copies and git
//! state captured before each, published to the control plane under the lease epoch.
//!
//! # Guarantees
//! - Never two snapshot runs at once; a run cut short (shutdown) publishes nothing (the engine
//!   makes a snapshot visible only by its final record).
//! - Once the epoch is rejected (or another writer published in the store), nothing more is
//!   written: no snapshot, no publish.
//! - With a control plane, a snapshot starts only while the lease is held by the sandbox's own
//!   clock (`Control::holds`), and a run still under way at the write deadline is abandoned
//!   before its record is written; scheduled snapshots wait until the lease is held again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::SnapshotStats;
use berth_core::changes::ChangedPaths;
use berth_core::excludes::Excludes;
use berth_core::id::SnapshotId;
use berth_core::init::VolumeMarker;
use berth_core::lease::Epoch;
use berth_core::path::RelPath;
use berth_core::schedule::{Schedule, Scheduler};
use berth_engine::create::{self, CreateOptions};
use berth_engine::error::EngineError;
use berth_engine::progress::Progress;
use berth_engine::snapshot_store::SnapshotStore;
use berth_engine::warm::Warm;
use notify::Watcher;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::control::Control;
use crate::error::AgentError;
use crate::git::{find_repos, Git};
use crate::layout;
use crate::sqlite::{self, Capturer};
use crate::watch::Feed;

/// How often databases are searched for, at most.
const SQLITE_RESCAN: Duration = Duration::from_secs(60);
/// How often the tree is scanned when file watching is unavailable.
const POLL: Duration = Duration::from_secs(15);
/// How deep repositories are searched for.
const REPO_DEPTH: usize = 3;

/// When git state is captured with a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitMode {
    /// When the git interval has passed.
    IfDue,
    /// Now (a draining scope).
    Now,
    /// Now, and this is the final snapshot: the agent process has stopped, so it covers the
    /// volume's last write; it is published as final even when nothing changed.
    Final,
}

/// What a snapshot run saved.
#[derive(Clone, Debug, Serialize)]
pub struct Saved {
    /// The latest snapshot now.
    pub snapshot: SnapshotId,
    /// Its sequence number.
    pub seq: u64,
    /// Whether nothing had changed (nothing was published).
    pub unchanged: bool,
    /// Wall time of the run.
    pub secs: f64,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Whether the control plane recorded it.
    pub published: bool,
}

struct Inner {
    /// What the watcher reported since the last run, and the engine's memory of the last scan.
    feed: Feed,
    /// The exclude patterns of the last run.
    patterns: Vec<String>,
    sqlite: Capturer,
    dbs: Vec<RelPath>,
    dbs_at: Option<Instant>,
    git_at: Option<Instant>,
    refs: BTreeMap<PathBuf, String>,
}

/// The workspace's file events, from a watcher made before the agent process started (no
/// watcher: the schedule scans the tree instead).
#[derive(Debug)]
pub struct Watch {
    watcher: Option<notify::RecommendedWatcher>,
    /// (when, paths, whether the watcher lost track: an overflow or an error)
    rx: tokio::sync::mpsc::UnboundedReceiver<(Instant, Vec<PathBuf>, bool)>,
}

/// Keeps one workspace persisted.
pub struct Persister {
    cfg: Arc<AgentConfig>,
    store: Option<SnapshotStore>,
    control: Option<Arc<Control>>,
    git: Git,
    excludes: Excludes,
    inner: tokio::sync::Mutex<Inner>,
    stopped: AtomicBool,
    last_durable: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persister").field("dir", &self.cfg.dir).field("ephemeral", &self.store.is_none()).finish()
    }
}

/// Opens the store of `cfg`, if it has one.
pub async fn open_store(cfg: &AgentConfig) -> Result<Option<SnapshotStore>, EngineError> {
    let Some(url) = &cfg.store else { return Ok(None) };
    let store = berth_engine::store::open(url)?;
    Ok(Some(SnapshotStore::open_or_init(store).await?))
}

impl Persister {
    /// Builds a persister; `store` `None` means the workspace is ephemeral.
    pub fn new(
        cfg: Arc<AgentConfig>,
        store: Option<SnapshotStore>,
        control: Option<Arc<Control>>,
        git: Git,
    ) -> Result<Persister, AgentError> {
        let excludes = Excludes::new(&cfg.excludes, cfg.default_excludes)?;
        let rescan = Duration::from_secs(cfg.rescan_secs);
        Ok(Persister {
            cfg,
            store,
            control,
            git,
            excludes,
            inner: tokio::sync::Mutex::new(Inner {
                feed: Feed::new(false, rescan),
                patterns: Vec::new(),
                sqlite: Capturer::default(),
                dbs: Vec::new(),
                dbs_at: None,
                git_at: None,
                refs: BTreeMap::new(),
            }),
            stopped: AtomicBool::new(false),
            last_durable: Mutex::new(None),
        })
    }

    /// Whether there is no store (nothing is ever saved).
    pub fn ephemeral(&self) -> bool {
        self.store.is_none()
    }

    /// Stops all writing (the epoch was rejected).
    pub fn stop_writing(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn writing(&self) -> bool {
        !self.stopped.load(Ordering::SeqCst) && !self.control.as_ref().is_some_and(|c| c.fenced())
    }

    /// Fails when the lease is not held now (renewals failed): writing is paused.
    fn check_lease(&self) -> Result<(), AgentError> {
        match &self.control {
            Some(c) if !c.holds() => Err(AgentError::LeaseLapsed),
            _ => Ok(()),
        }
    }

    /// Seconds since the last durable snapshot (`None` before the first).
    pub fn seconds_since_durable(&self) -> Option<f64> {
        self.last_durable.lock().ok()?.map(|t| t.elapsed().as_secs_f64())
    }

    /// Marks the directory durable now (after a restore, it equals a stored snapshot).
    pub fn durable_now(&self) {
        if let Ok(mut t) = self.last_durable.lock() {
            *t = Some(Instant::now());
        }
    }

    fn fresh_marker(&self) -> VolumeMarker {
        VolumeMarker::new(self.cfg.workspace.clone(), self.cfg.generation)
    }

    /// The epoch this sandbox writes under: its session's, or 0 without a control plane.
    fn epoch(&self) -> Epoch {
        self.control.as_ref().map_or(Epoch::ZERO, |c| c.epoch())
    }

    /// Repositories in the workspace: configured and found.
    fn repos(&self) -> Vec<PathBuf> {
        let mut repos = find_repos(&self.cfg.dir, REPO_DEPTH);
        for r in &self.cfg.repos {
            if let Ok(rel) = r.target() {
                let p = self.cfg.dir.join(String::from_utf8_lossy(rel.as_bytes()).as_ref());
                if p.join(".git").is_dir() && !repos.contains(&p) {
                    repos.push(p);
                }
            }
        }
        repos
    }

    async fn capture_git(&self, inner: &mut Inner, mode: GitMode, deadline: Option<Instant>) {
        let due = mode != GitMode::IfDue
            || inner.git_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(self.cfg.git_interval_secs));
        if !due {
            return;
        }
        for repo in self.repos() {
            if repo == self.cfg.dir {
                crate::git::ignore_berth_dir(&repo);
            }
            let Some(out) = layout::git_state(&self.cfg.dir, &repo) else { continue };
            let refs =
                self.git.run(&repo, &["for-each-ref", "--format=%(refname) %(objectname)"]).await.unwrap_or_default();
            let refs = String::from_utf8_lossy(&refs).into_owned();
            // A bundle only when the refs moved, and at shutdown only with time to spare.
            let time_left =
                deadline.is_none_or(|d| d.saturating_duration_since(Instant::now()) > Duration::from_secs(2));
            let bundle = inner.refs.get(&repo) != Some(&refs) && time_left;
            match self.git.capture(&repo, &out, bundle).await {
                Ok(state) => {
                    if bundle && state.bundle {
                        inner.refs.insert(repo.clone(), refs);
                    }
                }
                Err(e) => tracing::warn!(event = "git_capture_failed", repo = %repo.display(), error = %e),
            }
        }
        inner.git_at = Some(Instant::now());
    }

    /// Takes a snapshot now (SQLite copies, git state when due, files) and publishes it. Returns
    /// `Ok(None)` when there is nothing to do (ephemeral, or writing stopped for good), and
    /// [`AgentError::LeaseLapsed`] when the lease is not held now or stops being held before
    /// the snapshot's record is written (nothing of it becomes visible).
    ///
    /// The files are found by a full scan; the schedule's runs use `snapshot_with` instead.
    pub async fn snapshot(
        &self,
        reason: &str,
        git: GitMode,
        deadline: Option<Instant>,
    ) -> Result<Option<Saved>, AgentError> {
        self.snapshot_with(reason, git, deadline, false).await
    }

    /// Like `snapshot`; with `fed`, only what the watcher reported is looked at again (see `watch`).
    async fn snapshot_with(
        &self,
        reason: &str,
        git: GitMode,
        deadline: Option<Instant>,
        fed: bool,
    ) -> Result<Option<Saved>, AgentError> {
        let Some(store) = &self.store else { return Ok(None) };
        if !self.writing() {
            return Ok(None);
        }
        self.check_lease()?;
        let started = Instant::now();
        // Held to the end: never two snapshot runs at once.
        let mut inner = self.inner.lock().await;
        let opts = self.capture(&mut inner, git, deadline).await?;
        if !self.writing() {
            return Ok(None);
        }
        self.check_lease()?;
        let marker = layout::read_marker(&self.cfg.dir).unwrap_or_else(|| self.fresh_marker());
        let pending = Some((marker.seq + 1, self.cfg.instance.to_string()));
        layout::write_marker(&self.cfg.dir, &VolumeMarker { pending, ..marker });
        let patterns = std::mem::take(&mut inner.patterns);
        let hint = inner.feed.take(&patterns).filter(|_| fed);
        inner.patterns = patterns;
        let Inner { feed, .. } = &mut *inner;
        let summary = match &self.control {
            // Abandoned at the write deadline: the engine writes the record last.
            Some(c) => tokio::select! {
                r = self.create(store, &opts, &mut feed.warm, hint.as_ref()) => r,
                _ = c.lapsed() => {
                    feed.failed();
                    return if c.fenced() { Ok(None) } else { Err(AgentError::LeaseLapsed) };
                }
            },
            None => self.create(store, &opts, &mut feed.warm, hint.as_ref()).await,
        };
        if summary.is_err() {
            feed.failed();
        }
        let summary = summary?;
        let mut saved = Saved {
            snapshot: summary.snapshot,
            seq: summary.seq,
            unchanged: summary.unchanged,
            secs: started.elapsed().as_secs_f64(),
            bytes_uploaded: summary.bytes_uploaded,
            published: false,
        };
        // A final snapshot is published even unchanged: the control plane learns that the
        // latest snapshot covers the volume's last write.
        if !summary.unchanged || git == GitMode::Final {
            saved.published = self.publish(&summary, git == GitMode::Final).await?;
        }
        self.durable(reason, &saved);
        Ok(Some(saved))
    }

    /// Copies the SQLite databases (searched for again now and then) and captures git state
    /// when due; returns the options of the snapshot that saves them, with the live database
    /// files left out.
    async fn capture(
        &self,
        inner: &mut Inner,
        git: GitMode,
        deadline: Option<Instant>,
    ) -> Result<CreateOptions, AgentError> {
        if inner.dbs_at.is_none_or(|t| t.elapsed() >= SQLITE_RESCAN) || git != GitMode::IfDue {
            let (dir, ex) = (self.cfg.dir.clone(), self.excludes.clone());
            inner.dbs = tokio::task::spawn_blocking(move || sqlite::discover(&dir, &ex)).await.unwrap_or_default();
            inner.dbs_at = Some(Instant::now());
        }
        let dbs = inner.dbs.clone();
        let copied = inner.sqlite.capture(&self.cfg.dir, &dbs).await;
        self.capture_git(inner, git, deadline).await;
        let mut patterns = self.cfg.excludes.clone();
        patterns.extend(sqlite::exclude_patterns(&copied));
        inner.patterns = patterns.clone();
        Ok(CreateOptions {
            workspace: self.cfg.workspace.clone(),
            generation: self.cfg.generation,
            dir: self.cfg.dir.clone(),
            excludes: Excludes::new(&patterns, self.cfg.default_excludes)?,
            budget: self.cfg.budget,
            cache_dir: self.cfg.cache_dir.clone(),
            host: self.cfg.instance.to_string(),
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            epoch: self.epoch(),
        })
    }

    /// Runs the engine; another writer's publish in this workspace stops all writing.
    async fn create(
        &self,
        store: &SnapshotStore,
        opts: &CreateOptions,
        warm: &mut Warm,
        hint: Option<&ChangedPaths>,
    ) -> Result<create::CreateSummary, AgentError> {
        match create::create_warm(store, opts, &Arc::new(Progress::default()), warm, hint).await {
            Ok(summary) => {
                for p in &summary.skipped_for_budget {
                    tracing::warn!(event = "skipped_for_budget", path = %p);
                }
                Ok(summary)
            }
            Err(e @ (EngineError::Conflict(_) | EngineError::Fenced { .. })) => {
                // Another writer published in this workspace: this sandbox lost it.
                tracing::error!(event = "fenced", reason = %e);
                self.stop_writing();
                Err(e.into())
            }
            Err(e) => {
                metrics::counter!("berth_agent_snapshots_total", "outcome" => "error").increment(1);
                Err(e.into())
            }
        }
    }

    /// Records the snapshot with the control plane, if there is one; returns whether it did. A
    /// stale epoch stops all writing; any other failure is logged (the snapshot is durable in
    /// the store regardless).
    async fn publish(&self, summary: &create::CreateSummary, final_snapshot: bool) -> Result<bool, AgentError> {
        let Some(c) = &self.control else { return Ok(false) };
        let stats = SnapshotStats {
            files: Some(summary.files_scanned),
            bytes: Some(summary.bytes_scanned),
            bytes_uploaded: Some(summary.bytes_uploaded),
            duration_ms: Some((summary.duration_secs * 1000.0) as u64),
        };
        match c.publish(&summary.snapshot, stats, final_snapshot).await {
            Ok(()) => Ok(true),
            Err(e) if e.fenced().is_some() => {
                self.stop_writing();
                Err(e)
            }
            Err(e) => {
                tracing::warn!(event = "publish_failed", snapshot = %summary.snapshot, error = %e);
                Ok(false)
            }
        }
    }

    /// Marks the directory as holding `saved`, durable now, and says so in metrics and the log.
    fn durable(&self, reason: &str, saved: &Saved) {
        // An unchanged run's latest is already this epoch's (a run under a higher epoch
        // always publishes).
        let marker =
            VolumeMarker { snapshot: Some(saved.snapshot), seq: saved.seq, epoch: self.epoch(), ..self.fresh_marker() };
        layout::write_marker(&self.cfg.dir, &marker);
        self.durable_now();
        let outcome = if saved.unchanged { "unchanged" } else { "published" };
        metrics::counter!("berth_agent_snapshots_total", "outcome" => outcome).increment(1);
        metrics::counter!("berth_agent_bytes_uploaded_total").increment(saved.bytes_uploaded);
        metrics::histogram!("berth_agent_snapshot_duration_seconds").record(saved.secs);
        tracing::info!(
            event = "snapshot_durable",
            reason,
            snapshot = %saved.snapshot,
            seq = saved.seq,
            unchanged = saved.unchanged,
            secs = saved.secs,
            bytes_uploaded = saved.bytes_uploaded,
            published = saved.published,
        );
    }

    /// Whether a changed path matters (not berth's own state, not excluded).
    fn relevant(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.cfg.dir) else { return false };
        let bytes = rel.as_os_str().as_encoded_bytes();
        if bytes.is_empty() || bytes.starts_with(b".berth/") || bytes == b".berth" {
            return false;
        }
        let mut prefix = Vec::with_capacity(bytes.len());
        for (i, part) in bytes.split(|b| *b == b'/').enumerate() {
            if i > 0 {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(part);
            let is_last = prefix.len() == bytes.len();
            if self.excludes.is_excluded(&prefix, !is_last) {
                return false;
            }
        }
        true
    }

    /// Starts watching the workspace for changes. Called before the agent process starts, so
    /// none of its changes goes unseen; where watches cannot be had, the schedule scans instead.
    pub fn watch(&self) -> Watch {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<PathBuf>, bool)>();
        if self.ephemeral() {
            return Watch { watcher: None, rx };
        }
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if ev.need_rescan() => {
                let _ = tx.send((Instant::now(), Vec::new(), true));
            }
            Ok(ev) if !matches!(ev.kind, notify::EventKind::Access(_)) => {
                let _ = tx.send((Instant::now(), ev.paths, false));
            }
            Ok(_) => {}
            Err(_) => {
                let _ = tx.send((Instant::now(), Vec::new(), true));
            }
        })
        .and_then(|mut w| w.watch(&self.cfg.dir, notify::RecursiveMode::Recursive).map(|_| w));
        let watcher = watcher
            .map_err(|e| tracing::warn!(event = "watch_unavailable", error = %e, fallback = "scanning every 15 s"))
            .ok();
        Watch { watcher, rx }
    }

    /// Records what the watcher reported: a relevant path is a change to save soon and a path
    /// for the next run to look at; a lost watcher makes the next run scan everything.
    async fn note(
        &self,
        sched: &mut Scheduler,
        (at, paths, lost): (Instant, Vec<PathBuf>, bool),
        ms: impl Fn(Instant) -> u64,
    ) {
        let relevant: Vec<PathBuf> = paths.into_iter().filter(|p| self.relevant(p)).collect();
        if relevant.is_empty() && !lost {
            return;
        }
        sched.changed(ms(at));
        let mut inner = self.inner.lock().await;
        if lost {
            tracing::warn!(event = "watch_overflow", hint = "the next snapshot scans the whole tree");
            inner.feed.lose_track();
        }
        inner.feed.note(&self.cfg.dir, &relevant);
    }

    /// Runs the schedule until `stop`: snapshots on the interval and a debounce after changes.
    /// A snapshot under way when `stop` fires is abandoned (nothing of it becomes visible).
    pub async fn run(self: &Arc<Self>, watch: Watch, stop: CancellationToken) {
        if self.ephemeral() {
            tracing::warn!(
                event = "workspace_ephemeral",
                dir = %self.cfg.dir.display(),
                hint = "no object store is configured (--store): nothing is saved, and the work is lost with the sandbox"
            );
            stop.cancelled().await;
            return;
        }
        let Watch { watcher, mut rx } = watch;
        let polling = watcher.is_none();
        let origin = Instant::now();
        let ms = |t: Instant| t.saturating_duration_since(origin).as_millis() as u64;
        let schedule = Schedule {
            interval_ms: if polling { POLL.as_millis() as u64 } else { self.cfg.interval_secs.max(1) * 1000 },
            first_after_ms: self.cfg.first_after_secs * 1000,
            debounce_ms: self.cfg.debounce_ms,
        };
        let mut sched = Scheduler::new(schedule, 0);
        self.inner.lock().await.feed = Feed::new(!polling, Duration::from_secs(self.cfg.rescan_secs));
        // Runs start at least --min-gap apart, however fast the tree changes.
        let min_gap = Duration::from_secs(self.cfg.min_gap_secs);
        let mut not_before = Instant::now();
        loop {
            if let Some(c) = self.control.as_ref().filter(|c| !c.holds()) {
                // Paused: no snapshot until the lease is held again (changes queue meanwhile).
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = c.held() => {}
                }
            }
            if !self.writing() {
                stop.cancelled().await;
                break;
            }
            let wake = sched
                .next_due()
                .map_or(Duration::from_secs(3600), |at| Duration::from_millis(at.saturating_sub(ms(Instant::now()))))
                .max(not_before.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(event) = rx.recv() => {
                    self.note(&mut sched, event, ms).await;
                    continue;
                }
                _ = tokio::time::sleep(wake) => {}
            }
            let now = ms(Instant::now());
            let Some(reason) = sched.due(now).filter(|_| Instant::now() >= not_before) else { continue };
            let covered = sched.dirty_since();
            sched.started(now);
            not_before = Instant::now() + min_gap;
            let result = tokio::select! {
                r = self.snapshot_with(reason.as_str(), GitMode::IfDue, None, true) => r,
                _ = stop.cancelled() => break,
            };
            // Events of changes made while the run ran, before its rescan differences are judged.
            while let Ok(event) = rx.try_recv() {
                self.note(&mut sched, event, ms).await;
            }
            self.inner.lock().await.feed.report_differences();
            if let Some(secs) = crate::watch::cpu_seconds() {
                metrics::gauge!("berth_agent_cpu_seconds_total").set(secs);
            }
            match &result {
                Err(AgentError::LeaseLapsed) => tracing::info!(event = "snapshot_paused", reason = reason.as_str()),
                Err(e) => tracing::warn!(event = "snapshot_failed", reason = reason.as_str(), error = %e),
                Ok(_) => {}
            }
            sched.finished(ms(Instant::now()), result.is_ok(), covered);
        }
        drop(watcher);
    }
}
