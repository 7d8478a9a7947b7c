//! What a writer keeps between snapshot runs of one directory, so that a run costs what changed:
//! the previous scan (a run told which paths changed, by a file watcher, re-stats those paths
//! instead of walking the whole tree), the previous tree (only the directories on the way from a
//! change to the root are encoded again), the store's index (only index objects that appeared
//! since are read) and the file cache (saved now and then, not after every run).
//!
//! # Guarantees
//! - Without a hint, after a failed or abandoned run, or for another directory, store,
//!   workspace or generation, a run scans everything and plans every entry, exactly as a cold
//!   run does.
//! - A run asked to check (`check_next`) scans everything as well, and reports the paths where
//!   the watcher-fed view differed from the full scan: a missed event is there to see.
//! - The previous tree is built on only while the store's index only grew since (no prune mark
//!   came or went, no index object went away), so everything it references is still reusable.
//! - The file cache on disk may lag the one in memory (by `CACHE_SAVE_EVERY` at most while runs
//!   succeed); a lagging cache costs reads of the files changed since, never a wrong snapshot.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_core::changes::ChangedPaths;
use berth_core::manifest::Manifest;
use berth_core::path::RelPath;
use berth_core::tree::DirIds;
use berth_core::workspace::{Generation, WorkspaceId};

use crate::cache::FileCache;
use crate::create::CreateOptions;
use crate::error::{EngineError, Result};
use crate::rescan::{self, Update};
use crate::scan::{self, Scan};
use crate::snapshot_store::{KnownIndex, KnownRecords};

/// Longest the file cache on disk lags the one in memory while watch-fed runs succeed.
pub const CACHE_SAVE_EVERY: Duration = Duration::from_secs(60);

/// What the writer of one directory keeps between runs, and what the last run found.
#[derive(Debug, Default)]
pub struct Warm {
    memo: Option<Memo>,
    check: bool,
    /// Whether the last run walked the whole tree.
    pub full_scan: bool,
    /// Whether the last run planned and encoded only what changed (built on the previous tree).
    pub incremental: bool,
    /// Paths where the last checked run found the watcher-fed view wrong.
    pub differences: Vec<RelPath>,
}

/// Whose memory a memo is: a run of another directory or lineage starts cold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemoKey {
    pub store: String,
    pub workspace: WorkspaceId,
    pub generation: Generation,
    /// The directory, canonical.
    pub dir: PathBuf,
}

/// What the last successful run left for the next one.
#[derive(Debug)]
pub(crate) struct Memo {
    pub key: MemoKey,
    /// The store's index as of the end of the last run (its own packs included).
    pub index: KnownIndex,
    /// The generation's records as listed and read by the last run.
    pub records: KnownRecords,
    /// The file cache, newer than the one on disk when `cache_dirty`.
    pub cache: FileCache,
    pub cache_dirty: bool,
    pub cache_saved: Option<Instant>,
    /// The last run's scan and tree, when there was one.
    pub last: Option<Last>,
}

/// The last run's scan and the tree it built from it.
#[derive(Debug)]
pub(crate) struct Last {
    pub scan: Scan,
    pub manifest: Manifest,
    pub dirs: DirIds,
    /// Whether the size budget left something out (then every run plans every entry).
    pub over_budget: bool,
    /// Files whose read failed or raced a write: the next run looks at them again.
    pub retry: Vec<RelPath>,
}

/// A scan for a run.
pub(crate) struct Scanned {
    pub scan: Scan,
    /// What was looked at again, when the scan was updated from the previous one.
    pub update: Option<Update>,
}

impl Warm {
    /// Makes the next run scan everything and compare with the watcher-fed view.
    pub fn check_next(&mut self) {
        self.check = true;
    }

    /// Forgets the previous scan and tree (the excludes changed, or the caller lost track);
    /// the index and file cache in memory stay.
    pub fn reset(&mut self) {
        if let Some(memo) = &mut self.memo {
            memo.last = None;
        }
    }

    /// Takes the memory of the last run for a run of `key`: `None` when there is none, or it
    /// is another directory's or lineage's. Until the run gives it back (`keep`), a failed or
    /// abandoned run leaves nothing behind that a later run could trust.
    pub(crate) fn take(&mut self, key: &MemoKey) -> Option<Memo> {
        self.memo.take().filter(|m| m.key == *key)
    }

    /// Keeps the memory of a run that succeeded.
    pub(crate) fn keep(&mut self, memo: Memo) {
        self.memo = Some(memo);
    }

    /// Scans `dir` (canonical) for a run: from `prev` and `hint` when it can, fully otherwise.
    pub(crate) async fn scan(
        &mut self,
        dir: &Path,
        opts: &CreateOptions,
        prev: Option<Scan>,
        hint: Option<ChangedPaths>,
    ) -> Result<Scanned> {
        let skip: Vec<PathBuf> = opts.cache_dir.iter().filter_map(|d| std::fs::canonicalize(d).ok()).collect();
        let (dir, excludes, threads) = (dir.to_path_buf(), opts.excludes.clone(), opts.threads);
        let check = std::mem::take(&mut self.check);
        let task = tokio::task::spawn_blocking(move || {
            let updated = match (&hint, prev) {
                (Some(h), Some(p)) => rescan::apply(&dir, p, h, &excludes, &skip, threads),
                _ => None,
            };
            match updated {
                Some((scan, update)) if !check => Ok((Scanned { scan, update: Some(update) }, Vec::new())),
                updated => {
                    let full = scan::scan(&dir, &excludes, &skip, threads)?;
                    let differences = updated.map(|(u, _)| rescan::differences(&u, &full)).unwrap_or_default();
                    Ok::<_, EngineError>((Scanned { scan: full, update: None }, differences))
                }
            }
        });
        let (scanned, differences) =
            task.await.map_err(|e| EngineError::Invalid(format!("scan task failed: {e}")))??;
        (self.full_scan, self.differences) = (scanned.update.is_none(), differences);
        Ok(scanned)
    }
}
