//! The reconcilers: deletion, volume GC, the orphan sweep, and lease and drain expiry. Each runs
//! on its own loop until shutdown; GC and the orphan sweep also run on demand (`POST /v1/gc/run`).
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

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::{GcItem, GcReport, OrphanItem};
use berth_core::gc::{self, Action, DeleteStep, OrphanAction, Outcome, Summary};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Result;
use crate::http::dto::ts;
use crate::meta::Claimed;
use crate::server::{now, App};
use crate::volumes::{install_selector, Removal};

/// Deleting workspaces claimed per round.
const DELETE_BATCH: u32 = 20;
/// Deletions in flight at once.
const DELETE_CONCURRENCY: usize = 3;

/// Starts every reconciler loop on `tracker`; they stop when `shutdown` is cancelled.
pub fn spawn(app: &Arc<App>, tracker: &TaskTracker, shutdown: CancellationToken) {
    let every = |secs: u64| Duration::from_secs(secs.max(1));
    {
        let (app, stop) = (app.clone(), shutdown.clone());
        tracker.spawn(async move {
            loop {
                if let Err(e) = run_deletions(&app).await {
                    tracing::warn!(event = "deletion_round_failed", error = %e);
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = app.wake_delete.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
    }
    {
        let (app, stop) = (app.clone(), shutdown.clone());
        let period = every(app.config.gc.interval_secs);
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(period) => {}
                }
                if let Err(e) = gc_sweep(&app, false, false).await {
                    tracing::warn!(event = "gc_sweep_failed", error = %e);
                }
            }
        });
    }
    {
        let (app, stop) = (app.clone(), shutdown.clone());
        let period = every(app.config.gc.orphan_interval_secs);
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(period) => {}
                }
                if let Err(e) = orphan_sweep(&app, false).await {
                    tracing::warn!(event = "orphan_sweep_failed", error = %e);
                }
            }
        });
    }
    {
        let (app, stop) = (app.clone(), shutdown);
        let period = every(app.config.expiry_interval_secs);
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(period) => {}
                }
                let t = now();
                match app.meta.expire_drains(t, app.config.drain_timeout_secs).await {
                    Ok(0) => {}
                    Ok(n) => metrics::counter!("berth_drains_cleared_total", "by" => "timeout").increment(n),
                    Err(e) => tracing::warn!(event = "drain_expiry_failed", error = %e),
                }
                match app.meta.expire_leases(t).await {
                    Ok(0) => {}
                    Ok(n) => metrics::counter!("berth_leases_expired_total").increment(n),
                    Err(e) => tracing::warn!(event = "lease_expiry_failed", error = %e),
                }
            }
        });
    }
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
            metrics::counter!("berth_volume_delete_attempts_total", "by" => "delete").increment(1);
            match app.volumes.delete(&claimed.candidate.volume).await {
                Ok(Removal::Removed) => volume_outcome = Some(Outcome::Removed),
                Ok(Removal::NotFound) => volume_outcome = Some(Outcome::NotFound),
                Ok(Removal::Referenced { by }) => {
                    let msg = format!("volume {} is still in use ({by}); retrying", claimed.candidate.volume);
                    return app.meta.delete_step_failed(claimed, &app.replica, Outcome::Referenced, &msg, now()).await;
                }
                Err(e) => {
                    let msg = format!("deleting volume {} failed: {e}", claimed.candidate.volume);
                    return app.meta.delete_step_failed(claimed, &app.replica, Outcome::Error, &msg, now()).await;
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
    let repo = match berth_engine::repo::Repo::open(store).await {
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

/// Runs one volume GC sweep (`dry_run`: plan only); with `orphans`, the orphan sweep after it.
pub async fn gc_sweep(app: &Arc<App>, dry_run: bool, orphans: bool) -> Result<GcReport> {
    let started = Instant::now();
    let _running = app.gc_running.lock().await;
    let mut db = Duration::ZERO;
    let mut report = GcReport {
        dry_run,
        skipped: None,
        volumes: Vec::new(),
        counts: Summary::default().counts().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        orphans: None,
        duration_ms: 0,
        db_ms: 0,
    };
    let cfg = &app.config.gc;
    let t = now();
    let timed = Instant::now();
    let locked = dry_run || app.meta.try_lock("gc", &app.replica, t, cfg.timeout_secs as i64 * 4).await?;
    db += timed.elapsed();
    if !locked {
        report.skipped = Some("another replica is sweeping".into());
    } else if let Err(e) = app.volumes.health().await {
        report.skipped = Some(format!("substrate unhealthy: {e}"));
    } else {
        let result = sweep_volumes(app, dry_run, &mut report, &mut db).await;
        if !dry_run {
            let timed = Instant::now();
            let _ = app.meta.unlock("gc", &app.replica).await;
            db += timed.elapsed();
        }
        result?;
    }
    if orphans {
        report.orphans = Some(orphan_sweep(app, dry_run).await?);
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    report.db_ms = db.as_millis() as u64;
    let c = |k: &str| report.counts.get(k).copied().unwrap_or(0);
    tracing::info!(
        event = "gc_sweep",
        dry_run,
        skipped = report.skipped.as_deref().unwrap_or(""),
        removed = c("removed"),
        not_found = c("not_found"),
        referenced = c("referenced"),
        cooldown = c("cooldown"),
        error = c("error"),
        duration_ms = report.duration_ms,
        db_ms = report.db_ms,
    );
    if !dry_run {
        metrics::counter!("berth_gc_sweeps_total").increment(1);
        metrics::histogram!("berth_gc_sweep_duration_seconds").record(started.elapsed().as_secs_f64());
    }
    Ok(report)
}

async fn sweep_volumes(app: &Arc<App>, dry_run: bool, report: &mut GcReport, db: &mut Duration) -> Result<()> {
    let cfg = &app.config.gc;
    let t = now();
    let timed = Instant::now();
    let claimed = app
        .meta
        .claim_gc(&app.replica, t, cfg.cooldown_secs, t.plus_secs(cfg.claim_ttl_secs), cfg.batch, dry_run)
        .await?;
    let cooldown = app.meta.count_gc_cooldown(t, cfg.cooldown_secs).await?;
    *db += timed.elapsed();
    let mut summary = Summary::default();
    summary.add(Outcome::Cooldown, cooldown);
    let plan: Vec<(Claimed, Action)> = {
        let by_owner: std::collections::BTreeMap<_, _> =
            claimed.iter().map(|c| (c.candidate.owner.clone(), c.clone())).collect();
        gc::plan(claimed.into_iter().map(|c| c.candidate).collect(), t)
            .into_iter()
            .filter_map(|(cand, action)| by_owner.get(&cand.owner).cloned().map(|c| (c, action)))
            .collect()
    };
    if dry_run {
        for (c, action) in &plan {
            let outcome = match action {
                Action::Remove => "remove".to_string(),
                Action::Skip(o) => o.as_str().to_string(),
            };
            report.volumes.push(item(c, outcome, None));
        }
        report.counts = summary.counts().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        return Ok(());
    }
    // The time bound stops new attempts; one already running finishes and is recorded, so
    // no removal is ever left done-but-unrecorded by the bound.
    let deadline = Instant::now() + Duration::from_secs(cfg.timeout_secs.max(1));
    let done = std::sync::Mutex::new(Vec::new());
    let late = std::sync::Mutex::new(Vec::new());
    let db_spent = std::sync::Mutex::new(Duration::ZERO);
    futures::stream::iter(plan.iter())
        .for_each_concurrent(cfg.concurrency.max(1), |(c, action)| {
            let (done, late, db_spent) = (&done, &late, &db_spent);
            async move {
                if Instant::now() >= deadline {
                    if let Ok(mut l) = late.lock() {
                        l.push(c.candidate.owner.clone());
                    }
                    return;
                }
                let (outcome, error) = match action {
                    Action::Skip(o) => (*o, None),
                    Action::Remove => {
                        metrics::counter!("berth_gc_attempts_total").increment(1);
                        match app.volumes.delete(&c.candidate.volume).await {
                            Ok(Removal::Removed) => (Outcome::Removed, None),
                            Ok(Removal::NotFound) => (Outcome::NotFound, None),
                            Ok(Removal::Referenced { by }) => (Outcome::Referenced, Some(format!("in use: {by}"))),
                            Err(e) => (Outcome::Error, Some(e.to_string())),
                        }
                    }
                };
                let timed = Instant::now();
                let recorded = app.meta.record_gc(c, &app.replica, outcome, error.as_deref(), now()).await;
                if let Ok(mut d) = db_spent.lock() {
                    *d += timed.elapsed();
                }
                if let Err(e) = recorded {
                    tracing::warn!(event = "gc_record_failed", owner = %c.candidate.owner, error = %e);
                }
                metrics::counter!("berth_gc_outcomes_total", "outcome" => outcome.as_str()).increment(1);
                if let Ok(mut d) = done.lock() {
                    d.push(item(c, outcome.as_str().to_string(), error));
                }
            }
        })
        .await;
    *db += db_spent.into_inner().unwrap_or_default();
    let done = done.into_inner().unwrap_or_default();
    let late = late.into_inner().unwrap_or_default();
    if !late.is_empty() {
        // Hand what was not attempted back at once, so the next sweep takes it.
        for owner in &late {
            let _ = app.meta.release_claim(owner, &app.replica).await;
        }
        tracing::warn!(event = "gc_sweep_time_bound", attempted = done.len(), deferred = late.len());
    }
    for i in &done {
        if let Some(o) = Outcome::ALL.iter().find(|o| o.as_str() == i.outcome) {
            summary.add(*o, 1);
        }
    }
    report.volumes = done;
    report.volumes.sort_by(|a, b| a.owner.cmp(&b.owner));
    report.counts = summary.counts().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    Ok(())
}

fn item(c: &Claimed, outcome: String, error: Option<String>) -> GcItem {
    GcItem {
        owner: c.candidate.owner.to_string(),
        generation: c.candidate.generation.0,
        volume: c.candidate.volume.to_string(),
        outcome,
        error,
    }
}

/// Runs the orphan sweep (`dry_run`: plan only): volumes labelled as this installation's with
/// no record are tracked, and removed once they stay so for the grace window.
pub async fn orphan_sweep(app: &Arc<App>, dry_run: bool) -> Result<Vec<OrphanItem>> {
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

async fn orphan_sweep_locked(app: &Arc<App>, dry_run: bool) -> Result<Vec<OrphanItem>> {
    let t = now();
    // List the substrate first: a volume created after this listing is not considered, and one
    // listed here had its record written before it was created.
    let listed: BTreeSet<_> =
        app.volumes.list(&install_selector(&app.install)).await?.into_iter().map(|v| v.name).collect();
    let known = app.meta.known_volumes().await?;
    let tracked = app.meta.orphans().await?;
    let plan = gc::orphan_plan(&listed, &known, &tracked, t, app.config.gc.orphan_grace_secs);
    let mut out = Vec::new();
    for (name, action) in plan {
        let (label, until) = match action {
            OrphanAction::Track => ("track", None),
            OrphanAction::Wait { until } => ("wait", Some(ts(until))),
            OrphanAction::Remove => ("remove", None),
            OrphanAction::Forget => ("forget", None),
        };
        let mut label = label.to_string();
        if !dry_run {
            match action {
                OrphanAction::Track => app.meta.track_orphan(&name, t).await?,
                OrphanAction::Wait { .. } => {}
                OrphanAction::Forget => app.meta.forget_orphan(&name, None, t).await?,
                OrphanAction::Remove => {
                    metrics::counter!("berth_volume_delete_attempts_total", "by" => "orphan_sweep").increment(1);
                    label = match app.volumes.delete(&name).await {
                        Ok(Removal::Removed) => {
                            app.meta.forget_orphan(&name, Some(Outcome::Removed), now()).await?;
                            "removed".into()
                        }
                        Ok(Removal::NotFound) => {
                            app.meta.forget_orphan(&name, Some(Outcome::NotFound), now()).await?;
                            "not_found".into()
                        }
                        Ok(Removal::Referenced { .. }) => "referenced".into(),
                        Err(e) => {
                            tracing::warn!(event = "orphan_remove_failed", volume = %name, error = %e);
                            "error".into()
                        }
                    }
                }
            }
        }
        out.push(OrphanItem { volume: name.to_string(), action: label, until });
    }
    if !out.is_empty() {
        tracing::info!(event = "orphan_sweep", dry_run, volumes = out.len());
    }
    Ok(out)
}
