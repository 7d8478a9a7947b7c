//! The metadata store: every workspace, session, snapshot pointer, drain, cleanup mark and audit
//! event, in SQLite (the embedded default) or PostgreSQL (several replicas), through one set of
//! queries over sqlx's `Any` driver.
//!
//! Each public method is one transaction that reads what it decides on with a row lock (`FOR
//! UPDATE` on PostgreSQL; SQLite has a single writer connection, so every write transaction is
//! serialised), lets the pure core decide (`berth_core::lifecycle`, `berth_core::lease`,
//! `berth_core::drain`, `berth_core::gc`), and writes the result with an audit event.
//!
//! SQLite has one writer connection (WAL, `synchronous=FULL`) plus readers; heartbeats are
//! batched (`heartbeat`). Migrations are embedded from `migrations/<dialect>/`, and a test
//! compares the migrated schema with `schema/<dialect>.txt`. The tables:
//!
//! ```text
//! workspaces  one row per owner: generation, state, volume and its state, lease (epoch, holder,
//!             expiry), latest snapshot, deletion step, cleanup attempts and backoff, reconciler
//!             claim, at risk (since, the session and how it ended), retention policy
//! sessions    one row per attach (and per rescue): epoch, instance, node, pool, token hash, a
//!             fetching warm sandbox's claim, when and why it ended and the outcome, the final
//!             snapshot it published last
//! snapshots   published snapshot pointers per (owner, generation), retired on deletion
//! drains      one row per scope: state, nonce, drained instance and session, since, how it cleared
//! events      the audit log
//! orphans     volumes with berth's labels and no record, and when the sweep first saw them
//! locks       named leases: sweeps (gc, orphans), warm pools (warm-fill:IMAGE, warm:CONTAINER)
//!             and the turns of scheduled jobs (turn:retention, turn:prune, turn:purge)
//! ```
//!
//! **Invariant:** every write that carries an epoch is checked in the transaction that applies it.
//! **Invariant:** the store never reads a clock: `now` is a parameter.

mod console;
mod drains;
mod gc;
mod heartbeat;
mod rescue;
mod retention;
mod sessions;
mod workspaces;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use berth_core::gc::{DeleteStep, Outcome};
use berth_core::id::SnapshotId;
use berth_core::lease::{Epoch, Holder, Lease};
use berth_core::lifecycle::{AtRisk, Claim, Cleanup, Record, SessionEnd, Volume};
use berth_core::repo::RepoSpec;
use berth_core::retention::Policy;
use berth_core::scope::Scope;
use berth_core::session::{InstanceId, ReplicaId, SessionId};
use berth_core::time::Timestamp;
use berth_core::volume::{AccessMode, VolumeName};
use berth_core::workspace::{Generation, WorkspaceId};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};

use crate::error::{Error, Result};

pub use berth_core::lifecycle::{State, VolumeState};
pub use console::{ConsoleFilter, ConsoleRow, Counts, DayGrowth, SessionView};
pub use drains::DrainRow;
pub use gc::{Claimed, OrphanRow};
pub use rescue::RescueLease;
pub use retention::Table;
pub use sessions::{Attached, HeartbeatOutcome, SessionRow, SnapshotRow, SnapshotStats};
pub use workspaces::{EnsureOptions, Ensured, ListFilter};

/// Which SQL dialect the store speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: one writer connection, WAL, `synchronous=FULL` except for heartbeats.
    Sqlite,
    /// PostgreSQL: row locks, `SKIP LOCKED` claims.
    Postgres,
}

/// The lease and drain rules the store applies to every attach, heartbeat and drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Seconds a lease lasts after an attach or a heartbeat.
    pub lease_ttl_secs: i64,
    /// Seconds after which a drain clears by itself.
    pub drain_timeout_secs: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { lease_ttl_secs: 60, drain_timeout_secs: berth_core::drain::DEFAULT_HARD_TIMEOUT_SECS }
    }
}

