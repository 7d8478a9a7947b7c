//! The `Sandboxes` port: where sandboxes run (a container per workspace session, with berth's
//! supervisor wrapping the agent command), and the warm containers a pool keeps idle.
//!
//! Errors are [`VolumeError`]s (a substrate failure: temporary, permanent or foreign), so the
//! control plane maps every substrate failure one way.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use berth_core::volume::VolumeName;

use crate::VolumeError;

/// Label on every sandbox container: `workspace` (running a workspace's session) or `warm`
/// (idle in a pool, no workspace yet).
pub const LABEL_SANDBOX: &str = "berth.sandbox";
/// Label naming the session a sandbox container runs (ended when the container dies).
pub const LABEL_SESSION: &str = "berth.session";
/// Label naming the image a warm container was started for (its pool).
pub const LABEL_POOL: &str = "berth.pool";
/// A directory every sandbox of a [`HandOver::Fetch`] substrate has, writable by its user and
/// in memory: where the supervisor writes the spec it fetched.
pub const RUN_DIR: &str = "/berth/run";
/// Where the workspace is inside a sandbox.
pub const WORKSPACE_PATH: &str = "/workspace";

/// What a sandbox container is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxKind {
    /// It runs a workspace's session.
    Workspace,
    /// It waits, idle, in a warm pool.
    Warm,
}

impl SandboxKind {
    /// The value of [`LABEL_SANDBOX`].
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Workspace => "workspace",
            SandboxKind::Warm => "warm",
        }
    }
}

/// How a claimed warm sandbox receives its claim (the spec with the session and the agent
/// command).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOver {
    /// The control plane puts the files into the running sandbox ([`Sandboxes::put_file`])
    /// and renames it: the substrate can write into a running sandbox (Docker's archive API).
    PutFiles,
    /// The sandbox's supervisor asks the control plane for its claim with a token of its own
    /// (in its private file from the start); the control plane only renames it: the substrate
    /// cannot write into a running sandbox (a pod's volumes are fixed when it is created).
    Fetch,
}

/// A file put into a sandbox before it starts: owned by the sandbox's user, mode 0400.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateFile {
    /// Its absolute path in the sandbox.
    pub path: String,
    /// Its content.
    pub content: Vec<u8>,
}

impl fmt::Debug for PrivateFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The content holds secrets (the sandbox token).
        f.debug_struct("PrivateFile").field("path", &self.path).field("bytes", &self.content.len()).finish()
    }
}

/// Everything a substrate needs to start a sandbox.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxSpec {
    /// The container's name (the session's instance id).
    pub name: String,
    /// The image.
    pub image: String,
    /// The command: berth's supervisor with the agent command after it.
    pub command: Vec<String>,
    /// Environment (`KEY=VALUE`).
    pub env: Vec<String>,
    /// The workspace volume, mounted at [`WORKSPACE_PATH`]; `None` for a warm container.
    pub volume: Option<VolumeName>,
    /// Host paths bind-mounted into the sandbox, as `(host path, sandbox path, read only)`.
    pub binds: Vec<(String, String, bool)>,
    /// The file holding the supervisor's spec (with the sandbox token): never in env or argv.
    pub private_file: Option<PrivateFile>,
    /// The user the sandbox runs as, `UID:GID`; the private file belongs to it.
    pub user: (u32, u32),
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit, in CPUs.
    pub cpus: Option<f64>,
    /// Seconds between the stop signal and the kill.
    pub stop_timeout_secs: u64,
    /// The network (`host`, `bridge`, a network's name); `None`: the substrate's default.
    pub network: Option<String>,
    /// Labels (berth's plus the kind's).
    pub labels: BTreeMap<String, String>,
}

/// A sandbox as the substrate lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxInfo {
    /// The container id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its image.
    pub image: String,
    /// Its state (`created`, `running`, `exited`, ...).
    pub state: String,
    /// The substrate's description of it (`Up 3 minutes`).
    pub status: String,
    /// When it was created, in seconds since the epoch.
    pub created_secs: i64,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// How a sandbox ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// Its exit code (137 after a kill), when known.
    pub exit_code: Option<i64>,
    /// Whether the kernel's OOM killer killed a process in it.
    pub oom_killed: bool,
}

/// A sandbox that died (exited, was killed, or OOM-killed), as the substrate reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Death {
    /// The container id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// How it ended.
    pub ended: Ended,
}

/// Where sandboxes run.
///
/// # Guarantees (of every adapter)
/// - `start` creates the sandbox with the private file in place before its first process
///   runs, then starts it; a sandbox that could not start is removed.
/// - `stop` asks the sandbox to stop (the stop signal, then a kill after the timeout), waits
///   for its end and removes it: a stopped sandbox never holds its workspace volume.
/// - `deaths` reports every sandbox of this installation that ends, including those that
///   ended while nobody watched (reported when the watch starts), until the receiver drops.
#[async_trait]
pub trait Sandboxes: Send + Sync + fmt::Debug {
    /// The substrate's name.
    fn kind(&self) -> &'static str;
    /// Creates and starts a sandbox; returns it.
    async fn start(&self, spec: &SandboxSpec) -> Result<SandboxInfo, VolumeError>;
    /// Stops a sandbox within `timeout_secs` (then kills it), waits for it and removes it;
    /// `None` when there is no such sandbox.
    async fn stop(&self, id: &str, timeout_secs: u64) -> Result<Option<Ended>, VolumeError>;
    /// Waits up to `timeout_secs` for a sandbox to end by itself; `None` when there is no
    /// such sandbox. A sandbox still running at the timeout is an error (it is left running).
    async fn wait(&self, id: &str, timeout_secs: u64) -> Result<Option<Ended>, VolumeError>;
    /// Removes a sandbox whatever its state; no such sandbox is success.
    async fn remove(&self, id: &str) -> Result<(), VolumeError>;
    /// Lists sandboxes carrying every label of `selector`, running or not.
    async fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<SandboxInfo>, VolumeError>;
    /// The last `tail` lines of a sandbox's output (stdout and stderr).
    async fn logs(&self, id: &str, tail: usize) -> Result<String, VolumeError>;
    /// How a claimed warm sandbox receives its claim.
    fn hand_over(&self) -> HandOver {
        HandOver::PutFiles
    }
    /// Puts `file` into a running sandbox (owned by `user`, mode 0400); only where
    /// [`Sandboxes::hand_over`] is [`HandOver::PutFiles`].
    async fn put_file(&self, id: &str, file: &PrivateFile, user: (u32, u32)) -> Result<(), VolumeError>;
    /// Puts `files` into a running sandbox in their order, each complete before the next
    /// appears (a reader that sees a later one finds the earlier ones whole); only where
    /// [`Sandboxes::hand_over`] is [`HandOver::PutFiles`]. Substrates that can write several
    /// files in one call do; the default puts them one by one.
    async fn put_files(&self, id: &str, files: &[PrivateFile], user: (u32, u32)) -> Result<(), VolumeError> {
        for file in files {
            self.put_file(id, file, user).await?;
        }
        Ok(())
    }
    /// Renames a sandbox (a warm one, once claimed): its [`SandboxInfo::name`] is `name` from
    /// then on; its id does not change.
    async fn rename(&self, id: &str, name: &str) -> Result<(), VolumeError>;
    /// Reports the deaths of sandboxes carrying every label of `selector`.
    fn deaths(&self, selector: BTreeMap<String, String>) -> tokio::sync::mpsc::Receiver<Death>;
}
