//! The store's upkeep on a schedule: retention (each workspace's snapshots kept by a policy,
//! as `berth snapshot forget` does), prune (two-phase, with its grace) and the deletion of old
//! rows (events, ended sessions, retired snapshot pointers, cleared drains) in bounded batches.
//!
//! # Guarantees
//! - Each job runs once per period across replicas: a replica runs it only when it takes the
//!   period's turn in the metadata store (`Meta::take_turn`, in [`tick`]), whichever replica
//!   ticks first.
//! - Retention never forgets a snapshot something points at: the latest of each generation,
//!   every workspace's pointer, the last publish of each live session and the final snapshot of
//!   a session whose scope is draining (`Meta::pinned_snapshots`, read after the store's records
//!   are listed, so a publish meanwhile lands on a record the listing does not hold or is read).
//! - Prune holds the store's prune lock (refreshed while it runs, taken over once a replica that
//!   died holding it misses its heartbeats); its grace period covers snapshot runs under way.
//!
//! # Caveats
//! - A replica that dies inside a job leaves the rest of that period's work to the next period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::id::SnapshotId;
use berth_core::retention::Policy;
use berth_engine::error::EngineError;
use berth_engine::maintain;
use berth_engine::snapshot_store::SnapshotStore;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{now, App};
use crate::meta::Table;

/// Why a retention, prune or purge run failed.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] crate::error::Error),
    /// The object store failed (or holds something berth cannot read).
    #[error("snapshot store: {0}")]
    Store(#[from] EngineError),
}

type Result<T> = std::result::Result<T, RetentionError>;

/// What one retention run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionReport {
    /// Workspace generations looked at.
    pub workspaces: u64,
    /// Snapshots kept.
    pub kept: u64,
    /// Of those, kept only because something points at them.
    pub pinned: u64,
    /// Snapshots forgotten (their records deleted; their data goes with a later prune).
    pub forgotten: u64,
}

/// What one prune run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Bytes they held.
    pub bytes_deleted: u64,
    /// Version-1 manifests deleted.
    pub manifests_deleted: u64,
    /// Objects newly marked (deleted by a run after the grace period).
    pub marked: u64,
    /// Marked objects still inside their grace period.
    pub waiting: u64,
    /// Packs in the store before the run.
    pub packs_total: u64,
    /// Index objects compacted into one.
    pub index_objects_compacted: u64,
}

/// A job that runs on a schedule, once per period across replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// [`apply_retention`]: each workspace's own policy, or the configured one.
    Retention,
    /// [`prune`].
    Prune,
    /// [`purge_rows`].
    Purge,
}

impl Job {
    /// The job's name (its turn's lock row is `turn:NAME`).
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Retention => "retention",
            Job::Prune => "prune",
            Job::Purge => "purge",
        }
    }

    /// The job's period in seconds, or `None` when the configuration turns it off.
    fn period_secs(self, app: &App) -> Option<u64> {
        let r = &app.config.retention;
        let store = app.config.store.is_some();
        match self {
            // Also with the default off: workspaces with their own policy still get it.
            Job::Retention => store.then_some(r.interval_secs.max(1)),
            Job::Prune => (store && r.prune_interval_secs > 0).then_some(r.prune_interval_secs),
            Job::Purge => Table::ALL.iter().any(|t| r.horizon(*t).is_some()).then_some(r.purge_interval_secs.max(1)),
        }
    }
}

/// What a job's run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    /// A retention run.
    Retention(RetentionReport),
    /// A prune run.
    Prune(PruneReport),
    /// A purge run: rows deleted per table.
    Purge(Vec<(Table, u64)>),
}