/// The metadata store.
#[derive(Clone, Debug)]
pub struct Meta {
    write: AnyPool,
    read: AnyPool,
    dialect: Dialect,
    rules: Rules,
    /// SQLite: heartbeats queue here for the batching writer.
    beats: Option<tokio::sync::mpsc::Sender<heartbeat::Queued>>,
    /// This installation's id, read (or made) once.
    install: Arc<tokio::sync::OnceCell<String>>,
    /// Wakes the claim requests waiting in this process when a session is handed to a warm
    /// sandbox.
    handed: Arc<tokio::sync::Notify>,
}

/// A workspace record as stored: its lifecycle (decided by `berth_core::lifecycle`) and what
/// the owner asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceRow {
    /// Owner, generation, state, volume, lease, deletion step, cleanup bookkeeping, claim.
    pub record: Record,
    /// The id of this generation.
    pub id: String,
    /// Volume size.
    pub size_bytes: u64,
    /// Storage class.
    pub storage_class: Option<String>,
    /// Access mode.
    pub access_mode: AccessMode,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Repositories to clone on init.
    pub repos: Vec<RepoSpec>,
    /// The latest published snapshot of this generation.
    pub latest_snapshot: Option<SnapshotId>,
    /// When the owner was first ensured.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// The workspace scope's drain, if it is draining: when its hard timeout clears it.
    pub draining_until: Option<Timestamp>,
    /// Its own retention policy; `None`: the server's.
    pub retention: Option<Policy>,
}

impl WorkspaceRow {
    /// Returns whether the workspace's own scope is draining at `now`.
    pub fn is_draining(&self, now: Timestamp) -> bool {
        self.draining_until.is_some_and(|until| now < until)
    }
}

const WS_SELECT: &str = "SELECT w.owner, w.id, w.generation, w.state, w.volume, w.volume_state, \
    w.volume_removed_at, w.volume_outcome, w.size_bytes, w.storage_class, w.access_mode, w.labels, w.repos, \
    w.lease_epoch, w.lease_session, w.lease_instance, w.lease_expires, w.latest_snapshot, w.delete_step, \
    w.last_error, w.attempts, w.retry_at, w.claim_holder, w.claim_until, w.created_at, w.updated_at, w.closed_at, \
    w.at_risk_since, w.at_risk_outcome, w.at_risk_session, w.retention, \
    CASE WHEN d.state = 'draining' THEN d.since END AS draining_since \
    FROM workspaces w LEFT JOIN drains d ON d.scope = 'workspace:' || w.owner";

fn corrupt(what: &str, value: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("{what} '{value}'"))
}

fn ws_from_row(row: &AnyRow, rules: Rules) -> Result<WorkspaceRow> {
    let text = |c: &str| -> Result<String> { Ok(row.try_get::<String, _>(c)?) };
    let opt_text = |c: &str| -> Result<Option<String>> { Ok(row.try_get::<Option<String>, _>(c)?) };
    let int = |c: &str| -> Result<i64> { Ok(row.try_get::<i64, _>(c)?) };
    let opt_ts = |c: &str| -> Result<Option<Timestamp>> { Ok(row.try_get::<Option<i64>, _>(c)?.map(Timestamp)) };
    let owner = WorkspaceId::new(text("owner")?).map_err(|e| Error::Corrupt(e.to_string()))?;
    let state = text("state")?;
    let volume_state = text("volume_state")?;
    let access_mode = text("access_mode")?;
    let volume = Volume {
        name: VolumeName::new(text("volume")?).map_err(|e| Error::Corrupt(e.to_string()))?,
        state: VolumeState::parse(&volume_state).ok_or_else(|| corrupt("volume state", &volume_state))?,
        removed_at: opt_ts("volume_removed_at")?,
        last_outcome: opt_text("volume_outcome")?.map(|o| parse_outcome(&o)).transpose()?,
    };
    let claim = match (opt_text("claim_holder")?, opt_ts("claim_until")?) {
        (Some(holder), Some(until)) => {
            Some(Claim { holder: ReplicaId::new(holder).map_err(|e| Error::Corrupt(e.to_string()))?, until })
        }
        _ => None,
    };
    let record = Record {
        generation: Generation(int("generation")? as u64),
        state: State::parse(&state).ok_or_else(|| corrupt("workspace state", &state))?,
        closed_at: opt_ts("closed_at")?,
        volume,
        lease: lease_from_row(row)?,
        delete_step: opt_text("delete_step")?
            .map(|s| DeleteStep::parse(&s).ok_or_else(|| corrupt("delete step", &s)))
            .transpose()?,
        cleanup: Cleanup {
            attempts: int("attempts")? as u64,
            retry_at: opt_ts("retry_at")?,
            last_error: opt_text("last_error")?,
        },
        claim,
        at_risk: at_risk_from_row(row)?,
        owner,
    };
    Ok(WorkspaceRow {
        record,
        id: text("id")?,
        size_bytes: int("size_bytes")? as u64,
        storage_class: opt_text("storage_class")?,
        access_mode: AccessMode::parse(&access_mode).ok_or_else(|| corrupt("access mode", &access_mode))?,
        labels: json_column(&text("labels")?, "labels")?,
        repos: json_column(&text("repos")?, "repos")?,
        latest_snapshot: opt_text("latest_snapshot")?
            .map(|s| SnapshotId::from_hex(&s))
            .transpose()
            .map_err(|e| Error::Corrupt(e.to_string()))?,
        created_at: Timestamp(int("created_at")?),
        updated_at: Timestamp(int("updated_at")?),
        draining_until: opt_ts("draining_since")?.map(|since| since.plus_secs(rules.drain_timeout_secs)),
        retention: opt_text("retention")?
            .map(|p| Policy::parse(&p).map_err(|e| corrupt("retention policy", format!("{p}: {e}"))))
            .transpose()?,
    })
}

