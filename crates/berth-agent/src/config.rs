//! The agent's settings: a JSON spec file (`--spec`), overridden by flags and environment,
//! resolved into one `AgentConfig`. The defaults live in [`defaults`], which the command line's
//! help texts read too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use berth_api::{Handover, Mount, Session};
use berth_core::id::SnapshotId;
use berth_core::lease::Epoch;
use berth_core::repo::{credential_host, RepoSpec};
use berth_core::retention::Policy;
use berth_core::session::{InstanceId, SessionId};
use berth_core::units::{parse_duration, parse_size};
use berth_core::workspace::{Generation, WorkspaceId};
use serde::Deserialize;

use crate::error::AgentError;

/// Every default of the agent's settings, in one place.
pub mod defaults {
    /// Seconds between interval snapshots.
    pub const INTERVAL_SECS: u64 = 60;
    /// Seconds before the first interval snapshot.
    pub const FIRST_AFTER_SECS: u64 = 30;
    /// Milliseconds from the first change to the snapshot that saves it.
    pub const DEBOUNCE_MS: u64 = 500;
    /// Seconds between git state captures.
    pub const GIT_INTERVAL_SECS: u64 = 60;
    /// Least seconds between the starts of two snapshot runs, however fast the tree changes.
    pub const MIN_GAP_SECS: u64 = 1;
    /// Seconds between full scans that check the file watcher's reports.
    pub const RESCAN_SECS: u64 = 10 * 60;
    /// Seconds between retention runs (without a control plane).
    pub const RETENTION_INTERVAL_SECS: u64 = 10 * 60;
    /// Seconds between prunes of the store by the agent (0: none).
    pub const PRUNE_INTERVAL_SECS: u64 = 0;
    /// Seconds marked data waits before a later prune deletes it.
    pub const PRUNE_GRACE_SECS: i64 = 24 * 3600;
    /// The platform's grace period between SIGTERM and SIGKILL, in seconds.
    pub const PLATFORM_GRACE_SECS: u64 = 30;
    /// Size budget per snapshot, in bytes.
    pub const BUDGET_BYTES: u64 = 1 << 30;
    /// Age after which a dead job's leftovers are swept, in seconds.
    pub const TTL_SECS: i64 = 60 * 60;
    /// Total time clone retries may take, in seconds.
    pub const CLONE_TIMEOUT_SECS: i64 = 5 * 60;
    /// Author name of work-in-progress commits.
    pub const AUTHOR_NAME: &str = "berth";
    /// Author email of work-in-progress commits.
    pub const AUTHOR_EMAIL: &str = "berth@localhost";
    /// Username git presents with the token.
    pub const GIT_USERNAME: &str = "x-access-token";
    /// Lease time to live assumed for a session given by flags (the attach response has it);
    /// `berth serve`'s default.
    pub const LEASE_TTL_SECS: u64 = 60;
    /// The margin before the lease could expire at which writing stops when renewals fail:
    /// [`berth_core::renewal::default_margin_secs`] of the TTL (a quarter).
    pub fn lease_margin_secs(ttl_secs: u64) -> u64 {
        berth_core::renewal::default_margin_secs(ttl_secs)
    }
}

