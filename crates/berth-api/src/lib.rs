//! berth's control-plane HTTP API: the wire types (JSON under `/v1`) and a client.
//!
//! Wire types are separate from the domain types in `berth-core`: they are what the API
//! promises, and they change only with the API. Timestamps are RFC 3339 strings in UTC. Epochs
//! are `berth_core::lease::Epoch`, a JSON number on the wire, so a client matches the same
//! `Fenced` error every layer uses.

pub mod client;
mod sandbox;

use std::collections::BTreeMap;

pub use berth_core::lease::{Epoch, Fenced};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use client::{Client, ClientError};
pub use sandbox::*;

/// How a volume may be mounted (Kubernetes access modes; other substrates record it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum AccessMode {
    /// One node may mount it read-write.
    #[default]
    ReadWriteOnce,
    /// One pod may mount it read-write.
    ReadWriteOncePod,
    /// Many nodes may mount it read-write.
    ReadWriteMany,
}

impl AccessMode {
    /// Returns the Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
            AccessMode::ReadWriteMany => "ReadWriteMany",
        }
    }

    /// Parses the Kubernetes spelling.
    pub fn parse(s: &str) -> Option<AccessMode> {
        [AccessMode::ReadWriteOnce, AccessMode::ReadWriteOncePod, AccessMode::ReadWriteMany]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// A repository to clone into the workspace when a sandbox initialises it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoSpec {
    /// Clone URL (credentials in it are refused: they come from the credential endpoint).
    pub url: String,
    /// Branch to check out (default: the remote's default branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Shallow clone depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// Target path inside the workspace (default: the URL's basename without `.git`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Body of `PUT /v1/workspaces/{owner}`: every field is optional and defaults to the server's
/// configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnsureWorkspace {
    /// Volume size in bytes (default: the server's `--volume-size`, 10 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Storage class (default: the server's, else the cluster default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Access mode (default: ReadWriteOnce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<AccessMode>,
    /// Labels recorded with the workspace and put on its volume.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Repositories a sandbox clones when it initialises the workspace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repos: Vec<RepoSpec>,
    /// The workspace's own retention policy, applied by scheduled retention instead of the
    /// server's `--retention`: `keep-last=N,hourly=N,daily=N,weekly=N[,monthly=N]`, or `default`
    /// for the server's. Left out: an existing workspace keeps what it has, a new one (or a
    /// new generation) gets the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
}

/// Body of `PUT /v1/workspaces/{owner}/retention`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRetention {
    /// `keep-last=N,hourly=N,daily=N,weekly=N[,monthly=N]` (a kind left out keeps none of its
    /// kind; the latest snapshot is always kept), or `default` (or null) for the server's.
    #[serde(default)]
    pub policy: Option<String>,
}

/// The lifecycle state of a workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceState {
    /// Sandboxes may attach.
    Active,
    /// Done for now: no attaches; its volume is garbage-collected after a cooldown, its
    /// snapshots stay. Ensuring it again reopens it.
    Closed,
    /// Deletion was asked for and is under way (retried until it completes).
    Deleting,
    /// Deleted: sessions ended, volume removed, snapshots retired. Ensuring the owner again
    /// starts a new generation.
    Deleted,
}

/// Where a workspace's volume stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VolumeState {
    /// Recorded; the substrate may not have it yet.
    Pending,
    /// The substrate has it.
    Present,
    /// Removed (or found missing) for good.
    Removed,
}

/// A workspace's volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    /// The name on the substrate (derived from installation, owner and generation).
    pub name: String,
    /// Where it stands.
    pub state: VolumeState,
    /// When it was marked removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<String>,
    /// The last GC or deletion outcome (removed, not_found, referenced, error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<String>,
}

/// The live lease of a workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseInfo {
    /// The session holding it.
    pub session_id: String,
    /// The sandbox instance of that session.
    pub instance_id: String,
    /// The fencing epoch.
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    /// When it ends unless renewed.
    pub expires_at: String,
}

/// Progress of a deletion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deletion {
    /// The next step (end_sessions, delete_volume, retire_snapshots, mark_deleted).
    pub step: String,
    /// Why the last attempt failed, if it did; it is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Failed attempts so far.
    pub attempts: u64,
}