/// Starts the scheduled jobs the configuration asks for on `tracker`, until `shutdown`. Each
/// ticks every period (at most 30 s) and runs when this replica takes the period's turn.
pub fn spawn(app: &Arc<App>, tracker: &TaskTracker, shutdown: CancellationToken) {
    for job in [Job::Retention, Job::Prune, Job::Purge] {
        let Some(period) = job.period_secs(app) else { continue };
        let (app, stop) = (app.clone(), shutdown.clone());
        let every = Duration::from_secs(period.min(30));
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = tick(&app, job).await {
                    tracing::warn!(event = "upkeep_failed", job = job.as_str(), error = %e);
                }
            }
        });
    }
}

/// Runs `job` if this replica takes the current period's turn (`Ok(None)` when another run
/// has the period, or the configuration turns the job off).
pub async fn tick(app: &App, job: Job) -> Result<Option<Done>> {
    let Some(period) = job.period_secs(app) else { return Ok(None) };
    if !app.meta.take_turn(job.as_str(), &app.replica, now(), period as i64).await? {
        return Ok(None);
    }
    Ok(Some(match job {
        Job::Retention => Done::Retention(apply_retention(app, app.config.retention.policy.as_ref()).await?),
        Job::Prune => Done::Prune(prune(app).await?),
        Job::Purge => Done::Purge(purge_rows(app).await?),
    }))
}

