//! Drains: a scope that must stop receiving work, with a nonce for the handover. The clearing
//! rules are `berth_core::drain::step`; this module stores its states and audits its outcomes.

use berth_core::drain::{self, ClearedBy, Drain, Outcome};
use berth_core::lease::Epoch;
use berth_core::scope::Scope;
use berth_core::session::{InstanceId, SessionId};
use berth_core::time::Timestamp;
use serde_json::json;
use sqlx::{AnyConnection, Row};

use super::{begin, random_hex, record, Meta, NewEvent, Rules};
use crate::error::{Error, Result};

/// A scope's drain record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainRow {
    /// The scope.
    pub scope: Scope,
    /// Its state.
    pub state: Drain,
    /// Why the current (or last) drain started.
    pub reason: Option<String>,
    /// When the last drain cleared.
    pub cleared_at: Option<Timestamp>,
    /// How the last drain cleared.
    pub cleared_by: Option<String>,
    /// While draining: when the hard timeout clears it.
    pub expires_at: Option<Timestamp>,
}

impl DrainRow {
    fn open(scope: Scope) -> DrainRow {
        DrainRow { scope, state: Drain::Open, reason: None, cleared_at: None, cleared_by: None, expires_at: None }
    }

    /// Returns the state as seen at `now` under `rules`: a drain past its hard timeout reads
    /// as open even before the reconciler records that.
    fn at(self, now: Timestamp, rules: Rules) -> DrainRow {
        match drain::step(&self.state, drain::Event::Tick, now, rules.drain_timeout_secs) {
            (state, Outcome::Cleared(by)) => DrainRow {
                state,
                cleared_at: Some(now),
                cleared_by: Some(cleared_by_str(by).into()),
                expires_at: None,
                ..self
            },
            _ => self,
        }
    }
}

fn cleared_by_str(by: ClearedBy) -> &'static str {
    match by {
        ClearedBy::Ack => "ack",
        ClearedBy::NewInstance => "new_instance",
        ClearedBy::Timeout => "timeout",
    }
}

const DRAIN_COLS: &str = "scope, state, nonce, instance, session, since, reason, cleared_at, cleared_by";

fn drain_from_row(row: &sqlx::any::AnyRow, rules: Rules) -> Result<DrainRow> {
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(e.to_string());
    let scope: Scope = row.try_get::<String, _>("scope")?.parse().map_err(|e| corrupt(&e))?;
    let state = match row.try_get::<String, _>("state")?.as_str() {
        "open" => Drain::Open,
        "draining" => Drain::Draining {
            nonce: row.try_get::<Option<String>, _>("nonce")?.unwrap_or_default(),
            since: Timestamp(row.try_get::<Option<i64>, _>("since")?.unwrap_or(0)),
            instance: row
                .try_get::<Option<String>, _>("instance")?
                .map(InstanceId::new)
                .transpose()
                .map_err(|e| corrupt(&e))?,
            session: row
                .try_get::<Option<String>, _>("session")?
                .map(SessionId::new)
                .transpose()
                .map_err(|e| corrupt(&e))?,
        },
        other => return Err(Error::Corrupt(format!("drain state '{other}'"))),
    };
    let expires_at = match &state {
        Drain::Draining { since, .. } => Some(since.plus_secs(rules.drain_timeout_secs)),
        Drain::Open => None,
    };
    Ok(DrainRow {
        scope,
        state,
        expires_at,
        reason: row.try_get("reason")?,
        cleared_at: row.try_get::<Option<i64>, _>("cleared_at")?.map(Timestamp),
        cleared_by: row.try_get("cleared_by")?,
    })
}

