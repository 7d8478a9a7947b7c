//! `FsStore`: objects as files under a local directory, written durably.
//!
//! A put writes a temporary file, syncs it, then hard-links it to its key: `link` fails when
//! the key exists, which gives create-if-absent without rename. The directory is synced after
//! every link and unlink, so an object acknowledged is an object that survives a power loss.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Deleted, ObjectInfo, Put, Store, StoreError};

const TMP_MARK: &str = ".berth-tmp.";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A store in a local directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    url: String,
}

impl FsStore {
    /// Creates a store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>, url: impl Into<String>) -> Self {
        Self { root: root.into(), url: url.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn err(&self, op: &'static str, key: &str, e: io::Error) -> StoreError {
        // A put below an object (ENOTDIR) is a real failure, not a missing object.
        if e.kind() == io::ErrorKind::NotFound || (op != "put" && is_missing(&e)) {
            return StoreError::NotFound { store: self.url.clone(), key: key.to_string() };
        }
        let temporary =
            matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock);
        let message = e.to_string();
        let (store, key) = (self.url.clone(), key.to_string());
        if temporary {
            StoreError::Temporary { store, op, key, message }
        } else {
            StoreError::Permanent { store, op, key, message }
        }
    }

    fn put_blocking(&self, key: &str, data: &[u8]) -> io::Result<Put> {
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            // Make the new directories durable too.
            let mut d = dir.as_path();
            while let Some(parent) = d.parent() {
                sync_dir(parent)?;
                if d == self.root || parent == self.root {
                    break;
                }
                d = parent;
            }
        }
        if path.exists() {
            return Ok(Put::AlreadyExists);
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{TMP_MARK}{}.{n}.{name}", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_data()?;
            match fs::hard_link(&tmp, &path) {
                Ok(()) => Ok(Put::Created),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Put::AlreadyExists),
                Err(e) => Err(e),
            }
        })();
        let _ = fs::remove_file(&tmp);
        if result.as_ref().is_ok_and(|p| *p == Put::Created) {
            sync_dir(&dir)?;
        }
        result
    }

    fn list_blocking(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let start = self.path(prefix.trim_end_matches('/'));
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == io::ErrorKind::NotADirectory => continue,
                Err(e) => return Err(e),
            };
            for entry in rd {
                let entry = entry?;
                let ft = entry.file_type()?;
                let path = entry.path();
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file() && !entry.file_name().to_string_lossy().starts_with(TMP_MARK) {
                    let Ok(rel) = path.strip_prefix(&self.root) else { continue };
                    let key = rel.to_string_lossy().into_owned();
                    if !key.starts_with(prefix) {
                        continue;
                    }
                    // An object deleted between the directory read and this stat is simply not
                    // in the listing, as with an object store: a concurrent forget or prune
                    // must not fail a list (a create looking for its parent did).
                    match entry.metadata() {
                        Ok(m) => out.push(ObjectInfo { key, size: m.len() }),
                        Err(e) if is_missing(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// Returns whether an error means there is no object under the key: also when a parent of its
/// path is an object (ENOTDIR), which for an object store is just another missing key.
fn is_missing(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    // A panicking closure is a bug in this module; surface it instead of hiding it.
    tokio::task::spawn_blocking(f).await.expect("fs store task panicked")
}

#[async_trait]
impl Store for FsStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<Put, StoreError> {
        let this = self.clone();
        let k = key.to_string();
        blocking(move || this.put_blocking(&k, &data)).await.map_err(|e| self.err("put", key, e))
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key);
        blocking(move || fs::read(path)).await.map(Bytes::from).map_err(|e| self.err("get", key, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let this = self.clone();
        let p = prefix.to_string();
        blocking(move || this.list_blocking(&p)).await.map_err(|e| self.err("list", prefix, e))
    }

    async fn delete(&self, key: &str) -> Result<Deleted, StoreError> {
        let path = self.path(key);
        let result = blocking(move || match fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    sync_dir(dir)?;
                }
                Ok(Deleted::Removed)
            }
            Err(e) if is_missing(&e) => Ok(Deleted::NotFound),
            Err(e) => Err(e),
        })
        .await;
        result.map_err(|e| self.err("delete", key, e))
    }
}
