//! Per-job leftovers: how a job's paths are named, and which a sweep may remove.
//!
//! A job (one `berth agent` run) owns, under one base directory, a lock file it holds for its
//! whole life and up to three directories: `<job>.lock`, `creds-<job>/`, `work-<job>/`,
//! `artifacts-<job>/`. A sweep judges every entry on its own: a live owner protects it whatever
//! its age; otherwise it goes once it is older than the TTL.
//!
//! Every entry carries berth's ownership marker: the lock file holds [`marker`], and each
//! directory holds a [`MARKER_FILE`] with it. A sweep claims only a name in berth's own id
//! format *and* with that marker; anything else under the base is someone else's.
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

/// The file in each of a job's directories that marks it as berth's.
pub const MARKER_FILE: &str = ".berth-job";

/// The ownership marker of `job`: the content of its lock file and of each directory's
/// [`MARKER_FILE`].
pub fn marker(job: &str) -> String {
    format!("berth job {job}\n")
}

/// Returns whether `job` is a job id as berth makes them: `j<pid>-<8 lowercase hex digits>`.
pub fn is_job_id(job: &str) -> bool {
    let Some((pid, random)) = job.strip_prefix('j').and_then(|j| j.split_once('-')) else { return false };
    (1..=10).contains(&pid.len())
        && pid.bytes().all(|b| b.is_ascii_digit())
        && random.len() == 8
        && random.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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

/// Judges one entry: `age_secs` since it last changed, `marked` whether it carries its job's
/// ownership marker, `live` whether its job holds its lock.
pub fn judge(
    name: &str,
    age_secs: i64,
    ttl_secs: i64,
    marked: impl FnOnce(PathKind, &str) -> bool,
    live: impl FnOnce(&str) -> bool,
) -> Verdict {
    let Some((kind, job)) = parse(name) else { return Verdict::Foreign };
    if !marked(kind, job) {
        Verdict::Foreign
    } else if live(job) {
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
            assert_eq!(parse(&kind.name("j12-0a1b2c3d")), Some((kind, "j12-0a1b2c3d")));
        }
        // Names a sweep with a loose pattern once removed.
        let seen = ["jenkins.lock", "java.lock", "work-jdk", "creds-jx", "artifacts-j-old"];
        let odd =
            ["creds-", "creds-x", "work-J1", "notes.txt", "j1", "artifacts-j1/../x", ".lock", "j12-0A1B2C3D.lock"];
        for foreign in seen.iter().chain(&odd).chain(&["work-j12-0a1b2c3d0", "j-0a1b2c3d.lock", "creds-j1-aa"]) {
            assert_eq!(parse(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn each_entry_on_its_own() {
        let (dead, alive) = (|_: &str| false, |_: &str| true);
        let marked = |_: PathKind, _: &str| true;
        let job = "j1-00c0ffee";
        let name = |kind: PathKind| kind.name(job);
        assert_eq!(judge(&name(PathKind::Creds), 7200, 3600, marked, dead), Verdict::Remove);
        assert_eq!(judge(&name(PathKind::Work), 10, 3600, marked, dead), Verdict::Retain);
        let old_live = judge(&name(PathKind::Work), 99_999, 3600, marked, alive);
        assert_eq!(old_live, Verdict::SkipLive, "a live owner protects old files");
        assert_eq!(judge("lost+found", 99_999, 0, marked, dead), Verdict::Foreign);
        let unmarked = judge(&name(PathKind::Lock), 99_999, 0, |_: PathKind, _: &str| false, dead);
        assert_eq!(unmarked, Verdict::Foreign, "berth's name without berth's marker is not berth's");
        let mut t = Tally::default();
        for v in [Verdict::Remove, Verdict::Retain, Verdict::SkipLive, Verdict::Foreign] {
            t.add(v);
        }
        assert_eq!(t.to_string(), "swept=1 retained=2 skipped_live=1 failed=0");
    }
}