/// Reads the at-risk columns of a workspace row.
fn at_risk_from_row(row: &AnyRow) -> Result<Option<AtRisk>> {
    let since = row.try_get::<Option<i64>, _>("at_risk_since")?;
    let outcome = row.try_get::<Option<String>, _>("at_risk_outcome")?;
    let session = row.try_get::<Option<String>, _>("at_risk_session")?;
    let (Some(since), Some(outcome), Some(session)) = (since, outcome, session) else { return Ok(None) };
    Ok(Some(AtRisk {
        since: Timestamp(since),
        outcome: SessionEnd::parse(&outcome).ok_or_else(|| corrupt("session outcome", &outcome))?,
        session: SessionId::new(session).map_err(|e| Error::Corrupt(e.to_string()))?,
    }))
}

/// Reads the lease columns of a workspace row.
fn lease_from_row(row: &AnyRow) -> Result<Lease> {
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(e.to_string());
    let holder =
        match (row.try_get::<Option<String>, _>("lease_session")?, row.try_get::<Option<String>, _>("lease_instance")?)
        {
            (Some(s), Some(i)) => Some(Holder {
                session: SessionId::new(s).map_err(|e| corrupt(&e))?,
                instance: InstanceId::new(i).map_err(|e| corrupt(&e))?,
            }),
            _ => None,
        };
    Ok(Lease {
        epoch: Epoch(row.try_get::<i64, _>("lease_epoch")? as u64),
        holder,
        expires: Timestamp(row.try_get("lease_expires")?),
    })
}

/// Parses a stored GC or deletion outcome.
fn parse_outcome(s: &str) -> Result<Outcome> {
    Outcome::ALL.into_iter().find(|o| o.as_str() == s).ok_or_else(|| corrupt("volume outcome", s))
}

fn json_column<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// One audit event to record.
#[derive(Clone, Debug, Default)]
pub struct NewEvent<'a> {
    /// Stable event name.
    pub kind: &'a str,
    /// The owner concerned.
    pub owner: Option<&'a WorkspaceId>,
    /// The generation concerned.
    pub generation: Option<Generation>,
    /// The session concerned.
    pub session: Option<&'a SessionId>,
    /// The drain scope concerned.
    pub scope: Option<Scope>,
    /// Details.
    pub detail: serde_json::Value,
}

