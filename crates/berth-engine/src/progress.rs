//! Progress counters shared between an operation and whoever displays it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Live counters of a long operation; the engine updates them, a UI polls them.
#[derive(Debug, Default)]
pub struct Progress {
    phase: Mutex<&'static str>,
    /// Files to process in the current phase.
    pub files_total: AtomicU64,
    /// Files processed.
    pub files_done: AtomicU64,
    /// Bytes to process in the current phase.
    pub bytes_total: AtomicU64,
    /// Bytes processed.
    pub bytes_done: AtomicU64,
    /// Bytes written to (or read from) the store.
    pub bytes_transferred: AtomicU64,
}

impl Progress {
    /// Enters a phase with known totals.
    pub fn start(&self, phase: &'static str, files: u64, bytes: u64) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase;
        }
        self.files_total.store(files, Ordering::Relaxed);
        self.bytes_total.store(bytes, Ordering::Relaxed);
        self.files_done.store(0, Ordering::Relaxed);
        self.bytes_done.store(0, Ordering::Relaxed);
    }

    /// Returns the current phase.
    pub fn phase(&self) -> &'static str {
        self.phase.lock().map(|p| *p).unwrap_or("")
    }

    /// Counts one finished file of `bytes` bytes.
    pub fn file_done(&self, bytes: u64) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts bytes moved to or from the store.
    pub fn transferred(&self, bytes: u64) {
        self.bytes_transferred.fetch_add(bytes, Ordering::Relaxed);
    }
}
