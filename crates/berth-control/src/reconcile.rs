//! The reconcilers: deletion, volume GC, the orphan sweep, and lease and drain expiry. Each runs
//! on its own loop until shutdown; GC and the orphan sweep also run on demand (`POST /v1/gc/run`).
//! They return domain reports; the HTTP layer turns them into wire types.
//!
//! # Guarantees
//! - Every step is idempotent and safe to interrupt at any `.await`: claims expire, marks are
//!   guarded, deletion steps advance only from the step they expect.
//! - GC sweeps never overlap: one at a time per process (a mutex) and across replicas (the
//!   `gc` lock in the metadata store); a sweep is time-bounded and skipped while the substrate
//!   is unhealthy, and logs one summary line.
//!
//! # Caveats
//! - The time bound stops a sweep from starting new removals; one already running finishes
//!   and is recorded, so a sweep can overrun its bound by one removal.
//! - After a crash, the claims of the dead process hold their workspaces until they expire
//!   (`claim_ttl_secs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::gc::{self, Action, DeleteStep, OrphanAction, Outcome, Summary};
use berth_core::id::SnapshotId;
use berth_core::time::Timestamp;
use berth_core::volume::VolumeName;
use berth_core::workspace::{Generation, WorkspaceId};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{now, App};
use crate::error::Result;
use crate::meta::{Claimed, SnapshotStats};
use crate::volumes::{install_selector, Removal, RescueRequest};

/// Deleting workspaces claimed per round.
const DELETE_BATCH: u32 = 20;
/// Deletions in flight at once.
const DELETE_CONCURRENCY: usize = 3;

/// Starts every reconciler loop on `tracker`; they stop when `shutdown` is cancelled.
pub fn spawn(app: &Arc<App>, tracker: &TaskTracker, shutdown: CancellationToken) {
    let gc = &app.config.gc;
    // Deletions run at once, when asked for (`wake_delete`), and every 2 s for retries.
    let (deleter, stop) = (app.clone(), shutdown.clone());
    tracker.spawn(async move {
        loop {
            if let Err(e) = run_deletions(&deleter).await {
                tracing::warn!(event = "deletion_round_failed", error = %e);
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = deleter.wake_delete.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    });
    every(tracker, app, &shutdown, gc.interval_secs, |app| async move {
        if let Err(e) = gc_sweep(&app, SweepOptions::default()).await {
            tracing::warn!(event = "gc_sweep_failed", error = %e);
        }
    });
    every(tracker, app, &shutdown, gc.orphan_interval_secs, |app| async move {
        if let Err(e) = orphan_sweep(&app, false).await {
            tracing::warn!(event = "orphan_sweep_failed", error = %e);
        }
    });
    every(tracker, app, &shutdown, app.config.expiry_interval_secs, |app| async move {
        let t = now();
        match app.meta.expire_drains(t).await {
            Ok(0) => {}
            Ok(n) => metrics::counter!("berth_drains_cleared_total", "by" => "timeout").increment(n),
            Err(e) => tracing::warn!(event = "drain_expiry_failed", error = %e),
        }
        match app.meta.expire_leases(t).await {
            Ok(0) => {}
            Ok(n) => metrics::counter!("berth_leases_expired_total").increment(n),
            Err(e) => tracing::warn!(event = "lease_expiry_failed", error = %e),
        }
    });
}

/// Runs `round` every `secs` seconds (at least 1) on `tracker` until `stop`.
fn every<F, Fut>(tracker: &TaskTracker, app: &Arc<App>, stop: &CancellationToken, secs: u64, round: F)
where
    F: Fn(Arc<App>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (app, stop) = (app.clone(), stop.clone());
    let period = Duration::from_secs(secs.max(1));
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(period) => {}
            }
            round(app.clone()).await;
        }
    });
}

