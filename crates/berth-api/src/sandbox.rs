//! Sandboxes: the wire types of `/v1/workspaces/{owner}/sandboxes` and `/v1/sandboxes`, and
//! the client's calls.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Client, ClientError, RepoSpec};

/// Body of `POST /v1/workspaces/{owner}/sandboxes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSandbox {
    /// The image. It needs a glibc as new as berth's, `sh`, and `git` when there are repos.
    pub image: String,
    /// The agent command (argv); berth's supervisor runs it in `/workspace`.
    pub command: Vec<String>,
    /// Environment of the agent command.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Drain budget in seconds on stop (default 30); the container is killed this plus a
    /// margin after the stop signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_secs: Option<u64>,
    /// Seconds between snapshots (default: the agent's, 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// Memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU limit in CPUs (e.g. 1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Repositories to clone (default: the workspace's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repos: Option<Vec<RepoSpec>>,
    /// Labels of the workspace when this start creates it, also put on the container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A sandbox container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    /// The container id.
    pub id: String,
    /// The container name (the session's instance id).
    pub name: String,
    /// `workspace` (running a session) or `warm` (idle in a pool).
    pub kind: String,
    /// The owner, for a workspace sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The session it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The image.
    pub image: String,
    /// `created`, `running`, `exited`, ...
    pub state: String,
    /// The engine's description (`Up 3 minutes`).
    pub status: String,
    /// When it was created.
    pub created_at: String,
    /// Whether it came from the warm pool.
    pub warm: bool,
}

/// `GET /v1/sandboxes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    /// Every sandbox of this installation, oldest first.
    pub items: Vec<Sandbox>,
}

/// How one sandbox ended on a stop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StoppedSandbox {
    /// The container id.
    pub id: String,
    /// Its exit code (0 after a drain; 137 when it was killed at the end of the grace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Whether a process in it was OOM-killed.
    pub oom_killed: bool,
}

/// `DELETE /v1/workspaces/{owner}/sandboxes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StopReply {
    /// The sandboxes stopped (none: there was none).
    pub stopped: Vec<StoppedSandbox>,
}

/// The longest a claim request waits for its claim (`wait_secs`) before it answers 401.
pub const CLAIM_WAIT_MAX_SECS: u64 = 25;

impl Client {
    /// The claim of the calling warm sandbox (whose own token its claim made the session's):
    /// `spec` (the supervisor's spec without the token), `command` and `env`. A 401 while the
    /// sandbox is not claimed.
    pub async fn sandbox_claim(&self) -> Result<serde_json::Value, ClientError> {
        self.sandbox_claim_within(0).await
    }

    /// [`Client::sandbox_claim`], but the server holds the request up to `wait_secs` (at most
    /// [`CLAIM_WAIT_MAX_SECS`]) for the claim to come before it answers 401. The client's
    /// timeout must outlast the wait.
    pub async fn sandbox_claim_within(&self, wait_secs: u64) -> Result<serde_json::Value, ClientError> {
        let query: &[(&str, String)] = if wait_secs == 0 { &[] } else { &[("wait_secs", wait_secs.to_string())] };
        let url = self.url(&["v1", "sandboxes", "claim"], query);
        Ok(self.call::<(), _>(Method::GET, url, None).await?.1)
    }

    /// Starts a sandbox for `owner`'s workspace.
    pub async fn start_sandbox(&self, owner: &str, body: &StartSandbox) -> Result<Sandbox, ClientError> {
        let url = self.url(&["v1", "workspaces", owner, "sandboxes"], &[]);
        Ok(self.call(Method::POST, url, Some(body)).await?.1)
    }

    /// Stops `owner`'s sandbox: it drains within its grace, then is removed.
    pub async fn stop_sandbox(&self, owner: &str) -> Result<StopReply, ClientError> {
        let url = self.url(&["v1", "workspaces", owner, "sandboxes"], &[]);
        Ok(self.call::<(), _>(Method::DELETE, url, None).await?.1)
    }

    /// Lists this installation's sandboxes.
    pub async fn sandboxes(&self) -> Result<SandboxList, ClientError> {
        Ok(self.call::<(), _>(Method::GET, self.url(&["v1", "sandboxes"], &[]), None).await?.1)
    }

    /// The last `tail` lines of `owner`'s sandbox's output.
    pub async fn sandbox_logs(&self, owner: &str, tail: usize) -> Result<String, ClientError> {
        let url = self.url(&["v1", "workspaces", owner, "sandboxes", "logs"], &[("tail", tail.to_string())]);
        Ok(self.call::<(), String>(Method::GET, url, None).await?.1)
    }
}
