//! The engine's error type: one enum for everything a snapshot operation can hit.

use std::io;
use std::path::PathBuf;

use berth_core::lease::Fenced;
use berth_core::FormatError;

use crate::store::{StoreError, UrlError};

/// An engine operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store URL cannot be used.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// Stored data is corrupt, truncated or hostile.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A local file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Something asked for does not exist.
    #[error("{what} not found: {hint}")]
    NotFound {
        /// What was looked for.
        what: String,
        /// What to do about it.
        hint: String,
    },
    /// Another writer published first; this run's work is not visible.
    #[error("{0}")]
    Conflict(String),
    /// A writer with a higher epoch has published into this workspace generation: this writer
    /// lost the workspace and must stop writing. Nothing of this run is visible.
    #[error("{fenced}: {detail}")]
    Fenced {
        /// The refusal, with the epochs.
        fenced: Fenced,
        /// Where the higher epoch was seen, and what to do.
        detail: String,
    },
    /// A restore would write outside its target or through a link; nothing was written there.
    #[error("refusing to restore {path}: {reason}")]
    Unsafe {
        /// The path, relative to the target.
        path: String,
        /// Why.
        reason: String,
    },
    /// A restore target that a restore must not touch (a symlink, `/`, the home directory, the
    /// store or the cache, or a non-empty directory berth did not restore into).
    #[error(transparent)]
    Target(#[from] berth_core::target::Refused),
    /// Input that cannot be used as given.
    #[error("{0}")]
    Invalid(String),
}

impl EngineError {
    /// Wraps an I/O error with what was being done and where.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        EngineError::Io { op, path: path.into(), source }
    }

    /// Returns the fencing refusal, when a higher epoch has written the workspace.
    pub fn fenced(&self) -> Option<Fenced> {
        match self {
            EngineError::Fenced { fenced, .. } => Some(*fenced),
            _ => None,
        }
    }

    /// Returns whether rerunning the operation may succeed.
    pub fn is_temporary(&self) -> bool {
        match self {
            EngineError::Store(e) => e.is_temporary(),
            EngineError::Io { source, .. } => {
                matches!(source.kind(), io::ErrorKind::Interrupted | io::ErrorKind::TimedOut)
            }
            EngineError::Conflict(_) => true,
            _ => false,
        }
    }
}

/// Results of engine operations.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