/// The spec file: everything optional; `session` is the control plane's attach response.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The attach response (session id, epoch, sandbox token, mount, init spec, handover).
    pub session: Option<Session>,
    /// Control-plane URL.
    pub server: Option<String>,
    /// The workspace directory.
    pub dir: Option<PathBuf>,
    /// Workspace id (owner key).
    pub workspace: Option<String>,
    /// Generation.
    pub generation: Option<u64>,
    /// Object store URL.
    pub store: Option<String>,
    /// This sandbox's instance id.
    pub instance_id: Option<String>,
    /// Repositories to clone.
    pub repos: Option<Vec<berth_api::RepoSpec>>,
    /// Extra exclude patterns.
    pub excludes: Option<Vec<String>>,
    /// Turn off the default excludes.
    pub no_default_excludes: Option<bool>,
    /// Snapshot size budget (`1GiB`, `unlimited`).
    pub budget: Option<String>,
    /// Engine cache directory.
    pub cache_dir: Option<PathBuf>,
    /// Seconds between snapshots.
    pub interval_secs: Option<u64>,
    /// Seconds before the first snapshot.
    pub first_after_secs: Option<u64>,
    /// Milliseconds after a change before a snapshot starts.
    pub debounce_ms: Option<u64>,
    /// Seconds between git state captures.
    pub git_interval_secs: Option<u64>,
    /// Least seconds between the starts of two snapshot runs.
    pub min_gap_secs: Option<u64>,
    /// Seconds between full scans that check the file watcher.
    pub rescan_secs: Option<u64>,
    /// Retention policy applied without a control plane (`keep-last=10,hourly=24`, `off`).
    pub retention: Option<String>,
    /// Seconds between retention runs.
    pub retention_interval_secs: Option<u64>,
    /// Seconds between prunes (0: none).
    pub prune_interval_secs: Option<u64>,
    /// Seconds marked data waits before deletion.
    pub prune_grace_secs: Option<i64>,
    /// The drain budget.
    pub grace_secs: Option<u64>,
    /// Seconds before the lease could expire at which writing stops when renewals fail.
    pub lease_margin_secs: Option<u64>,
    /// The platform's grace period between SIGTERM and SIGKILL.
    pub platform_grace_secs: Option<u64>,
    /// Command (run by `sh -c`) that asks the agent to commit and push.
    pub nudge_command: Option<String>,
    /// URL POSTed to ask the agent to commit and push.
    pub nudge_url: Option<String>,
    /// Author of work-in-progress commits.
    pub author_name: Option<String>,
    /// Author email of work-in-progress commits.
    pub author_email: Option<String>,
    /// Token endpoint (workload token exchange).
    pub credential_endpoint: Option<String>,
    /// Workload identity token presented to the endpoint.
    pub identity_token_file: Option<PathBuf>,
    /// File holding a static git token (the fallback).
    pub git_token_file: Option<PathBuf>,
    /// Username git presents with the token.
    pub git_username: Option<String>,
    /// Base directory of per-job paths.
    pub base: Option<PathBuf>,
    /// Sweep TTL (`1h`).
    pub ttl: Option<String>,
}

impl Spec {
    /// Reads a spec file.
    pub fn load(path: &Path) -> Result<Spec, AgentError> {
        let fail = |reason: String| AgentError::Spec { path: path.to_path_buf(), reason };
        let body = std::fs::read(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
        serde_json::from_slice(&body).map_err(|e| fail(format!("is not valid: {e}")))
    }
}

/// Settings from the command line and the environment; each one set wins over the spec file's.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// The spec file.
    pub spec: Option<PathBuf>,
    /// The workspace directory.
    pub dir: Option<PathBuf>,
    /// Object store URL.
    pub store: Option<String>,
    /// Workspace id.
    pub workspace: Option<String>,
    /// Generation.
    pub generation: Option<u64>,
    /// Control-plane URL.
    pub server: Option<String>,
    /// Sandbox token.
    pub token: Option<String>,
    /// Session id (without a spec file).
    pub session: Option<String>,
    /// Lease epoch of the session.
    pub epoch: Option<u64>,
    /// Lease time to live of a session given by flags, in seconds.
    pub lease_ttl: Option<u64>,
    /// Seconds before the lease could expire at which writing stops when renewals fail.
    pub lease_margin: Option<u64>,
    /// This sandbox's instance id.
    pub instance: Option<String>,
    /// Repositories: a JSON list, a single URL, or `@FILE`.
    pub repos: Option<String>,
    /// Extra exclude patterns (added to the spec's).
    pub excludes: Vec<String>,
    /// Turn off the default excludes.
    pub no_default_excludes: bool,
    /// Snapshot size budget (`Some(None)`: unlimited).
    pub budget: Option<Option<u64>>,
    /// Engine cache directory.
    pub cache_dir: Option<PathBuf>,
    /// Seconds between snapshots.
    pub interval: Option<u64>,
    /// Seconds before the first interval snapshot.
    pub first_after: Option<u64>,
    /// Milliseconds from a change to its snapshot.
    pub debounce: Option<u64>,
    /// Seconds between git state captures.
    pub git_interval: Option<u64>,
    /// Least seconds between the starts of two snapshot runs.
    pub min_gap: Option<u64>,
    /// Seconds between full scans that check the file watcher.
    pub rescan_interval: Option<u64>,
    /// Retention policy without a control plane (`Some(None)`: off).
    pub retention: Option<Option<Policy>>,
    /// Seconds between retention runs.
    pub retention_interval: Option<u64>,
    /// Seconds between prunes (0: none).
    pub prune_interval: Option<u64>,
    /// Seconds marked data waits before deletion.
    pub prune_grace: Option<i64>,
    /// Drain budget in seconds.
    pub grace: Option<u64>,
    /// The platform's grace period in seconds.
    pub platform_grace: Option<u64>,
    /// Nudge command.
    pub nudge_cmd: Option<String>,
    /// Nudge URL.
    pub nudge_url: Option<String>,
    /// Author of work-in-progress commits, `Name <email>`.
    pub author: Option<String>,
    /// Token endpoint.
    pub credential_endpoint: Option<String>,
    /// Workload identity token file.
    pub identity_token_file: Option<PathBuf>,
    /// Static git token file.
    pub git_token_file: Option<PathBuf>,
    /// Static git token (from the environment, never a flag).
    pub git_token: Option<String>,
    /// Username presented with the git token.
    pub git_username: Option<String>,
    /// Base directory of per-job paths.
    pub base: Option<PathBuf>,
    /// Sweep TTL in seconds.
    pub ttl: Option<i64>,
    /// Time clone retries may take, in seconds.
    pub clone_timeout: Option<i64>,
    /// Where to serve `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
}

