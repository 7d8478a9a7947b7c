//! The agent's settings: a JSON spec file (`--spec`), overridden by environment and flags (the
//! command line merges them), resolved into one `AgentConfig`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use berth_api::{Handover, RepoSpec, Session};
use berth_core::session::{InstanceId, SessionId};
use berth_core::workspace::{Generation, WorkspaceId};
use serde::Deserialize;

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
    pub repos: Option<Vec<RepoSpec>>,
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
    /// The drain budget.
    pub grace_secs: Option<u64>,
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
    pub fn load(path: &Path) -> Result<Spec, String> {
        let body = std::fs::read(path).map_err(|e| format!("cannot read spec file {}: {e}", path.display()))?;
        serde_json::from_slice(&body).map_err(|e| format!("spec file {} is not valid: {e}", path.display()))
    }
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
    pub epoch: u64,
    /// Lease time to live, for the heartbeat period.
    pub lease_ttl_secs: u64,
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
}

impl AgentConfig {
    /// Defaults for a workspace directory, before flags and spec apply.
    pub fn new(dir: PathBuf, workspace: WorkspaceId, instance: InstanceId) -> AgentConfig {
        AgentConfig {
            dir,
            workspace,
            generation: Generation(1),
            store: None,
            control: None,
            instance,
            repos: Vec::new(),
            excludes: Vec::new(),
            default_excludes: true,
            budget: Some(1 << 30),
            cache_dir: None,
            interval_secs: 60,
            first_after_secs: 30,
            debounce_ms: 500,
            git_interval_secs: 60,
            drain_budget_secs: berth_core::drain::budget_secs(None, 30),
            nudge: Nudge::Signal,
            author: ("berth".into(), "berth@localhost".into()),
            credentials: CredentialConfig { username: "x-access-token".into(), ..Default::default() },
            base: default_base(),
            ttl_secs: 3600,
            clone_retry_secs: 300,
            metrics_listen: None,
        }
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
