//! Workspace records: ensure (idempotent, with generations), read, list, close, ask for
//! deletion; and the one place that stores what `berth_core::lifecycle` decides.

use std::collections::BTreeMap;

use berth_core::gc::Outcome;
use berth_core::lifecycle::{self, Audit, Effect, EndReason, Event, Record, Refusal, SessionEnd, State, Transition};
use berth_core::repo::RepoSpec;
use berth_core::retention::Policy;
use berth_core::session::SessionId;
use berth_core::time::Timestamp;
use berth_core::volume::AccessMode;
use berth_core::workspace::{Generation, WorkspaceId};
use serde_json::json;
use sqlx::AnyConnection;

use super::{begin, random_hex, record, ws_from_row, Meta, NewEvent, WorkspaceRow, WS_SELECT};
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
    /// The workspace's own retention policy: `None` leaves it as it is (a new generation starts
    /// on the server's), `Some(None)` returns it to the server's, `Some(Some(p))` sets `p`.
    pub retention: Option<Option<Policy>>,
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

impl Ensured {
    fn of(effects: &[Effect]) -> Ensured {
        if effects.contains(&Effect::Create) {
            Ensured::Created
        } else if effects.contains(&Effect::StartGeneration) {
            Ensured::NewGeneration
        } else if effects.contains(&Effect::Audit(Audit::Reopened)) {
            Ensured::Reopened
        } else {
            Ensured::Existing
        }
    }
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
        let install = self.install_id().await?;
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let how = loop {
            let before = self.ws_for_update(&mut tx, owner).await?;
            let transition = match &before {
                None => lifecycle::create(&install, owner),
                Some(ws) => {
                    let ensure = Event::Ensure { install: install.clone() };
                    lifecycle::step(&ws.record, ensure, now).map_err(|r| refused(owner, r, now))?
                }
            };
            let how = Ensured::of(&transition.1);
            // Not stored: a concurrent first ensure inserted the record; decide again on it.
            if self.store(&mut tx, before.as_ref(), transition, Some(opts), now).await? {
                break how;
            }
        };
        let mut ws = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| not_found(owner))?;
        if let Some(policy) = opts.retention {
            if set_retention(&mut tx, &ws, policy, now).await? {
                ws.retention = policy;
            }
        }
        tx.commit().await?;
        Ok((ws, how))
    }

    /// Sets `owner`'s own retention policy (`None`: the server's) and records `retention_set`
    /// when it changes. Only an active or closed workspace has snapshots retention applies to.
    pub async fn set_workspace_retention(
        &self,
        owner: &WorkspaceId,
        policy: Option<Policy>,
        now: Timestamp,
    ) -> Result<WorkspaceRow> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let mut ws = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| not_found(owner))?;
        if !matches!(ws.record.state, State::Active | State::Closed) {
            return Err(Error::WrongState(format!(
                "workspace {owner} is {}: retention applies to active and closed workspaces; ensure it first",
                ws.record.state
            )));
        }
        if set_retention(&mut tx, &ws, policy, now).await? {
            ws.retention = policy;
        }
        tx.commit().await?;
        Ok(ws)
    }

    /// Marks the volume of `owner`'s `generation` present, once the substrate has it.
    pub async fn mark_volume_present(&self, owner: &WorkspaceId, generation: Generation, now: Timestamp) -> Result<()> {
        self.transition(owner, Event::VolumeCreated { generation }, now).await.map(|_| ())
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
                cursor = ws.record.owner.to_string();
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
        self.transition(owner, Event::Close, now).await?;
        self.workspace(owner).await?.ok_or_else(|| not_found(owner))
    }

    /// Asks for the deletion of `owner`'s workspace; the deletion reconciler carries it out.
    /// An at-risk workspace is refused unless `force` (its unsaved work is then discarded).
    /// Returns the record and whether this call started the deletion.
    pub async fn request_delete(
        &self,
        owner: &WorkspaceId,
        force: bool,
        now: Timestamp,
    ) -> Result<(WorkspaceRow, bool)> {
        let (before, after) = self.transition(owner, Event::Delete { force }, now).await?;
        let ws = self.workspace(owner).await?.ok_or_else(|| not_found(owner))?;
        Ok((ws, before.state != after.state))
    }

    /// Applies `event` to `owner`'s record in one transaction: load it locked, let the
    /// lifecycle decide, store the result. Returns the record before and after.
    pub(super) async fn transition(
        &self,
        owner: &WorkspaceId,
        event: Event,
        now: Timestamp,
    ) -> Result<(Record, Record)> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let before = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| not_found(owner))?;
        let transition = lifecycle::step(&before.record, event, now).map_err(|r| refused(owner, r, now))?;
        let after = transition.0.clone();
        self.store(&mut tx, Some(&before), transition, None, now).await?;
        tx.commit().await?;
        Ok((before.record, after))
    }

    /// Stores a lifecycle transition inside the caller's transaction: writes the record if it
    /// changed and carries out the effects, in order. `opts` are the ensure's, for a new
    /// generation. Returns false, having written nothing, when `Effect::Create` finds that a
    /// concurrent ensure created the record first.
    pub(super) async fn store(
        &self,
        conn: &mut AnyConnection,
        before: Option<&WorkspaceRow>,
        (after, effects): Transition,
        opts: Option<&EnsureOptions>,
        now: Timestamp,
    ) -> Result<bool> {
        // Events concern the generation the record had before the transition.
        let subject = before.map_or(&after, |ws| &ws.record);
        if before.is_some_and(|ws| ws.record != after) {
            save(conn, &after, now).await?;
        }
        let (mut n_sessions, mut n_snapshots) = (0, 0);
        for effect in &effects {
            match effect {
                Effect::Create => {
                    if !insert(conn, &after, opts, now).await? {
                        return Ok(false);
                    }
                }
                Effect::StartGeneration => start_generation(conn, &after.owner, opts, now).await?,
                Effect::EndSessions(reason) => n_sessions = end_open_sessions(conn, &after.owner, now, *reason).await?,
                Effect::EndSession { session, outcome } => end_session(conn, session, *outcome, now).await?,
                Effect::RetireSnapshots => n_snapshots = retire_snapshots(conn, subject, now).await?,
                Effect::ForgetLatest => {
                    sqlx::query("UPDATE workspaces SET latest_snapshot = NULL WHERE owner = $1")
                        .bind(after.owner.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
                Effect::Audit(audit) => {
                    let mut ev = NewEvent::of(audit.kind(), &subject.owner, subject.generation);
                    if let Audit::SessionEnded(session, _) = audit {
                        ev = ev.session(session);
                    }
                    let detail = audit_detail(audit, subject, &after, n_sessions, n_snapshots);
                    record(conn, now, ev.detail(detail)).await?;
                }
            }
        }
        Ok(true)
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

/// The detail of an audit event of a transition from `subject` to `after`.
fn audit_detail(
    audit: &Audit,
    subject: &Record,
    after: &Record,
    n_sessions: u64,
    n_snapshots: u64,
) -> serde_json::Value {
    match audit {
        Audit::Ensured => json!({"generation": after.generation.0, "volume": after.volume.name.as_str()}),
        Audit::SessionsEnded => json!({"sessions": n_sessions}),
        Audit::SnapshotsRetired => json!({"snapshots": n_snapshots}),
        Audit::Deleted => json!({"next_generation": after.generation.0}),
        Audit::Volume(outcome, by) => volume_detail(subject, after, *outcome, by.as_str()),
        Audit::SessionEnded(_, outcome) => json!({"outcome": outcome.as_str()}),
        Audit::AtRisk => match &after.at_risk {
            Some(r) => json!({"outcome": r.outcome.as_str(), "session": r.session.as_str(), "reason": r.reason()}),
            None => serde_json::Value::Null,
        },
        Audit::RescueStarted => json!({"epoch": after.lease.epoch, "volume": after.volume.name.as_str(),
            "session": after.lease.holder.as_ref().map(|h| h.session.as_str())}),
        Audit::RescueSucceeded(snapshot) => json!({"snapshot": snapshot.to_hex(), "epoch": after.lease.epoch}),
        Audit::RescueFailed(error) => json!({"error": error}),
        Audit::AtRiskRemoved(reason) => {
            let risk = subject.at_risk.as_ref();
            json!({"reason": reason.map(|r| r.as_str()), "volume": subject.volume.name.as_str(),
                "outcome": risk.map(|r| r.outcome.as_str()), "since": risk.map(|r| r.since.to_string())})
        }
        Audit::Reopened | Audit::VolumeCreated | Audit::Closed | Audit::DeleteRequested | Audit::AtRiskCleared => {
            serde_json::Value::Null
        }
    }
}

/// The detail of a volume event: which volume, who acted, and why an attempt failed.
fn volume_detail(subject: &Record, after: &Record, outcome: Outcome, by: &str) -> serde_json::Value {
    let mut detail = json!({"volume": subject.volume.name.as_str(), "by": by});
    if !outcome.marks_removed() {
        detail["error"] = json!(after.cleanup.last_error);
        detail["attempts"] = json!(after.cleanup.attempts);
    }
    detail
}

/// Writes the lifecycle columns of `record`.
async fn save(conn: &mut AnyConnection, record: &Record, now: Timestamp) -> Result<()> {
    let holder = record.lease.holder.as_ref();
    sqlx::query(
        "UPDATE workspaces SET generation = $2, state = $3, closed_at = $4, volume = $5, volume_state = $6, \
         volume_removed_at = $7, volume_outcome = $8, lease_epoch = $9, lease_session = $10, lease_instance = $11, \
         lease_expires = $12, delete_step = $13, attempts = $14, retry_at = $15, last_error = $16, \
         claim_holder = $17, claim_until = $18, updated_at = $19, at_risk_since = $20, at_risk_outcome = $21, \
         at_risk_session = $22 WHERE owner = $1",
    )
    .bind(record.owner.as_str())
    .bind(record.generation.0 as i64)
    .bind(record.state.as_str())
    .bind(record.closed_at.map(|t| t.0))
    .bind(record.volume.name.as_str())
    .bind(record.volume.state.as_str())
    .bind(record.volume.removed_at.map(|t| t.0))
    .bind(record.volume.last_outcome.map(|o| o.as_str()))
    .bind(record.lease.epoch.0 as i64)
    .bind(holder.map(|h| h.session.to_string()))
    .bind(holder.map(|h| h.instance.to_string()))
    .bind(record.lease.expires.0)
    .bind(record.delete_step.map(|s| s.as_str()))
    .bind(record.cleanup.attempts as i64)
    .bind(record.cleanup.retry_at.map(|t| t.0))
    .bind(record.cleanup.last_error.clone())
    .bind(record.claim.as_ref().map(|c| c.holder.to_string()))
    .bind(record.claim.as_ref().map(|c| c.until.0))
    .bind(now.0)
    .bind(record.at_risk.as_ref().map(|r| r.since.0))
    .bind(record.at_risk.as_ref().map(|r| r.outcome.as_str()))
    .bind(record.at_risk.as_ref().map(|r| r.session.to_string()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts `owner`'s first record unless a concurrent ensure did; returns whether this did.
async fn insert(
    conn: &mut AnyConnection,
    record: &Record,
    opts: Option<&EnsureOptions>,
    now: Timestamp,
) -> Result<bool> {
    let opts = opts.ok_or_else(|| Error::Corrupt("a workspace was created without options".into()))?;
    let query = sqlx::query(
        "INSERT INTO workspaces (owner, id, generation, state, volume, volume_state, created_at, updated_at, \
         size_bytes, storage_class, access_mode, labels, repos) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
    )
    .bind(record.owner.as_str())
    .bind(format!("ws_{}", random_hex(16)))
    .bind(record.generation.0 as i64)
    .bind(record.state.as_str())
    .bind(record.volume.name.as_str())
    .bind(record.volume.state.as_str())
    .bind(now.0);
    // Every unique constraint is an arbiter: with `ON CONFLICT (owner)` alone, a concurrent
    // ensure of the same owner could trip the volume name's constraint first on PostgreSQL and
    // fail instead of yielding.
    let n = bind_options(query, opts).execute(&mut *conn).await?.rows_affected();
    if n == 1 {
        return Ok(true);
    }
    let ours = sqlx::query("SELECT 1 FROM workspaces WHERE owner = $1")
        .bind(record.owner.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    if !ours {
        return Err(Error::Corrupt(format!(
            "volume name {} is taken by another workspace (workspace {})",
            record.volume.name.as_str(),
            record.owner
        )));
    }
    Ok(false)
}

/// A new generation's id and options; its snapshot pointer starts empty.
async fn start_generation(
    conn: &mut AnyConnection,
    owner: &WorkspaceId,
    opts: Option<&EnsureOptions>,
    now: Timestamp,
) -> Result<()> {
    let opts = opts.ok_or_else(|| Error::Corrupt("a generation was started without options".into()))?;
    let query = sqlx::query(
        "UPDATE workspaces SET id = $2, latest_snapshot = NULL, retention = NULL, updated_at = $3, size_bytes = $4, \
         storage_class = $5, access_mode = $6, labels = $7, repos = $8 WHERE owner = $1",
    )
    .bind(owner.as_str())
    .bind(format!("ws_{}", random_hex(16)))
    .bind(now.0);
    bind_options(query, opts).execute(conn).await?;
    Ok(())
}

/// Binds an ensure's options, in the order size, storage class, access mode, labels, repos, to
/// the next five placeholders of `query`.
fn bind_options<'q>(query: AnyQuery<'q>, opts: &EnsureOptions) -> AnyQuery<'q> {
    query
        .bind(opts.size_bytes as i64)
        .bind(opts.storage_class.clone())
        .bind(opts.access_mode.as_str())
        .bind(json_text(&opts.labels))
        .bind(json_text(&opts.repos))
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Writes `ws`'s own retention policy and records `retention_set`, unless it is already
/// `policy`; returns whether it changed.
async fn set_retention(
    conn: &mut AnyConnection,
    ws: &WorkspaceRow,
    policy: Option<Policy>,
    now: Timestamp,
) -> Result<bool> {
    if ws.retention == policy {
        return Ok(false);
    }
    let owner = &ws.record.owner;
    sqlx::query("UPDATE workspaces SET retention = $2, updated_at = $3 WHERE owner = $1")
        .bind(owner.as_str())
        .bind(policy.map(|p| p.to_string()))
        .bind(now.0)
        .execute(&mut *conn)
        .await?;
    let shown = |p: Option<Policy>| p.map(|p| p.to_string());
    let detail = json!({"policy": shown(policy), "before": shown(ws.retention)});
    record(conn, now, NewEvent::of("retention_set", owner, ws.record.generation).detail(detail)).await?;
    Ok(true)
}

/// Retires the snapshot pointers of `record`'s generation; returns how many.
async fn retire_snapshots(conn: &mut AnyConnection, record: &Record, now: Timestamp) -> Result<u64> {
    let n =
        sqlx::query("UPDATE snapshots SET retired_at = $3 WHERE owner = $1 AND generation = $2 AND retired_at IS NULL")
            .bind(record.owner.as_str())
            .bind(record.generation.0 as i64)
            .bind(now.0)
            .execute(conn)
            .await?
            .rows_affected();
    Ok(n)
}

fn json_text<T: serde::Serialize>(value: &T) -> String {
    // Maps of strings and plain structs always serialise.
    serde_json::to_string(value).unwrap_or_default()
}

/// The error for a refused lifecycle event on `owner`.
pub(super) fn refused(owner: &WorkspaceId, refusal: Refusal, now: Timestamp) -> Error {
    match refusal {
        Refusal::Held(held) => Error::LeaseHeld(held),
        Refusal::Collecting { until } => Error::Busy {
            message: format!("workspace {owner} is closed and its volume is being garbage-collected"),
            retry_after_secs: ((until.0 - now.0) / 1_000_000_000 + 1).max(1) as u64,
        },
        Refusal::VolumeNotReady => Error::WrongState(format!(
            "the volume of workspace {owner} is not ready; ensure the workspace again, then attach"
        )),
        Refusal::WrongState(State::Deleting) => Error::WrongState(format!(
            "workspace {owner} is being deleted; ensure it again once the deletion completes \
             (GET /v1/workspaces/{owner} shows its progress)"
        )),
        Refusal::WrongState(State::Closed) => Error::WrongState(format!(
            "workspace {owner} is closed; ensure it (PUT /v1/workspaces/{owner}) to reopen it, then attach"
        )),
        Refusal::WrongState(state) => Error::WrongState(format!("workspace {owner} is {state}")),
        Refusal::AtRisk(at_risk) => Error::AtRisk(format!(
            "workspace {owner} is at risk: {}, so its volume may hold work that no snapshot has; close it \
             and let GC rescue the volume into the store (berth serve --store), or delete it with --force \
             (?force=true) to discard that work",
            at_risk.reason()
        )),
        Refusal::NotAtRisk => {
            Error::WrongState(format!("workspace {owner} is not at risk: there is nothing to rescue"))
        }
        Refusal::NotClaimed => Error::WrongState(format!("workspace {owner} is held by another reconciler")),
    }
}

pub(super) fn not_found(owner: &WorkspaceId) -> Error {
    Error::NotFound(format!("workspace {owner} does not exist; create it with PUT /v1/workspaces/{owner}"))
}

/// Ends every open session of `owner` because of `reason` (closed: their leases had expired;
/// deleted: the owner's deletion).
pub(super) async fn end_open_sessions(
    conn: &mut AnyConnection,
    owner: &WorkspaceId,
    now: Timestamp,
    reason: EndReason,
) -> Result<u64> {
    let outcome = match reason {
        EndReason::Closed => SessionEnd::Expired,
        EndReason::Deleted => SessionEnd::Deleted,
    };
    let n = sqlx::query(
        "UPDATE sessions SET ended_at = $2, end_reason = $3, outcome = $4, claim = NULL \
         WHERE owner = $1 AND ended_at IS NULL",
    )
    .bind(owner.as_str())
    .bind(now.0)
    .bind(reason.as_str())
    .bind(outcome.as_str())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n)
}

/// Ends `session` with `outcome`, unless it has ended already.
async fn end_session(conn: &mut AnyConnection, session: &SessionId, outcome: SessionEnd, now: Timestamp) -> Result<()> {
    // A warm sandbox's claim (the agent's environment) is not kept past its session.
    let sql = "UPDATE sessions SET ended_at = $2, end_reason = $3, outcome = $4, claim = NULL \
               WHERE id = $1 AND ended_at IS NULL";
    sqlx::query(sql)
        .bind(session.as_str())
        .bind(now.0)
        .bind(outcome.cause())
        .bind(outcome.as_str())
        .execute(conn)
        .await?;
    Ok(())
}
