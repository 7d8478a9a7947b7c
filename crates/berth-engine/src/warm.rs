//! What a writer keeps between snapshot runs of one directory, so that a run told which paths
//! changed (by a file watcher) re-stats those paths instead of walking the whole tree.
//!
//! # Guarantees
//! - Without a hint, after a failed incremental update, or for another directory, a run scans
//!   everything, exactly as a cold run does.
//! - A run asked to check (`check_next`) scans everything as well, and reports the paths where
//!   the watcher-fed view differed from the full scan: a missed event is there to see.

use std::path::{Path, PathBuf};

use berth_core::changes::ChangedPaths;
use berth_core::path::RelPath;

use crate::create::CreateOptions;
use crate::error::{EngineError, Result};
use crate::rescan;
use crate::scan::{self, Scan};

/// The previous scan of a directory, and what the last run found.
#[derive(Debug, Default)]
pub struct Warm {
    prev: Option<(PathBuf, Scan)>,
    check: bool,
    /// Whether the last run walked the whole tree.
    pub full_scan: bool,
    /// Paths where the last checked run found the watcher-fed view wrong.
    pub differences: Vec<RelPath>,
}

impl Warm {
    /// Makes the next run scan everything and compare with the watcher-fed view.
    pub fn check_next(&mut self) {
        self.check = true;
    }

    /// Forgets the previous scan (the excludes changed, or the caller lost track).
    pub fn reset(&mut self) {
        self.prev = None;
    }

    /// Scans `dir` (canonical) for a run: from the previous scan and `hint` when it can, fully
    /// otherwise.
    pub(crate) async fn scan(&mut self, dir: &Path, opts: &CreateOptions, hint: Option<&ChangedPaths>) -> Result<Scan> {
        let skip: Vec<PathBuf> = opts.cache_dir.iter().filter_map(|d| std::fs::canonicalize(d).ok()).collect();
        let (dir, excludes, threads) = (dir.to_path_buf(), opts.excludes.clone(), opts.threads);
        let prev = self.prev.take().filter(|(d, _)| *d == dir).map(|(_, s)| s);
        let (hint, check) = (hint.cloned(), std::mem::take(&mut self.check));
        let task = tokio::task::spawn_blocking(move || {
            let updated = match (&hint, &prev) {
                (Some(h), Some(p)) => rescan::apply(&dir, p, h, &excludes, &skip, threads),
                _ => None,
            };
            let (scan, full, differences) = match updated {
                Some(s) if !check => (s, false, Vec::new()),
                updated => {
                    let full = scan::scan(&dir, &excludes, &skip, threads)?;
                    let differences = updated.map(|u| rescan::differences(&u, &full)).unwrap_or_default();
                    (full, true, differences)
                }
            };
            Ok::<_, EngineError>((dir, scan, full, differences))
        });
        let (dir, scan, full, differences) =
            task.await.map_err(|e| EngineError::Invalid(format!("scan task failed: {e}")))??;
        (self.full_scan, self.differences) = (full, differences);
        self.prev = Some((dir, scan.clone()));
        Ok(scan)
    }
}
