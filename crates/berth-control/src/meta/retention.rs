//! What scheduled retention and prune need from the metadata store: the turns of scheduled
//! jobs across replicas, the snapshots something still points at, the workspaces retention
//! applies to, retired pointers, store-wide events, and the deletion of old rows in batches.

use std::collections::{HashMap, HashSet};

use berth_core::id::SnapshotId;
use berth_core::retention::Policy;
use berth_core::session::ReplicaId;
use berth_core::time::Timestamp;
use berth_core::workspace::{Generation, WorkspaceId};
use sqlx::Row;

use super::{begin, record, Meta, NewEvent};
use crate::error::{Error, Result};

/// A table whose old rows are deleted after a horizon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Audit events, by when they happened.
    Events,
    /// Sessions, by when they ended (never one a workspace's at-risk record names).
    Sessions,
    /// Snapshot pointers, by when they were retired (deletion, retention).
    Snapshots,
    /// Drains, by when they cleared (never a running one).
    Drains,
}

impl Table {
    /// Every table with a horizon.
    pub const ALL: [Table; 4] = [Table::Events, Table::Sessions, Table::Snapshots, Table::Drains];

    /// The table's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Sessions => "sessions",
            Table::Snapshots => "snapshots",
            Table::Drains => "drains",
        }
    }

    /// Deletes up to `$2` rows older than `$1`. Each picks its rows by key in a subquery, which
    /// both dialects bound with `LIMIT`.
    fn delete_sql(self) -> &'static str {
        match self {
            Table::Events => {
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < $1 ORDER BY id LIMIT $2)"
            }
            Table::Sessions => {
                "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE ended_at IS NOT NULL \
                 AND ended_at < $1 AND id NOT IN (SELECT at_risk_session FROM workspaces \
                 WHERE at_risk_session IS NOT NULL) LIMIT $2)"
            }
            Table::Snapshots => {
                "DELETE FROM snapshots WHERE retired_at IS NOT NULL AND retired_at < $1 AND snapshot_id IN \
                 (SELECT snapshot_id FROM snapshots WHERE retired_at IS NOT NULL AND retired_at < $1 LIMIT $2)"
            }
            Table::Drains => {
                "DELETE FROM drains WHERE scope IN (SELECT scope FROM drains WHERE state = 'open' \
                 AND cleared_at IS NOT NULL AND cleared_at < $1 LIMIT $2)"
            }
        }
    }
}

/// The snapshots something still points at: every workspace's latest pointer (what the next
/// attach restores), the last snapshot each live session published, and the final snapshot of
/// every session in a scope that is draining (what a pending handover restores).
const PINNED_SQL: &str = "\
    SELECT latest_snapshot FROM workspaces WHERE latest_snapshot IS NOT NULL \
    UNION SELECT p.snapshot_id FROM snapshots p JOIN sessions s ON s.id = p.session_id \
      WHERE s.ended_at IS NULL \
      AND p.recorded_at = (SELECT MAX(q.recorded_at) FROM snapshots q WHERE q.session_id = s.id) \
    UNION SELECT s.final_snapshot FROM sessions s WHERE s.final_snapshot IS NOT NULL \
      AND EXISTS (SELECT 1 FROM drains d WHERE d.state = 'draining' AND (d.scope = 'workspace:' || s.owner \
      OR d.scope = 'node:' || s.node OR d.scope = 'pool:' || s.pool))";

impl Meta {
    /// Takes this period's turn of the scheduled job `name`: answers true to exactly one caller
    /// (of any replica) per `period_secs`, counted from the turn taken before.
    pub async fn take_turn(&self, name: &str, holder: &ReplicaId, now: Timestamp, period_secs: i64) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO locks (name, holder, until) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
             SET holder = excluded.holder, until = excluded.until WHERE locks.until <= $4",
        )
        .bind(format!("turn:{name}"))
        .bind(holder.as_str())
        .bind(now.plus_secs(period_secs.max(1)).0)
        .bind(now.0)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// The snapshots retention must keep whatever its policy says (see [`PINNED_SQL`]). Read
    /// after the store's records are listed, so a pointer that moves meanwhile moves to a record
    /// the listing does not hold, or to one read here.
    pub async fn pinned_snapshots(&self) -> Result<HashSet<SnapshotId>> {
        let rows = sqlx::query(PINNED_SQL).fetch_all(&self.read).await?;
        rows.iter()
            .map(|r| {
                let hex: String = r.try_get(0)?;
                SnapshotId::from_hex(&hex).map_err(|e| Error::Corrupt(format!("snapshot pointer {hex}: {e}")))
            })
            .collect()
    }

    /// The workspace generations retention applies to, each with its own policy if it has one:
    /// those of active and closed workspaces (a deleting one's records are forgotten by its
    /// deletion).
    pub async fn retained_generations(&self) -> Result<HashMap<(WorkspaceId, Generation), Option<Policy>>> {
        let rows =
            sqlx::query("SELECT owner, generation, retention FROM workspaces WHERE state IN ('active', 'closed')")
                .fetch_all(&self.read)
                .await?;
        rows.iter()
            .map(|r| {
                let owner = WorkspaceId::new(r.try_get::<String, _>(0)?).map_err(|e| Error::Corrupt(e.to_string()))?;
                let policy = r
                    .try_get::<Option<String>, _>(2)?
                    .map(|p| Policy::parse(&p).map_err(|e| Error::Corrupt(format!("retention policy '{p}': {e}"))))
                    .transpose()?;
                Ok(((owner, Generation(r.try_get::<i64, _>(1)? as u64)), policy))
            })
            .collect()
    }

    /// Marks the pointers of snapshots retention forgot as retired; returns how many it marked.
    pub async fn retire_snapshots(
        &self,
        owner: &WorkspaceId,
        generation: Generation,
        ids: &[SnapshotId],
        now: Timestamp,
    ) -> Result<u64> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let mut n = 0;
        for id in ids {
            n += sqlx::query(
                "UPDATE snapshots SET retired_at = $1 WHERE owner = $2 AND generation = $3 AND snapshot_id = $4 \
                 AND retired_at IS NULL",
            )
            .bind(now.0)
            .bind(owner.as_str())
            .bind(generation.0 as i64)
            .bind(id.to_hex())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Records a store-wide audit event (`retention_applied`, `prune_done`, `rows_purged`).
    pub async fn record_event(&self, kind: &str, detail: serde_json::Value, now: Timestamp) -> Result<()> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        record(&mut tx, now, NewEvent { kind, detail, ..Default::default() }).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes up to `batch` rows of `table` older than `before`; returns how many went.
    pub async fn purge(&self, table: Table, before: Timestamp, batch: u32) -> Result<u64> {
        let n = sqlx::query(table.delete_sql())
            .bind(before.0)
            .bind(batch.max(1) as i64)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(n)
    }
}
