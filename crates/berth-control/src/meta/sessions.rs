//! Sessions and their lease: attach, heartbeat, detach, lease expiry; and snapshot pointers,
//! which a session publishes under its epoch.

use std::time::Duration;

use berth_core::drain::{self, Drain};
use berth_core::id::SnapshotId;
use berth_core::lease::{Acquired, Epoch, Holder, Lease};
use berth_core::lifecycle::{self, Event, Record, SessionEnd};
use berth_core::scope::Scope;
use berth_core::session::{InstanceId, PlaceName, SessionId};
use berth_core::time::Timestamp;
use berth_core::workspace::{Generation, WorkspaceId};
use serde_json::json;
use sqlx::{AnyConnection, Row};

use super::drains::DrainRow;
use super::workspaces::{not_found, refused};
use super::{begin, random_hex, record, token_hash, Meta, NewEvent, WorkspaceRow};
use crate::error::{Error, Result};

/// How often a claim request that waits looks again for a hand-over another replica made.
const CLAIM_RECHECK: Duration = Duration::from_millis(250);

/// Seconds an attach into a workspace whose previous sandbox is still draining should wait.
const HANDOVER_RETRY_SECS: u64 = 5;
/// Seconds an attach into a draining node or pool should wait.
const PLACE_RETRY_SECS: u64 = 30;

/// A session as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    /// Its id.
    pub id: SessionId,
    /// The owner it is attached to.
    pub owner: WorkspaceId,
    /// The generation it is attached to.
    pub generation: Generation,
    /// Its fencing epoch.
    pub epoch: Epoch,
    /// The sandbox instance.
    pub instance: InstanceId,
    /// The node.
    pub node: Option<PlaceName>,
    /// The pool.
    pub pool: Option<PlaceName>,
    /// When it ended, if it has.
    pub ended_at: Option<Timestamp>,
}

impl SessionRow {
    /// The drain scopes this session lives in: its workspace, node and pool.
    pub fn scopes(&self) -> Vec<Scope> {
        let mut scopes = vec![Scope::Workspace(self.owner.clone())];
        scopes.extend(self.node.clone().map(Scope::Node));
        scopes.extend(self.pool.clone().map(Scope::Pool));
        scopes
    }
}

/// A successful attach.
#[derive(Clone, Debug)]
pub struct Attached {
    /// The new session.
    pub session: SessionRow,
    /// The workspace after the attach.
    pub workspace: WorkspaceRow,
    /// The sandbox token (plaintext; only its hash is stored).
    pub token: String,
    /// When the lease ends unless renewed.
    pub expires: Timestamp,
    /// The nonce of a pending drain handover of this workspace.
    pub handover: Option<String>,
}

/// A successful heartbeat.
#[derive(Clone, Debug)]
pub struct HeartbeatOutcome {
    /// When the lease now ends.
    pub expires: Timestamp,
    /// The scopes of the session that are draining.
    pub draining: Vec<DrainRow>,
}

/// What a sandbox reported about one snapshot run; stored as JSON with the pointer.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotStats {
    /// Files in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// File bytes in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Bytes uploaded by the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_uploaded: Option<u64>,
    /// How long the run took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// A recorded snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRow {
    /// The snapshot id.
    pub snapshot_id: SnapshotId,
    /// The generation.
    pub generation: Generation,
    /// The epoch it was published under.
    pub epoch: Epoch,
    /// The publishing session.
    pub session: SessionId,
    /// When it was recorded.
    pub recorded_at: Timestamp,
    /// Statistics.
    pub stats: SnapshotStats,
}

pub(super) fn session_from_row(row: &sqlx::any::AnyRow) -> Result<SessionRow> {
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(e.to_string());
    let place = |v: Option<String>| v.map(PlaceName::new).transpose().map_err(|e| corrupt(&e));
    Ok(SessionRow {
        id: SessionId::new(row.try_get::<String, _>("id")?).map_err(|e| corrupt(&e))?,
        owner: WorkspaceId::new(row.try_get::<String, _>("owner")?).map_err(|e| corrupt(&e))?,
        generation: Generation(row.try_get::<i64, _>("generation")? as u64),
        epoch: Epoch(row.try_get::<i64, _>("epoch")? as u64),
        instance: InstanceId::new(row.try_get::<String, _>("instance")?).map_err(|e| corrupt(&e))?,
        node: place(row.try_get("node")?)?,
        pool: place(row.try_get("pool")?)?,
        ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(Timestamp),
    })
}

