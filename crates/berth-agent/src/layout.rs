//! Where the agent keeps its files inside the workspace.
//!
//! ```text
//! <dir>/.berth/run/            runtime state, never snapshotted (berth_core::excludes::ALWAYS)
//!     ready                    the atomic ready marker, written last by init
//!     volume.json              which generation and snapshot this directory holds
//!     agent.lock               held (flock) by the one agent using the directory
//! <dir>/.berth/state/          captured state, snapshotted with the files
//!     git/<repo>/              state.json, all.bundle, staged.patch, unstaged.patch
//!     sqlite/<path>            consistent copies of the SQLite databases at <path>
//!     handover.json            a drain's nonce for the replacement
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use berth_core::init::VolumeMarker;
use berth_core::path::RelPath;

/// `<dir>/.berth/run`.
pub fn run_dir(dir: &Path) -> PathBuf {
    dir.join(".berth").join("run")
}

/// `<dir>/.berth/state`.
pub fn state_dir(dir: &Path) -> PathBuf {
    dir.join(".berth").join("state")
}

/// The ready marker.
pub fn ready(dir: &Path) -> PathBuf {
    run_dir(dir).join("ready")
}

/// What this directory holds.
pub fn volume_marker(dir: &Path) -> PathBuf {
    run_dir(dir).join("volume.json")
}

/// The local single-writer lock.
pub fn agent_lock(dir: &Path) -> PathBuf {
    run_dir(dir).join("agent.lock")
}

/// The key under `.berth/state/git/` of the workspace root when it is a repository itself.
const ROOT_KEY: &str = ".root";

/// The git state directory of the repository at `repo` (inside `dir`).
pub fn git_state(dir: &Path, repo: &Path) -> Option<PathBuf> {
    let rel = repo.strip_prefix(dir).ok()?;
    let base = state_dir(dir).join("git");
    if rel.as_os_str().is_empty() {
        return Some(base.join(ROOT_KEY));
    }
    RelPath::new(rel.as_os_str().as_encoded_bytes().to_vec()).ok()?;
    Some(base.join(rel))
}

/// Every repository with captured git state: (repository, its state directory).
pub fn git_states(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let base = state_dir(dir).join("git");
    let mut out: Vec<_> = files_under(&base)
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "state.json"))
        .filter_map(|f| {
            let state_dir = f.parent()?.to_path_buf();
            let rel = state_dir.strip_prefix(&base).ok()?;
            let repo = if rel == Path::new(ROOT_KEY) { dir.to_path_buf() } else { dir.join(rel) };
            Some((repo, state_dir))
        })
        .collect();
    out.sort();
    out
}

/// Every file beneath `root` (not following links to directories); none when it is missing.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// The consistent copy of the SQLite database at `db`.
pub fn sqlite_copy(dir: &Path, db: &RelPath) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    state_dir(dir).join("sqlite").join(std::ffi::OsStr::from_bytes(db.as_bytes()))
}

/// The drain handover record.
pub fn handover(dir: &Path) -> PathBuf {
    state_dir(dir).join("handover.json")
}

/// Reads the volume marker of `dir`; `None` when there is none or it is not berth's.
pub fn read_marker(dir: &Path) -> Option<VolumeMarker> {
    serde_json::from_slice(&std::fs::read(volume_marker(dir)).ok()?).ok()
}

/// Writes the volume marker of `dir` atomically; a failure is logged.
pub fn write_marker(dir: &Path, marker: &VolumeMarker) {
    let body = serde_json::to_vec_pretty(marker).unwrap_or_default();
    if let Err(e) = write_atomic(&volume_marker(dir), &body) {
        tracing::warn!(event = "volume_marker_failed", error = %e);
    }
}

/// Writes `body` to `path` atomically: a temp file beside it, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp =
        parent.join(format!(".{}.tmp{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("f"), std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(parent)?.sync_all()
}
