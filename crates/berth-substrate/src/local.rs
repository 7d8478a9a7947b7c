//! `LocalVolumes`: each workspace volume is a directory under the data dir.
//!
//! ```text
//! <root>/<name>/            the workspace directory the sandbox uses
//! <root>/.meta/<name>.json  its labels, written before the directory is created
//! <root>/.meta/<name>.lock  held (shared flock) by whoever uses the directory
//! <root>/.trash/            directories being deleted
//! ```
//!
//! # Guarantees
//! - A directory whose labels file is missing, unreadable, or names another installation,
//!   owner or generation is never adopted by `ensure` nor removed by `delete`: berth writes the
//!   labels before the directory and removes the directory (into `.trash`) before the labels,
//!   so a directory without labels is never one of berth's.
//! - A directory whose lock file is held by a live process is never removed: `delete` takes
//!   the exclusive lock without waiting and answers `Referenced` when it cannot.
//! - Deletion renames the directory into `.trash` first (atomic), then removes the labels, then
//!   the tree; a crash at any point leaves either a volume `delete` removes next time or trash
//!   the next `delete` purges.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use berth_core::volume::{MountSpec, VolumeName};
use rustix::fs::FlockOperation;

use crate::volumes::{check_ours, is_install, Removal, VolumeError, VolumeInfo, VolumeSpec, Volumes};

/// Workspace volumes as directories under one root.
#[derive(Debug, Clone)]
pub struct LocalVolumes {
    root: PathBuf,
    /// The installation whose volumes this adapter creates and removes.
    install: String,
    /// uid and gid to give each new workspace directory (the sandbox's user), if not ours.
    owner: Option<(u32, u32)>,
}

impl LocalVolumes {
    /// Uses `root` (created if missing) for installation `install`'s volumes; new directories
    /// are chowned to `owner`.
    pub fn new(
        root: impl Into<PathBuf>,
        install: impl Into<String>,
        owner: Option<(u32, u32)>,
    ) -> Result<LocalVolumes, VolumeError> {
        let root = root.into();
        for dir in [root.clone(), root.join(".meta"), root.join(".trash")] {
            fs::DirBuilder::new().recursive(true).mode(0o755).create(&dir).map_err(|e| {
                VolumeError::permanent(format!("cannot create volume directory {}: {e}", dir.display()))
            })?;
        }
        Ok(LocalVolumes { root, install: install.into(), owner })
    }

    fn dir(&self, name: &VolumeName) -> PathBuf {
        self.root.join(name.as_str())
    }

    fn labels_path(&self, name: &VolumeName) -> PathBuf {
        self.root.join(".meta").join(format!("{name}.json"))
    }

    fn lock_path(&self, name: &VolumeName) -> PathBuf {
        self.root.join(".meta").join(format!("{name}.lock"))
    }