impl Meta {
    /// Applies `event` to `row` and stores the result with its audit event; returns the new state
    /// and the outcome.
    pub(super) async fn apply_drain(
        &self,
        conn: &mut AnyConnection,
        row: &DrainRow,
        event: drain::Event,
        now: Timestamp,
    ) -> Result<(Drain, Outcome)> {
        let instance_of_event = match &event {
            drain::Event::Heartbeat { instance } => Some(instance.to_string()),
            _ => None,
        };
        let reason = match &event {
            drain::Event::Evict { .. } => row.reason.clone(),
            _ => None,
        };
        let (state, outcome) = drain::step(&row.state, event, now, self.rules.drain_timeout_secs);
        let scope = row.scope.to_string();
        match (&state, &outcome) {
            (Drain::Draining { nonce, since, instance, session }, Outcome::Started(_)) => {
                sqlx::query(
                    "INSERT INTO drains (scope, state, nonce, instance, session, since, reason, updated_at) \
                 VALUES ($1, 'draining', $2, $3, $4, $5, $6, $5) ON CONFLICT (scope) DO UPDATE SET state = 'draining', \
                 nonce = excluded.nonce, instance = excluded.instance, session = excluded.session, \
                 since = excluded.since, reason = excluded.reason, updated_at = excluded.updated_at",
                )
                .bind(&scope)
                .bind(nonce)
                .bind(instance.as_ref().map(|i| i.to_string()))
                .bind(session.as_ref().map(|s| s.to_string()))
                .bind(since.0)
                .bind(reason.clone())
                .execute(&mut *conn)
                .await?;
                let detail = json!({"instance": instance.as_ref().map(|i| i.as_str()),
                    "session": session.as_ref().map(|s| s.as_str()), "reason": reason});
                record(
                    conn,
                    now,
                    NewEvent { kind: "drain_started", scope: Some(row.scope.clone()), detail, ..Default::default() },
                )
                .await?;
            }
            (Drain::Open, Outcome::Cleared(by)) => {
                sqlx::query(
                "UPDATE drains SET state = 'open', nonce = NULL, cleared_at = $2, cleared_by = $3, updated_at = $2 \
                 WHERE scope = $1",
            )
            .bind(&scope)
            .bind(now.0)
            .bind(cleared_by_str(*by))
            .execute(&mut *conn)
            .await?;
                let detail = json!({"by": cleared_by_str(*by), "instance": instance_of_event});
                record(
                    conn,
                    now,
                    NewEvent { kind: "drain_cleared", scope: Some(row.scope.clone()), detail, ..Default::default() },
                )
                .await?;
            }
            (_, Outcome::WrongNonce | Outcome::OwnAck) => {
                let kind = if outcome == Outcome::OwnAck { "drain_own_ack_refused" } else { "drain_wrong_nonce" };
                record(conn, now, NewEvent { kind, scope: Some(row.scope.clone()), ..Default::default() }).await?;
            }
            _ => {}
        }
        Ok((state, outcome))
    }

    /// Reads the draining rows among `scopes`, locking them.
    pub(super) async fn drains_for_update(&self, conn: &mut AnyConnection, scopes: &[Scope]) -> Result<Vec<DrainRow>> {
        let marks: Vec<String> = (1..=scopes.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {DRAIN_COLS} FROM drains WHERE scope IN ({}) AND state = 'draining' ORDER BY scope{}",
            marks.join(", "),
            self.lock()
        );
        let mut q = sqlx::query(&sql);
        for s in scopes {
            q = q.bind(s.to_string());
        }
        q.fetch_all(conn).await?.iter().map(|r| drain_from_row(r, self.rules)).collect()
    }

    async fn drain_in(&self, conn: &mut AnyConnection, scope: &Scope, lock: bool) -> Result<DrainRow> {
        let sql = format!("SELECT {DRAIN_COLS} FROM drains WHERE scope = $1{}", if lock { self.lock() } else { "" });
        match sqlx::query(&sql).bind(scope.to_string()).fetch_optional(conn).await? {
            Some(row) => drain_from_row(&row, self.rules),
            None => Ok(DrainRow::open(scope.clone())),
        }
    }