/// Claims deleting workspaces and carries each through its remaining steps.
pub async fn run_deletions(app: &Arc<App>) -> Result<usize> {
    let t = now();
    let until = t.plus_secs(app.config.gc.claim_ttl_secs);
    let claimed = app.meta.claim_deleting(&app.replica, t, until, DELETE_BATCH).await?;
    let n = claimed.len();
    futures::stream::iter(claimed)
        .for_each_concurrent(DELETE_CONCURRENCY, |c| async move {
            let owner = c.candidate.owner.clone();
            if let Err(e) = delete_one(app, &c).await {
                tracing::warn!(event = "deletion_step_failed", owner = %owner, error = %e);
                let _ = app.meta.release_claim(&owner, &app.replica).await;
            }
        })
        .await;
    Ok(n)
}

/// Runs the remaining deletion steps of one claimed workspace, in order.
async fn delete_one(app: &App, claimed: &Claimed) -> Result<()> {
    let mut step = claimed.step.unwrap_or(DeleteStep::EndSessions);
    loop {
        let mut volume_outcome = None;
        if step == DeleteStep::DeleteVolume && !claimed.volume_removed {
            let volume = &claimed.candidate.volume;
            match delete_volume(app, volume, "delete").await {
                (o, _) if o.marks_removed() => volume_outcome = Some(o),
                (Outcome::Referenced, by) => {
                    let msg = format!("volume {volume} is still in use ({}); retrying", by.unwrap_or_default());
                    return app.meta.delete_step_failed(claimed, &app.replica, Outcome::Referenced, &msg, now()).await;
                }
                (o, e) => {
                    let msg = format!("deleting volume {volume} failed: {}", e.unwrap_or_default());
                    return app.meta.delete_step_failed(claimed, &app.replica, o, &msg, now()).await;
                }
            }
        }
        if step == DeleteStep::RetireSnapshots {
            if let Err(msg) = forget_in_store(app, claimed).await {
                return app.meta.delete_step_failed(claimed, &app.replica, Outcome::Error, &msg, now()).await;
            }
        }
        if !app.meta.delete_step_done(claimed, &app.replica, step, volume_outcome, now()).await? {
            // The claim was lost or the step already ran elsewhere: leave it to its holder.
            return Ok(());
        }
        match step.next() {
            Some(next) => step = next,
            None => {
                tracing::info!(event = "workspace_deleted", owner = %claimed.candidate.owner, generation = claimed.candidate.generation.0);
                return Ok(());
            }
        }
    }
}

/// Forgets the deleted generation's snapshot records in the object store (when the server has
/// one): the data goes with the store's next prune. A store berth never wrote is nothing to do.
async fn forget_in_store(app: &App, claimed: &Claimed) -> std::result::Result<(), String> {
    let Some(url) = &app.config.store else { return Ok(()) };
    let store = berth_engine::store::open(url).map_err(|e| e.to_string())?;
    let repo = match berth_engine::snapshot_store::SnapshotStore::open(store).await {
        Ok(r) => r,
        Err(berth_engine::error::EngineError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(format!("cannot open the snapshot store: {e}")),
    };
    let c = &claimed.candidate;
    let n = berth_engine::maintain::forget_generation(&repo, &c.owner, c.generation)
        .await
        .map_err(|e| format!("forgetting the snapshots of generation {} in the store: {e}", c.generation))?;
    tracing::info!(event = "snapshots_forgotten", owner = %c.owner, generation = c.generation.0, count = n);
    Ok(())
}

/// Why a GC sweep did not run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// Another replica holds the `gc` lock.
    OtherReplica,
    /// The substrate's health check failed.
    Unhealthy(String),
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skipped::OtherReplica => f.write_str("another replica is sweeping"),
            Skipped::Unhealthy(e) => write!(f, "substrate unhealthy: {e}"),
        }
    }
}

/// What a sweep did with one volume: planned (dry run) or done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcResult {
    /// A dry run's plan.
    Planned(Action),
    /// The outcome of a real sweep.
    Done(Outcome),
}

