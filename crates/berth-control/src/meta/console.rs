//! Reads for the operator console: workspaces with their last durable snapshot and lease age,
//! a workspace's sessions, recent events newest first, and the store's growth; and the one
//! event that is not part of another change, a GC sweep's summary.

use berth_core::id::SnapshotId;
use berth_core::lease::Epoch;
use berth_core::lifecycle::SessionEnd;
use berth_core::session::{InstanceId, PlaceName, SessionId};
use berth_core::time::Timestamp;
use berth_core::workspace::{Generation, WorkspaceId};
use sqlx::Row;

use super::sessions::SnapshotStats;
use super::{event_from_row, record, ws_from_row, EventRow, Meta, NewEvent, State, WorkspaceRow, WS_SELECT};
use crate::error::{Error, Result};

/// Which workspaces the console lists.
#[derive(Clone, Debug, Default)]
pub struct ConsoleFilter {
    /// Only this state.
    pub state: Option<State>,
    /// Only workspaces holding every one of these labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Only owners containing this text.
    pub owner_contains: Option<String>,
    /// Only workspaces at risk.
    pub at_risk: bool,
}

/// A workspace as the console lists it.
#[derive(Clone, Debug)]
pub struct ConsoleRow {
    /// The workspace.
    pub ws: WorkspaceRow,
    /// When its latest snapshot was recorded (the last durable point).
    pub snapshot_at: Option<Timestamp>,
    /// What its latest snapshot reported.
    pub snapshot_stats: SnapshotStats,
    /// When the lease holder's session attached.
    pub lease_since: Option<Timestamp>,
}

/// Counts of workspaces by state, and how many are at risk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Active.
    pub active: u64,
    /// Closed.
    pub closed: u64,
    /// Being deleted.
    pub deleting: u64,
    /// Deleted.
    pub deleted: u64,
    /// At risk (any state).
    pub at_risk: u64,
}

/// A session as the console shows it.
#[derive(Clone, Debug)]
pub struct SessionView {
    /// Its id.
    pub id: SessionId,
    /// Generation attached to.
    pub generation: Generation,
    /// Fencing epoch.
    pub epoch: Epoch,
    /// Sandbox instance.
    pub instance: InstanceId,
    /// Node.
    pub node: Option<PlaceName>,
    /// Pool.
    pub pool: Option<PlaceName>,
    /// Attached at.
    pub created_at: Timestamp,
    /// Ended at.
    pub ended_at: Option<Timestamp>,
    /// How it ended.
    pub outcome: Option<SessionEnd>,
    /// The final snapshot it published, if its last publish was one.
    pub final_snapshot: Option<SnapshotId>,
}

/// Bytes uploaded into the store in one day, from the snapshot pointers' statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DayGrowth {
    /// Days since the epoch.
    pub day: i64,
    /// Snapshots recorded that day.
    pub snapshots: u64,
    /// Bytes they uploaded.
    pub bytes_uploaded: u64,
}

/// Escapes `s` for a `LIKE ... ESCAPE '\'` pattern.
fn like_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '\\' | '%' | '_' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