    /// Starts draining `scope` (or returns the running drain). For a workspace scope without
    /// an instance, the instance is the live lease holder's; the drained session is the live
    /// holder's when it is that instance. Returns the row and whether this call started the
    /// drain.
    pub async fn start_drain(
        &self,
        scope: &Scope,
        instance: Option<&InstanceId>,
        reason: Option<&str>,
        now: Timestamp,
    ) -> Result<(DrainRow, bool)> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let mut instance = instance.cloned();
        let mut session = None;
        if let Scope::Workspace(owner) = scope {
            let holder =
                self.ws_for_update(&mut tx, owner).await?.and_then(|ws| ws.record.lease.live_holder(now).cloned());
            if let Some(h) = holder.filter(|h| instance.as_ref().is_none_or(|i| *i == h.instance)) {
                instance = Some(h.instance);
                session = Some(h.session);
            }
        }
        let row = self.drain_in(&mut tx, scope, true).await?;
        // Let a drain past its hard timeout clear first, so the eviction starts a fresh one.
        let (state, _) = self.apply_drain(&mut tx, &row, drain::Event::Tick, now).await?;
        let row = DrainRow { state, reason: reason.map(String::from), ..row };
        let nonce = random_hex(16);
        let (state, outcome) =
            self.apply_drain(&mut tx, &row, drain::Event::Evict { instance, session, nonce }, now).await?;
        let started = matches!(outcome, Outcome::Started(_));
        let row = self.drain_in(&mut tx, scope, false).await?;
        tx.commit().await?;
        debug_assert_eq!(row.state, state);
        Ok((row, started))
    }

    /// Reads the drain state of `scope` as of `now`.
    pub async fn drain(&self, scope: &Scope, now: Timestamp) -> Result<DrainRow> {
        let mut conn = self.read.acquire().await?;
        Ok(self.drain_in(&mut conn, scope, false).await?.at(now, self.rules))
    }

    /// Lists every scope with a drain record.
    pub async fn drains(&self, now: Timestamp) -> Result<Vec<DrainRow>> {
        let sql = format!("SELECT {DRAIN_COLS} FROM drains ORDER BY scope");
        let rows = sqlx::query(&sql).fetch_all(&self.read).await?;
        rows.iter().map(|r| Ok(drain_from_row(r, self.rules)?.at(now, self.rules))).collect()
    }

    /// Acknowledges the handover of `scope` with `nonce`. A sandbox's ack (`session`) is fenced:
    /// its session must hold its workspace's live lease, and it must not be the drained session
    /// (`Forbidden`). Returns the row after the ack and whether it cleared the drain; the wrong
    /// nonce is `WrongNonce` (it keeps draining); an ack while not draining is a no-op.
    pub async fn ack_drain(
        &self,
        scope: &Scope,
        nonce: &str,
        session: Option<(&SessionId, Epoch)>,
        now: Timestamp,
    ) -> Result<(DrainRow, bool)> {
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        if let (Some((session, epoch)), Scope::Workspace(owner)) = (session, scope) {
            let ws = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| super::workspaces::not_found(owner))?;
            let lease = &ws.record.lease;
            if lease.holder.as_ref().is_none_or(|h| h.session != *session) {
                return Err(lease.fence(epoch).into());
            }
            lease.check(epoch, now)?;
        }
        let row = self.drain_in(&mut tx, scope, true).await?;
        let ack = drain::Event::Ack { nonce: nonce.to_string(), by: session.map(|(s, _)| s.clone()) };
        let (_, outcome) = self.apply_drain(&mut tx, &row, ack, now).await?;
        let after = self.drain_in(&mut tx, scope, false).await?;
        tx.commit().await?;
        match outcome {
            Outcome::WrongNonce => Err(Error::WrongNonce(scope.clone())),
            Outcome::OwnAck => Err(Error::Forbidden(format!(
                "the drained session cannot acknowledge the drain of {scope}: its replacement acknowledges \
                 it once attached (or the admin does)"
            ))),
            Outcome::Cleared(ClearedBy::Ack) => Ok((after, true)),
            _ => Ok((after, false)),
        }
    }

    /// Clears the drains past their hard timeout. Returns how many.
    pub async fn expire_drains(&self, now: Timestamp) -> Result<u64> {
        let sql = format!(
            "SELECT {DRAIN_COLS} FROM drains WHERE state = 'draining' AND since <= $1 ORDER BY since LIMIT 500"
        );
        let rows =
            sqlx::query(&sql).bind(now.plus_secs(-self.rules.drain_timeout_secs).0).fetch_all(&self.read).await?;
        let mut n = 0;
        for row in rows {
            let scope = drain_from_row(&row, self.rules)?.scope;
            let mut conn = self.write.acquire().await?;
            let mut tx = begin(&mut conn).await?;
            let row = self.drain_in(&mut tx, &scope, true).await?;
            let (_, outcome) = self.apply_drain(&mut tx, &row, drain::Event::Tick, now).await?;
            tx.commit().await?;
            n += u64::from(matches!(outcome, Outcome::Cleared(_)));
        }
        Ok(n)
    }
}
