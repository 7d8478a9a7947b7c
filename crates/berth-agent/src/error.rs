//! The agent's error type: one enum for everything `berth agent` can fail with, each variant
//! saying whether trying again later may succeed.

use std::io;
use std::path::PathBuf;

use berth_api::ClientError;
use berth_core::excludes::ExcludeError;
use berth_core::id::SnapshotId;
use berth_core::lease::Fenced;
use berth_core::workspace::{Generation, WorkspaceId};
use berth_engine::error::EngineError;

use crate::creds::CredError;
use crate::git::GitError;

/// Something `berth agent` could not do; the message names the problem and what to do.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A setting is missing, contradictory or malformed.
    #[error("{0}")]
    Config(String),
    /// The spec file cannot be read or is not a valid spec.
    #[error("spec file {} {reason}", path.display())]
    Spec {
        /// The spec file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A local file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("create the workspace directory").
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A directory berth keeps private files in (job paths, the cache) is writable by every
    /// user.
    #[error(
        "{} is writable by every user (mode {mode:o}): another user could plant or swap berth's files there; \
         use a directory only this user can write (chmod o-w {}, or another {flag})",
        path.display(),
        path.display()
    )]
    WorldWritable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The setting that names it (`--base`, `--cache-dir`).
        flag: &'static str,
    },
    /// Another agent holds the workspace directory's lock.
    #[error("another berth agent (pid {pid}) is using {}: one agent per workspace", dir.display())]
    Locked {
        /// The workspace directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it.
        pid: String,
    },
    /// The directory holds another workspace or another generation of this one.
    #[error(
        "{} holds workspace {found} generation {found_generation}, not {workspace} generation {generation}: \
         use an empty directory for this workspace",
        dir.display()
    )]
    OtherWorkspace {
        /// The workspace directory.
        dir: PathBuf,
        /// The workspace its volume marker names.
        found: WorkspaceId,
        /// The generation its volume marker names.
        found_generation: Generation,
        /// The workspace this agent serves.
        workspace: WorkspaceId,
        /// Its generation.
        generation: Generation,
    },
    /// The directory holds files berth did not write, and a restore would replace them.
    #[error(
        "{} is not empty and was not written by berth; restoring snapshots of {workspace} into it would \
         replace its files. Move its content away or use an empty directory",
        dir.display()
    )]
    Foreign {
        /// The workspace directory.
        dir: PathBuf,
        /// The workspace whose snapshots would be restored.
        workspace: WorkspaceId,
    },
    /// The object store cannot be read, and the directory holds nothing of this workspace.
    #[error(
        "cannot read the object store: {reason}. Not starting an empty workspace over work that may be \
         saved there; fix the store (or run without --store for an ephemeral workspace)"
    )]
    StoreUnreadable {
        /// Why the store could not be read.
        reason: String,
        /// Whether the store's failure looked temporary.
        temporary: bool,
    },
    /// The latest snapshot exists, but its tree cannot be read.
    #[error(
        "snapshot {snapshot} of {workspace} exists but cannot be read: {source}; fix the store or restore \
         another snapshot by hand; the workspace was left as it is"
    )]
    SnapshotUnreadable {
        /// The snapshot.
        snapshot: SnapshotId,
        /// Its workspace.
        workspace: WorkspaceId,
        /// The engine's error.
        source: Box<EngineError>,
    },
    /// The latest snapshot could not be restored.
    #[error(
        "snapshot {snapshot} of {workspace} exists but could not be restored: {source}. The workspace is \
         not ready; nothing was re-cloned over it"
    )]
    RestoreFailed {
        /// The snapshot.
        snapshot: SnapshotId,
        /// Its workspace.
        workspace: WorkspaceId,
        /// The engine's error.
        source: Box<EngineError>,
    },
    /// SIGTERM or SIGINT arrived before init was done.
    #[error("init interrupted (SIGTERM): the workspace is not marked ready")]
    Interrupted,
    /// The agent command could not be started.
    #[error("cannot start the agent command {program:?}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// This sandbox's lease epoch was refused: another sandbox holds the workspace.
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// The lease was not renewed in time: writing is paused until a renewal succeeds.
    #[error(
        "the lease could not be renewed before its write deadline (its TTL less the margin): writing is \
         paused until the control plane renews it"
    )]
    LeaseLapsed,
    /// A snapshot operation failed.
    #[error(transparent)]
    Engine(Box<EngineError>),
    /// A control-plane call failed.
    #[error(transparent)]
    Control(#[from] ClientError),
    /// A git command failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// Git credentials could not be had.
    #[error(transparent)]
    Credentials(#[from] CredError),
    /// An exclude pattern is not valid.
    #[error(transparent)]
    Excludes(#[from] ExcludeError),
}

impl From<EngineError> for AgentError {
    fn from(e: EngineError) -> AgentError {
        AgentError::Engine(Box::new(e))
    }
}

impl AgentError {
    /// Wraps an I/O error with what was being done and where.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> AgentError {
        AgentError::Io { op, path: path.into(), source }
    }

    /// Maps a control-plane error: the server's stale-epoch refusal is the one fencing error;
    /// anything else stays a control-plane error.
    pub fn from_control(e: ClientError) -> AgentError {
        match e.fenced() {
            Some(fenced) => AgentError::Fenced(fenced),
            None => AgentError::Control(e),
        }
    }

    /// Returns whether trying again later may succeed.
    pub fn is_temporary(&self) -> bool {
        match self {
            AgentError::Io { source, .. } | AgentError::Spawn { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                )
            }
            AgentError::StoreUnreadable { temporary, .. } => *temporary,
            AgentError::SnapshotUnreadable { source, .. } | AgentError::RestoreFailed { source, .. } => {
                source.is_temporary()
            }
            AgentError::Engine(e) => e.is_temporary(),
            AgentError::Control(e) => e.is_temporary(),
            AgentError::Git(e) => e.kind.is_transient(),
            AgentError::Credentials(e) => e.is_temporary(),
            AgentError::LeaseLapsed => true,
            AgentError::Config(_)
            | AgentError::Excludes(_)
            | AgentError::Spec { .. }
            | AgentError::Locked { .. }
            | AgentError::WorldWritable { .. }
            | AgentError::OtherWorkspace { .. }
            | AgentError::Foreign { .. }
            | AgentError::Interrupted
            | AgentError::Fenced(_) => false,
        }
    }

    /// Returns the fencing error, if this is one.
    pub fn fenced(&self) -> Option<Fenced> {
        match self {
            AgentError::Fenced(f) => Some(*f),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_temporary_and_permanent() {
        let io = |kind| AgentError::io("read", "/x", io::Error::from(kind));
        assert!(io(io::ErrorKind::TimedOut).is_temporary());
        assert!(!io(io::ErrorKind::PermissionDenied).is_temporary());
        assert!(!AgentError::Interrupted.is_temporary());
        let fenced = AgentError::Fenced(Fenced { presented: berth_core::lease::Epoch(3), current: None });
        assert!(!fenced.is_temporary() && fenced.fenced().is_some());
        assert!(AgentError::StoreUnreadable { reason: "timed out".into(), temporary: true }.is_temporary());
        assert!(AgentError::Credentials(CredError::Unavailable { reason: "502".into() }).is_temporary());
        assert!(!AgentError::Credentials(CredError::Refused { status: "401 Unauthorized".into() }).is_temporary());
    }
}
