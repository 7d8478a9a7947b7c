//! `berth serve` and `berth migrate`: build the control plane's configuration from flags and
//! environment, then hand it to `berth_control::run`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use berth_control::volumes::Substrate;
use berth_control::{Config, GcConfig, RetentionConfig};
use berth_core::volume::AccessMode;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::{units, upkeep};

/// Where the control plane keeps its metadata (the object store for snapshots is `--store`).
#[derive(Debug, Args)]
pub struct MetaArgs {
    /// Data directory: the SQLite database, local volumes and the generated admin token.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "./berth-data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Metadata store: postgres://USER@HOST:PORT/DB (several replicas may share it) or
    /// sqlite://PATH [default: SQLite in the data dir].
    #[arg(long, env = "BERTH_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// `berth serve` flags.
#[derive(Debug, Args)]
pub struct Serve {
    #[command(flatten)]
    meta: MetaArgs,
    /// Address to listen on.
    #[arg(long, env = "BERTH_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// File holding the admin token (or set BERTH_ADMIN_TOKEN) [default: DATA_DIR/admin-token,
    /// generated on first start]. Replicas on one database must share it.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// File of read-only viewer tokens, one a line (`#` comments and blank lines ignored; each
    /// at least 16 characters): they see everything, in the API and the console at /ui, and
    /// change nothing.
    #[arg(long, value_name = "FILE")]
    viewer_token_file: Option<PathBuf>,
    /// How long a console login (/ui) lasts.
    #[arg(long, default_value = "12h", value_parser = units::parse_duration)]
    console_session: i64,
    /// Object store for snapshots (file:///PATH, s3://BUCKET/PREFIX; S3 settings from the
    /// AWS_* environment): handed to sandboxes, and where GC rescues at-risk volumes. Without
    /// it, at-risk volumes are kept until forced or past --at-risk-retention.
    #[arg(long = "store", env = "BERTH_STORE", value_name = "URL")]
    store_url: Option<String>,
    /// Lease time to live; sandboxes heartbeat well within it.
    #[arg(long, default_value = "60s", value_parser = units::parse_duration)]
    lease_ttl: i64,
    /// Hard timeout after which a drain clears by itself.
    #[arg(long, default_value = "15m", value_parser = units::parse_duration)]
    drain_timeout: i64,
    /// Default volume size.
    #[arg(long, default_value = "10GiB", value_parser = parse_size)]
    volume_size: u64,
    /// Where workspace volumes live: local (directories under the data dir), docker (named
    /// volumes on the engine DOCKER_HOST names, the unix socket by default) or kubernetes
    /// (PersistentVolumeClaims; the cluster from KUBECONFIG, ~/.kube/config or the pod's service
    /// account).
    #[arg(long, env = "BERTH_SUBSTRATE", default_value = "local")]
    substrate: Substrate,
    /// Namespace of the kubernetes substrate's claims [default: the kubeconfig context's, else
    /// the pod's own].
    #[arg(long, env = "BERTH_NAMESPACE", value_name = "NS")]
    namespace: Option<String>,
    /// Watch the cluster's nodes (kubernetes substrate): a cordoned node starts a `node:NAME`
    /// drain, and uncordoning it clears that drain. Needs list and watch on nodes (a ClusterRole).
    #[arg(long)]
    watch_nodes: bool,
    /// Default storage class [default: the substrate's]; on docker, the volume driver; on
    /// kubernetes, the claims' storageClassName.
    #[arg(long)]
    storage_class: Option<String>,
    /// Driver option of every new docker volume, as KEY=VALUE (repeatable); `{size}` in a value
    /// becomes the workspace's size in bytes, e.g. `--volume-opt o=size={size}`.
    #[arg(long = "volume-opt", value_name = "KEY=VALUE", value_parser = parse_volume_opt)]
    volume_opts: Vec<(String, String)>,
    /// Default access mode: ReadWriteOnce, ReadWriteOncePod or ReadWriteMany.
    #[arg(long, default_value = "ReadWriteOnce", value_parser = parse_access_mode)]
    access_mode: AccessMode,
    /// Owner of new local workspace directories (the sandbox user), as UID:GID.
    #[arg(long, value_name = "UID:GID", value_parser = parse_owner)]
    volume_owner: Option<(u32, u32)>,
    /// Time between volume GC sweeps.
    #[arg(long, default_value = "60s", value_parser = units::parse_duration)]
    gc_interval: i64,
    /// Time after closing before a workspace's volume may be collected.
    #[arg(long, default_value = "10m", value_parser = units::parse_duration)]
    gc_cooldown: i64,
    /// Volumes considered per sweep.
    #[arg(long, default_value_t = 100)]
    gc_batch: u32,
    /// Removals in flight at once.
    #[arg(long, default_value_t = 3)]
    gc_concurrency: usize,
    /// Time bound of one sweep.
    #[arg(long, default_value = "15s", value_parser = units::parse_duration)]
    gc_timeout: i64,
    /// How long a reconciler's claim on a workspace lasts (after a crash, others wait this long).
    #[arg(long, default_value = "2m", value_parser = units::parse_duration)]
    claim_ttl: i64,
    /// Time between orphan sweeps.
    #[arg(long, default_value = "10m", value_parser = units::parse_duration)]
    orphan_interval: i64,
    /// How long a volume must stay without a record before the orphan sweep removes it.
    #[arg(long, default_value = "1h", value_parser = units::parse_duration)]
    orphan_grace: i64,
    /// How long a volume may stay at risk (its last session ended without a final snapshot and
    /// every rescue failed) before GC removes it anyway, recording `at_risk_removed`; `0s`
    /// keeps it until rescued or forced.
    #[arg(long, default_value = "7d", value_parser = units::parse_duration)]
    at_risk_retention: i64,
    /// Time between lease and drain expiry checks.
    #[arg(long, default_value = "2s", value_parser = units::parse_duration)]
    expiry_interval: i64,
    /// Network sandbox containers join (docker): host, bridge or a network's name [default:
    /// the engine's]. With host, sandboxes reach a control plane listening on 127.0.0.1.
    #[arg(long, value_name = "NAME")]
    sandbox_network: Option<String>,
    /// The control plane's URL as sandboxes reach it [default: http:// and --listen].
    #[arg(long, value_name = "URL")]
    sandbox_server_url: Option<String>,
    /// The user sandboxes run as, UID:GID [default: 1000:1000].
    #[arg(long, value_name = "UID:GID", value_parser = parse_owner)]
    sandbox_user: Option<(u32, u32)>,
    /// Keep N idle containers of IMAGE (repeatable): a `berth sandbox start` of that image
    /// claims one and restores the workspace into it from the store, instead of creating a
    /// container with the workspace volume.
    #[arg(long = "warm-pool", value_name = "IMAGE=N", value_parser = parse_warm_pool)]
    warm_pools: Vec<(String, usize)>,
    /// How long a warm pool's refill waits at most for the sandboxes just claimed from it to
    /// end their init (a new warm container's start would slow their restores); 0s: never.
    #[arg(long, default_value = "10s", value_parser = units::parse_duration)]
    warm_refill_hold: i64,
    /// A label of every sandbox container, as KEY=VALUE (repeatable).
    #[arg(long = "sandbox-label", value_name = "KEY=VALUE", value_parser = parse_volume_opt)]
    sandbox_labels: Vec<(String, String)>,
    /// Image of the short container that rescues an at-risk docker volume (one snapshot of it
    /// into the store) [default: the first --warm-pool image].
    #[arg(long, value_name = "IMAGE")]
    rescue_image: Option<String>,
    /// Image holding berth's binary at /usr/local/bin/berth (kubernetes substrate): each sandbox
    /// pod's init container copies it into the pod. Without it, kubernetes runs no sandboxes.
    #[arg(long, value_name = "IMAGE")]
    sandbox_berth_image: Option<String>,
    /// PostgreSQL connection pool size.
    #[arg(long, default_value_t = 16)]
    db_max_connections: u32,
    #[command(flatten)]
    upkeep: UpkeepArgs,
    #[command(flatten)]
    http: HttpArgs,
}

/// The store's upkeep and how long rows are kept; each job runs once per period across replicas.
#[derive(Debug, Args)]
struct UpkeepArgs {
    /// Retention applied to each workspace's snapshots in --store every --retention-interval
    /// (`off`: none); snapshots a live session or a pending handover points at are always kept.
    #[arg(long, value_name = "POLICY|off", default_value_t, value_parser = upkeep::parse_policy)]
    retention: upkeep::PolicyArg,
    /// Time between retention runs.
    #[arg(long, default_value = "1h", value_parser = units::parse_duration)]
    retention_interval: i64,
    /// Time between prunes of --store (`0`: none): unreferenced data is marked, and deleted by
    /// a later prune once --prune-grace has passed.
    #[arg(long, default_value = "6h", value_parser = units::parse_duration)]
    prune_interval: i64,
    /// How long marked data waits before deletion; must exceed the longest snapshot run.
    #[arg(long, default_value = "24h", value_parser = units::parse_duration)]
    prune_grace: i64,
    /// How long audit events are kept (`0`: forever).
    #[arg(long, default_value = "30d", value_parser = units::parse_duration)]
    event_retention: i64,
    /// How long ended sessions are kept (`0`: forever); the one an at-risk workspace names stays.
    #[arg(long, default_value = "30d", value_parser = units::parse_duration)]
    session_retention: i64,
    /// How long retired snapshot pointers (deleted workspaces, forgotten snapshots) are kept (`0`: forever).
    #[arg(long, default_value = "30d", value_parser = units::parse_duration)]
    snapshot_retention: i64,
    /// How long cleared drains are kept (`0`: forever).
    #[arg(long, default_value = "30d", value_parser = units::parse_duration)]
    drain_retention: i64,
}

impl UpkeepArgs {
    fn config(&self) -> RetentionConfig {
        let horizon = |secs: i64| (secs > 0).then_some(secs);
        RetentionConfig {
            policy: self.retention.0,
            interval_secs: secs(self.retention_interval).max(1),
            prune_interval_secs: secs(self.prune_interval),
            prune_grace_secs: self.prune_grace.max(0),
            events_secs: horizon(self.event_retention),
            sessions_secs: horizon(self.session_retention),
            snapshots_secs: horizon(self.snapshot_retention),
            drains_secs: horizon(self.drain_retention),
            ..RetentionConfig::default()
        }
    }
}

/// The HTTP server's limits: clients that stall cannot hold it.
#[derive(Debug, Args)]
struct HttpArgs {
    /// Time a client has to send a complete request head, from its connect or the first byte of
    /// a request; past it the connection is closed.
    #[arg(long, default_value = "10s", value_parser = units::parse_duration)]
    http_header_timeout: i64,
    /// Time a client has to send a request's body once its head arrived (408 past it).
    #[arg(long, default_value = "30s", value_parser = units::parse_duration)]
    http_body_timeout: i64,
    /// Time a connection may stay open with no request under way.
    #[arg(long, default_value = "60s", value_parser = units::parse_duration)]
    http_idle_timeout: i64,
    /// HTTP connections served at once; more wait in the listen backlog until one closes
    /// [default: 1024, or half the open-file limit when that is lower].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
}

impl HttpArgs {
    fn limits(&self) -> berth_control::HttpLimits {
        let timeout = |v: i64| std::time::Duration::from_secs(secs(v).max(1));
        berth_control::HttpLimits {
            header_timeout: timeout(self.http_header_timeout),
            body_timeout: timeout(self.http_body_timeout),
            idle_timeout: timeout(self.http_idle_timeout),
            max_connections: self.max_connections.unwrap_or_else(berth_control::app::default_max_connections).max(1),
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    units::parse_size(s)?.ok_or_else(|| "a volume needs a size".to_string())
}

fn parse_access_mode(s: &str) -> Result<AccessMode, String> {
    AccessMode::parse(s).ok_or_else(|| format!("'{s}' is not ReadWriteOnce, ReadWriteOncePod or ReadWriteMany"))
}

fn parse_volume_opt(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

fn parse_warm_pool(s: &str) -> Result<(String, usize), String> {
    let (image, n) = s.rsplit_once('=').ok_or_else(|| format!("'{s}' is not IMAGE=N"))?;
    let n = n.parse().map_err(|_| format!("'{n}' is not a number of containers"))?;
    if image.is_empty() || n > 1000 {
        return Err(format!("'{s}' is not IMAGE=N with N at most 1000"));
    }
    Ok((image.to_string(), n))
}

fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').ok_or_else(|| format!("'{s}' is not UID:GID"))?;
    Ok((u.parse().map_err(|_| format!("'{u}' is not a uid"))?, g.parse().map_err(|_| format!("'{g}' is not a gid"))?))
}

/// Reads a file of tokens (`what`: "admin token", "viewer token"), refusing one that group or
/// others may read or write.
fn read_private(path: &std::path::Path, what: &str) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let cannot = || format!("cannot read the {what} file {}", path.display());
    let mode = std::fs::metadata(path).with_context(cannot)?.permissions().mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the {what} file {} is mode {:04o}, open to group or others: run `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(cannot)
}

fn secs(v: i64) -> u64 {
    v.max(0) as u64
}

impl Serve {
    fn config(self) -> Result<Config> {
        let admin_token = match (&self.admin_token_file, std::env::var("BERTH_ADMIN_TOKEN")) {
            (Some(path), _) => Some(read_private(path, "admin token")?.trim().to_string()),
            (None, Ok(t)) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => None,
        };
        let viewer_tokens = match &self.viewer_token_file {
            Some(path) => read_private(path, "viewer token")?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect(),
            None => Vec::new(),
        };
        let mut config = Config::new(self.meta.data_dir);
        config.listen = self.listen;
        config.viewer_tokens = viewer_tokens;
        config.console_session_secs = self.console_session.max(60);
        config.database_url = self.meta.database_url;
        config.db_max_connections = self.db_max_connections;
        config.admin_token = admin_token;
        config.store = self.store_url;
        config.lease_ttl_secs = self.lease_ttl.max(1);
        config.drain_timeout_secs = self.drain_timeout.max(1);
        config.volume_size = self.volume_size;
        config.storage_class = self.storage_class;
        config.access_mode = self.access_mode;
        config.volume_owner = self.volume_owner;
        config.substrate = self.substrate;
        config.namespace = self.namespace;
        config.watch_nodes = self.watch_nodes;
        config.volume_opts = self.volume_opts.into_iter().collect();
        config.expiry_interval_secs = secs(self.expiry_interval);
        config.http = self.http.limits();
        config.sandbox = berth_control::sandboxes::SandboxConfig {
            network: self.sandbox_network,
            server_url: self.sandbox_server_url,
            user: self.sandbox_user,
            berth_binary: None,
            warm_pools: self.warm_pools,
            labels: self.sandbox_labels.into_iter().collect(),
            rescue_image: self.rescue_image,
            berth_image: self.sandbox_berth_image,
            refill_hold_secs: Some(secs(self.warm_refill_hold)),
        };
        config.gc = GcConfig {
            interval_secs: secs(self.gc_interval),
            cooldown_secs: self.gc_cooldown.max(0),
            batch: self.gc_batch.max(1),
            concurrency: self.gc_concurrency.max(1),
            timeout_secs: secs(self.gc_timeout).max(1),
            claim_ttl_secs: self.claim_ttl.max(self.gc_timeout * 2),
            orphan_interval_secs: secs(self.orphan_interval),
            orphan_grace_secs: self.orphan_grace.max(0),
            at_risk_retention_secs: (self.at_risk_retention > 0).then_some(self.at_risk_retention),
        };
        config.retention = self.upkeep.config();
        Ok(config)
    }
}

/// Runs `berth serve` until SIGTERM or SIGINT.
pub async fn serve(args: Serve) -> Result<()> {
    let config = args.config()?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(event = "shutdown_requested");
        on_signal.cancel();
    });
    berth_control::run(config, shutdown).await?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the process still stops on the default action.
        _ => std::future::pending::<()>().await,
    }
}

/// Runs `berth migrate`: applies pending migrations and exits.
pub async fn migrate(meta: MetaArgs, json: bool) -> Result<()> {
    let mut config = Config::new(meta.data_dir);
    config.database_url = meta.database_url;
    let (_, applied) = berth_control::app::open_meta(&config).await?;
    if json {
        println!("{}", serde_json::json!({"applied": applied}));
    } else if applied == 0 {
        println!("schema is up to date");
    } else {
        println!("applied {applied} migration(s)");
    }
    Ok(())
}