    /// Reads the labels of `name`: `None` when there is no labels file, an empty map when it
    /// cannot be parsed (never berth's: berth publishes it whole with a rename).
    fn read_labels(&self, name: &VolumeName) -> Result<Option<BTreeMap<String, String>>, VolumeError> {
        let path = self.labels_path(name);
        match fs::read(&path) {
            Ok(body) => Ok(Some(serde_json::from_slice(&body).unwrap_or_default())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(VolumeError::temporary(format!("cannot read {}: {e}", path.display()))),
        }
    }

    fn ensure_blocking(&self, spec: &VolumeSpec) -> Result<(), VolumeError> {
        let io = |what: &str, path: &Path, e: io::Error| {
            VolumeError::temporary(format!("cannot {what} {}: {e}", path.display()))
        };
        // Labels first: the directory never exists without them, so list() sees every volume,
        // and a directory without labels is someone else's.
        let labels = self.labels_path(&spec.name);
        let dir = self.dir(&spec.name);
        let dir_exists = || fs::symlink_metadata(&dir).is_ok();
        let existing = match self.read_labels(&spec.name)? {
            // A concurrent ensure may have written the labels and the directory since the
            // first read: the labels precede the directory, so read them again after it.
            None if dir_exists() => self.read_labels(&spec.name)?,
            read => read,
        };
        if let Some(existing) = existing {
            check_ours(&spec.name, &existing, &spec.labels)?;
        } else if dir_exists() {
            return Err(VolumeError::foreign(format!(
                "{} exists but berth did not create it (it has no labels in {}); berth never adopts \
                 a directory it did not create: move it away",
                dir.display(),
                labels.display()
            )));
        } else {
            let body = serde_json::to_vec_pretty(&spec.labels).unwrap_or_default();
            let tmp = labels.with_extension(format!("json.{}", unique_suffix()));
            write_synced(&tmp, &body).map_err(|e| io("write", &tmp, e))?;
            // A concurrent ensure may publish first: the rename replaces equal content.
            fs::rename(&tmp, &labels).map_err(|e| io("publish", &labels, e))?;
        }
        let lock = self.lock_path(&spec.name);
        fs::OpenOptions::new().create(true).append(true).mode(0o666).open(&lock).map_err(|e| io("create", &lock, e))?;
        match fs::DirBuilder::new().mode(0o775).create(&dir) {
            Ok(()) => {
                if let Some((uid, gid)) = self.owner {
                    rustix::fs::chown(&dir, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)))
                        .map_err(|e| io("chown", &dir, e.into()))?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create", &dir, e)),
        }
        sync_dir(&self.root).map_err(|e| io("sync", &self.root, e))?;
        sync_dir(&self.root.join(".meta")).map_err(|e| io("sync", &self.root, e))?;
        Ok(())
    }

    fn delete_blocking(&self, name: &VolumeName) -> Result<Removal, VolumeError> {
        let io = |what: &str, path: &Path, e: io::Error| {
            VolumeError::temporary(format!("cannot {what} {}: {e}", path.display()))
        };
        // A missing root (an unmounted disk) must never read as "not found".
        let meta = self.root.join(".meta");
        fs::metadata(&meta).map_err(|e| io("use volume directory", &meta, e))?;
        self.purge_trash();
        let dir = self.dir(name);
        let labels = self.labels_path(name);
        let lock_path = self.lock_path(name);
        match self.read_labels(name)? {
            Some(existing) if is_install(&existing, &self.install) => {}
            Some(_) => {
                // Another installation's (or an unreadable) volume under this name: not ours.
                tracing::warn!(event = "volume_delete_foreign_skipped", volume = %name, path = %dir.display());
                return Ok(Removal::NotFound);
            }
            None => {
                if fs::symlink_metadata(&dir).is_ok() {
                    tracing::warn!(event = "volume_delete_foreign_skipped", volume = %name, path = %dir.display());
                } else {
                    // A delete killed between removing the labels and the lock left the lock.
                    self.remove_stale_lock(name, &lock_path);
                }
                return Ok(Removal::NotFound);
            }
        }
        let lock = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o666)
            .open(&lock_path)
            .map_err(|e| io("open", &lock_path, e))?;
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Ok(Removal::Referenced { by: format!("a process holds {}", lock_path.display()) })
            }
            Err(e) => return Err(io("lock", &lock_path, e.into())),
        }
        if dir.exists() {
            let trash = self.root.join(".trash").join(format!("{name}.{}", unique_suffix()));
            fs::rename(&dir, &trash).map_err(|e| io("move to trash", &dir, e))?;
        }
        match fs::remove_file(&labels) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &labels, e)),
        }
        sync_dir(&self.root).map_err(|e| io("sync", &self.root, e))?;
        sync_dir(&self.root.join(".meta")).map_err(|e| io("sync", &self.root, e))?;
        let _ = fs::remove_file(&lock_path);
        drop(lock);
        self.purge_trash();
        Ok(Removal::Removed)
    }

    /// Removes the lock file of a volume whose labels and directory are both gone, unless a
    /// process holds it or an ensure has published the labels again meanwhile.
    fn remove_stale_lock(&self, name: &VolumeName, lock_path: &Path) {
        let Ok(lock) = fs::File::open(lock_path) else { return };
        if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            return;
        }
        if matches!(self.read_labels(name), Ok(None)) {
            let _ = fs::remove_file(lock_path);
        }
    }

    /// Removes what earlier deletes moved to the trash; failures are retried next time.
    fn purge_trash(&self) {
        let trash = self.root.join(".trash");
        let Ok(entries) = fs::read_dir(&trash) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Err(e) = remove_tree(&path) {
                tracing::warn!(event = "volume_trash_purge_failed", path = %path.display(), error = %e);
            }
        }
    }

    fn list_blocking(&self, selector: &BTreeMap<String, String>) -> Result<Vec<VolumeInfo>, VolumeError> {
        let meta = self.root.join(".meta");
        let entries =
            fs::read_dir(&meta).map_err(|e| VolumeError::temporary(format!("cannot list {}: {e}", meta.display())))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(stem) = file.to_str().and_then(|f| f.strip_suffix(".json")) else { continue };
            let Ok(name) = VolumeName::new(stem) else { continue };
            let Ok(body) = fs::read(entry.path()) else { continue };
            let Ok(labels) = serde_json::from_slice::<BTreeMap<String, String>>(&body) else {
                tracing::warn!(event = "volume_labels_unreadable", path = %entry.path().display());
                continue;
            };
            if selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                out.push(VolumeInfo { name, labels });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[async_trait]
impl Volumes for LocalVolumes {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn ensure(&self, spec: &VolumeSpec) -> Result<(), VolumeError> {
        let this = self.clone();
        let spec = spec.clone();
        blocking(move || this.ensure_blocking(&spec)).await
    }

    async fn delete(&self, name: &VolumeName) -> Result<Removal, VolumeError> {
        let this = self.clone();
        let name = name.clone();
        blocking(move || this.delete_blocking(&name)).await
    }

    async fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<VolumeInfo>, VolumeError> {
        let this = self.clone();
        let selector = selector.clone();
        blocking(move || this.list_blocking(&selector)).await
    }

    async fn health(&self) -> Result<(), VolumeError> {
        let root = self.root.clone();
        blocking(move || {
            let meta = fs::metadata(&root)
                .map_err(|e| VolumeError::temporary(format!("volume root {} is not usable: {e}", root.display())))?;
            if meta.permissions().readonly() {
                return Err(VolumeError::temporary(format!("volume root {} is read-only", root.display())));
            }
            Ok(())
        })
        .await
    }

    fn mount(&self, name: &VolumeName) -> MountSpec {
        MountSpec::Local {
            path: self.dir(name).display().to_string(),
            lock: self.lock_path(name).display().to_string(),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, VolumeError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| VolumeError::temporary(format!("volume task failed: {e}")))?
}

fn write_synced(path: &Path, body: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o644).open(path)?;
    f.write_all(body)?;
    f.sync_all()
}

fn sync_dir(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.sync_all()
}

/// Removes a tree, making read-only directories writable on the way (a sandbox may leave them).
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(path);
            fs::remove_dir_all(path)
        }
    }
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.is_dir() {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
            if let Ok(entries) = fs::read_dir(path) {
                for entry in entries.flatten() {
                    make_writable(&entry.path());
                }
            }
        }
    }
}

