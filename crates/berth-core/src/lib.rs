//! berth's pure core: the domain types, the on-store formats, the planners and the state
//! machines that the engine, the control plane and the agent carry out.
//!
//! **Invariant:** nothing in this crate does I/O or reads a clock; time comes in as a parameter.
//!
//! The modules, by what they are for:
//! - identity and values: `id` (typed BLAKE3 ids), `path` (relative paths that cannot escape
//!   their root), `workspace` (owner key and generation), `session` (session, instance and place
//!   names), `time` (timestamps and calendar fields without a clock);
//! - the snapshot formats, each with a decoder that validates what a hostile store could lie
//!   about: `config` (store format and chunker parameters), `chunker` (FastCDC boundaries),
//!   `codec` (zstd-or-raw blobs), `pack`, `index`, `manifest`, `snapshot` (the record that
//!   publishes a manifest), `mark` (prune marks), `layout` (where each object lives);
//! - snapshot planners: `sync` (what a run reads and reuses, and the manifest it assembles),
//!   `excludes`, `budget` (the size budget), `diff`, `retention` (forget), `prune` (two-phase
//!   deletion), `target` (where a restore may write);
//! - the control plane's rules: `lease` (the single-writer lease, its fencing epoch and the one
//!   `Fenced` error), `lifecycle` (the workspace lifecycle machine), `drain` (the drain state
//!   machine and budget), `scope` (drain scopes), `volume` (volume names and mount specs), `gc`
//!   (volume GC, deletion steps, the orphan sweep);
//! - the sandbox agent's rules: `repo` (git repository specs and failure classes), `renewal`
//!   (until when its lease lets it write), `schedule` (when to snapshot), `sweep` (per-job leftovers), `gitindex` (the git index and its stat
//!   refresh after a restore).

pub mod budget;
pub mod changes;
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
pub mod lifecycle;
pub mod manifest;
pub mod mark;
pub mod pack;
pub mod path;
pub mod prune;
pub mod renewal;
pub mod repo;
pub mod retention;
pub mod schedule;
pub mod scope;
pub mod session;
pub mod snapshot;
pub mod sweep;
pub mod sync;
pub mod target;
pub mod time;
pub mod tree;
pub mod units;
pub mod volume;
pub mod workspace;

/// The most bytes of one piece of user or store input (a path, a key, a label) an error message
/// repeats; the rest is cut (see [`bounded`]).
pub const ECHO_MAX: usize = 512;

/// Cuts `s` to at most `max` bytes (on a character boundary, marked with `...`), so that an
/// error never repeats unbounded input.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

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