/// One volume of a GC sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcVolume {
    /// The owner.
    pub owner: WorkspaceId,
    /// The generation the volume belongs to.
    pub generation: Generation,
    /// The volume.
    pub volume: VolumeName,
    /// What happened, or would.
    pub result: GcResult,
    /// Why an attempt failed or was refused.
    pub error: Option<String>,
}

/// What the orphan sweep did with one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrphanResult {
    /// The volume.
    pub volume: VolumeName,
    /// The plan's action.
    pub action: OrphanAction,
    /// For an executed removal: removed, not found, referenced or error.
    pub removal: Option<Outcome>,
}

/// The result of one GC run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Why the volume sweep was skipped, if it was.
    pub skipped: Option<Skipped>,
    /// The volumes considered, by owner.
    pub volumes: Vec<GcVolume>,
    /// Every outcome's count, candidates held back by the cooldown included.
    pub summary: Summary,
    /// The orphan sweep, when asked for.
    pub orphans: Option<Vec<OrphanResult>>,
    /// Wall time of the run.
    pub duration: Duration,
    /// Of which spent in the metadata store.
    pub db: Duration,
}

/// Deletes `volume` for `by` (gc, delete, orphan_sweep) and classifies the answer; the error
/// text says why an attempt did not remove it.
async fn delete_volume(app: &App, volume: &VolumeName, by: &'static str) -> (Outcome, Option<String>) {
    metrics::counter!("berth_volume_delete_attempts_total", "by" => by).increment(1);
    match app.volumes.delete(volume).await {
        Ok(Removal::Removed) => (Outcome::Removed, None),
        Ok(Removal::NotFound) => (Outcome::NotFound, None),
        Ok(Removal::Referenced { by }) => (Outcome::Referenced, Some(by)),
        Err(e) => (Outcome::Error, Some(e.to_string())),
    }
}

/// What a GC run is asked to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepOptions {
    /// Plan only.
    pub dry_run: bool,
    /// Run the orphan sweep after the volume sweep.
    pub orphans: bool,
    /// Remove at-risk volumes without a rescue (recorded as `at_risk_removed`, forced).
    pub force: bool,
}

/// Runs one volume GC sweep (`dry_run`: plan only); with `orphans`, the orphan sweep after it.
pub async fn gc_sweep(app: &Arc<App>, opts: SweepOptions) -> Result<GcReport> {
    let SweepOptions { dry_run, orphans, force } = opts;
    let started = Instant::now();
    let _running = app.gc_running.lock().await;
    let mut report = GcReport {
        dry_run,
        skipped: None,
        volumes: Vec::new(),
        summary: Summary::default(),
        orphans: None,
        duration: Duration::ZERO,
        db: Duration::ZERO,
    };
    let cfg = &app.config.gc;
    let timed = Instant::now();
    let locked = dry_run || app.meta.try_lock("gc", &app.replica, now(), cfg.timeout_secs as i64 * 4).await?;
    report.db += timed.elapsed();
    if !locked {
        report.skipped = Some(Skipped::OtherReplica);
    } else if let Err(e) = app.volumes.health().await {
        report.skipped = Some(Skipped::Unhealthy(e.to_string()));
    } else {
        let result = sweep_volumes(app, dry_run, force, &mut report).await;
        if !dry_run {
            let timed = Instant::now();
            let _ = app.meta.unlock("gc", &app.replica).await;
            report.db += timed.elapsed();
        }
        result?;
    }
    if orphans {
        report.orphans = Some(orphan_sweep(app, dry_run).await?);
    }
    report.duration = started.elapsed();
    let count = |o| report.summary.get(o);
    tracing::info!(
        event = "gc_sweep",
        dry_run,
        skipped = report.skipped.as_ref().map(ToString::to_string).unwrap_or_default(),
        removed = count(Outcome::Removed),
        not_found = count(Outcome::NotFound),
        referenced = count(Outcome::Referenced),
        cooldown = count(Outcome::Cooldown),
        error = count(Outcome::Error),
        at_risk = count(Outcome::AtRisk),
        duration_ms = report.duration.as_millis() as u64,
        db_ms = report.db.as_millis() as u64,
    );
    if !dry_run {
        record_sweep(app, &report).await;
        metrics::counter!("berth_gc_sweeps_total").increment(1);
        metrics::histogram!("berth_gc_sweep_duration_seconds").record(report.duration.as_secs_f64());
    }
    Ok(report)
}