fn unique_suffix() -> String {
    let mut buf = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty());
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::{install_selector, volume_labels};
    use berth_core::workspace::{Generation, WorkspaceId};

    fn spec(owner: &str) -> VolumeSpec {
        let owner = WorkspaceId::new(owner).unwrap();
        let name = VolumeName::derive("inst", &owner, Generation(1));
        VolumeSpec {
            labels: volume_labels("inst", &owner, Generation(1), &BTreeMap::new()),
            name,
            size_bytes: 1 << 30,
            storage_class: None,
            access_mode: Default::default(),
        }
    }

    #[tokio::test]
    async fn lifecycle() {
        let tmp = tempfile::tempdir().unwrap();
        let vols = LocalVolumes::new(tmp.path().join("volumes"), "inst", None).unwrap();
        let a = spec("agent:1");
        vols.ensure(&a).await.unwrap();
        vols.ensure(&a).await.unwrap();
        let MountSpec::Local { path, lock } = vols.mount(&a.name) else { panic!("local mount") };
        fs::write(Path::new(&path).join("work.txt"), b"x").unwrap();
        let listed = vols.list(&install_selector("inst")).await.unwrap();
        assert_eq!(listed.iter().map(|v| &v.name).collect::<Vec<_>>(), [&a.name]);
        assert!(vols.list(&install_selector("other")).await.unwrap().is_empty());

        // A held lock means referenced; nothing is removed.
        let held = fs::File::open(&lock).unwrap();
        rustix::fs::flock(&held, FlockOperation::LockShared).unwrap();
        assert!(matches!(vols.delete(&a.name).await.unwrap(), Removal::Referenced { .. }));
        assert!(Path::new(&path).join("work.txt").exists());
        drop(held);

        assert_eq!(vols.delete(&a.name).await.unwrap(), Removal::Removed);
        assert!(!Path::new(&path).exists());
        assert_eq!(vols.delete(&a.name).await.unwrap(), Removal::NotFound);
        assert!(vols.list(&install_selector("inst")).await.unwrap().is_empty());
        assert_eq!(fs::read_dir(tmp.path().join("volumes/.trash")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn delete_killed_before_the_lock_went_removes_the_stale_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let vols = LocalVolumes::new(tmp.path().join("volumes"), "inst", None).unwrap();
        let a = spec("agent:1");
        vols.ensure(&a).await.unwrap();
        // What a SIGKILL between removing the labels and the lock leaves: the lock alone.
        let MountSpec::Local { path, lock } = vols.mount(&a.name) else { panic!("local mount") };
        fs::remove_dir_all(&path).unwrap();
        fs::remove_file(vols.labels_path(&a.name)).unwrap();
        assert!(Path::new(&lock).exists());

        assert_eq!(vols.delete(&a.name).await.unwrap(), Removal::NotFound);
        assert_eq!(fs::read_dir(tmp.path().join("volumes/.meta")).unwrap().count(), 0);
    }
}