impl<'a> NewEvent<'a> {
    /// An event about `owner`'s `generation`.
    pub fn of(kind: &'a str, owner: &'a WorkspaceId, generation: Generation) -> NewEvent<'a> {
        NewEvent { kind, owner: Some(owner), generation: Some(generation), ..Default::default() }
    }

    /// Names the session concerned.
    pub fn session(self, session: &'a SessionId) -> NewEvent<'a> {
        NewEvent { session: Some(session), ..self }
    }

    /// Adds details.
    pub fn detail(self, detail: serde_json::Value) -> NewEvent<'a> {
        NewEvent { detail, ..self }
    }
}

/// A recorded audit event.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    /// Increasing id.
    pub id: i64,
    /// When.
    pub at: Timestamp,
    /// Stable name.
    pub kind: String,
    /// Owner.
    pub owner: Option<WorkspaceId>,
    /// Generation.
    pub generation: Option<Generation>,
    /// Session.
    pub session: Option<SessionId>,
    /// Scope.
    pub scope: Option<Scope>,
    /// Details.
    pub detail: serde_json::Value,
}

/// Reads an events row.
fn event_from_row(r: &AnyRow) -> Result<EventRow> {
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(e.to_string());
    Ok(EventRow {
        id: r.try_get("id")?,
        at: Timestamp(r.try_get("at")?),
        kind: r.try_get("kind")?,
        owner: r.try_get::<Option<String>, _>("owner")?.map(WorkspaceId::new).transpose().map_err(|e| corrupt(&e))?,
        generation: r.try_get::<Option<i64>, _>("generation")?.map(|g| Generation(g as u64)),
        session: r
            .try_get::<Option<String>, _>("session_id")?
            .map(SessionId::new)
            .transpose()
            .map_err(|e| corrupt(&e))?,
        scope: r
            .try_get::<Option<String>, _>("scope")?
            .map(|s| s.parse::<Scope>())
            .transpose()
            .map_err(|e| corrupt(&e))?,
        detail: json_column(&r.try_get::<String, _>("detail")?, "event detail")?,
    })
}

/// Records `event` at `now` inside the caller's transaction.
async fn record(conn: &mut AnyConnection, now: Timestamp, event: NewEvent<'_>) -> Result<()> {
    let detail = if event.detail.is_null() { "{}".to_string() } else { event.detail.to_string() };
    sqlx::query(
        "INSERT INTO events (at, kind, owner, generation, session_id, scope, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now.0)
    .bind(event.kind)
    .bind(event.owner.map(|o| o.to_string()))
    .bind(event.generation.map(|g| g.0 as i64))
    .bind(event.session.map(|s| s.to_string()))
    .bind(event.scope.map(|s| s.to_string()))
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// Returns `n` random bytes as hex, from the kernel's generator.
pub(crate) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(k) => filled += k,
            Err(rustix::io::Errno::INTR) => {}
            // getrandom(2) blocks until the pool is ready and fails only on a bad buffer.
            Err(e) => panic!("getrandom failed: {e}"),
        }
    }
    hex::encode(buf)
}

/// Returns the hex BLAKE3 hash a token is stored and looked up by.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