/// Records a sweep that acted, found something or was skipped as unhealthy as a `gc_sweep`
/// event (the console's GC history); sweeps with nothing to do leave no event.
async fn record_sweep(app: &App, report: &GcReport) {
    let counts = report.summary.counts();
    let acted = counts.iter().any(|(k, n)| *k != Outcome::Cooldown.as_str() && *n > 0);
    let orphans = report.orphans.as_deref().unwrap_or_default();
    let removed_orphans = orphans.iter().filter(|o| o.removal.is_some()).count();
    let tracked_orphans = orphans.iter().filter(|o| matches!(o.action, OrphanAction::Track)).count();
    let unhealthy = matches!(report.skipped, Some(Skipped::Unhealthy(_)));
    if !(acted || unhealthy || removed_orphans > 0 || tracked_orphans > 0) {
        return;
    }
    let detail = serde_json::json!({
        "outcomes": counts,
        "skipped": report.skipped.as_ref().map(ToString::to_string),
        "orphans_removed": removed_orphans,
        "orphans_found": tracked_orphans,
        "duration_ms": report.duration.as_millis() as u64,
        "replica": app.replica.to_string(),
    });
    let event = crate::meta::NewEvent { kind: "gc_sweep", detail, ..Default::default() };
    if let Err(e) = app.meta.log_event(event, now()).await {
        tracing::warn!(event = "gc_sweep_not_recorded", error = %e);
    }
}

/// Claims candidates (a dry run only reads them), plans, and, unless `dry_run`, removes.
async fn sweep_volumes(app: &Arc<App>, dry_run: bool, force: bool, report: &mut GcReport) -> Result<()> {
    let cfg = &app.config.gc;
    let t = now();
    let timed = Instant::now();
    let claimed = app
        .meta
        .claim_gc(&app.replica, t, cfg.cooldown_secs, t.plus_secs(cfg.claim_ttl_secs), cfg.batch, dry_run)
        .await?;
    let cooldown = app.meta.count_gc_cooldown(t, cfg.cooldown_secs).await?;
    report.db += timed.elapsed();
    report.summary.add(Outcome::Cooldown, cooldown);
    let plan = {
        let mut by_owner: BTreeMap<_, _> = claimed.iter().map(|c| (c.candidate.owner.clone(), c.clone())).collect();
        let policy = gc::Policy { at_risk_retention_secs: cfg.at_risk_retention_secs, force };
        gc::plan(claimed.into_iter().map(|c| c.candidate).collect(), t, policy)
            .into_iter()
            .filter_map(|(cand, action)| by_owner.remove(&cand.owner).map(|c| (c, action)))
            .collect::<Vec<(Claimed, Action)>>()
    };
    if dry_run {
        report.volumes = plan.iter().map(|(c, action)| gc_volume(c, GcResult::Planned(*action), None)).collect();
        return Ok(());
    }
    // The time bound stops new attempts; one already running finishes and is recorded, so
    // no removal is ever left done-but-unrecorded by the bound.
    let deadline = Instant::now() + Duration::from_secs(cfg.timeout_secs.max(1));
    let results: Vec<Option<(GcVolume, Duration)>> = futures::stream::iter(plan.iter().cloned())
        .map(|(c, action)| async move {
            if Instant::now() >= deadline {
                return None;
            }
            Some(collect_one(app, &c, action).await)
        })
        .buffer_unordered(cfg.concurrency.max(1))
        .collect()
        .await;
    let mut done = Vec::new();
    for (volume, db) in results.into_iter().flatten() {
        report.db += db;
        if let GcResult::Done(o) = volume.result {
            report.summary.add(o, 1);
        }
        done.push(volume);
    }
    if done.len() < plan.len() {
        // Hand what was not attempted back at once, so the next sweep takes it.
        let attempted: BTreeSet<_> = done.iter().map(|v| v.owner.clone()).collect();
        for (c, _) in plan.iter().filter(|(c, _)| !attempted.contains(&c.candidate.owner)) {
            let _ = app.meta.release_claim(&c.candidate.owner, &app.replica).await;
        }
        tracing::warn!(event = "gc_sweep_time_bound", attempted = done.len(), deferred = plan.len() - done.len());
    }
    done.sort_by(|a, b| a.owner.cmp(&b.owner));
    report.volumes = done;
    Ok(())
}

