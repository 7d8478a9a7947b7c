//! Heartbeats, the hot path: renew a session's lease and read the drain state of its scopes in
//! one transaction.
//!
//! A lost heartbeat is harmless (the lease looks shorter than its holder thinks; a takeover
//! still bumps the epoch), so heartbeat transactions do not wait for the disk:
//! `synchronous_commit = off` on PostgreSQL, `synchronous = NORMAL` on SQLite. On SQLite, whose
//! single writer serialises every transaction anyway, queued heartbeats are applied in batches,
//! one transaction per batch.

use berth_core::drain::{self, Drain};
use berth_core::lease::{Epoch, Holder, Lease};
use berth_core::scope::Scope;
use berth_core::session::{InstanceId, SessionId};
use berth_core::time::Timestamp;
use sqlx::{AnyConnection, Connection, Executor, Row};
use tokio::sync::{mpsc, oneshot};

use super::drains::DrainRow;
use super::sessions::{session_from_row, HeartbeatOutcome};
use super::{begin, Dialect, Meta};
use crate::error::{Error, Result};

/// Heartbeats applied in one SQLite transaction, at most.
const BATCH_MAX: usize = 128;

/// One heartbeat to apply.
#[derive(Debug)]
pub(super) struct Beat {
    session: SessionId,
    epoch: Epoch,
    instance: InstanceId,
    now: Timestamp,
    /// The hash of the sandbox token presented, checked against the session's; `None` when
    /// the caller is already known (the admin).
    token: Option<String>,
}

/// A queued heartbeat and where its answer goes.
pub(super) type Queued = (Beat, oneshot::Sender<Result<HeartbeatOutcome>>);

impl Meta {
    /// Renews a session's lease and returns the drain state of its scopes, in one transaction.
    /// A heartbeat must come from the instance the session attached with (`WrongInstance`
    /// otherwise, and nothing changes); one from a session of another instance than the drained
    /// one (the replacement's) clears a workspace drain. With `token` (a sandbox token's hash),
    /// the session must be live and hold that token (`Unauthorized` otherwise): the token
    /// check and the heartbeat are one statement.
    pub async fn heartbeat(
        &self,
        session: &SessionId,
        epoch: Epoch,
        instance: &InstanceId,
        now: Timestamp,
        token: Option<&str>,
    ) -> Result<HeartbeatOutcome> {
        let token = token.map(String::from);
        let beat = Beat { session: session.clone(), epoch, instance: instance.clone(), now, token };
        if let Some(queue) = &self.beats {
            let (tx, rx) = oneshot::channel();
            let gone = || Error::Busy { message: "the heartbeat writer stopped".into(), retry_after_secs: 1 };
            queue.send((beat, tx)).await.map_err(|_| gone())?;
            return rx.await.map_err(|_| gone())?;
        }
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let outcome = self.beat_in(&mut tx, &beat).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Applies one heartbeat inside the caller's transaction. Refusals (stale epoch, unknown
    /// session, another instance) write nothing.
    async fn beat_in(&self, conn: &mut AnyConnection, beat: &Beat) -> Result<HeartbeatOutcome> {
        // One statement reads the session, locks its workspace and counts draining scopes; the
        // drain rows themselves are read only when there are some (rarely).
        let relax = match self.dialect {
            Dialect::Postgres => "set_config('synchronous_commit', 'off', true) AS relaxed, ",
            Dialect::Sqlite => "",
        };
        let sql = format!(
            "SELECT {relax}s.id, s.owner, s.generation, s.epoch, s.instance, s.node, s.pool, s.ended_at, s.token_hash, \
             w.lease_epoch, w.lease_session, w.lease_expires, \
             (SELECT COUNT(*) FROM drains d WHERE d.state = 'draining' AND d.scope IN \
              ('workspace:' || s.owner, 'node:' || s.node, 'pool:' || s.pool)) AS n_draining \
             FROM sessions s JOIN workspaces w ON w.owner = s.owner WHERE s.id = $1{}",
            self.lock_ws()
        );
        let row = sqlx::query(&sql)
            .bind(beat.session.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| Error::NotFound(format!("session {} does not exist", beat.session)))?;
        let s = session_from_row(&row)?;
        if let Some(token) = &beat.token {
            if s.ended_at.is_some() || row.try_get::<String, _>("token_hash")? != *token {
                return Err(Error::Unauthorized);
            }
        }
        let lease = Lease {
            epoch: Epoch(row.try_get::<i64, _>("lease_epoch")? as u64),
            holder: Some(Holder { session: s.id.clone(), instance: s.instance.clone() }),
            expires: Timestamp(row.try_get("lease_expires")?),
        };
        let holder = row.try_get::<Option<String>, _>("lease_session")?;
        if holder.as_deref() != Some(s.id.as_str()) || s.epoch != beat.epoch {
            return Err(lease.fence(beat.epoch).into());
        }
        if beat.instance != s.instance {
            return Err(Error::WrongInstance { session: s.id, attached: s.instance, presented: beat.instance.clone() });
        }
        let lease = lease.renew(beat.epoch, beat.now, self.rules.lease_ttl_secs)?;
        sqlx::query("UPDATE workspaces SET lease_expires = $2 WHERE owner = $1")
            .bind(s.owner.as_str())
            .bind(lease.expires.0)
            .execute(&mut *conn)
            .await?;
        let mut draining = Vec::new();
        if row.try_get::<i64, _>("n_draining")? > 0 {
            for d in self.drains_for_update(conn, &s.scopes()).await? {
                let event = match d.scope {
                    Scope::Workspace(_) => drain::Event::Heartbeat { instance: beat.instance.clone() },
                    _ => drain::Event::Tick,
                };
                let (state, _) = self.apply_drain(conn, &d, event, beat.now).await?;
                if matches!(state, Drain::Draining { .. }) {
                    draining.push(DrainRow { state, ..d });
                }
            }
        }
        Ok(HeartbeatOutcome { expires: lease.expires, draining })
    }
}

/// Applies queued heartbeats on SQLite in batches until every sender is gone: what has queued
/// up while the previous batch ran goes into one transaction with one commit.
pub(super) async fn batcher(meta: Meta, mut queue: mpsc::Receiver<Queued>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match queue.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        match apply_batch(&meta, &batch).await {
            Ok(results) => {
                for ((_, reply), result) in batch.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let message = format!("heartbeat not recorded: {e}");
                for (_, reply) in batch {
                    let _ = reply.send(Err(Error::Busy { message: message.clone(), retry_after_secs: 1 }));
                }
            }
        }
    }
}

/// Runs one batch in one transaction. A refusal answers its own heartbeat; a database error
/// fails the batch.
async fn apply_batch(meta: &Meta, batch: &[Queued]) -> Result<Vec<Result<HeartbeatOutcome>>> {
    let mut conn = meta.write.acquire().await?;
    conn.execute("PRAGMA synchronous = NORMAL").await?;
    let applied = async {
        let mut tx = conn.begin().await?;
        let mut results = Vec::with_capacity(batch.len());
        for (beat, _) in batch {
            match meta.beat_in(&mut tx, beat).await {
                Err(e @ (Error::Db(_) | Error::Corrupt(_))) => return Err(e),
                other => results.push(other),
            }
        }
        tx.commit().await?;
        Ok(results)
    }
    .await;
    if let Err(e) = conn.execute("PRAGMA synchronous = FULL").await {
        // Never hand a connection back with relaxed durability.
        let _ = conn.close().await;
        return Err(e.into());
    }
    applied
}