impl Meta {
    /// Lists workspaces for the console, ordered by owner after `after`; at most `limit`, and
    /// whether more follow.
    pub async fn console_workspaces(
        &self,
        filter: &ConsoleFilter,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<(Vec<ConsoleRow>, bool)> {
        let select = WS_SELECT.replacen(
            " FROM workspaces w",
            ", s.recorded_at AS snap_at, s.stats AS snap_stats, ls.created_at AS lease_since FROM workspaces w",
            1,
        );
        let sql = format!(
            "{select} LEFT JOIN snapshots s ON s.owner = w.owner AND s.generation = w.generation \
             AND s.snapshot_id = w.latest_snapshot \
             LEFT JOIN sessions ls ON ls.id = w.lease_session \
             WHERE w.owner > $1 AND ($2 IS NULL OR w.state = $2) AND ($3 IS NULL OR w.owner LIKE $3 ESCAPE '\\') \
             AND ($4 = 0 OR w.at_risk_since IS NOT NULL) ORDER BY w.owner LIMIT $5"
        );
        // Labels are JSON text: filtered here, reading pages until the page is full.
        let page = (limit + 1).max(if filter.labels.is_empty() { 0 } else { 500 });
        let pattern =
            filter.owner_contains.as_deref().filter(|s| !s.is_empty()).map(|s| format!("%{}%", like_escape(s)));
        let mut cursor = after.map(|a| a.to_string()).unwrap_or_default();
        let mut out = Vec::new();
        loop {
            let rows = sqlx::query(&sql)
                .bind(cursor.clone())
                .bind(filter.state.map(|s| s.as_str().to_string()))
                .bind(pattern.clone())
                .bind(i64::from(filter.at_risk))
                .bind(page as i64)
                .fetch_all(&self.read)
                .await?;
            let n = rows.len();
            for row in &rows {
                let ws = ws_from_row(row, self.rules)?;
                cursor = ws.record.owner.to_string();
                if !filter.labels.iter().all(|(k, v)| ws.labels.get(k) == Some(v)) {
                    continue;
                }
                if out.len() == limit {
                    return Ok((out, true));
                }
                let stats = row.try_get::<Option<String>, _>("snap_stats")?;
                out.push(ConsoleRow {
                    ws,
                    snapshot_at: row.try_get::<Option<i64>, _>("snap_at")?.map(Timestamp),
                    snapshot_stats: stats.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default(),
                    lease_since: row.try_get::<Option<i64>, _>("lease_since")?.map(Timestamp),
                });
            }
            if n < page {
                return Ok((out, false));
            }
        }
    }

    /// Counts workspaces by state, and those at risk.
    pub async fn console_counts(&self) -> Result<Counts> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n, SUM(CASE WHEN at_risk_since IS NULL THEN 0 ELSE 1 END) AS risky \
             FROM workspaces GROUP BY state",
        )
        .fetch_all(&self.read)
        .await?;
        let mut counts = Counts::default();
        for r in rows {
            let n = r.try_get::<i64, _>("n")? as u64;
            counts.at_risk += r.try_get::<Option<i64>, _>("risky")?.unwrap_or(0) as u64;
            match State::parse(&r.try_get::<String, _>("state")?) {
                Some(State::Active) => counts.active = n,
                Some(State::Closed) => counts.closed = n,
                Some(State::Deleting) => counts.deleting = n,
                Some(State::Deleted) => counts.deleted = n,
                None => {}
            }
        }
        Ok(counts)
    }

    /// Returns `owner`'s sessions (every generation), newest first, at most `limit`.
    pub async fn console_sessions(&self, owner: &WorkspaceId, limit: u32) -> Result<Vec<SessionView>> {
        let rows = sqlx::query(
            "SELECT id, generation, epoch, instance, node, pool, created_at, ended_at, outcome, final_snapshot \
             FROM sessions WHERE owner = $1 ORDER BY created_at DESC, id LIMIT $2",
        )
        .bind(owner.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(e.to_string());
        let place = |v: Option<String>| v.map(PlaceName::new).transpose().map_err(|e| corrupt(&e));
        rows.iter()
            .map(|r| {
                let outcome = r.try_get::<Option<String>, _>("outcome")?;
                Ok(SessionView {
                    id: SessionId::new(r.try_get::<String, _>("id")?).map_err(|e| corrupt(&e))?,
                    generation: Generation(r.try_get::<i64, _>("generation")? as u64),
                    epoch: Epoch(r.try_get::<i64, _>("epoch")? as u64),
                    instance: InstanceId::new(r.try_get::<String, _>("instance")?).map_err(|e| corrupt(&e))?,
                    node: place(r.try_get("node")?)?,
                    pool: place(r.try_get("pool")?)?,
                    created_at: Timestamp(r.try_get("created_at")?),
                    ended_at: r.try_get::<Option<i64>, _>("ended_at")?.map(Timestamp),
                    outcome: outcome
                        .map(|o| SessionEnd::parse(&o).ok_or_else(|| Error::Corrupt(format!("session outcome '{o}'"))))
                        .transpose()?,
                    final_snapshot: r
                        .try_get::<Option<String>, _>("final_snapshot")?
                        .map(|s| SnapshotId::from_hex(&s))
                        .transpose()
                        .map_err(|e| corrupt(&e))?,
                })
            })
            .collect()
    }

    /// Returns the newest events (at most `limit`), newest first: of `owner` (or any), and of
    /// one of `kinds` (or any kind).
    pub async fn recent_events(
        &self,
        owner: Option<&WorkspaceId>,
        kinds: &[&str],
        limit: u32,
    ) -> Result<Vec<EventRow>> {
        let marks: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 3)).collect();
        let by_kind = if kinds.is_empty() { String::new() } else { format!(" AND kind IN ({})", marks.join(", ")) };
        let sql = format!(
            "SELECT id, at, kind, owner, generation, session_id, scope, detail FROM events \
             WHERE ($1 IS NULL OR owner = $1){by_kind} ORDER BY id DESC LIMIT $2"
        );
        let mut q = sqlx::query(&sql).bind(owner.map(|o| o.to_string())).bind(i64::from(limit));
        for kind in kinds {
            q = q.bind(kind.to_string());
        }
        q.fetch_all(&self.read).await?.iter().map(event_from_row).collect()
    }

    /// Records an event that belongs to no other change (a GC sweep's summary).
    pub async fn log_event(&self, event: NewEvent<'_>, now: Timestamp) -> Result<()> {
        let mut conn = self.write.acquire().await?;
        record(&mut conn, now, event).await
    }

    /// Returns the newest event id (0 when there is none).
    pub async fn last_event_id(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM events").fetch_one(&self.read).await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// Returns, per day since `since`, the snapshots recorded and the bytes they uploaded.
    pub async fn store_growth(&self, since: Timestamp) -> Result<Vec<DayGrowth>> {
        let rows = sqlx::query("SELECT recorded_at, stats FROM snapshots WHERE recorded_at >= $1 ORDER BY recorded_at")
            .bind(since.0)
            .fetch_all(&self.read)
            .await?;
        let mut days: Vec<DayGrowth> = Vec::new();
        for r in rows {
            let day = Timestamp(r.try_get("recorded_at")?).days();
            let stats: SnapshotStats = serde_json::from_str(&r.try_get::<String, _>("stats")?).unwrap_or_default();
            match days.last_mut() {
                Some(d) if d.day == day => {
                    d.snapshots += 1;
                    d.bytes_uploaded += stats.bytes_uploaded.unwrap_or(0);
                }
                _ => days.push(DayGrowth { day, snapshots: 1, bytes_uploaded: stats.bytes_uploaded.unwrap_or(0) }),
            }
        }
        Ok(days)
    }
}
