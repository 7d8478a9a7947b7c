//! The local file cache: for each path of a workspace directory, the metadata it had when it
//! was last read or restored and the chunks it held then. A file whose size, mtime, ctime and
//! inode still match is not read again.
//!
//! The cache lives outside the snapshotted directory and is only an optimisation: a missing
//! or unreadable cache makes the next snapshot read every file, nothing worse. Chunks it names
//! are reused only while the store's index still holds them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_core::manifest::ChunkRef;
use berth_core::workspace::{Generation, WorkspaceId};
use serde::{Deserialize, Serialize};

use berth_core::sync::FileStat;

const VERSION: u32 = 1;

/// What the cache remembers of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFile {
    /// The metadata when the chunks were computed.
    pub stat: FileStat,
    /// The content.
    pub chunks: Vec<ChunkRef>,
}

/// The cache of one (store, workspace, generation, directory).
#[derive(Debug, Serialize, Deserialize)]
pub struct FileCache {
    version: u32,
    /// Cached files by path bytes.
    pub files: HashMap<Vec<u8>, CachedFile>,
}

impl Default for FileCache {
    fn default() -> Self {
        Self::new()
    }
}

impl FileCache {
    /// Creates an empty cache.
    pub fn new() -> Self {
        Self { version: VERSION, files: HashMap::new() }
    }

    /// Returns the cached chunks of `path` when its metadata still matches.
    pub fn lookup(&self, path: &[u8], stat: &FileStat) -> Option<&[ChunkRef]> {
        self.files.get(path).filter(|c| c.stat == *stat).map(|c| c.chunks.as_slice())
    }

    /// Loads a cache file; anything unreadable yields an empty cache.
    pub fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|b| postcard::from_bytes::<FileCache>(&b).ok())
            .filter(|c| c.version == VERSION)
            .unwrap_or_default()
    }

    /// Saves the cache atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = postcard::to_allocvec(self).map_err(std::io::Error::other)?;
        crate::snapshot_store::write_atomic(path, &bytes)
    }
}

/// Returns the default cache directory: `$XDG_CACHE_HOME/berth`, else `~/.cache/berth`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("berth"))
}

/// Returns where the cache of a (store, workspace, generation, directory) lives.
pub fn path(cache_dir: &Path, store_url: &str, ws: &WorkspaceId, generation: Generation, dir: &Path) -> PathBuf {
    let mut h = blake3::Hasher::new();
    for part in [
        store_url.as_bytes(),
        ws.as_str().as_bytes(),
        generation.to_string().as_bytes(),
        dir.as_os_str().as_encoded_bytes(),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    cache_dir.join("files").join(format!("{}.cache", &h.finalize().to_hex()[..32]))
}
