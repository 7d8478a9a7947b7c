//! The control plane's configuration, the state every handler and reconciler shares (`App`),
//! and the clock.
//!
//! **Invariant:** `now()` is the control plane's only clock read; everything below it takes
//! the time as a parameter.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_core::session::ReplicaId;
use berth_core::time::Timestamp;
use berth_core::volume::AccessMode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::Notify;

use crate::auth::Tokens;
use crate::error::{Error, Result};
use crate::meta::{random_hex, redact_url, Meta, Rules};
use crate::volumes::{Rescuer, Substrate, Volumes};

/// Volume GC settings: candidates are bounded per sweep and removed a few at a time, and a
/// sweep is time-bounded.
#[derive(Clone, Debug)]
pub struct GcConfig {
    /// Seconds between sweeps.
    pub interval_secs: u64,
    /// Seconds after closing before a volume is a candidate.
    pub cooldown_secs: i64,
    /// Candidates per sweep.
    pub batch: u32,
    /// Removals in flight at once.
    pub concurrency: usize,
    /// Time bound of one sweep, in seconds.
    pub timeout_secs: u64,
    /// Seconds a reconciler's claim on a workspace lasts: longer than a sweep; after a crash,
    /// the dead process's claims hold their workspaces this long.
    pub claim_ttl_secs: i64,
    /// Seconds between orphan sweeps.
    pub orphan_interval_secs: u64,
    /// Seconds an orphan must stay without a record before it is removed.
    pub orphan_grace_secs: i64,
    /// Seconds a volume may stay at risk (its rescue failing) before GC removes it anyway,
    /// recording that; `None`: kept until rescued or forced.
    pub at_risk_retention_secs: Option<i64>,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval_secs: 60,
            cooldown_secs: 600,
            batch: 100,
            concurrency: 3,
            timeout_secs: 15,
            claim_ttl_secs: 120,
            orphan_interval_secs: 600,
            orphan_grace_secs: 3600,
            at_risk_retention_secs: Some(7 * 24 * 3600),
        }
    }
}

/// The store's upkeep (retention, prune) and how long rows are kept; each job runs once per
/// period across replicas.
#[derive(Clone, Debug)]
pub struct RetentionConfig {
    /// The policy applied to the snapshots of each workspace without one of its own; `None`:
    /// those keep every snapshot (workspaces with their own policy still get it).
    pub policy: Option<berth_core::retention::Policy>,
    /// Seconds between retention runs.
    pub interval_secs: u64,
    /// Seconds between prune runs; 0: no scheduled prune.
    pub prune_interval_secs: u64,
    /// Seconds marked data waits before a later prune deletes it (longer than any snapshot run).
    pub prune_grace_secs: i64,
    /// Seconds audit events are kept; `None`: forever.
    pub events_secs: Option<i64>,
    /// Seconds ended sessions are kept; `None`: forever.
    pub sessions_secs: Option<i64>,
    /// Seconds retired snapshot pointers are kept; `None`: forever.
    pub snapshots_secs: Option<i64>,
    /// Seconds cleared drains are kept; `None`: forever.
    pub drains_secs: Option<i64>,
    /// Seconds between deletions of old rows.
    pub purge_interval_secs: u64,
    /// Rows deleted per statement.
    pub purge_batch: u32,
}

impl RetentionConfig {
    /// How long rows of `table` are kept, in seconds; `None`: forever.
    pub fn horizon(&self, table: crate::meta::Table) -> Option<i64> {
        use crate::meta::Table;
        match table {
            Table::Events => self.events_secs,
            Table::Sessions => self.sessions_secs,
            Table::Snapshots => self.snapshots_secs,
            Table::Drains => self.drains_secs,
        }
    }
}

/// The limits of the HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time to send a complete request head (from the accept, or the first byte of a request).
    pub header_timeout: Duration,
    /// Time to send a request's body, once its head has arrived.
    pub body_timeout: Duration,
    /// Time a connection may stay open with no request under way.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: default_max_connections(),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: i64 = 24 * 3600;
        RetentionConfig {
            policy: Some(Default::default()),
            interval_secs: 3600,
            prune_interval_secs: 6 * 3600,
            prune_grace_secs: DAY,
            events_secs: Some(30 * DAY),
            sessions_secs: Some(30 * DAY),
            snapshots_secs: Some(30 * DAY),
            drains_secs: Some(30 * DAY),
            purge_interval_secs: 3600,
            purge_batch: 1000,
        }
    }
}

/// 1024 connections, or half the open-file limit when that is lower: the metadata store, the
/// substrate and the reconcilers keep descriptors of their own.
pub fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    soft.map_or(1024, |n| (n / 2).clamp(16, 1024) as usize)
}

