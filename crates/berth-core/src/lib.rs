//! berth's pure core: typed ids, validated paths, the on-store formats, the planners
//! (retention, prune, diff, size budget, volume GC) and the control plane's state machines
//! (lease, drain).
//!
//! **Invariant:** nothing in this crate does I/O or reads a clock; time comes in as a parameter.

pub mod budget;
pub mod chunker;
pub mod codec;
pub mod config;
pub mod diff;
pub mod drain;
pub mod excludes;
pub mod gc;
pub mod gitindex;
pub mod id;
pub mod index;
pub mod init;
pub mod layout;
pub mod lease;
pub mod manifest;
pub mod mark;
pub mod pack;
pub mod path;
pub mod prune;
pub mod repo;
pub mod retention;
pub mod schedule;
pub mod scope;
pub mod session;
pub mod snapshot;
pub mod sweep;
pub mod sync;
pub mod time;
pub mod units;
pub mod volume;
pub mod workspace;

/// A stored object or input that could not be decoded or failed validation.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{what} is corrupt or hostile: {reason}")]
pub struct FormatError {
    /// What was being decoded (an object kind, usually with its key).
    pub what: String,
    /// Why it was rejected.
    pub reason: String,
}

impl FormatError {
    /// Creates an error for `what` with a `reason`.
    pub fn new(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { what: what.into(), reason: reason.into() }
    }
}
