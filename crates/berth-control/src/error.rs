//! The control plane's one error type: domain refusals (each maps to one HTTP status in
//! `http::error`) and failures of the metadata store or the substrate.

use berth_core::lease::{Fenced, Held};
use berth_core::scope::Scope;

use crate::volumes::VolumeError;

/// Why a control-plane operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No token, or one the server does not know.
    #[error("a valid token is required: pass the admin token or a sandbox token as 'Authorization: Bearer TOKEN'")]
    Unauthorized,
    /// The token is valid but may not act on this resource.
    #[error("{0}")]
    Forbidden(String),
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// The resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Another session holds the workspace's live lease.
    #[error("{0}; wait for it to detach or for its lease to expire")]
    LeaseHeld(#[from] Held),
    /// A write carried an epoch that is not the current live one: the writer lost the
    /// workspace and must stop writing (attaching again gives it a new epoch).
    #[error("{0}")]
    Fenced(#[from] Fenced),
    /// A heartbeat came from an instance other than the one its session attached with; nothing
    /// changed.
    #[error(
        "session {session} was attached by instance {attached}, not {presented}: a sandbox heartbeats with the \
         instance id it attached with, and a new instance attaches a session of its own"
    )]
    WrongInstance {
        /// The session.
        session: berth_core::session::SessionId,
        /// The instance it attached with.
        attached: berth_core::session::InstanceId,
        /// The instance the heartbeat named.
        presented: berth_core::session::InstanceId,
    },
    /// The resource's state does not allow the operation; the message says what to do.
    #[error("{0}")]
    WrongState(String),
    /// The workspace's volume may hold work no snapshot has; the message says how to save or
    /// discard it.
    #[error("{0}")]
    AtRisk(String),
    /// A ready-ack presented the wrong nonce; the scope keeps draining.
    #[error("the nonce does not match the drain of {0}; it keeps draining")]
    WrongNonce(Scope),
    /// The scope is draining: no new work goes there.
    #[error("{scope} is draining: no new sessions start there until the drain clears; retry in {retry_after_secs} s")]
    Draining {
        /// The draining scope.
        scope: Scope,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// Another operation holds the resource for a moment.
    #[error("{message}; retry in {retry_after_secs} s")]
    Busy {
        /// What is going on.
        message: String,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Db(#[from] sqlx::Error),
    /// Schema migration failed.
    #[error("metadata store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The metadata store holds something berth cannot read.
    #[error("metadata store holds an unreadable value: {0}")]
    Corrupt(String),
    /// The server cannot start as configured; the message says what to change.
    #[error("{0}")]
    Config(String),
    /// The substrate failed.
    #[error("substrate: {0}")]
    Volume(#[from] VolumeError),
}

impl Error {
    /// Returns whether a retry may succeed without a change by the caller.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Db(e) => !matches!(e, sqlx::Error::RowNotFound | sqlx::Error::ColumnDecode { .. }),
            Error::Volume(v) => v.is_temporary(),
            Error::Draining { .. } | Error::Busy { .. } | Error::LeaseHeld(_) => true,
            _ => false,
        }
    }
}

/// Results of control-plane operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
