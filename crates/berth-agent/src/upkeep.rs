//! The store's upkeep where no control plane does it: the agent applies its retention policy
//! to its own workspace generation every `--retention-interval`, and prunes the store every
//! `--prune-interval` (off by default: a store is best pruned from one place), beside the
//! snapshot loop and never blocking it.
//!
//! # Guarantees
//! - The latest snapshot is always kept (retention's rule), so the agent's own lineage and
//!   what the next init restores are never forgotten.
//! - A prune holds the store's prune lock and keeps its two-phase grace.
//!
//! # Caveats
//! - A prune still running when the process exits leaves the store's prune lock behind; the
//!   next prune takes it over once it misses its heartbeats (`berth_engine::prune_lock`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_engine::maintain;
use berth_engine::snapshot_store::SnapshotStore;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;

/// Runs retention and prune on their schedules until `stop` (checked between runs, so a prune
/// under way finishes and releases its lock).
pub async fn run(cfg: Arc<AgentConfig>, store: SnapshotStore, stop: CancellationToken) {
    let forget_every = cfg.retention.map(|_| Duration::from_secs(cfg.retention_interval_secs.max(1)));
    let prune_every = (cfg.prune_interval_secs > 0).then(|| Duration::from_secs(cfg.prune_interval_secs));
    let mut next_forget = forget_every.map(|e| Instant::now() + e);
    let mut next_prune = prune_every.map(|e| Instant::now() + e);
    loop {
        let Some(next) = next_forget.into_iter().chain(next_prune).min() else { return };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        if let (Some(at), Some(every), Some(policy)) = (next_forget, forget_every, cfg.retention) {
            if Instant::now() >= at {
                next_forget = Some(Instant::now() + every);
                forget(&cfg, &store, &policy).await;
            }
        }
        if let (Some(at), Some(every)) = (next_prune, prune_every) {
            if Instant::now() >= at {
                next_prune = Some(Instant::now() + every);
                prune(&cfg, &store).await;
            }
        }
    }
}

/// Applies `policy` to this workspace generation's snapshots; logs `retention_applied`.
pub async fn forget(cfg: &AgentConfig, store: &SnapshotStore, policy: &berth_core::retention::Policy) {
    let started = Instant::now();
    let result = async {
        let records = store.list(Some(&cfg.workspace), Some(cfg.generation)).await?;
        let plan = maintain::forget_plan(&records, policy);
        let kept = plan.iter().flat_map(|g| &g.decisions).filter(|d| d.keep).count();
        let forgotten = maintain::forget_apply(store, &plan).await?;
        Ok::<_, berth_engine::error::EngineError>((kept, forgotten))
    }
    .await;
    match result {
        Ok((kept, forgotten)) => {
            metrics::counter!("berth_agent_snapshots_forgotten_total").increment(forgotten);
            tracing::info!(event = "retention_applied", policy = %policy, kept, forgotten,
                duration_ms = started.elapsed().as_millis() as u64);
        }
        Err(e) => tracing::warn!(event = "retention_failed", error = %e),
    }
}

/// Prunes the store under its prune lock; logs `prune_done`.
pub async fn prune(cfg: &AgentConfig, store: &SnapshotStore) {
    let started = Instant::now();
    match maintain::prune(
        store,
        cfg.prune_grace_secs,
        cfg.instance.as_str(),
        berth_engine::prune_lock::HEARTBEAT,
        false,
    )
    .await
    {
        Ok((plan, outcome)) => {
            let o = outcome.unwrap_or_default();
            metrics::counter!("berth_agent_prune_bytes_deleted_total").increment(o.bytes_deleted);
            tracing::info!(
                event = "prune_done",
                packs_deleted = o.packs_deleted,
                bytes_deleted = o.bytes_deleted,
                marked = o.marked,
                waiting = plan.plan.waiting,
                packs_total = plan.plan.packs_total,
                index_objects_compacted = o.index_objects_compacted,
                duration_ms = started.elapsed().as_millis() as u64
            );
        }
        Err(e) => tracing::warn!(event = "prune_failed", error = %e),
    }
}