/// How to ask the agent process to commit and push before a drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nudge {
    /// Send SIGTERM to the child's process group.
    Signal,
    /// Run this with `sh -c` (environment: BERTH_DRAIN=1, BERTH_DIR).
    Command(String),
    /// POST to this URL.
    Url(String),
}

/// The control-plane session of this sandbox.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Control-plane URL.
    pub server: String,
    /// The sandbox token.
    pub token: String,
    /// The session.
    pub session: SessionId,
    /// Its fencing epoch.
    pub epoch: Epoch,
    /// Lease time to live, for the heartbeat period and the write deadline.
    pub lease_ttl_secs: u64,
    /// Writing stops this long before the lease could expire, when renewals fail.
    pub lease_margin_secs: u64,
    /// The control plane's latest published snapshot of the generation at attach (its
    /// pointer): what init restores, unless the store holds later work of a lease holder.
    pub pointer: Option<SnapshotId>,
    /// A pending drain handover to acknowledge once ready.
    pub handover: Option<Handover>,
    /// The lock file of a local volume (held shared while the agent uses it).
    pub mount_lock: Option<PathBuf>,
}

/// Where git credentials come from.
#[derive(Clone, Debug, Default)]
pub struct CredentialConfig {
    /// Token endpoint.
    pub endpoint: Option<String>,
    /// Workload identity token file for the endpoint.
    pub identity_token_file: Option<PathBuf>,
    /// Static token file (fallback).
    pub static_token_file: Option<PathBuf>,
    /// Static token from the environment (fallback; never passed to the agent process).
    pub static_token: Option<String>,
    /// Username presented with the token.
    pub username: String,
    /// The hosts (`host[:port]`) of the configured repos: the only ones the credential helper
    /// answers for.
    pub hosts: Vec<String>,
}

/// Everything the agent runs with.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The workspace directory.
    pub dir: PathBuf,
    /// The workspace (owner key).
    pub workspace: WorkspaceId,
    /// Its generation.
    pub generation: Generation,
    /// The object store; `None`: the workspace is ephemeral.
    pub store: Option<String>,
    /// The control plane; `None`: a local-only lease.
    pub control: Option<ControlConfig>,
    /// This sandbox instance.
    pub instance: InstanceId,
    /// Repositories to clone.
    pub repos: Vec<RepoSpec>,
    /// Extra exclude patterns.
    pub excludes: Vec<String>,
    /// Whether the default excludes apply.
    pub default_excludes: bool,
    /// Snapshot size budget.
    pub budget: Option<u64>,
    /// Engine cache directory (outside the workspace).
    pub cache_dir: Option<PathBuf>,
    /// Seconds between interval snapshots.
    pub interval_secs: u64,
    /// Seconds before the first interval snapshot.
    pub first_after_secs: u64,
    /// Milliseconds from the first change to the snapshot that saves it.
    pub debounce_ms: u64,
    /// Seconds between git state captures.
    pub git_interval_secs: u64,
    /// Least seconds between the starts of two snapshot runs (0: none).
    pub min_gap_secs: u64,
    /// Seconds between full scans that check the file watcher's reports (at least 1).
    pub rescan_secs: u64,
    /// The retention policy the agent applies to its workspace generation, only where there is
    /// no control plane (which applies its own); `None`: none.
    pub retention: Option<Policy>,
    /// Seconds between retention runs.
    pub retention_interval_secs: u64,
    /// Seconds between prunes of the store by the agent (0: none).
    pub prune_interval_secs: u64,
    /// Seconds marked data waits before a later prune deletes it.
    pub prune_grace_secs: i64,
    /// The drain budget in seconds.
    pub drain_budget_secs: u64,
    /// How to nudge the agent process.
    pub nudge: Nudge,
    /// Author of work-in-progress commits: (name, email).
    pub author: (String, String),
    /// Git credentials.
    pub credentials: CredentialConfig,
    /// Base directory of per-job paths.
    pub base: PathBuf,
    /// Sweep TTL in seconds.
    pub ttl_secs: i64,
    /// Total time clone retries may take, in seconds.
    pub clone_retry_secs: u64,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// What the settings asked for that the agent does otherwise; logged when it starts.
    pub warnings: Vec<ConfigWarning>,
}