/// Opens the server's snapshot store; `None` when there is none, or nothing was ever written.
async fn open_store(app: &App) -> Result<Option<SnapshotStore>> {
    let Some(url) = &app.config.store else { return Ok(None) };
    let objects = berth_engine::store::open(url).map_err(EngineError::from)?;
    match SnapshotStore::open(objects).await {
        Ok(store) => Ok(Some(store)),
        Err(EngineError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Applies retention to the snapshots of every active or closed workspace's current generation
/// in the server's store: each workspace's own policy, or `default` (`None`: those without one
/// keep everything). Keeps what something points at; retires the forgotten snapshots' pointers
/// and records `retention_applied`.
pub async fn apply_retention(app: &App, default: Option<&Policy>) -> Result<RetentionReport> {
    let started = Instant::now();
    // Nothing to apply: no store listing, no event.
    if default.is_none() && app.meta.retained_generations().await?.values().all(Option::is_none) {
        return Ok(RetentionReport::default());
    }
    let Some(store) = open_store(app).await? else { return Ok(RetentionReport::default()) };
    // Records first, then what points at them (see the module's guarantees).
    let records = store.list(None, None).await?;
    let generations = app.meta.retained_generations().await?;
    let pinned = app.meta.pinned_snapshots().await?;
    // Each generation's records under its policy, one plan per policy.
    let mut by_policy: Vec<(Policy, Vec<_>)> = Vec::new();
    for s in records {
        let key = (s.record.workspace.clone(), s.record.generation);
        let Some(policy) = generations.get(&key).and_then(|own| own.as_ref().or(default)) else { continue };
        match by_policy.iter_mut().find(|(p, _)| p == policy) {
            Some((_, group)) => group.push(s),
            None => by_policy.push((*policy, vec![s])),
        }
    }
    let mut plan = Vec::new();
    for (policy, records) in &by_policy {
        plan.extend(maintain::forget_plan_pinned(records, policy, |id| pinned.contains(id)));
    }
    let forgotten = maintain::forget_apply(&store, &plan).await?;
    let t = now();
    let mut report = RetentionReport { workspaces: plan.len() as u64, forgotten, ..Default::default() };
    for group in &plan {
        let gone: Vec<SnapshotId> = group.decisions.iter().filter(|d| !d.keep).map(|d| d.id).collect();
        report.kept += (group.decisions.len() - gone.len()) as u64;
        report.pinned += group.decisions.iter().filter(|d| d.reasons == ["pinned"]).count() as u64;
        if !gone.is_empty() {
            app.meta.retire_snapshots(&group.workspace, group.generation, &gone, t).await?;
        }
    }
    let own = generations.values().filter(|p| p.is_some()).count() as u64;
    let duration_ms = started.elapsed().as_millis() as u64;
    let shown = default.map_or_else(|| "off".to_string(), Policy::to_string);
    let detail = json!({"policy": shown, "own_policies": own, "workspaces": report.workspaces, "kept": report.kept,
        "pinned": report.pinned, "forgotten": report.forgotten, "duration_ms": duration_ms});
    app.meta.record_event("retention_applied", detail, t).await?;
    tracing::info!(event = "retention_applied", policy = %shown, own_policies = own, workspaces = report.workspaces,
        kept = report.kept, pinned = report.pinned, forgotten = report.forgotten, duration_ms);
    metrics::counter!("berth_retention_runs_total").increment(1);
    metrics::counter!("berth_snapshots_forgotten_total").increment(report.forgotten);
    metrics::gauge!("berth_retention_last_run_timestamp_seconds").set(t.secs() as f64);
    Ok(report)
}

/// Prunes the server's store (two-phase, with the configured grace) under the store's prune
/// lock, and records `prune_done`.
pub async fn prune(app: &App) -> Result<PruneReport> {
    let started = Instant::now();
    let Some(store) = open_store(app).await? else { return Ok(PruneReport::default()) };
    let grace = app.config.retention.prune_grace_secs;
    let (plan, outcome) =
        maintain::prune(&store, grace, app.replica.as_str(), berth_engine::prune_lock::HEARTBEAT, false).await?;
    let outcome = outcome.unwrap_or_default();
    let report = PruneReport {
        packs_deleted: outcome.packs_deleted,
        bytes_deleted: outcome.bytes_deleted,
        manifests_deleted: outcome.manifests_deleted,
        marked: outcome.marked,
        waiting: plan.plan.waiting as u64,
        packs_total: plan.plan.packs_total as u64,
        index_objects_compacted: outcome.index_objects_compacted,
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    let t = now();
    let mut detail = serde_json::to_value(&report).unwrap_or_default();
    detail["duration_ms"] = json!(duration_ms);
    detail["grace_secs"] = json!(grace);
    app.meta.record_event("prune_done", detail, t).await?;
    tracing::info!(
        event = "prune_done",
        packs_deleted = report.packs_deleted,
        bytes_deleted = report.bytes_deleted,
        marked = report.marked,
        waiting = report.waiting,
        packs_total = report.packs_total,
        index_objects_compacted = report.index_objects_compacted,
        duration_ms
    );
    metrics::counter!("berth_prune_runs_total").increment(1);
    metrics::counter!("berth_prune_packs_deleted_total").increment(report.packs_deleted);
    metrics::counter!("berth_prune_bytes_deleted_total").increment(report.bytes_deleted);
    metrics::gauge!("berth_prune_last_run_timestamp_seconds").set(t.secs() as f64);
    Ok(report)
}

/// Most batches one purge run deletes per table; the rest waits for the next run.
const PURGE_ROUNDS: u32 = 100;

/// Deletes the rows past each table's horizon, `purge_batch` rows per statement; returns how
/// many went from each table, and records `rows_purged` when any did.
pub async fn purge_rows(app: &App) -> Result<Vec<(Table, u64)>> {
    let r = &app.config.retention;
    let t = now();
    let mut out = Vec::new();
    for table in Table::ALL {
        let Some(secs) = r.horizon(table) else { continue };
        let before = t.plus_secs(-secs);
        let mut n = 0;
        for _ in 0..PURGE_ROUNDS {
            let k = app.meta.purge(table, before, r.purge_batch).await?;
            n += k;
            if k < r.purge_batch as u64 {
                break;
            }
        }
        metrics::counter!("berth_rows_purged_total", "table" => table.as_str()).increment(n);
        out.push((table, n));
    }
    if out.iter().any(|(_, n)| *n > 0) {
        let detail: serde_json::Map<String, serde_json::Value> =
            out.iter().map(|(t, n)| (t.as_str().to_string(), json!(n))).collect();
        app.meta.record_event("rows_purged", serde_json::Value::Object(detail), t).await?;
        tracing::info!(event = "rows_purged", counts = ?out);
    }
    Ok(out)
}