/// A workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Workspace {
    /// The owner key.
    pub owner: String,
    /// The id of this generation of the workspace.
    pub id: String,
    /// The generation (a reused owner name gets a new one).
    pub generation: u64,
    /// Lifecycle state.
    pub state: WorkspaceState,
    /// The volume.
    pub volume: Volume,
    /// Volume size in bytes.
    pub size_bytes: u64,
    /// Storage class, when one was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Access mode.
    pub access_mode: AccessMode,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Repositories to clone on init.
    pub repos: Vec<RepoSpec>,
    /// The last fencing epoch handed out (only grows).
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    /// The live lease, if a session holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseInfo>,
    /// The latest published snapshot of this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_snapshot: Option<String>,
    /// Whether the workspace's own drain scope is draining.
    pub draining: bool,
    /// Deletion progress, while deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion: Option<Deletion>,
    /// When the owner was first ensured.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// When it was closed, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<String>,
    /// Whether its last session ended without a final snapshot, so its volume may hold work no
    /// snapshot has. GC rescues such a volume into the store before removing it, and never
    /// removes it otherwise unless forced or past the server's `--at-risk-retention`; deleting
    /// the workspace needs `force`.
    #[serde(default)]
    pub at_risk: bool,
    /// Why it is at risk, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_risk_reason: Option<String>,
    /// Since when (the retention counts from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_risk_since: Option<String>,
    /// Its own retention policy; absent: the server's `--retention` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
}