/// A setting the agent does not follow as given, and what it does instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigWarning {
    /// `--grace` asks for a drain longer than the platform's grace period allows.
    #[error(
        "--grace {asked} asks for more than the platform's grace period allows: the drain gets {budget} s \
         (--platform-grace {platform_grace} minus a safety margin), so it ends before the platform kills the sandbox"
    )]
    GraceCapped {
        /// The budget asked for, in seconds.
        asked: u64,
        /// The budget the drain gets, in seconds.
        budget: u64,
        /// The platform's grace period, in seconds.
        platform_grace: u64,
    },
}

impl AgentConfig {
    /// Defaults for a workspace directory, before flags and spec apply.
    pub fn new(dir: PathBuf, workspace: WorkspaceId, instance: InstanceId) -> AgentConfig {
        AgentConfig {
            dir,
            workspace,
            generation: Generation::default(),
            store: None,
            control: None,
            instance,
            repos: Vec::new(),
            excludes: Vec::new(),
            default_excludes: true,
            budget: Some(defaults::BUDGET_BYTES),
            cache_dir: None,
            interval_secs: defaults::INTERVAL_SECS,
            first_after_secs: defaults::FIRST_AFTER_SECS,
            debounce_ms: defaults::DEBOUNCE_MS,
            git_interval_secs: defaults::GIT_INTERVAL_SECS,
            min_gap_secs: defaults::MIN_GAP_SECS,
            rescan_secs: defaults::RESCAN_SECS,
            retention: Some(Policy::default()),
            retention_interval_secs: defaults::RETENTION_INTERVAL_SECS,
            prune_interval_secs: defaults::PRUNE_INTERVAL_SECS,
            prune_grace_secs: defaults::PRUNE_GRACE_SECS,
            drain_budget_secs: berth_core::drain::budget_secs(None, defaults::PLATFORM_GRACE_SECS),
            nudge: Nudge::Signal,
            author: (defaults::AUTHOR_NAME.into(), defaults::AUTHOR_EMAIL.into()),
            credentials: CredentialConfig { username: defaults::GIT_USERNAME.into(), ..Default::default() },
            base: default_base(),
            ttl_secs: defaults::TTL_SECS,
            clone_retry_secs: defaults::CLONE_TIMEOUT_SECS as u64,
            metrics_listen: None,
            warnings: Vec::new(),
        }
    }

    /// Resolves the settings: flags (and environment) first, then the spec file, then the
    /// session in it, then the defaults.
    pub fn resolve(flags: Flags) -> Result<AgentConfig, AgentError> {
        let spec = match &flags.spec {
            Some(p) => Spec::load(p)?,
            None => Spec::default(),
        };
        let session = spec.session.clone();
        let mut cfg = identity(&flags, &spec, session.as_ref())?;
        cfg.generation = Generation(
            flags.generation.or(spec.generation).or(session.as_ref().map(|s| s.generation)).unwrap_or(cfg.generation.0),
        );
        cfg.store = flags.store.clone().or(spec.store.clone()).or(session.as_ref().and_then(|s| s.init.store.clone()));
        cfg.control = control(&flags, &spec, session.as_ref())?;
        cfg.repos = match &flags.repos {
            Some(r) => parse_repos(r)?,
            None => spec.repos.clone().or(session.as_ref().map(|s| s.init.repos.clone())).unwrap_or_default(),
        }
        .into_iter()
        .map(domain_repo)
        .collect();
        for r in &cfg.repos {
            r.target().map_err(|e| AgentError::Config(e.to_string()))?;
        }
        snapshots(&mut cfg, &flags, &spec)?;
        drain(&mut cfg, &flags, &spec)?;
        credentials(&mut cfg, &flags, &spec);
        cfg.ttl_secs = match (flags.ttl, &spec.ttl) {
            (Some(t), _) => t,
            (None, Some(s)) => parse_duration(s).map_err(AgentError::Config)?,
            (None, None) => cfg.ttl_secs,
        };
        cfg.clone_retry_secs = flags.clone_timeout.unwrap_or(defaults::CLONE_TIMEOUT_SECS).max(0) as u64;
        cfg.metrics_listen = flags.metrics_listen;
        Ok(cfg)
    }
}