fn migrator(dialect: Dialect) -> Migrator {
    let sql: &[(i64, &str, &'static str)] = match dialect {
        Dialect::Sqlite => &[
            (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
            (2, "at risk", include_str!("../../migrations/sqlite/0002_at_risk.sql")),
            (3, "row horizons", include_str!("../../migrations/sqlite/0003_row_horizons.sql")),
            (5, "drain session", include_str!("../../migrations/sqlite/0005_drain_session.sql")),
            (7, "live session of an instance", include_str!("../../migrations/sqlite/0007_live_session_of.sql")),
            (8, "session claim", include_str!("../../migrations/sqlite/0008_session_claim.sql")),
            (9, "workspace retention", include_str!("../../migrations/sqlite/0009_workspace_retention.sql")),
        ],
        Dialect::Postgres => &[
            (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
            (2, "at risk", include_str!("../../migrations/postgres/0002_at_risk.sql")),
            (3, "row horizons", include_str!("../../migrations/postgres/0003_row_horizons.sql")),
            (5, "drain session", include_str!("../../migrations/postgres/0005_drain_session.sql")),
            (7, "live session of an instance", include_str!("../../migrations/postgres/0007_live_session_of.sql")),
            (8, "session claim", include_str!("../../migrations/postgres/0008_session_claim.sql")),
            (9, "workspace retention", include_str!("../../migrations/postgres/0009_workspace_retention.sql")),
        ],
    };
    let migrations = sql
        .iter()
        .map(|(version, desc, sql)| {
            Migration::new(*version, (*desc).into(), MigrationType::Simple, (*sql).into(), false)
        })
        .collect::<Vec<_>>();
    Migrator { migrations: migrations.into(), ..Migrator::DEFAULT }
}

impl Meta {
    /// Connects to `url` (`sqlite://PATH?mode=rwc`, `sqlite::memory:`, `postgres://...`), to
    /// apply `rules`. `max_connections` bounds the PostgreSQL pool; SQLite always has one writer.
    pub async fn open(url: &str, max_connections: u32, rules: Rules) -> Result<Meta> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(Error::Config(format!(
                "database URL '{}' is not supported: use sqlite://PATH or postgres://USER@HOST/DB",
                redact_url(url)
            )));
        };
        let options = AnyConnectOptions::from_str(url)?;
        match dialect {
            Dialect::Sqlite => {
                let write = AnyPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _| Box::pin(sqlite_pragmas(conn)))
                    .connect_with(options.clone())
                    .await?;
                let in_memory = url.contains(":memory:");
                let read = if in_memory {
                    // Each in-memory connection is its own database: share the writer.
                    write.clone()
                } else {
                    AnyPoolOptions::new()
                        .max_connections(4)
                        .after_connect(|conn, _| Box::pin(sqlite_pragmas(conn)))
                        .connect_with(options)
                        .await?
                };
                let (beats, queue) = tokio::sync::mpsc::channel(4 * 1024);
                let inner = Meta {
                    write,
                    read,
                    dialect,
                    rules,
                    beats: None,
                    install: Default::default(),
                    handed: Default::default(),
                };
                tokio::spawn(heartbeat::batcher(inner.clone(), queue));
                Ok(Meta { beats: Some(beats), ..inner })
            }
            Dialect::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(max_connections.max(2))
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await?;
                Ok(Meta {
                    write: pool.clone(),
                    read: pool,
                    dialect,
                    rules,
                    beats: None,
                    install: Default::default(),
                    handed: Default::default(),
                })
            }
        }
    }

    /// Returns the lease and drain rules in force.
    pub fn rules(&self) -> Rules {
        self.rules
    }

    /// Applies pending migrations and returns how many ran.
    pub async fn migrate(&self) -> Result<usize> {
        let migrator = migrator(self.dialect);
        let mut conn = self.write.acquire().await?;
        let before = applied_versions(&mut conn).await;
        migrator.run(&mut *conn).await?;
        let after = applied_versions(&mut conn).await;
        Ok(after.saturating_sub(before))
    }

    /// Returns this installation's id, creating it on first use (once per process: it never
    /// changes). Volumes carry it as a label, and new volume names are derived with it.
    pub async fn install_id(&self) -> Result<String> {
        let id = self.install.get_or_try_init(|| self.read_install_id()).await?;
        Ok(id.clone())
    }

    async fn read_install_id(&self) -> Result<String> {
        let mut conn = self.write.acquire().await?;
        sqlx::query("INSERT INTO meta (key, value) VALUES ('install_id', $1) ON CONFLICT (key) DO NOTHING")
            .bind(random_hex(8))
            .execute(&mut *conn)
            .await?;
        let row = sqlx::query("SELECT value FROM meta WHERE key = 'install_id'").fetch_one(&mut *conn).await?;
        Ok(row.try_get(0)?)
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    /// Returns a description of the schema (tables, columns, indexes, constraints), one item per
    /// line, for comparison with the checked-in expectation.
    pub async fn schema(&self) -> Result<String> {
        let mut out = String::new();
        match self.dialect {
            Dialect::Sqlite => {
                let rows = sqlx::query(
                    "SELECT type, name, COALESCE(sql, '') FROM sqlite_master \
                     WHERE name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx_%' ORDER BY type, name",
                )
                .fetch_all(&self.read)
                .await?;
                for r in rows {
                    let (kind, name, sql): (String, String, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                    let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
                    out.push_str(&format!("{kind} {name}: {sql}\n"));
                }
            }
            Dialect::Postgres => {
                let cols = sqlx::query(
                    "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text, \
                     COALESCE(column_default::text, ''), COALESCE(is_identity::text, '') \
                     FROM information_schema.columns WHERE table_schema = 'public' AND table_name NOT LIKE '_sqlx_%' \
                     ORDER BY table_name, ordinal_position",
                )
                .fetch_all(&self.read)
                .await?;
                for r in cols {
                    let v: Vec<String> = (0..6).map(|i| r.try_get(i)).collect::<Result<_, _>>()?;
                    out.push_str(&format!(
                        "column {}.{}: {} nullable={} default={} identity={}\n",
                        v[0], v[1], v[2], v[3], v[4], v[5]
                    ));
                }
                let idx = sqlx::query(
                    "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'public' \
                     AND tablename NOT LIKE '_sqlx_%' ORDER BY indexname",
                )
                .fetch_all(&self.read)
                .await?;
                for r in idx {
                    let (name, def): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                    out.push_str(&format!("index {name}: {def}\n"));
                }
                let cons = sqlx::query(
                    "SELECT rel.relname::text, con.conname::text, pg_get_constraintdef(con.oid) \
                     FROM pg_constraint con JOIN pg_class rel ON rel.oid = con.conrelid \
                     JOIN pg_namespace ns ON ns.oid = rel.relnamespace \
                     WHERE ns.nspname = 'public' AND rel.relname NOT LIKE '_sqlx_%' ORDER BY rel.relname, con.conname",
                )
                .fetch_all(&self.read)
                .await?;
                for r in cons {
                    let (table, name, def): (String, String, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                    out.push_str(&format!("constraint {table}.{name}: {def}\n"));
                }
            }
        }
        Ok(out)
    }

    /// Returns events after `after`, oldest first, optionally for one owner or kind.
    pub async fn events(
        &self,
        after: i64,
        owner: Option<&WorkspaceId>,
        kind: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT id, at, kind, owner, generation, session_id, scope, detail FROM events \
             WHERE id > $1 AND ($2 IS NULL OR owner = $2) AND ($3 IS NULL OR kind = $3) ORDER BY id LIMIT $4",
        )
        .bind(after)
        .bind(owner.map(|o| o.to_string()))
        .bind(kind.map(String::from))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Counts events of `kind` (tests and benchmarks assert through them).
    pub async fn count_events(&self, kind: &str) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) FROM events WHERE kind = $1").bind(kind).fetch_one(&self.read).await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }

    /// The row-lock clause for a workspace select (`FOR UPDATE OF w` on PostgreSQL).
    fn lock_ws(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE OF w",
        }
    }

    /// The row-lock clause for a plain select.
    fn lock(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// The claim clause: skip rows another replica holds.
    fn skip_locked(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// Reads one workspace inside a transaction, locking its row.
    async fn ws_for_update(&self, conn: &mut AnyConnection, owner: &WorkspaceId) -> Result<Option<WorkspaceRow>> {
        let sql = format!("{WS_SELECT} WHERE w.owner = $1{}", self.lock_ws());
        let row = sqlx::query(&sql).bind(owner.as_str()).fetch_optional(conn).await?;
        row.as_ref().map(|r| ws_from_row(r, self.rules)).transpose()
    }
}

async fn sqlite_pragmas(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    for p in [
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = FULL",
        "PRAGMA busy_timeout = 10000",
        "PRAGMA foreign_keys = ON",
    ] {
        conn.execute(p).await?;
    }
    Ok(())
}

async fn applied_versions(conn: &mut AnyConnection) -> usize {
    // The table does not exist before the first migration.
    match sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations").fetch_one(&mut *conn).await {
        Ok(row) => row.try_get::<i64, _>(0).unwrap_or(0) as usize,
        Err(_) => 0,
    }
}

/// Shows a database URL without its password.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Begins a transaction on `conn`.
async fn begin(conn: &mut AnyConnection) -> Result<sqlx::Transaction<'_, sqlx::Any>> {
    Ok(conn.begin().await?)
}