/// Carries out one planned action on a claimed candidate and records its outcome; returns the
/// result and the time spent recording it. An at-risk volume is removed only after its rescue
/// succeeded, or when the plan gives it up (forced, past the retention).
async fn collect_one(app: &App, c: &Claimed, action: Action) -> (GcVolume, Duration) {
    let mut at_risk_removal = None;
    let (outcome, error) = match action {
        Action::Skip(o) => (o, None),
        Action::Rescue => match rescue(app, c).await {
            Ok(_) => remove_volume(app, c).await,
            Err(why) => (Outcome::AtRisk, Some(why)),
        },
        Action::RemoveAtRisk(reason) => {
            at_risk_removal = Some(reason);
            remove_volume(app, c).await
        }
        Action::Remove => remove_volume(app, c).await,
    };
    let timed = Instant::now();
    if let Err(e) = app.meta.record_gc(c, &app.replica, (outcome, error.as_deref()), at_risk_removal, now()).await {
        tracing::warn!(event = "gc_record_failed", owner = %c.candidate.owner, error = %e);
    }
    metrics::counter!("berth_gc_outcomes_total", "outcome" => outcome.as_str()).increment(1);
    (gc_volume(c, GcResult::Done(outcome), error), timed.elapsed())
}

/// Asks the substrate to delete a claimed candidate's volume.
async fn remove_volume(app: &App, c: &Claimed) -> (Outcome, Option<String>) {
    metrics::counter!("berth_gc_attempts_total").increment(1);
    match delete_volume(app, &c.candidate.volume, "gc").await {
        (Outcome::Referenced, by) => (Outcome::Referenced, by.map(|by| format!("in use: {by}"))),
        other => other,
    }
}

/// Rescues a claimed at-risk volume: takes the lease with a new epoch, has the substrate's
/// rescuer snapshot it into the store, records the snapshot as final (clearing the risk) and
/// releases the lease. Returns the snapshot, or why the volume stays at risk.
async fn rescue(app: &App, c: &Claimed) -> std::result::Result<SnapshotId, String> {
    let rescuer = app.rescuer.as_ref().map_err(|why| format!("kept at risk: {why}"))?;
    let store = app.config.store.clone().ok_or("kept at risk: the control plane has no --store")?;
    let ttl = app.config.gc.claim_ttl_secs.max(2);
    let lease = app.meta.begin_rescue(c, &app.replica, ttl, now()).await.map_err(|e| e.to_string())?;
    let owner = &c.candidate.owner;
    tracing::info!(event = "rescue_started", owner = %owner, volume = %c.candidate.volume, epoch = lease.epoch.0);
    metrics::counter!("berth_rescues_total", "outcome" => "started").increment(1);
    let req = RescueRequest {
        owner: owner.clone(),
        generation: lease.generation,
        epoch: lease.epoch,
        session: lease.session.clone(),
        volume: c.candidate.volume.clone(),
        mount: app.volumes.mount(&c.candidate.volume),
        store,
    };
    // The lease lasts `ttl`: a rescue still running a little before it ends has failed.
    let bound = Duration::from_secs((ttl - 1).max(1) as u64);
    let result = match tokio::time::timeout(bound, rescuer.rescue(req)).await {
        Ok(Ok(done)) => {
            let stats = SnapshotStats { files: Some(done.files), bytes: Some(done.bytes), ..Default::default() };
            Ok((done.snapshot, stats))
        }
        Ok(Err(e)) => Err(format!("rescue of volume {} failed: {e}", c.candidate.volume)),
        Err(_) => Err(format!("rescue of volume {} did not finish within {} s", c.candidate.volume, bound.as_secs())),
    };
    let finished = app.meta.finish_rescue(&lease, result, now()).await.map_err(|e| e.to_string())?;
    let outcome = if finished.is_ok() { "succeeded" } else { "failed" };
    metrics::counter!("berth_rescues_total", "outcome" => outcome).increment(1);
    match &finished {
        Ok(snapshot) => tracing::info!(event = "rescue_succeeded", owner = %owner, snapshot = %snapshot),
        Err(e) => tracing::warn!(event = "rescue_failed", owner = %owner, error = %e),
    }
    finished
}