/// The workspace, the instance and the directory: what `AgentConfig::new` needs.
fn identity(flags: &Flags, spec: &Spec, session: Option<&Session>) -> Result<AgentConfig, AgentError> {
    let invalid = |e: &dyn std::fmt::Display| AgentError::Config(e.to_string());
    let workspace =
        flags.workspace.clone().or(spec.workspace.clone()).or(session.map(|s| s.owner.clone())).ok_or_else(|| {
            AgentError::Config(
                "no workspace: pass --workspace ID (or BERTH_WORKSPACE), or a spec file with the session".into(),
            )
        })?;
    let workspace = WorkspaceId::new(workspace).map_err(|e| invalid(&e))?;
    let attached = session.map(|s| s.instance_id.clone());
    let instance = flags.instance.clone().or(spec.instance_id.clone());
    if let (Some(given), Some(attached)) = (&instance, &attached) {
        if given != attached {
            return Err(AgentError::Config(format!(
                "the session was attached by instance {attached}, but --instance (or the spec's instance_id) \
                 says {given}: heartbeats must name the attached instance; leave --instance out, or attach \
                 with --instance {given}"
            )));
        }
    }
    let instance = instance.or(attached).unwrap_or_else(hostname);
    let instance = InstanceId::new(instance).map_err(|e| invalid(&e))?;
    let mount_path = match session.map(|s| &s.mount) {
        Some(Mount::Local { path, .. }) => Some(PathBuf::from(path)),
        _ => None,
    };
    let dir = flags.dir.clone().or(spec.dir.clone()).or(mount_path).unwrap_or_else(|| PathBuf::from("."));
    let dir = std::path::absolute(&dir).map_err(|e| AgentError::io("resolve", &dir, e))?;
    Ok(AgentConfig::new(dir, workspace, instance))
}

/// The control-plane session: from the spec's attach response, or from `--session` flags.
fn control(flags: &Flags, spec: &Spec, session: Option<&Session>) -> Result<Option<ControlConfig>, AgentError> {
    let server = flags.server.clone().or(spec.server.clone());
    let missing = |what: &str| AgentError::Config(what.to_string());
    let invalid = |e: berth_core::session::NameError| AgentError::Config(e.to_string());
    let margin = flags.lease_margin.or(spec.lease_margin_secs);
    let mut control = match (session, &flags.session, &flags.token) {
        (Some(s), _, token) => Some(ControlConfig {
            server: server.ok_or_else(|| {
                missing("the spec has a session but no server: pass --server URL (or BERTH_SERVER, or \"server\" in the spec)")
            })?,
            token: token.clone().unwrap_or_else(|| s.token.clone()),
            session: SessionId::new(s.session_id.clone()).map_err(invalid)?,
            epoch: flags.epoch.map_or(s.epoch, Epoch),
            lease_ttl_secs: s.lease_ttl_secs,
            lease_margin_secs: 0,
            pointer: match &s.init.latest_snapshot {
                Some(id) => Some(SnapshotId::from_hex(id).map_err(|e| {
                    AgentError::Config(format!("the spec's session names latest snapshot {id:?}, not an id: {e}"))
                })?),
                None => None,
            },
            handover: s.handover.clone(),
            mount_lock: match &s.mount {
                Mount::Local { lock, .. } => Some(PathBuf::from(lock)),
                _ => None,
            },
        }),
        (None, Some(id), Some(token)) => Some(ControlConfig {
            server: server.ok_or_else(|| missing("--session needs --server URL"))?,
            token: token.clone(),
            session: SessionId::new(id.clone()).map_err(invalid)?,
            epoch: Epoch(flags.epoch.ok_or_else(|| missing("--session needs --epoch N (the lease epoch of the attach)"))?),
            lease_ttl_secs: flags.lease_ttl.unwrap_or(defaults::LEASE_TTL_SECS).max(1),
            lease_margin_secs: 0,
            pointer: None,
            handover: None,
            mount_lock: None,
        }),
        (None, Some(_), None) => return Err(missing("--session needs the sandbox token: set BERTH_TOKEN (or --token)")),
        (None, None, _) => None,
    };
    if let Some(c) = &mut control {
        c.lease_margin_secs = margin.unwrap_or_else(|| defaults::lease_margin_secs(c.lease_ttl_secs));
        if c.lease_margin_secs * 2 > c.lease_ttl_secs {
            return Err(AgentError::Config(format!(
                "--lease-margin {} is more than half the lease's {} s TTL: one late heartbeat would stop all \
                 writing; use at most {}",
                c.lease_margin_secs,
                c.lease_ttl_secs,
                c.lease_ttl_secs / 2
            )));
        }
    }
    Ok(control)
}