/// Everything `berth serve` is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory (SQLite database, local volumes, generated admin token).
    pub data_dir: PathBuf,
    /// `postgres://...` or `sqlite://...`; default: SQLite in the data dir.
    pub database_url: Option<String>,
    /// PostgreSQL pool size.
    pub db_max_connections: u32,
    /// The admin token; default: read or generate `<data-dir>/admin-token`.
    pub admin_token: Option<String>,
    /// Object store URL handed to sandboxes for snapshots.
    pub store: Option<String>,
    /// Lease time to live in seconds.
    pub lease_ttl_secs: i64,
    /// Hard timeout of a drain in seconds.
    pub drain_timeout_secs: i64,
    /// Default volume size.
    pub volume_size: u64,
    /// Default storage class.
    pub storage_class: Option<String>,
    /// Default access mode.
    pub access_mode: AccessMode,
    /// uid:gid that owns new local workspace directories (the sandbox's user).
    pub volume_owner: Option<(u32, u32)>,
    /// Where workspace volumes live.
    pub substrate: Substrate,
    /// The namespace of the kubernetes substrate [default: the kubeconfig's, else the pod's].
    pub namespace: Option<String>,
    /// Whether a cordoned node starts a `node:NAME` drain (kubernetes substrate).
    pub watch_nodes: bool,
    /// Driver options of every new volume (docker: `--volume-opt K=V`; `{size}` in a value is
    /// replaced by the workspace's size in bytes).
    pub volume_opts: std::collections::BTreeMap<String, String>,
    /// Volume GC.
    pub gc: GcConfig,
    /// Scheduled retention, prune and row horizons.
    pub retention: RetentionConfig,
    /// How sandboxes run (docker substrate).
    pub sandbox: crate::sandboxes::SandboxConfig,
    /// Seconds between lease and drain expiry checks.
    pub expiry_interval_secs: u64,
    /// Read-only tokens: see everything (API and console), change nothing.
    pub viewer_tokens: Vec<String>,
    /// Seconds a console login lasts.
    pub console_session_secs: i64,
    /// The HTTP server's connection cap and timeouts.
    pub http: HttpLimits,
}

impl Config {
    /// The defaults of `berth serve` with no flags.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            data_dir: data_dir.into(),
            database_url: None,
            db_max_connections: 16,
            admin_token: None,
            store: None,
            lease_ttl_secs: 60,
            drain_timeout_secs: berth_core::drain::DEFAULT_HARD_TIMEOUT_SECS,
            volume_size: 10 << 30,
            storage_class: None,
            access_mode: AccessMode::ReadWriteOnce,
            volume_owner: None,
            substrate: Substrate::Local,
            namespace: None,
            watch_nodes: false,
            volume_opts: Default::default(),
            gc: GcConfig::default(),
            retention: RetentionConfig::default(),
            sandbox: Default::default(),
            expiry_interval_secs: 2,
            viewer_tokens: Vec::new(),
            console_session_secs: 12 * 3600,
            http: HttpLimits::default(),
        }
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.data_dir.join("berth.db").display()))
    }
}

/// The state every request handler and reconciler shares.
#[derive(Debug)]
pub struct App {
    /// The metadata store.
    pub meta: Meta,
    /// The substrate.
    pub volumes: Arc<dyn Volumes>,
    /// Where sandboxes run (`None`: this substrate runs none).
    pub sandboxes: Option<Arc<dyn crate::volumes::Sandboxes>>,
    /// How GC rescues at-risk volumes, or why it cannot (no store, a substrate without one).
    pub rescuer: std::result::Result<Arc<dyn Rescuer>, String>,
    /// Configuration.
    pub config: Config,
    /// This installation's id (a label on every volume).
    pub install: String,
    /// This process's id among replicas (claims and locks carry it).
    pub replica: ReplicaId,
    /// Who a bearer token is: the admin, or a sandbox's session.
    pub tokens: Tokens,
    /// Wakes the deletion reconciler.
    pub wake_delete: Notify,
    /// Keeps GC sweeps of this process from overlapping.
    pub gc_running: tokio::sync::Mutex<()>,
    /// The warm pools' refills waiting for claimed sandboxes to end their init.
    pub refill_holds: crate::sandboxes::RefillHolds,
    /// Prometheus rendering.
    pub metrics: PrometheusHandle,
    /// Cancelled at shutdown: ends the live event streams and the waiting claim requests, which
    /// would otherwise hold the graceful shutdown open.
    pub streams: tokio_util::sync::CancellationToken,
}

/// Returns the current time. The only clock read of the control plane.
pub fn now() -> Timestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    Timestamp(d.as_nanos() as i64)
}

fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder is installed (a second App in one test process):
            // metrics then go to that one.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Reads the admin token from the config or `<data-dir>/admin-token`, generating the file on