fn gc_volume(c: &Claimed, result: GcResult, error: Option<String>) -> GcVolume {
    GcVolume {
        owner: c.candidate.owner.clone(),
        generation: c.candidate.generation,
        volume: c.candidate.volume.clone(),
        result,
        error,
    }
}

/// Runs the orphan sweep (`dry_run`: plan only): volumes labelled as this installation's with
/// no record are tracked, and removed once they stay so for the grace window.
pub async fn orphan_sweep(app: &Arc<App>, dry_run: bool) -> Result<Vec<OrphanResult>> {
    let t = now();
    if !dry_run && !app.meta.try_lock("orphans", &app.replica, t, 600).await? {
        return Ok(Vec::new());
    }
    let result = orphan_sweep_locked(app, dry_run).await;
    if !dry_run {
        let _ = app.meta.unlock("orphans", &app.replica).await;
    }
    result
}

async fn orphan_sweep_locked(app: &Arc<App>, dry_run: bool) -> Result<Vec<OrphanResult>> {
    let t = now();
    // List the substrate first: a volume created after this listing is not considered, and one
    // listed here had its record written before it was created.
    let listed: BTreeSet<_> =
        app.volumes.list(&install_selector(&app.install)).await?.into_iter().map(|v| v.name).collect();
    let known = app.meta.known_volumes().await?;
    let tracked = app.meta.orphans().await?;
    let plan = gc::orphan_plan(&listed, &known, &tracked, t, app.config.gc.orphan_grace_secs);
    let mut out = Vec::new();
    for (volume, action) in plan {
        let removal = if dry_run { None } else { execute_orphan(app, &volume, action, t).await? };
        out.push(OrphanResult { volume, action, removal });
    }
    if !out.is_empty() {
        tracing::info!(event = "orphan_sweep", dry_run, volumes = out.len());
    }
    Ok(out)
}

/// Carries out one orphan action; for a removal, returns its outcome.
async fn execute_orphan(app: &App, volume: &VolumeName, action: OrphanAction, t: Timestamp) -> Result<Option<Outcome>> {
    match action {
        OrphanAction::Track => app.meta.track_orphan(volume, t).await?,
        OrphanAction::Wait { .. } => {}
        OrphanAction::Forget => app.meta.forget_orphan(volume, None, t).await?,
        OrphanAction::Remove => {
            let (outcome, error) = delete_volume(app, volume, "orphan_sweep").await;
            if outcome.marks_removed() {
                app.meta.forget_orphan(volume, Some(outcome), now()).await?;
            } else if outcome == Outcome::Error {
                tracing::warn!(event = "orphan_remove_failed", volume = %volume, error = error.unwrap_or_default());
            }
            return Ok(Some(outcome));
        }
    }
    Ok(None)
}