/// What snapshots leave out and how often they run.
fn snapshots(cfg: &mut AgentConfig, flags: &Flags, spec: &Spec) -> Result<(), AgentError> {
    cfg.excludes = spec.excludes.clone().unwrap_or_default();
    cfg.excludes.extend(flags.excludes.iter().cloned());
    cfg.default_excludes = !(flags.no_default_excludes || spec.no_default_excludes.unwrap_or(false));
    cfg.budget = match (flags.budget, &spec.budget) {
        (Some(b), _) => b,
        (None, Some(s)) => parse_size(s).map_err(AgentError::Config)?,
        (None, None) => cfg.budget,
    };
    cfg.base = flags.base.clone().or(spec.base.clone()).unwrap_or_else(default_base);
    cfg.cache_dir = Some(flags.cache_dir.clone().or(spec.cache_dir.clone()).unwrap_or_else(|| cfg.base.join("cache")));
    cfg.interval_secs = flags.interval.or(spec.interval_secs).unwrap_or(cfg.interval_secs).max(1);
    cfg.first_after_secs = flags.first_after.or(spec.first_after_secs).unwrap_or(cfg.first_after_secs);
    cfg.debounce_ms = flags.debounce.or(spec.debounce_ms).unwrap_or(cfg.debounce_ms);
    cfg.git_interval_secs = flags.git_interval.or(spec.git_interval_secs).unwrap_or(cfg.git_interval_secs);
    cfg.min_gap_secs = flags.min_gap.or(spec.min_gap_secs).unwrap_or(cfg.min_gap_secs);
    cfg.rescan_secs = flags.rescan_interval.or(spec.rescan_secs).unwrap_or(cfg.rescan_secs).max(1);
    upkeep(cfg, flags, spec)
}

/// The store's upkeep without a control plane: retention and prune.
fn upkeep(cfg: &mut AgentConfig, flags: &Flags, spec: &Spec) -> Result<(), AgentError> {
    cfg.retention = match (flags.retention, spec.retention.as_deref().map(str::trim)) {
        (Some(p), _) => p,
        (None, Some("off" | "none")) => None,
        (None, Some(s)) => Some(Policy::parse(s).map_err(AgentError::Config)?),
        (None, None) => cfg.retention,
    };
    cfg.retention_interval_secs =
        flags.retention_interval.or(spec.retention_interval_secs).unwrap_or(cfg.retention_interval_secs).max(1);
    cfg.prune_interval_secs = flags.prune_interval.or(spec.prune_interval_secs).unwrap_or(cfg.prune_interval_secs);
    cfg.prune_grace_secs = flags.prune_grace.or(spec.prune_grace_secs).unwrap_or(cfg.prune_grace_secs).max(0);
    Ok(())
}

/// The drain budget, the nudge and the author of work-in-progress commits.
fn drain(cfg: &mut AgentConfig, flags: &Flags, spec: &Spec) -> Result<(), AgentError> {
    let platform = flags.platform_grace.or(spec.platform_grace_secs).unwrap_or(defaults::PLATFORM_GRACE_SECS);
    let asked = flags.grace.or(spec.grace_secs);
    // Never past the platform's kill, whatever --grace asks for.
    cfg.drain_budget_secs = berth_core::drain::budget_secs(asked, platform);
    if let Some(asked) = asked.filter(|a| *a > cfg.drain_budget_secs) {
        cfg.warnings.push(ConfigWarning::GraceCapped {
            asked,
            budget: cfg.drain_budget_secs,
            platform_grace: platform,
        });
    }
    cfg.nudge = match (
        flags.nudge_cmd.clone().or(spec.nudge_command.clone()),
        flags.nudge_url.clone().or(spec.nudge_url.clone()),
    ) {
        (Some(c), _) => Nudge::Command(c),
        (None, Some(u)) => Nudge::Url(u),
        (None, None) => Nudge::Signal,
    };
    if let Some(a) = &flags.author {
        cfg.author = parse_author(a)?;
    } else if let (Some(n), Some(e)) = (&spec.author_name, &spec.author_email) {
        cfg.author = (n.clone(), e.clone());
    }
    Ok(())
}

