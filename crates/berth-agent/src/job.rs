//! A job's own paths outside the workspace: a lock file held for the job's life (its ownership
//! marker) and the credential, work and artifacts directories, removed together when it ends.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use berth_core::sweep::{self, PathKind};
use rustix::fs::FlockOperation;

/// One job's paths under the base directory.
#[derive(Debug)]
pub struct Job {
    /// The job id (`j<pid>-<random>`).
    pub id: String,
    /// The base directory.
    pub base: PathBuf,
    /// Credential helper and token (0700; files 0600).
    pub creds: PathBuf,
    /// Scratch space.
    pub work: PathBuf,
    /// Reports.
    pub artifacts: PathBuf,
    lock_path: PathBuf,
    lock: Option<File>,
}

fn mkdir(path: &Path, mode: u32) -> io::Result<()> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

impl Job {
    /// Creates a job's paths under `base` (created 0700 if missing) and takes its lock.
    pub fn create(base: &Path) -> io::Result<Job> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(base)?;
        let mut rand = [0u8; 4];
        let _ = rustix::rand::getrandom(&mut rand, rustix::rand::GetRandomFlags::empty());
        let id = format!("j{}-{}", std::process::id(), hex::encode(rand));
        let lock_path = base.join(PathKind::Lock.name(&id));
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&lock_path)?;
        rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive)?;
        // berth's ownership marker: the sweep claims nothing without it.
        std::io::Write::write_all(&mut &lock, sweep::marker(&id).as_bytes())?;
        let job = Job {
            creds: base.join(PathKind::Creds.name(&id)),
            work: base.join(PathKind::Work.name(&id)),
            artifacts: base.join(PathKind::Artifacts.name(&id)),
            base: base.to_path_buf(),
            lock_path,
            lock: Some(lock),
            id,
        };
        for (dir, mode) in [(&job.creds, 0o700), (&job.work, 0o700), (&job.artifacts, 0o755)] {
            mkdir(dir, mode)?;
            fs::write(dir.join(sweep::MARKER_FILE), sweep::marker(&job.id))?;
        }
        Ok(job)
    }

    /// Removes every path of the job, then releases its lock. Synchronous and best-effort: it
    /// goes on past a failure (logged) and does nothing for a path already gone. Safe to call
    /// more than once.
    pub fn remove_all(&mut self) {
        remove_paths(&[&self.creds, &self.work, &self.artifacts]);
        if self.lock.take().is_some() {
            remove_paths(&[&self.lock_path]);
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// Removes each path (file or tree), going on past failures, which it logs and returns. An
/// empty path, or one already gone, is nothing to do.
pub fn remove_paths(paths: &[&Path]) -> Vec<(PathBuf, io::Error)> {
    let mut failed = Vec::new();
    for path in paths {
        if path.as_os_str().is_empty() {
            continue;
        }
        let result = match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(path),
            Ok(_) => fs::remove_file(path),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(event = "job_path_remove_failed", path = %path.display(), error = %e);
                failed.push((path.to_path_buf(), e));
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_go_together_and_empty_is_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let mut job = Job::create(&base).unwrap();
        fs::write(job.creds.join("token"), b"t").unwrap();
        assert_eq!(fs::read_dir(&base).unwrap().count(), 4);
        job.remove_all();
        job.remove_all();
        assert_eq!(fs::read_dir(&base).unwrap().count(), 0);
        assert!(remove_paths(&[Path::new(""), &base.join("missing")]).is_empty());
    }
}
