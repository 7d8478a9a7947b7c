//! Cleanup records: volume GC claims and marks, the deletion steps, the orphan registry and the
//! named locks that keep sweeps of several replicas from overlapping.
//!
//! # Guarantees
//! - A claim (`claim_holder`, `claim_until`) is taken with `FOR UPDATE SKIP LOCKED` on
//!   PostgreSQL (SQLite serialises writers), so two replicas never work on one workspace at once.
//! - The removal mark is decided by `berth_core::lifecycle` under the row lock: it never
//!   overwrites an earlier mark, and a marked volume is never a candidate again, across restarts.
//! - Every deletion step advances only from the step it expects, under the caller's claim.

use std::collections::{BTreeMap, BTreeSet};

use berth_core::gc::{Candidate, DeleteStep, Outcome};
use berth_core::lifecycle::{AtRiskRemoval, Event, VolumeState};
use berth_core::session::ReplicaId;
use berth_core::time::Timestamp;
use berth_core::volume::VolumeName;
use berth_core::workspace::{Generation, WorkspaceId};
use serde_json::json;
use sqlx::Row;

use super::{at_risk_from_row, begin, lease_from_row, record, Meta, NewEvent};
use crate::error::{Error, Result};

/// A workspace a reconciler claimed (or, in a dry run, would).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// The GC view of it.
    pub candidate: Candidate,
    /// The next deletion step, for a deleting workspace.
    pub step: Option<DeleteStep>,
    /// Whether its volume is already marked removed.
    pub volume_removed: bool,
}

/// An orphan the sweep is tracking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrphanRow {
    /// The volume.
    pub volume: VolumeName,
    /// When the sweep first saw it without a record.
    pub first_seen: Timestamp,
}

const CLAIM_COLS: &str = "owner, generation, volume, volume_state, lease_epoch, lease_session, lease_instance, \
    lease_expires, delete_step, at_risk_since, at_risk_outcome, at_risk_session";

const GC_WHERE: &str = "state IN ('closed', 'deleted') AND volume_state <> 'removed' AND closed_at <= $3 \
    AND (retry_at IS NULL OR retry_at <= $4) AND (claim_until IS NULL OR claim_until < $4)";

fn claimed_from_row(row: &sqlx::any::AnyRow) -> Result<Claimed> {
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(e.to_string());
    let step = match row.try_get::<Option<String>, _>("delete_step")? {
        Some(s) => Some(DeleteStep::parse(&s).ok_or_else(|| Error::Corrupt(format!("delete step '{s}'")))?),
        None => None,
    };
    Ok(Claimed {
        candidate: Candidate {
            owner: WorkspaceId::new(row.try_get::<String, _>("owner")?).map_err(|e| corrupt(&e))?,
            generation: Generation(row.try_get::<i64, _>("generation")? as u64),
            volume: VolumeName::new(row.try_get::<String, _>("volume")?).map_err(|e| corrupt(&e))?,
            lease: lease_from_row(row)?,
            at_risk: at_risk_from_row(row)?,
        },
        step,
        volume_removed: row.try_get::<String, _>("volume_state")? == VolumeState::Removed.as_str(),
    })
}