/// A page of workspaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceList {
    /// The workspaces, ordered by owner.
    pub items: Vec<Workspace>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Body of `POST /v1/workspaces/{owner}/sessions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attach {
    /// The sandbox instance (container id, pod name, VM id).
    pub instance_id: String,
    /// The node it runs on (a drain of `node:NAME` refuses attaches there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The pool it belongs to (a drain of `pool:NAME` refuses attaches there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// How a sandbox mounts its workspace volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mount {
    /// A directory on this machine.
    Local {
        /// The workspace directory.
        path: String,
        /// A file the sandbox holds a shared lock on while it uses the directory; the GC
        /// treats a held lock as "referenced".
        lock: String,
    },
    /// A Docker named volume.
    Docker {
        /// The volume name.
        volume: String,
    },
    /// A Kubernetes PersistentVolumeClaim.
    Kubernetes {
        /// The claim name.
        claim_name: String,
    },
}

/// What a sandbox needs to initialise the workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InitSpec {
    /// The owner key (the snapshot workspace id).
    pub owner: String,
    /// The generation: only its snapshots are restored.
    pub generation: u64,
    /// The object store for snapshots, when the server has one configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Repositories to clone.
    pub repos: Vec<RepoSpec>,
    /// The latest published snapshot of this generation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_snapshot: Option<String>,
}

/// A drain handover the new session completes with a ready-ack once it is initialised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Handover {
    /// The draining scope (`workspace:OWNER`).
    pub scope: String,
    /// The nonce to present to `POST /v1/drains/{scope}/ready`.
    pub nonce: String,
}

/// Response of a successful attach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// The session id.
    pub session_id: String,
    /// The owner key.
    pub owner: String,
    /// The workspace generation.
    pub generation: u64,
    /// The workspace id of that generation.
    pub workspace_id: String,
    /// The sandbox instance the session is attached for: every heartbeat names it.
    pub instance_id: String,
    /// The fencing epoch every write of this session carries.
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    /// When the lease ends unless renewed by a heartbeat.
    pub lease_expires_at: String,
    /// Lease time to live in seconds (heartbeat well within it, e.g. every third).
    pub lease_ttl_secs: u64,
    /// The sandbox token: acts on this session, its workspace and its drain scope only.
    /// Shown once; the server keeps only its hash.
    pub token: String,
    /// How to mount the volume.
    pub mount: Mount,
    /// How to initialise the workspace.
    pub init: InitSpec,
    /// A pending drain handover of this workspace, if the previous sandbox is draining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
}

/// Body of `POST /v1/sessions/{id}/heartbeat`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The session's fencing epoch.
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    /// The sending instance: the one the session attached with (a heartbeat naming another is
    /// refused with `wrong_instance`; a sandbox with a new instance id attaches a new session).
    pub instance_id: String,
    /// Sent `true` once, by the heartbeat a sandbox sends as soon as its init has ended (the
    /// workspace restored, the agent command started): the warm pool it was claimed from
    /// refills after that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_done: Option<bool>,
}

/// Response of a heartbeat: the renewed lease and the drain state of the session's scopes,
/// read in the same transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatReply {
    /// When the lease now ends.
    pub lease_expires_at: String,
    /// Whether any scope of this session (its workspace, node or pool) is draining.
    pub draining: bool,
    /// The draining scopes.
    pub drains: Vec<DrainInfo>,
}

/// Per-snapshot statistics a sandbox reports; all optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotStats {
    /// Files in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// File bytes in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Bytes uploaded by this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_uploaded: Option<u64>,
    /// How long the run took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// Body of `POST /v1/workspaces/{owner}/snapshots`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishSnapshot {
    /// The publishing session's fencing epoch.
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    /// The snapshot id (64 hex digits).
    pub snapshot_id: String,
    /// Statistics.
    #[serde(default)]
    pub stats: SnapshotStats,
    /// Whether this is the session's final snapshot: taken after the agent stopped, covering the
    /// volume's last write. A session that detaches after a final publish ended clean.
    #[serde(default, rename = "final", skip_serializing_if = "std::ops::Not::not")]
    pub final_snapshot: bool,
}

/// A recorded snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotInfo {
    /// The snapshot id.
    pub snapshot_id: String,
    /// The workspace generation.
    pub generation: u64,
    /// The epoch it was published with.
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    /// The session that published it.
    pub session_id: String,
    /// When it was recorded.
    pub recorded_at: String,
    /// Statistics.
    pub stats: SnapshotStats,
    /// Whether it is the latest of its generation.
    pub latest: bool,
}

/// The snapshots of a workspace's current generation, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    /// The snapshots.
    pub items: Vec<SnapshotInfo>,
}

/// Body of `POST /v1/drains`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartDrain {
    /// `node:NAME`, `pool:NAME` or `workspace:OWNER`.
    pub scope: String,
    /// The instance being drained (default for a workspace scope: the lease holder's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Why (spot notice, deploy, SIGTERM, ...), for the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The drain state of a scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DrainInfo {
    /// The scope.
    pub scope: String,
    /// Whether it is draining.
    pub draining: bool,
    /// The handover nonce, while draining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// When the drain started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// When the hard timeout clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The drained instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Why it was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the last drain of this scope cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<String>,
    /// How it cleared: ack, new_instance or timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_by: Option<String>,
}

/// All scopes that are draining or have drained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DrainList {
    /// The drains, ordered by scope.
    pub items: Vec<DrainInfo>,
}

/// Body of `POST /v1/drains/{scope}/ready`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    /// The handover nonce.
    pub nonce: String,
    /// The acknowledging session's epoch (a sandbox token's writes are fenced by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub epoch: Option<Epoch>,
}

/// Response of a ready-ack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReadyReply {
    /// Whether this ack cleared the drain (false: it was not draining, a no-op).
    pub cleared: bool,
    /// The scope's state after the ack.
    pub drain: DrainInfo,
}

/// One audit log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increasing id; pass the last one seen as `after`.
    pub id: i64,
    /// When it happened.
    pub at: String,
    /// Stable event name (workspace_ensured, session_attached, lease_taken_over, drain_cleared, volume_removed, ...).
    pub kind: String,
    /// The owner concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The generation concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The session concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The drain scope concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Event-specific details.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// A page of events, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    /// The events.
    pub items: Vec<Event>,
}

/// Body of `POST /v1/gc/run`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GcRun {
    /// Plan only: say what would be removed, remove nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Also run the orphan sweep (volumes labelled as berth's with no live record).
    #[serde(default)]
    pub orphans: bool,
    /// Remove at-risk volumes without rescuing them (their unsaved work is lost; recorded as
    /// `at_risk_removed`).
    #[serde(default)]
    pub force: bool,
}

/// One volume in a GC report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcItem {
    /// The owner.
    pub owner: String,
    /// The generation.
    pub generation: u64,
    /// The volume.
    pub volume: String,
    /// What happened (or, in a dry run, would): remove, rescue, remove_at_risk, removed,
    /// not_found, referenced, error, at_risk.
    pub outcome: String,
    /// Details of an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One volume in an orphan report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrphanItem {
    /// The volume.
    pub volume: String,
    /// track, wait, remove, forget; after execution: removed, not_found, referenced, error.
    pub action: String,
    /// For `wait`: when it may be removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// The result of a GC run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Whether the sweep was skipped, and why (another sweep running, substrate unhealthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The volumes considered.
    pub volumes: Vec<GcItem>,
    /// Count of every outcome (removed, not_found, referenced, cooldown, error).
    pub counts: BTreeMap<String, u64>,
    /// The orphan sweep, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orphans: Option<Vec<OrphanItem>>,
    /// Wall time of the sweep.
    pub duration_ms: u64,
    /// Of which spent in the metadata store.
    pub db_ms: u64,
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong, in words and as data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code: unauthorized, forbidden, bad_request, not_found, lease_held, stale_epoch,
    /// wrong_state, at_risk, wrong_nonce, draining, busy, internal, unavailable.
    pub code: String,
    /// What was wrong and what to do.
    pub message: String,
    /// For lease_held: the live holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<LeaseInfo>,
    /// For stale_epoch: the current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub current_epoch: Option<Epoch>,
    /// For stale_epoch: the epoch the refused write carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub presented_epoch: Option<Epoch>,
    /// For draining and busy: seconds to wait before retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// For draining: the scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}
