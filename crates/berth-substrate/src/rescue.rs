//! The `Rescuer` port: how the control plane saves the volume of an at-risk workspace (its last
//! session ended without a final snapshot) into the object store before GC may remove it.
//!
//! The control plane drives a rescue; a substrate only carries out the snapshot:
//!
//! 1. the control plane takes the workspace's lease for a rescue session with a new epoch, so
//!    any zombie writer of the old sandbox is fenced;
//! 2. it calls [`Rescuer::rescue`] with that session, its epoch and the volume;
//! 3. the rescuer writes one snapshot of the volume into the store, as `(owner, generation)`,
//!    and returns its id. On local, in process; on a container substrate, a short job that
//!    mounts the volume read-only, runs `berth snapshot create --epoch` and prints the
//!    snapshot's summary, which the control plane reads from the job's log. The job holds no
//!    control-plane credential: it never calls the API;
//! 4. the control plane records the snapshot as the session's final one, which clears the
//!    risk, and releases the lease.
//!
//! # Guarantees (of every rescuer)
//! - It never writes into the volume, and never snapshots a volume another process still uses:
//!   that is a temporary error (the rescue is retried after a backoff).
//! - It returns only once the snapshot is durable in the store (the engine's order: packs,
//!   index, record).
//! - A failure says why in words an operator can act on; nothing is removed because of it.

use std::fmt;

use async_trait::async_trait;
use berth_core::id::SnapshotId;
use berth_core::lease::Epoch;
use berth_core::session::SessionId;
use berth_core::volume::{MountSpec, VolumeName};
use berth_core::workspace::{Generation, WorkspaceId};

/// What to rescue, under which lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RescueRequest {
    /// The workspace's owner (the snapshot's workspace id).
    pub owner: WorkspaceId,
    /// The generation the volume belongs to.
    pub generation: Generation,
    /// The rescue session's epoch: the snapshot is written under it.
    pub epoch: Epoch,
    /// The rescue session.
    pub session: SessionId,
    /// The volume.
    pub volume: VolumeName,
    /// How to mount it.
    pub mount: MountSpec,
    /// The object store URL snapshots go to.
    pub store: String,
}

/// A finished rescue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RescueOutcome {
    /// The snapshot that now holds the volume's content.
    pub snapshot: SnapshotId,
    /// Files in it.
    pub files: u64,
    /// File bytes in it.
    pub bytes: u64,
}

/// Why a rescue failed; the volume is kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RescueError {
    /// Whether a later attempt may succeed without a change by anyone (the volume is in use,
    /// the store did not answer).
    pub temporary: bool,
    /// What failed, naming the volume or store.
    pub message: String,
}

impl RescueError {
    /// A failure worth retrying.
    pub fn temporary(message: impl fmt::Display) -> RescueError {
        RescueError { temporary: true, message: message.to_string() }
    }

    /// A failure a retry will not fix.
    pub fn permanent(message: impl fmt::Display) -> RescueError {
        RescueError { temporary: false, message: message.to_string() }
    }
}

/// Saves an at-risk volume into the object store (see the module documentation).
#[async_trait]
pub trait Rescuer: Send + Sync + fmt::Debug {
    /// The substrate's name (`local`, `docker`, ...).
    fn kind(&self) -> &'static str;
    /// Snapshots the volume of `req` into its store under its epoch; returns the snapshot.
    async fn rescue(&self, req: RescueRequest) -> Result<RescueOutcome, RescueError>;
}
