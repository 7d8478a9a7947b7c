//! The file watcher's feed into snapshots: the paths it reports between two runs become the
//! engine's hint (`berth_engine::create::create_warm`), so a run re-stats only those paths and
//! their parents. A full scan runs when the watcher overflowed or failed, when watches cannot be
//! had, and on a slow timer; a timed rescan compares what the watcher said with what is there,
//! and every difference is counted (`berth_agent_rescan_differences_total`) and logged
//! (`event=rescan_difference`): a missed event is a bug to see, not to hide.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_core::changes::ChangedPaths;
use berth_core::path::RelPath;
use berth_engine::warm::Warm;

/// Most `rescan_difference` lines logged per rescan (all are counted).
const MAX_LOGGED: usize = 20;
/// Berth's own state in the workspace: written by the agent before each run (SQLite copies, git
/// state), never reported by the watcher (the agent ignores its own writes), so always re-read.
const STATE: &str = ".berth/state";

/// The changed paths gathered since the last run, and the engine's memory of the last scan.
#[derive(Debug)]
pub struct Feed {
    changed: ChangedPaths,
    pub(crate) warm: Warm,
    /// The exclude patterns the previous scan was made with.
    patterns: Vec<String>,
    next_check: Instant,
    /// How often the whole tree is scanned and checked against the watcher's reports.
    rescan: Duration,
    /// Whether the watcher works (without it, every run scans everything).
    watching: bool,
}

impl Feed {
    /// A feed whose first run scans everything, and a run every `rescan` after it.
    pub fn new(watching: bool, rescan: Duration) -> Feed {
        let mut changed = ChangedPaths::new();
        changed.lose_track();
        let next_check = Instant::now() + rescan;
        Feed { changed, warm: Warm::default(), patterns: Vec::new(), next_check, rescan, watching }
    }

    /// Records paths the watcher reported (absolute, below `root`).
    pub fn note(&mut self, root: &Path, paths: &[PathBuf]) {
        for p in paths {
            let Ok(rel) = p.strip_prefix(root) else { continue };
            if let Ok(rel) = RelPath::new(rel.as_os_str().as_encoded_bytes().to_vec()) {
                self.changed.insert(rel);
            }
        }
    }

    /// The watcher overflowed or failed: the next run scans everything.
    pub fn lose_track(&mut self) {
        self.changed.lose_track();
    }

    /// Takes the hint for a run made with `patterns`: `None` means a full scan (no watcher, lost
    /// track, or other excludes than the previous scan's). When the rescan timer is due, the run
    /// also scans everything and compares.
    pub fn take(&mut self, patterns: &[String]) -> Option<ChangedPaths> {
        let mut changed = std::mem::take(&mut self.changed);
        if patterns != self.patterns.as_slice() {
            self.patterns = patterns.to_vec();
            self.warm.reset();
        }
        if Instant::now() >= self.next_check {
            self.next_check = Instant::now() + self.rescan;
            self.warm.check_next();
        }
        if !self.watching || changed.lost_track() {
            return None;
        }
        if let Ok(state) = RelPath::new(STATE.as_bytes().to_vec()) {
            changed.insert(state);
        }
        Some(changed)
    }

    /// A run failed: what it was told may not be in the engine's memory, so scan everything next.
    pub fn failed(&mut self) {
        self.warm.reset();
    }

    /// After a run: reports what a checking run found the watcher missed, leaving out paths the
    /// watcher has reported since the run started (changed while it ran).
    pub fn report_differences(&mut self) -> usize {
        let missed: Vec<&RelPath> = self.warm.differences.iter().filter(|p| !self.changed.covers(p)).collect();
        for p in missed.iter().take(MAX_LOGGED) {
            tracing::warn!(event = "rescan_difference", path = %p, hint = "the file watcher missed a change; the full scan saved it");
        }
        metrics::counter!("berth_agent_rescan_differences_total").increment(missed.len() as u64);
        let n = missed.len();
        self.warm.differences.clear();
        n
    }
}

/// CPU seconds this process and its waited-for children (git, SQLite helpers) have used.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): utime is the 12th, then stime,
    // cutime, cstime; all in USER_HZ ticks (100 a second on Linux).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11..15)?.iter().filter_map(|f| f.parse::<u64>().ok()).sum();
    Some(ticks as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_run_and_a_lost_watcher_scan_everything() {
        let mut feed = Feed::new(true, Duration::from_secs(600));
        assert!(feed.take(&[]).is_none(), "the first run scans everything");
        feed.note(Path::new("/ws"), &[PathBuf::from("/ws/a/b"), PathBuf::from("/elsewhere")]);
        let hint = feed.take(&[]).expect("a hint");
        assert!(hint.covers(&RelPath::new(b"a/b".to_vec()).unwrap()));
        assert!(hint.covers(&RelPath::new(b".berth/state/git/x".to_vec()).unwrap()), "berth's state is re-read");
        assert_eq!(hint.n_paths(), 2);
        feed.note(Path::new("/ws"), &[PathBuf::from("/ws/c")]);
        feed.lose_track();
        assert!(feed.take(&[]).is_none(), "an overflow scans everything");
        assert!(feed.take(&[]).is_some());
        assert!(Feed::new(false, Duration::from_secs(600)).take(&[]).is_none() && cpu_seconds().is_some());
    }
}