/// first start.
fn admin_token(config: &Config) -> Result<String> {
    if let Some(t) = &config.admin_token {
        if t.len() < 16 {
            return Err(Error::Config("the admin token must be at least 16 characters".into()));
        }
        return Ok(t.clone());
    }
    let path = config.data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            crate::modes::tighten(&path, 0o600, "the admin token file")?;
            return Ok(t.trim().to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Config(format!("cannot read {}: {e}", path.display()))),
    }
    let token = format!("bat_{}", random_hex(32));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    };
    match write() {
        Ok(()) => {
            tracing::info!(event = "admin_token_created", path = %path.display());
            Ok(token)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => admin_token(config),
        Err(e) => Err(Error::Config(format!("cannot write {}: {e}", path.display()))),
    }
}

/// The mode of the directories above local volumes (the data dir, the volumes root): 0700, or
/// 0711 when sandboxes run as another user (`volume_owner`), who must pass through to their
/// workspace directory (but may not list or read anything else).
fn private_dir_mode(config: &Config) -> u32 {
    match (config.substrate, config.volume_owner) {
        (Substrate::Local, Some(_)) => 0o711,
        _ => 0o700,
    }
}

/// Creates the data dir if missing, and gives it its mode.
fn create_private_dir(config: &Config) -> Result<()> {
    let path = &config.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::Config(format!("cannot create data dir {}: {e}", path.display())))?;
    crate::modes::set(path, private_dir_mode(config), "the data dir")
}

/// The database file of a SQLite URL (`sqlite://PATH?...`), if it names one.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Opens the metadata store of `config` and applies migrations; returns it and how many ran.
/// A SQLite database file is kept 0600.
pub async fn open_meta(config: &Config) -> Result<(Meta, usize)> {
    if config.database_url.is_none() {
        create_private_dir(config)?;
    }
    let url = config.database_url();
    if let Some(file) = sqlite_file(&url) {
        crate::modes::private_sqlite(&file)?;
    }
    let rules = Rules { lease_ttl_secs: config.lease_ttl_secs, drain_timeout_secs: config.drain_timeout_secs };
    let meta = Meta::open(&url, config.db_max_connections, rules).await.map_err(|e| match e {
        Error::Db(e) => Error::Config(format!("cannot open the metadata store {}: {e}", redact_url(&url))),
        other => other,
    })?;
    let applied = meta.migrate().await?;
    Ok((meta, applied))
}

impl App {
    /// Builds the application state: opens and migrates the store, sets up the substrate.
    pub async fn new(mut config: Config) -> Result<Arc<App>> {
        create_private_dir(&config)?;
        // Mount paths handed to sandboxes must not depend on this process's working directory.
        config.data_dir = std::fs::canonicalize(&config.data_dir)
            .map_err(|e| Error::Config(format!("cannot resolve data dir {}: {e}", config.data_dir.display())))?;
        let (meta, applied) = open_meta(&config).await?;
        if applied > 0 {
            tracing::info!(event = "migrations_applied", count = applied);
        }
        let install = meta.install_id().await?;
        let volumes = crate::volumes::open(&config, &install).await?;
        if config.substrate == Substrate::Local {
            crate::modes::set(&config.data_dir.join("volumes"), private_dir_mode(&config), "the volumes root")?;
        }
        let sandboxes = crate::sandboxes::open(&config).await?;
        let rescuer = match (&sandboxes, config.substrate) {
            (Some(s), Substrate::Docker | Substrate::Kubernetes) => {
                crate::container_rescue::open(&config, s.clone(), &install)
            }
            _ => crate::rescue::open(&config),
        };
        if let Err(why) = &rescuer {
            tracing::warn!(event = "rescue_unavailable", reason = %why, "at-risk volumes are kept until rescued or forced");
        }
        let admin = admin_token(&config)?;
        if let Some(short) = config.viewer_tokens.iter().find(|t| t.len() < 16) {
            return Err(Error::Config(format!(
                "a viewer token must be at least 16 characters; one has {}",
                short.len()
            )));
        }
        if config.viewer_tokens.contains(&admin) {
            return Err(Error::Config("a viewer token must differ from the admin token".into()));
        }
        let tokens = Tokens::new(&admin, &config.viewer_tokens);
        Ok(Arc::new(App {
            meta,
            volumes,
            sandboxes,
            rescuer,
            install,
            replica: ReplicaId::new(format!("replica_{}", random_hex(8))).map_err(|e| Error::Config(e.to_string()))?,
            tokens,
            wake_delete: Notify::new(),
            gc_running: tokio::sync::Mutex::new(()),
            refill_holds: Default::default(),
            metrics: metrics_handle(),
            streams: tokio_util::sync::CancellationToken::new(),
            config,
        }))
    }
}