const SESSION_COLS: &str = "id, owner, generation, epoch, instance, node, pool, ended_at";

impl Meta {
    /// Attaches a sandbox to `owner`'s workspace: takes the lease with a new epoch.
    ///
    /// Refused with `LeaseHeld` while another lease is live, with `Draining` while the node or
    /// pool is draining or the workspace's previous sandbox is still draining (holding its
    /// lease). Once that sandbox has let go, the attach succeeds and carries the handover nonce.
    pub async fn attach(
        &self,
        owner: &WorkspaceId,
        instance: &InstanceId,
        node: Option<&PlaceName>,
        pool: Option<&PlaceName>,
        now: Timestamp,
    ) -> Result<Attached> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let ws = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| not_found(owner))?;
        lifecycle::step(&ws.record, Event::Attach, now).map_err(|r| refused(owner, r, now))?;
        let (before, generation) = (&ws.record.lease, ws.record.generation);
        let handover = self.handover(&mut tx, owner, node, pool, before.is_live(now), now).await?;
        let session = SessionId::new(format!("ses_{}", random_hex(16))).map_err(|e| Error::Corrupt(e.to_string()))?;
        let holder = Holder { session: session.clone(), instance: instance.clone() };
        let (lease, how) = before.acquire(holder, now, self.rules.lease_ttl_secs)?;
        let session = SessionRow {
            id: session,
            owner: owner.clone(),
            generation,
            epoch: lease.epoch,
            instance: instance.clone(),
            node: node.cloned(),
            pool: pool.cloned(),
            ended_at: None,
        };
        let token = format!("bst_{}", random_hex(32));
        insert_session(&mut tx, &session, &token_hash(&token), now).await?;
        if let (Acquired::TakenOver, Some(old)) = (how, &before.holder) {
            self.end_session_in(&mut tx, &ws, lease.clone(), &old.session, SessionEnd::Fenced, now).await?;
            let detail = json!({"previous_session": old.session.as_str(), "previous_instance": old.instance.as_str(),
                "previous_epoch": before.epoch, "epoch": lease.epoch});
            let ev = NewEvent::of("lease_taken_over", owner, generation).session(&session.id).detail(detail);
            record(&mut tx, now, ev).await?;
        } else {
            write_lease(&mut tx, owner, &lease, now).await?;
        }
        let detail = json!({"epoch": lease.epoch, "instance": instance.as_str(),
            "node": node.map(|n| n.as_str()), "pool": pool.map(|p| p.as_str()), "handover": handover.is_some()});
        let ev = NewEvent::of("session_attached", owner, generation).session(&session.id).detail(detail);
        record(&mut tx, now, ev).await?;
        let workspace = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| not_found(owner))?;
        tx.commit().await?;
        Ok(Attached { session, workspace, token, expires: lease.expires, handover })
    }

    /// Checks the drains an attach of `owner` on `node` and `pool` would land in: a draining node
    /// or pool refuses it, and so does the workspace's own drain while the drained sandbox still
    /// holds a live lease; once it has let go, returns the drain's nonce for the handover.
    async fn handover(
        &self,
        conn: &mut AnyConnection,
        owner: &WorkspaceId,
        node: Option<&PlaceName>,
        pool: Option<&PlaceName>,
        lease_live: bool,
        now: Timestamp,
    ) -> Result<Option<String>> {
        let mut scopes = vec![Scope::Workspace(owner.clone())];
        scopes.extend(node.cloned().map(Scope::Node));
        scopes.extend(pool.cloned().map(Scope::Pool));
        let mut handover = None;
        for row in self.drains_for_update(conn, &scopes).await? {
            let (state, _) = self.apply_drain(conn, &row, drain::Event::Tick, now).await?;
            let Drain::Draining { nonce, .. } = state else { continue };
            let retry_after_secs = match &row.scope {
                Scope::Workspace(_) if !lease_live => {
                    handover = Some(nonce);
                    continue;
                }
                Scope::Workspace(_) => HANDOVER_RETRY_SECS,
                _ => PLACE_RETRY_SECS,
            };
            return Err(Error::Draining { scope: row.scope.clone(), retry_after_secs });
        }
        Ok(handover)
    }

    /// Detaches a session: ends it and releases its lease if it still holds it. Idempotent.
    /// The session ended clean when its last publish was a final snapshot (drained, when its
    /// workspace was draining); otherwise unclean, which leaves the workspace at risk.
    pub async fn detach(&self, session: &SessionId, now: Timestamp) -> Result<SessionRow> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let s = self.session_in(&mut tx, session).await?;
        if s.ended_at.is_some() {
            return Ok(s);
        }
        let ws = self.ws_for_update(&mut tx, &s.owner).await?.ok_or_else(|| not_found(&s.owner))?;
        let lease = &ws.record.lease;
        let lease = match &lease.holder {
            Some(h) if h.session == s.id => lease.release(lease.epoch)?,
            _ => lease.clone(),
        };
        let final_snapshot = final_snapshot_of(&mut tx, &s.id).await?;
        let outcome = match final_snapshot {
            Some(f) if ws.latest_snapshot == Some(f) && ws.is_draining(now) => SessionEnd::Drained,
            Some(f) if ws.latest_snapshot == Some(f) => SessionEnd::Clean,
            _ => SessionEnd::Unclean,
        };
        let ev =
            NewEvent::of("session_detached", &s.owner, s.generation).session(&s.id).detail(json!({"epoch": s.epoch}));
        record(&mut tx, now, ev).await?;
        self.end_session_in(&mut tx, &ws, lease, &s.id, outcome, now).await?;
        tx.commit().await?;
        Ok(SessionRow { ended_at: Some(now), ..s })
    }

    /// Ends `session` of the workspace `ws` (as read, locked, in the caller's transaction) with
    /// `outcome` through the lifecycle (which decides whether the workspace is at risk), after
    /// the caller's change of its lease to `lease`: one write of the record holds both.
    async fn end_session_in(
        &self,
        conn: &mut AnyConnection,
        ws: &WorkspaceRow,
        lease: Lease,
        session: &SessionId,
        outcome: SessionEnd,
        now: Timestamp,
    ) -> Result<()> {
        let current = Record { lease, ..ws.record.clone() };
        let event = Event::SessionEnded { session: session.clone(), outcome };
        let transition = lifecycle::step(&current, event, now).map_err(|r| refused(&ws.record.owner, r, now))?;
        self.store(conn, Some(ws), transition, None, now).await?;
        Ok(())
    }

    async fn session_in(&self, conn: &mut AnyConnection, session: &SessionId) -> Result<SessionRow> {
        let sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE id = $1");
        let row = sqlx::query(&sql).bind(session.as_str()).fetch_optional(conn).await?;
        match row {
            Some(r) => session_from_row(&r),
            None => Err(Error::NotFound(format!("session {session} does not exist"))),
        }
    }

    /// Reads a session.
    pub async fn session(&self, session: &SessionId) -> Result<SessionRow> {
        let mut conn = self.read.acquire().await?;
        self.session_in(&mut conn, session).await
    }

    /// The live session of a sandbox instance (a warm container claimed after it was made
    /// carries no session label), if any.
    pub async fn live_session_of(&self, instance: &InstanceId) -> Result<Option<SessionRow>> {
        let sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE instance = $1 AND ended_at IS NULL");
        let row = sqlx::query(&sql).bind(instance.as_str()).fetch_optional(&self.read).await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Finds the live session a sandbox token belongs to; the token of an ended session finds
    /// nothing.
    pub async fn session_by_token(&self, hash: &str) -> Result<Option<SessionRow>> {
        let sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE token_hash = $1 AND ended_at IS NULL");
        let row = sqlx::query(&sql).bind(hash).fetch_optional(&self.read).await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// [`Meta::session_by_token`], waiting up to `wait` for a session to take the token: woken
    /// at once by a hand-over in this process ([`Meta::hand_to_warm`]), and looking again every
    /// [`CLAIM_RECHECK`] for one another replica made.
    pub async fn session_by_token_within(&self, hash: &str, wait: Duration) -> Result<Option<SessionRow>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Listen before looking, so a hand-over between the two is not missed.
            let handed = self.handed.notified();
            tokio::pin!(handed);
            handed.as_mut().enable();
            if let Some(s) = self.session_by_token(hash).await? {
                return Ok(Some(s));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            tokio::select! {
                _ = handed => {}
                _ = tokio::time::sleep(left.min(CLAIM_RECHECK)) => {}
            }
        }
    }

    /// Hands live `session` to a claimed warm sandbox that fetches its claim: the session's
    /// token becomes the sandbox's own (made with the sandbox; only `token_hash` is known
    /// here), and `claim` (holding no credential) is kept for the sandbox to read with it.
    /// The token the attach made is dead from then on. `NotFound` when the session ended.
    pub async fn hand_to_warm(&self, session: &SessionId, token_hash: &str, claim: &str) -> Result<()> {
        let done = sqlx::query("UPDATE sessions SET token_hash = $1, claim = $2 WHERE id = $3 AND ended_at IS NULL")
            .bind(token_hash)
            .bind(claim)
            .bind(session.as_str())
            .execute(&self.write)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!("session {session} ended before its warm sandbox was handed it")));
        }
        self.handed.notify_waiters();
        Ok(())
    }

    /// The claim kept for live `session` by [`Meta::hand_to_warm`], if any.
    pub async fn warm_claim(&self, session: &SessionId) -> Result<Option<String>> {
        let row = sqlx::query("SELECT claim FROM sessions WHERE id = $1 AND ended_at IS NULL")
            .bind(session.as_str())
            .fetch_optional(&self.read)
            .await?;
        Ok(row.and_then(|r| r.try_get::<Option<String>, _>(0).ok().flatten()))
    }

    /// Ends the sessions whose lease expired without a renewal, releasing their leases.
    /// Returns how many.
    pub async fn expire_leases(&self, now: Timestamp) -> Result<u64> {
        let rows = sqlx::query(
            "SELECT owner FROM workspaces WHERE lease_session IS NOT NULL AND lease_expires <= $1 LIMIT 500",
        )
        .bind(now.0)
        .fetch_all(&self.read)
        .await?;
        let mut n = 0;
        for row in rows {
            let Ok(owner) = WorkspaceId::new(row.try_get::<String, _>(0)?) else { continue };
            let mut conn = self.write.acquire().await?;
            let mut tx = begin(&mut conn).await?;
            let Some(ws) = self.ws_for_update(&mut tx, &owner).await? else { continue };
            let lease = &ws.record.lease;
            let Some(holder) = lease.holder.clone().filter(|_| !lease.is_live(now)) else { continue };
            self.end_session_in(&mut tx, &ws, lease.release(lease.epoch)?, &holder.session, SessionEnd::Expired, now)
                .await?;
            let detail = json!({"epoch": lease.epoch, "instance": holder.instance.as_str(), "expired_at": lease.expires.to_string()});
            let ev =
                NewEvent::of("lease_expired", &owner, ws.record.generation).session(&holder.session).detail(detail);
            record(&mut tx, now, ev).await?;
            tx.commit().await?;
            n += 1;
        }
        Ok(n)
    }

    /// Records `snapshot_id` as the latest snapshot of `owner`'s current generation, if `epoch`
    /// is the live lease's (and, for a sandbox, `session` holds it). A `final_snapshot` (taken
    /// after the agent stopped) is what a clean end needs; any later publish of the session
    /// takes that back.
    #[allow(clippy::too_many_arguments)] // each is one fact of the publish; a struct would only rename them
    pub async fn publish_snapshot(
        &self,
        owner: &WorkspaceId,
        session: Option<&SessionId>,
        epoch: Epoch,
        snapshot_id: &SnapshotId,
        stats: &SnapshotStats,
        final_snapshot: bool,
        now: Timestamp,
    ) -> Result<SnapshotRow> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let ws = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| not_found(owner))?;
        lifecycle::step(&ws.record, Event::Publish, now).map_err(|r| refused(owner, r, now))?;
        let (lease, generation) = (&ws.record.lease, ws.record.generation);
        lease.check(epoch, now)?;
        let holder = lease.holder.clone().ok_or_else(|| lease.fence(epoch))?;
        if session.is_some_and(|s| *s != holder.session) {
            return Err(lease.fence(epoch).into());
        }
        let pointer = Pointer { owner, generation, snapshot_id, epoch, session: &holder.session, final_snapshot };
        write_pointer(&mut tx, &pointer, stats, now).await?;
        tx.commit().await?;
        Ok(SnapshotRow {
            snapshot_id: *snapshot_id,
            generation,
            epoch,
            session: holder.session,
            recorded_at: now,
            stats: stats.clone(),
        })
    }

    /// Lists the snapshots of `owner`'s current generation, newest first.
    pub async fn snapshots(&self, owner: &WorkspaceId) -> Result<(WorkspaceRow, Vec<SnapshotRow>)> {
        let ws = self.workspace(owner).await?.ok_or_else(|| not_found(owner))?;
        let rows = sqlx::query(
            "SELECT snapshot_id, generation, epoch, session_id, recorded_at, stats FROM snapshots \
             WHERE owner = $1 AND generation = $2 AND retired_at IS NULL ORDER BY recorded_at DESC, snapshot_id",
        )
        .bind(owner.as_str())
        .bind(ws.record.generation.0 as i64)
        .fetch_all(&self.read)
        .await?;
        let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(e.to_string());
        let snaps = rows
            .iter()
            .map(|r| {
                Ok(SnapshotRow {
                    snapshot_id: SnapshotId::from_hex(&r.try_get::<String, _>("snapshot_id")?)
                        .map_err(|e| corrupt(&e))?,
                    generation: Generation(r.try_get::<i64, _>("generation")? as u64),
                    epoch: Epoch(r.try_get::<i64, _>("epoch")? as u64),
                    session: SessionId::new(r.try_get::<String, _>("session_id")?).map_err(|e| corrupt(&e))?,
                    recorded_at: Timestamp(r.try_get("recorded_at")?),
                    stats: serde_json::from_str(&r.try_get::<String, _>("stats")?).unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((ws, snaps))
    }
}

/// A snapshot pointer to record.
pub(super) struct Pointer<'a> {
    pub owner: &'a WorkspaceId,
    pub generation: Generation,
    pub snapshot_id: &'a SnapshotId,
    pub epoch: Epoch,
    pub session: &'a SessionId,
    pub final_snapshot: bool,
}

/// Records `p` as the latest snapshot of its generation with its audit event, and whether it
/// is its session's final one.
pub(super) async fn write_pointer(
    conn: &mut AnyConnection,
    p: &Pointer<'_>,
    stats: &SnapshotStats,
    now: Timestamp,
) -> Result<()> {
    let stats_json = serde_json::to_string(stats).unwrap_or_else(|_| "{}".into());
    sqlx::query(
        "INSERT INTO snapshots (owner, generation, snapshot_id, epoch, session_id, recorded_at, stats) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (owner, generation, snapshot_id) DO NOTHING",
    )
    .bind(p.owner.as_str())
    .bind(p.generation.0 as i64)
    .bind(p.snapshot_id.to_hex())
    .bind(p.epoch.0 as i64)
    .bind(p.session.as_str())
    .bind(now.0)
    .bind(stats_json)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE workspaces SET latest_snapshot = $2, updated_at = $3 WHERE owner = $1")
        .bind(p.owner.as_str())
        .bind(p.snapshot_id.to_hex())
        .bind(now.0)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE sessions SET final_snapshot = $2 WHERE id = $1")
        .bind(p.session.as_str())
        .bind(p.final_snapshot.then(|| p.snapshot_id.to_hex()))
        .execute(&mut *conn)
        .await?;
    let detail = json!({"snapshot_id": p.snapshot_id.to_hex(), "epoch": p.epoch, "final": p.final_snapshot});
    let ev = NewEvent::of("snapshot_published", p.owner, p.generation).session(p.session).detail(detail);
    record(conn, now, ev).await
}

/// Returns the final snapshot `session` published last, if its last publish was one.
async fn final_snapshot_of(conn: &mut AnyConnection, session: &SessionId) -> Result<Option<SnapshotId>> {
    let row =
        sqlx::query("SELECT final_snapshot FROM sessions WHERE id = $1").bind(session.as_str()).fetch_one(conn).await?;
    row.try_get::<Option<String>, _>(0)?
        .map(|s| SnapshotId::from_hex(&s).map_err(|e| Error::Corrupt(e.to_string())))
        .transpose()
}

/// Records a new session with its token's hash.
pub(super) async fn insert_session(
    conn: &mut AnyConnection,
    s: &SessionRow,
    token_hash: &str,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sessions (id, owner, generation, epoch, instance, node, pool, token_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(s.id.as_str())
    .bind(s.owner.as_str())
    .bind(s.generation.0 as i64)
    .bind(s.epoch.0 as i64)
    .bind(s.instance.as_str())
    .bind(s.node.as_ref().map(|n| n.to_string()))
    .bind(s.pool.as_ref().map(|p| p.to_string()))
    .bind(token_hash)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes `owner`'s lease as the core decided it (taken, renewed or released).
pub(super) async fn write_lease(
    conn: &mut AnyConnection,
    owner: &WorkspaceId,
    lease: &Lease,
    now: Timestamp,
) -> Result<()> {
    let holder = lease.holder.as_ref();
    sqlx::query(
        "UPDATE workspaces SET lease_epoch = $2, lease_session = $3, lease_instance = $4, lease_expires = $5, \
         updated_at = $6 WHERE owner = $1",
    )
    .bind(owner.as_str())
    .bind(lease.epoch.0 as i64)
    .bind(holder.map(|h| h.session.to_string()))
    .bind(holder.map(|h| h.instance.to_string()))
    .bind(lease.expires.0)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(())
}
