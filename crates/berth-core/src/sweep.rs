//! Per-job leftovers: how a job's paths are named, and which a sweep may remove.
//!
//! A job (one `berth agent` run) owns, under one base directory, a lock file it holds for its
//! whole life and up to three directories: `<job>.lock`, `creds-<job>/`, `work-<job>/`,
//! `artifacts-<job>/`. A sweep judges every entry on its own: a live owner protects it whatever
//! its age; otherwise it goes once it is older than the TTL.
//!
//! **Invariant:** a sweep never removes an entry whose job holds its lock, and never an entry
//! it does not recognise as berth's.

use std::fmt;

/// The kinds of per-job paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// `<job>.lock`, held (flock) while the job lives.
    Lock,
    /// `creds-<job>/`: the credential helper and token (0700, files 0600).
    Creds,
    /// `work-<job>/`: scratch space.
    Work,
    /// `artifacts-<job>/`: reports and logs.
    Artifacts,
}

impl PathKind {
    /// The directory kinds, in the order they are created.
    pub const DIRS: [PathKind; 3] = [PathKind::Creds, PathKind::Work, PathKind::Artifacts];

    /// Returns the entry name of this kind for `job`.
    pub fn name(self, job: &str) -> String {
        match self {
            PathKind::Lock => format!("{job}.lock"),
            PathKind::Creds => format!("creds-{job}"),
            PathKind::Work => format!("work-{job}"),
            PathKind::Artifacts => format!("artifacts-{job}"),
        }
    }

    /// Returns the stable name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Lock => "lock",
            PathKind::Creds => "creds",
            PathKind::Work => "work",
            PathKind::Artifacts => "artifacts",
        }
    }
}

/// Returns whether `job` is a job id berth makes: `j` followed by 1-64 of `[0-9a-z-]`.
pub fn is_job_id(job: &str) -> bool {
    job.len() >= 2
        && job.len() <= 65
        && job.starts_with('j')
        && job[1..].bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
}

/// Parses an entry name of the base directory into its kind and job id.
pub fn parse(name: &str) -> Option<(PathKind, &str)> {
    let (kind, job) = if let Some(job) = name.strip_suffix(".lock") {
        (PathKind::Lock, job)
    } else if let Some(job) = name.strip_prefix("creds-") {
        (PathKind::Creds, job)
    } else if let Some(job) = name.strip_prefix("work-") {
        (PathKind::Work, job)
    } else if let Some(job) = name.strip_prefix("artifacts-") {
        (PathKind::Artifacts, job)
    } else {
        return None;
    };
    is_job_id(job).then_some((kind, job))
}

/// What a sweep does with one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its job is gone and it is older than the TTL.
    Remove,
    /// Its job is gone but it is younger than the TTL.
    Retain,
    /// Its job is alive.
    SkipLive,
    /// Not a berth job path: left alone.
    Foreign,
}

/// Judges one entry: `age_secs` since it last changed, `live` whether its job holds its lock.
pub fn judge(name: &str, age_secs: i64, ttl_secs: i64, live: impl FnOnce(&str) -> bool) -> Verdict {
    let Some((_, job)) = parse(name) else { return Verdict::Foreign };
    if live(job) {
        Verdict::SkipLive
    } else if age_secs >= ttl_secs {
        Verdict::Remove
    } else {
        Verdict::Retain
    }
}

/// The counts of one sweep, for its log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Entries removed.
    pub swept: u64,
    /// Entries kept because they are younger than the TTL (or foreign).
    pub retained: u64,
    /// Entries kept because their job is alive.
    pub skipped_live: u64,
    /// Entries that could not be removed (logged one by one).
    pub failed: u64,
}

impl Tally {
    /// Counts one verdict.
    pub fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Remove => self.swept += 1,
            Verdict::Retain | Verdict::Foreign => self.retained += 1,
            Verdict::SkipLive => self.skipped_live += 1,
        }
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "swept={} retained={} skipped_live={} failed={}",
            self.swept, self.retained, self.skipped_live, self.failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in [PathKind::Lock, PathKind::Creds, PathKind::Work, PathKind::Artifacts] {
            assert_eq!(parse(&kind.name("j12-ab")), Some((kind, "j12-ab")));
        }
        for foreign in ["creds-", "creds-x", "work-J1", "notes.txt", "j1", "artifacts-j1/../x", ".lock"] {
            assert_eq!(parse(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn each_entry_on_its_own() {
        let dead = |_: &str| false;
        let alive = |_: &str| true;
        assert_eq!(judge("creds-j1", 7200, 3600, dead), Verdict::Remove);
        assert_eq!(judge("work-j1", 10, 3600, dead), Verdict::Retain);
        assert_eq!(judge("work-j1", 99_999, 3600, alive), Verdict::SkipLive, "a live owner protects old files");
        assert_eq!(judge("lost+found", 99_999, 0, dead), Verdict::Foreign);
        let mut t = Tally::default();
        for v in [Verdict::Remove, Verdict::Retain, Verdict::SkipLive, Verdict::Foreign] {
            t.add(v);
        }
        assert_eq!(t.to_string(), "swept=1 retained=2 skipped_live=1 failed=0");
    }
}