/// Where git credentials come from.
fn credentials(cfg: &mut AgentConfig, flags: &Flags, spec: &Spec) {
    let mut hosts: Vec<String> = cfg.repos.iter().filter_map(|r| credential_host(&r.url)).collect();
    hosts.sort();
    hosts.dedup();
    let c = &mut cfg.credentials;
    c.hosts = hosts;
    c.endpoint = flags.credential_endpoint.clone().or(spec.credential_endpoint.clone());
    c.identity_token_file = flags.identity_token_file.clone().or(spec.identity_token_file.clone());
    c.static_token_file = flags.git_token_file.clone().or(spec.git_token_file.clone());
    c.static_token = flags.git_token.clone();
    if let Some(u) = flags.git_username.clone().or(spec.git_username.clone()) {
        c.username = u;
    }
}

/// The domain form of a repo from the API or a spec file.
fn domain_repo(r: berth_api::RepoSpec) -> RepoSpec {
    RepoSpec { url: r.url, branch: r.branch, depth: r.depth, path: r.path }
}

/// Parses `--repos`: a JSON list of `{url, branch?, depth?, path?}`, one such object, a single
/// URL, or `@FILE` holding any of those.
pub fn parse_repos(s: &str) -> Result<Vec<berth_api::RepoSpec>, AgentError> {
    let text = match s.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| AgentError::io("read the repos file", path, e))?,
        None => s.to_string(),
    };
    let t = text.trim();
    let invalid = |what: &str, e: serde_json::Error| AgentError::Config(format!("{what}: {e}"));
    if t.starts_with('[') || t.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(t).map_err(|e| invalid("--repos is not valid JSON", e))?;
        let list = if v.is_array() { v } else { serde_json::Value::Array(vec![v]) };
        serde_json::from_value(list).map_err(|e| invalid("--repos: each repo is {url, branch?, depth?, path?}", e))
    } else if t.is_empty() {
        Ok(Vec::new())
    } else {
        Ok(vec![berth_api::RepoSpec { url: t.to_string(), branch: None, depth: None, path: None }])
    }
}

/// Parses `Name <email>`.
pub fn parse_author(s: &str) -> Result<(String, String), AgentError> {
    match s.rsplit_once('<') {
        Some((name, email)) if email.ends_with('>') => {
            Ok((name.trim().to_string(), email.trim_end_matches('>').trim().to_string()))
        }
        _ => Err(AgentError::Config(format!("--author '{s}' is not \"Name <email>\""))),
    }
}

/// This machine's host name as an instance id, else `sandbox-<pid>`.
fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h: String =
        h.trim().chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    if h.is_empty() || !h.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        format!("sandbox-{}", std::process::id())
    } else {
        h
    }
}

