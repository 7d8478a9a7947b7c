//! berth's snapshot engine: object stores, snapshot creation, restore, retention, prune,
//! verify and diff. I/O lives here; formats and decisions live in `berth_core`.

pub mod beneath;
pub mod cache;
pub mod create;
pub mod error;
pub mod maintain;
pub mod progress;
pub mod prune_lock;
pub mod rescan;
pub mod restore;
pub mod scan;
pub mod snapshot_store;
pub mod store;
pub mod trees;
pub mod warm;

pub use error::{EngineError, Result};

/// Returns the number of worker threads to use when none is configured: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Returns this machine's host name, recorded in snapshots and prune locks (empty when unknown).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}
