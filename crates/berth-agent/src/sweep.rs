//! The crash sweep: at start (and on demand) remove per-job leftovers older than a TTL, judging
//! each entry on its own; a live job's lock protects its files whatever their age.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;
use std::time::{Instant, SystemTime};

use berth_core::sweep::{self, PathKind, Tally, Verdict};
use rustix::fs::FlockOperation;
use serde::Serialize;

use crate::job::remove_paths;

/// What a sweep did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepReport {
    /// Entries removed (or, in a dry run, that would be).
    pub swept: Vec<String>,
    /// Entries kept because they are younger than the TTL.
    pub retained: u64,
    /// Entries kept because their job is alive.
    pub skipped_live: u64,
    /// Entries that could not be removed.
    pub failed: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Why the base directory could not be read, if it could not.
    pub unreadable: Option<String>,
    /// Wall time.
    pub duration_ms: u64,
}

/// Returns whether `job` holds its lock: another open of the lock file cannot take it.
fn is_live(base: &Path, job: &str) -> bool {
    let path = base.join(PathKind::Lock.name(job));
    let Ok(f) = OpenOptions::new().read(true).open(&path) else { return false };
    match rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => false,
        Err(rustix::io::Errno::WOULDBLOCK) => true,
        // Cannot tell: protect it.
        Err(_) => true,
    }
}

/// Returns whether the entry at `path` carries `job`'s ownership marker: a lock file holding
/// it, or a real directory (not a link) holding a marker file with it.
fn carries_marker(path: &Path, kind: PathKind, job: &str) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else { return false };
    let body = match kind {
        PathKind::Lock if meta.is_file() => fs::read(path),
        PathKind::Creds | PathKind::Work | PathKind::Artifacts if meta.is_dir() => {
            fs::read(path.join(sweep::MARKER_FILE))
        }
        _ => return false,
    };
    body.is_ok_and(|b| b == sweep::marker(job).as_bytes())
}

/// Sweeps `base`: removes entries of dead jobs older than `ttl_secs`, only names in berth's id
/// format that carry berth's marker; the entries of `own` (the job sweeping) are not judged.
/// A missing base is fine; an unreadable one is logged; entries vanishing meanwhile are fine.
/// Logs one summary line.
pub fn sweep(base: &Path, ttl_secs: i64, dry_run: bool, own: Option<&str>) -> SweepReport {
    let started = Instant::now();
    let mut report = SweepReport { dry_run, ..Default::default() };
    let mut tally = Tally::default();
    match fs::read_dir(base) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(event = "sweep_base_unreadable", base = %base.display(), error = %e);
            report.unreadable = Some(e.to_string());
        }
        Ok(entries) => {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if own.is_some_and(|job| sweep::parse(&name).is_some_and(|(_, j)| j == job)) {
                    continue;
                }
                // Gone since the listing: nothing to judge.
                let Ok(meta) = fs::symlink_metadata(entry.path()) else { continue };
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .map_or(0, |d| d.as_secs() as i64);
                let marked = |kind, job: &str| carries_marker(&entry.path(), kind, job);
                let verdict = sweep::judge(&name, age, ttl_secs, marked, |job| is_live(base, job));
                tally.add(verdict);
                if verdict == Verdict::Remove {
                    report.swept.push(name);
                    if !dry_run && !remove_paths(&[&entry.path()]).is_empty() {
                        tally.failed += 1;
                    }
                }
            }
        }
    }
    report.retained = tally.retained;
    report.skipped_live = tally.skipped_live;
    report.failed = tally.failed;
    report.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        event = "sweep",
        base = %base.display(),
        dry_run,
        swept = report.swept.len(),
        retained = report.retained,
        skipped_live = report.skipped_live,
        failed = report.failed,
        duration_ms = report.duration_ms,
    );
    report
}