impl Meta {
    /// Takes (or renews) the named lock for `ttl_secs`; returns whether this holder has it.
    pub async fn try_lock(&self, name: &str, holder: &ReplicaId, now: Timestamp, ttl_secs: i64) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO locks (name, holder, until) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
             SET holder = excluded.holder, until = excluded.until WHERE locks.until < $4 OR locks.holder = $2",
        )
        .bind(name)
        .bind(holder.as_str())
        .bind(now.plus_secs(ttl_secs).0)
        .bind(now.0)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Releases the named lock if this holder has it.
    pub async fn unlock(&self, name: &str, holder: &ReplicaId) -> Result<()> {
        sqlx::query("DELETE FROM locks WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder.as_str())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Claims up to `limit` GC candidates (closed or deleted, volume not marked removed, closed
    /// at least `cooldown_secs` ago, not backing off, not claimed), newest first, until `until`.
    /// With `dry_run`, only reads them.
    pub async fn claim_gc(
        &self,
        holder: &ReplicaId,
        now: Timestamp,
        cooldown_secs: i64,
        until: Timestamp,
        limit: u32,
        dry_run: bool,
    ) -> Result<Vec<Claimed>> {
        // One set of parameters for both: the dry run names $1 and $2 without using them.
        let (sql, pool) = if dry_run {
            let sql = format!(
                "SELECT {CLAIM_COLS} FROM workspaces WHERE $1 = $1 AND $2 = $2 AND {GC_WHERE} ORDER BY closed_at DESC LIMIT $5"
            );
            (sql, &self.read)
        } else {
            let sql = format!(
                "UPDATE workspaces SET claim_holder = $1, claim_until = $2 WHERE owner IN \
                 (SELECT owner FROM workspaces WHERE {GC_WHERE} ORDER BY closed_at DESC LIMIT $5{}) RETURNING {CLAIM_COLS}",
                self.skip_locked()
            );
            (sql, &self.write)
        };
        let rows = sqlx::query(&sql)
            .bind(holder.as_str())
            .bind(until.0)
            .bind(now.plus_secs(-cooldown_secs).0)
            .bind(now.0)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
        let mut out = rows.iter().map(claimed_from_row).collect::<Result<Vec<_>>>()?;
        // RETURNING gives no order; keep the plan in a stable one.
        out.sort_by(|a, b| a.candidate.owner.cmp(&b.candidate.owner));
        Ok(out)
    }

    /// Counts candidates held back this sweep: closed too recently, or backing off.
    pub async fn count_gc_cooldown(&self, now: Timestamp, cooldown_secs: i64) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM workspaces WHERE state IN ('closed', 'deleted') AND volume_state <> 'removed' \
             AND (closed_at > $1 OR retry_at > $2)",
        )
        .bind(now.plus_secs(-cooldown_secs).0)
        .bind(now.0)
        .fetch_one(&self.read)
        .await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }

    /// Counts workspaces at risk whose volume is not marked removed.
    pub async fn count_at_risk(&self) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM workspaces WHERE at_risk_since IS NOT NULL AND volume_state <> 'removed'",
        )
        .fetch_one(&self.read)
        .await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }

    /// Counts closed or deleted workspaces whose volume is not marked removed, claimed or not.
    pub async fn count_unremoved(&self) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM workspaces WHERE state IN ('closed', 'deleted') AND volume_state <> 'removed'",
        )
        .fetch_one(&self.read)
        .await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }

    /// Records the outcome of a GC attempt on a claimed candidate. Removed and not found mark
    /// the volume removed (never overwriting an earlier mark; an at-risk volume's removal is
    /// recorded with `at_risk_removal`); referenced, error and at risk release the claim with a
    /// durable backoff. Returns whether this call marked the volume.
    pub async fn record_gc(
        &self,
        claimed: &Claimed,
        holder: &ReplicaId,
        (outcome, error): (Outcome, Option<&str>),
        at_risk_removal: Option<AtRiskRemoval>,
        now: Timestamp,
    ) -> Result<bool> {
        let c = &claimed.candidate;
        let event = Event::Collected {
            holder: holder.clone(),
            generation: c.generation,
            outcome,
            error: error.map(String::from),
            at_risk_removal,
        };
        let (before, after) = self.transition(&c.owner, event, now).await?;
        Ok(before.volume.state != VolumeState::Removed && after.volume.state == VolumeState::Removed)
    }

    /// Claims up to `limit` deleting workspaces that are not backing off or claimed.
    pub async fn claim_deleting(
        &self,
        holder: &ReplicaId,
        now: Timestamp,
        until: Timestamp,
        limit: u32,
    ) -> Result<Vec<Claimed>> {
        let sql = format!(
            "UPDATE workspaces SET claim_holder = $1, claim_until = $2 WHERE owner IN \
             (SELECT owner FROM workspaces WHERE state = 'deleting' AND (retry_at IS NULL OR retry_at <= $3) \
             AND (claim_until IS NULL OR claim_until < $3) ORDER BY updated_at LIMIT $4{}) RETURNING {CLAIM_COLS}",
            self.skip_locked()
        );
        let rows = sqlx::query(&sql)
            .bind(holder.as_str())
            .bind(until.0)
            .bind(now.0)
            .bind(i64::from(limit))
            .fetch_all(&self.write)
            .await?;
        rows.iter().map(claimed_from_row).collect()
    }

    /// Runs the bookkeeping of deletion step `step` of a claimed workspace and advances it.
    /// `DeleteVolume` takes the substrate's outcome (removed or not found). Returns false when
    /// the claim was lost or the step already ran (nothing changed).
    pub async fn delete_step_done(
        &self,
        claimed: &Claimed,
        holder: &ReplicaId,
        step: DeleteStep,
        volume: Option<Outcome>,
        now: Timestamp,
    ) -> Result<bool> {
        let c = &claimed.candidate;
        let event = Event::StepDone { holder: holder.clone(), generation: c.generation, step, volume };
        let (before, after) = self.transition(&c.owner, event, now).await?;
        Ok(before != after)
    }

    /// Records a failed deletion step (the volume is referenced or the substrate failed): the
    /// workspace stays deleting, visibly, and is retried after a durable backoff.
    pub async fn delete_step_failed(
        &self,
        claimed: &Claimed,
        holder: &ReplicaId,
        outcome: Outcome,
        error: &str,
        now: Timestamp,
    ) -> Result<()> {
        let c = &claimed.candidate;
        let event =
            Event::StepFailed { holder: holder.clone(), generation: c.generation, outcome, error: error.into() };
        self.transition(&c.owner, event, now).await.map(|_| ())
    }

    /// Releases a claim without recording anything (the work was cut short).
    pub async fn release_claim(&self, owner: &WorkspaceId, holder: &ReplicaId) -> Result<()> {
        sqlx::query(
            "UPDATE workspaces SET claim_holder = NULL, claim_until = NULL WHERE owner = $1 AND claim_holder = $2",
        )
        .bind(owner.as_str())
        .bind(holder.as_str())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Returns the volume names of every record whose volume is not marked removed.
    pub async fn known_volumes(&self) -> Result<BTreeSet<VolumeName>> {
        let rows =
            sqlx::query("SELECT volume FROM workspaces WHERE volume_state <> 'removed'").fetch_all(&self.read).await?;
        rows.iter()
            .map(|r| VolumeName::new(r.try_get::<String, _>(0)?).map_err(|e| Error::Corrupt(e.to_string())))
            .collect()
    }

    /// Returns the orphans being tracked.
    pub async fn orphans(&self) -> Result<BTreeMap<VolumeName, Timestamp>> {
        let rows = sqlx::query("SELECT volume, first_seen FROM orphans").fetch_all(&self.read).await?;
        rows.iter()
            .map(|r| {
                let name = VolumeName::new(r.try_get::<String, _>(0)?).map_err(|e| Error::Corrupt(e.to_string()))?;
                Ok((name, Timestamp(r.try_get(1)?)))
            })
            .collect()
    }

    /// Starts tracking an orphan seen at `now`.
    pub async fn track_orphan(&self, volume: &VolumeName, now: Timestamp) -> Result<()> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let n = sqlx::query("INSERT INTO orphans (volume, first_seen) VALUES ($1, $2) ON CONFLICT (volume) DO NOTHING")
            .bind(volume.as_str())
            .bind(now.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 1 {
            let ev =
                NewEvent { kind: "orphan_found", detail: json!({"volume": volume.as_str()}), ..Default::default() };
            record(&mut tx, now, ev).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stops tracking an orphan; with an outcome (removed, not found), records it.
    pub async fn forget_orphan(&self, volume: &VolumeName, outcome: Option<Outcome>, now: Timestamp) -> Result<()> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        sqlx::query("DELETE FROM orphans WHERE volume = $1").bind(volume.as_str()).execute(&mut *tx).await?;
        if let Some(o) = outcome {
            let ev = NewEvent {
                kind: "orphan_removed",
                detail: json!({"volume": volume.as_str(), "outcome": o.as_str()}),
                ..Default::default()
            };
            record(&mut tx, now, ev).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