/// The default base directory of per-job paths: `$XDG_RUNTIME_DIR/berth-jobs`, else
/// `${TMPDIR:-/tmp}/berth-jobs-<uid>`; never inside a workspace.
pub fn default_base() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("berth-jobs");
    }
    let tmp = std::env::var_os("TMPDIR").filter(|d| !d.is_empty()).map(PathBuf::from).unwrap_or_else(|| "/tmp".into());
    tmp.join(format!("berth-jobs-{}", rustix::process::getuid().as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(workspace: &str) -> Flags {
        Flags {
            workspace: Some(workspace.into()),
            dir: Some("/w".into()),
            base: Some("/b".into()),
            ..Default::default()
        }
    }

    fn with_spec(flags: Flags, spec: serde_json::Value) -> (Result<AgentConfig, AgentError>, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("spec.json");
        std::fs::write(&path, spec.to_string()).unwrap();
        (AgentConfig::resolve(Flags { spec: Some(path), ..flags }), tmp)
    }

    #[test]
    fn defaults_come_from_one_place() {
        let cfg = AgentConfig::resolve(flags("agent:1")).unwrap();
        assert_eq!(cfg.interval_secs, defaults::INTERVAL_SECS);
        assert_eq!(cfg.first_after_secs, defaults::FIRST_AFTER_SECS);
        assert_eq!(cfg.debounce_ms, defaults::DEBOUNCE_MS);
        assert_eq!((cfg.min_gap_secs, cfg.rescan_secs), (defaults::MIN_GAP_SECS, defaults::RESCAN_SECS));
        assert_eq!(cfg.budget, Some(defaults::BUDGET_BYTES));
        assert_eq!(cfg.ttl_secs, defaults::TTL_SECS);
        assert_eq!(cfg.clone_retry_secs, defaults::CLONE_TIMEOUT_SECS as u64);
        assert_eq!(cfg.author, (defaults::AUTHOR_NAME.to_string(), defaults::AUTHOR_EMAIL.to_string()));
        assert_eq!(cfg.credentials.username, defaults::GIT_USERNAME);
        assert_eq!(cfg.generation, Generation(1));
        assert_eq!(cfg.cache_dir, Some(PathBuf::from("/b/cache")));
        assert!(cfg.control.is_none() && cfg.store.is_none());
    }

    #[test]
    fn flags_win_over_the_spec_and_the_spec_over_defaults() {
        let spec = serde_json::json!({
            "workspace": "agent:spec", "interval_secs": 7, "debounce_ms": 9, "budget": "unlimited",
            "ttl": "2h", "excludes": ["a/"], "author_name": "A", "author_email": "a@x",
            "repos": [{"url": "https://h.test/o/app.git"}], "min_gap_secs": 5, "rescan_secs": 60,
        });
        let f = Flags { interval: Some(3), excludes: vec!["b/".into()], min_gap: Some(0), ..flags("agent:flag") };
        let (cfg, _tmp) = with_spec(f, spec);
        let cfg = cfg.unwrap();
        assert_eq!(cfg.workspace.as_str(), "agent:flag");
        assert_eq!((cfg.interval_secs, cfg.debounce_ms, cfg.budget, cfg.ttl_secs), (3, 9, None, 7200));
        assert_eq!(cfg.excludes, ["a/", "b/"]);
        assert_eq!((cfg.min_gap_secs, cfg.rescan_secs), (0, 60));
        assert_eq!(cfg.author, ("A".to_string(), "a@x".to_string()));
        assert_eq!(cfg.repos[0].target().unwrap().as_bytes(), b"app");
    }

    #[test]
    fn bad_settings_name_the_fix() {
        let err = |f: Flags| AgentConfig::resolve(f).unwrap_err().to_string();
        assert!(err(Flags::default()).contains("pass --workspace ID"));
        assert!(err(Flags { session: Some("s1".into()), ..flags("a") }).contains("set BERTH_TOKEN"));
        let f = Flags { session: Some("s1".into()), token: Some("t".into()), ..flags("a") };
        assert!(err(f.clone()).contains("--session needs --server URL"));
        let f = Flags { server: Some("http://127.0.0.1:1".into()), ..f };
        assert!(err(f).contains("--epoch N"));
        assert!(err(Flags { author: Some("nobody".into()), ..flags("a") }).contains("Name <email>"));
        assert!(err(Flags { repos: Some("https://u:t@h.test/x.git".into()), ..flags("a") }).contains("credentials"));
        let (res, _tmp) = with_spec(flags("a"), serde_json::json!({"bogus": 1}));
        assert!(res.unwrap_err().to_string().contains("is not valid"));
    }

    #[test]
    fn the_drain_budget_never_outlasts_the_platform_grace() {
        let budget = |grace: Option<u64>, platform: Option<u64>| {
            let cfg = AgentConfig::resolve(Flags { grace, platform_grace: platform, ..flags("a") }).unwrap();
            (cfg.drain_budget_secs, cfg.warnings)
        };
        let capped = |asked, budget| ConfigWarning::GraceCapped { asked, budget, platform_grace: 30 };
        assert_eq!(budget(Some(60), Some(30)), (27, vec![capped(60, 27)]));
        assert_eq!(budget(Some(28), Some(30)), (27, vec![capped(28, 27)]));
        assert_eq!(budget(Some(27), Some(30)), (27, vec![]));
        assert_eq!(budget(Some(10), Some(30)), (10, vec![]));
        assert_eq!(budget(None, Some(30)), (27, vec![]));
        assert_eq!(budget(None, None), (27, vec![]), "the default platform grace is 30 s");
        assert_eq!(budget(Some(600), Some(900)), (600, vec![]));
        let (_, warnings) = budget(Some(60), None);
        assert!(warnings[0].to_string().contains("the drain gets 27 s"), "{}", warnings[0]);
        let (cfg, _tmp) = with_spec(flags("a"), serde_json::json!({"grace_secs": 60, "platform_grace_secs": 30}));
        assert_eq!(cfg.unwrap().drain_budget_secs, 27, "the spec's settings obey the same rule");
    }

    #[test]
    fn repos_from_json_a_url_or_a_file() {
        let one = parse_repos("https://h.test/o/app.git").unwrap();
        assert_eq!(one[0].url, "https://h.test/o/app.git");
        let list = parse_repos(r#"{"url": "https://h.test/a", "path": "x"}"#).unwrap();
        assert_eq!(list[0].path.as_deref(), Some("x"));
        assert!(parse_repos(r#"[{"url": "u", "bogus": 1}]"#).is_err());
        assert!(parse_repos("").unwrap().is_empty());
        assert!(parse_repos("@/nonexistent/repos.json").unwrap_err().to_string().contains("repos file"));
    }
}
