//! Workspace records: ensure (idempotent, with generations), read, list, close, ask for deletion.

use std::collections::BTreeMap;

use berth_core::gc::DeleteStep;
use berth_core::repo::RepoSpec;
use berth_core::time::Timestamp;
use berth_core::volume::{AccessMode, VolumeName};
use berth_core::workspace::{Generation, WorkspaceId};
use serde_json::json;

use super::{begin, random_hex, record, ws_from_row, Meta, NewEvent, State, WorkspaceRow, WS_SELECT};
use crate::error::{Error, Result};

/// The validated options of an ensure, with server defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnsureOptions {
    /// Volume size.
    pub size_bytes: u64,
    /// Storage class.
    pub storage_class: Option<String>,
    /// Access mode.
    pub access_mode: AccessMode,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Repositories.
    pub repos: Vec<RepoSpec>,
}

/// What an ensure did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// The owner had no record: generation 1 was created.
    Created,
    /// The workspace was already active.
    Existing,
    /// A closed workspace was reopened.
    Reopened,
    /// A deleted owner's name was reused: a new generation.
    NewGeneration,
}

/// Filters of a workspace listing.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this state.
    pub state: Option<State>,
    /// Only workspaces carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
}

impl Meta {
    /// Ensures `owner`'s workspace record. The volume is created by the caller afterwards (the
    /// record comes first, so the substrate never holds a volume berth does not know).
    pub async fn ensure_workspace(
        &self,
        owner: &WorkspaceId,
        opts: &EnsureOptions,
        now: Timestamp,
    ) -> Result<(WorkspaceRow, Ensured)> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let labels = serde_json::to_string(&opts.labels).unwrap_or_else(|_| "{}".into());
        let repos = serde_json::to_string(&opts.repos).unwrap_or_else(|_| "[]".into());
        let volume = VolumeName::derive(owner, Generation(1));
        let inserted = sqlx::query(
            "INSERT INTO workspaces (owner, id, generation, state, volume, volume_state, size_bytes, storage_class, \
             access_mode, labels, repos, created_at, updated_at) \
             VALUES ($1, $2, 1, 'active', $3, 'pending', $4, $5, $6, $7, $8, $9, $9) ON CONFLICT (owner) DO NOTHING",
        )
        .bind(owner.as_str())
        .bind(format!("ws_{}", random_hex(16)))
        .bind(volume.as_str())
        .bind(opts.size_bytes as i64)
        .bind(opts.storage_class.clone())
        .bind(opts.access_mode.as_str())
        .bind(labels.clone())
        .bind(repos.clone())
        .bind(now.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let ws = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| Error::NotFound(owner.to_string()))?;
        let how = if inserted == 1 {
            let detail = json!({"generation": 1, "volume": volume.as_str()});
            let ev = NewEvent::of("workspace_ensured", owner, Generation(1)).detail(detail);
            record(&mut tx, now, ev).await?;
            Ensured::Created
        } else {
            match ws.state {
                State::Active => Ensured::Existing,
                State::Closed => {
                    if ws.claim_until.is_some_and(|u| u > now) {
                        return Err(Error::Busy {
                            message: format!("workspace {owner} is closed and its volume is being garbage-collected"),
                            retry_after_secs: ((ws.claim_until.unwrap_or(now).0 - now.0) / 1_000_000_000 + 1) as u64,
                        });
                    }
                    sqlx::query(
                        "UPDATE workspaces SET state = 'active', closed_at = NULL, updated_at = $2, \
                         volume_state = CASE WHEN volume_state = 'removed' THEN 'pending' ELSE volume_state END, \
                         volume_removed_at = NULL, attempts = 0, retry_at = NULL, last_error = NULL WHERE owner = $1",
                    )
                    .bind(owner.as_str())
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await?;
                    let ev = NewEvent::of("workspace_reopened", owner, ws.generation);
                    record(&mut tx, now, ev).await?;
                    Ensured::Reopened
                }
                State::Deleting => {
                    return Err(Error::WrongState(format!(
                        "workspace {owner} is being deleted; ensure it again once the deletion completes \
                         (GET /v1/workspaces/{owner} shows its progress)"
                    )))
                }
                State::Deleted => {
                    // The generation was bumped when the deletion completed.
                    let volume = VolumeName::derive(owner, ws.generation);
                    sqlx::query(
                        "UPDATE workspaces SET id = $2, state = 'active', volume = $3, volume_state = 'pending', \
                         volume_removed_at = NULL, volume_outcome = NULL, size_bytes = $4, storage_class = $5, \
                         access_mode = $6, labels = $7, repos = $8, lease_session = NULL, lease_instance = NULL, \
                         lease_expires = 0, latest_snapshot = NULL, delete_step = NULL, last_error = NULL, \
                         attempts = 0, retry_at = NULL, claim_holder = NULL, claim_until = NULL, closed_at = NULL, \
                         updated_at = $9 WHERE owner = $1",
                    )
                    .bind(owner.as_str())
                    .bind(format!("ws_{}", random_hex(16)))
                    .bind(volume.as_str())
                    .bind(opts.size_bytes as i64)
                    .bind(opts.storage_class.clone())
                    .bind(opts.access_mode.as_str())
                    .bind(labels)
                    .bind(repos)
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await?;
                    let detail = json!({"generation": ws.generation.0, "volume": volume.as_str()});
                    let ev = NewEvent::of("workspace_ensured", owner, ws.generation).detail(detail);
                    record(&mut tx, now, ev).await?;
                    Ensured::NewGeneration
                }
            }
        };
        let ws = if how == Ensured::Existing {
            ws
        } else {
            self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| Error::NotFound(owner.to_string()))?
        };
        tx.commit().await?;
        Ok((ws, how))
    }

    /// Marks the volume of `owner`'s `generation` present, once the substrate has it.
    pub async fn mark_volume_present(&self, owner: &WorkspaceId, generation: Generation, now: Timestamp) -> Result<()> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let n = sqlx::query(
            "UPDATE workspaces SET volume_state = 'present', updated_at = $3 \
             WHERE owner = $1 AND generation = $2 AND volume_state = 'pending' AND state = 'active'",
        )
        .bind(owner.as_str())
        .bind(generation.0 as i64)
        .bind(now.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            let ev = NewEvent::of("volume_created", owner, generation);
            record(&mut tx, now, ev).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Reads one workspace.
    pub async fn workspace(&self, owner: &WorkspaceId) -> Result<Option<WorkspaceRow>> {
        let sql = format!("{WS_SELECT} WHERE w.owner = $1");
        let row = sqlx::query(&sql).bind(owner.as_str()).fetch_optional(&self.read).await?;
        row.as_ref().map(|r| ws_from_row(r, self.rules)).transpose()
    }

    /// Lists workspaces ordered by owner, starting after `after`; returns at most `limit` and
    /// whether more follow.
    pub async fn workspaces(
        &self,
        filter: &ListFilter,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<(Vec<WorkspaceRow>, bool)> {
        // Labels are JSON text: filter them here, reading pages until the page is full.
        let sql = format!("{WS_SELECT} WHERE w.owner > $1 AND ($2 IS NULL OR w.state = $2) ORDER BY w.owner LIMIT $3");
        let page = (limit + 1).max(if filter.labels.is_empty() { 0 } else { 500 });
        let mut cursor = after.map(|a| a.to_string()).unwrap_or_default();
        let mut out = Vec::new();
        loop {
            let rows = sqlx::query(&sql)
                .bind(cursor.clone())
                .bind(filter.state.map(|s| s.as_str().to_string()))
                .bind(page as i64)
                .fetch_all(&self.read)
                .await?;
            let n = rows.len();
            for row in &rows {
                let ws = ws_from_row(row, self.rules)?;
                cursor = ws.owner.to_string();
                if filter.labels.iter().all(|(k, v)| ws.labels.get(k) == Some(v)) {
                    if out.len() == limit {
                        return Ok((out, true));
                    }
                    out.push(ws);
                }
            }
            if n < page {
                return Ok((out, false));
            }
        }
    }

    /// Closes an active workspace: no more attaches; its volume becomes a GC candidate after the
    /// cooldown, its snapshots stay. Refused while a session holds a live lease (its final
    /// snapshot may still be on the way): detach it first.
    pub async fn close_workspace(&self, owner: &WorkspaceId, now: Timestamp) -> Result<WorkspaceRow> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let ws = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| not_found(owner))?;
        match ws.state {
            State::Closed => return Ok(ws),
            State::Deleting | State::Deleted => {
                return Err(Error::WrongState(format!(
                    "workspace {owner} is {}; it cannot be closed",
                    ws.state.as_str()
                )))
            }
            State::Active => {}
        }
        if let Some(holder) = ws.lease.holder.clone().filter(|_| ws.lease.is_live(now)) {
            return Err(Error::LeaseHeld { holder, epoch: ws.lease.epoch, expires: ws.lease.expires });
        }
        sqlx::query(
            "UPDATE workspaces SET state = 'closed', closed_at = $2, updated_at = $2, lease_session = NULL, \
             lease_instance = NULL, lease_expires = 0 WHERE owner = $1",
        )
        .bind(owner.as_str())
        .bind(now.0)
        .execute(&mut *tx)
        .await?;
        end_open_sessions(&mut tx, owner, now, "closed").await?;
        let ev = NewEvent::of("workspace_closed", owner, ws.generation);
        record(&mut tx, now, ev).await?;
        let ws = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| not_found(owner))?;
        tx.commit().await?;
        Ok(ws)
    }

    /// Asks for the deletion of `owner`'s workspace; the deletion reconciler carries it out.
    /// Returns the record and whether this call started the deletion.
    pub async fn request_delete(&self, owner: &WorkspaceId, now: Timestamp) -> Result<(WorkspaceRow, bool)> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let ws = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| not_found(owner))?;
        if matches!(ws.state, State::Deleting | State::Deleted) {
            return Ok((ws, false));
        }
        sqlx::query(
            "UPDATE workspaces SET state = 'deleting', delete_step = $2, attempts = 0, retry_at = NULL, \
             last_error = NULL, updated_at = $3 WHERE owner = $1",
        )
        .bind(owner.as_str())
        .bind(DeleteStep::EndSessions.as_str())
        .bind(now.0)
        .execute(&mut *tx)
        .await?;
        let ev = NewEvent::of("workspace_delete_requested", owner, ws.generation);
        record(&mut tx, now, ev).await?;
        let ws = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| not_found(owner))?;
        tx.commit().await?;
        Ok((ws, true))
    }

    /// Counts workspaces in `state` (for metrics and benchmarks).
    pub async fn count_workspaces(&self, state: State) -> Result<u64> {
        use sqlx::Row;
        let row = sqlx::query("SELECT COUNT(*) FROM workspaces WHERE state = $1")
            .bind(state.as_str())
            .fetch_one(&self.read)
            .await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }
}

pub(super) fn not_found(owner: &WorkspaceId) -> Error {
    Error::NotFound(format!("workspace {owner} does not exist; create it with PUT /v1/workspaces/{owner}"))
}

/// Ends every open session of `owner` with `reason`.
pub(super) async fn end_open_sessions(
    conn: &mut sqlx::AnyConnection,
    owner: &WorkspaceId,
    now: Timestamp,
    reason: &str,
) -> Result<u64> {
    let n = sqlx::query("UPDATE sessions SET ended_at = $2, end_reason = $3 WHERE owner = $1 AND ended_at IS NULL")
        .bind(owner.as_str())
        .bind(now.0)
        .bind(reason)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(n)
}
