//! Reading and writing tree objects (see `berth_core::tree`): a snapshot's directories, one
//! object each, packed in packs of their own and found through the index.
//!
//! # Guarantees
//! - Every tree object is checked against its id before it is used, and a tree is validated as
//!   a whole once read (`berth_core::tree::flatten`).
//! - Objects shared by several trees (unchanged directories) are read once per call.
//! - A writer uploads only the tree objects the index does not already hold in a live pack, in
//!   packs written (with the run's nonce) before the index object that names them.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use berth_core::codec::{self, Codecs};
use berth_core::id::{ChunkId, ChunkMap, PackId};
use berth_core::index::{Index, IndexedPack, Location};
use berth_core::layout;
use berth_core::manifest::Manifest;
use berth_core::pack::PackBuilder;
use berth_core::tree::{self, TreeNode, Trees};
use berth_core::FormatError;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::error::Result;
use crate::snapshot_store::write_atomic;
use crate::store::{DynStore, Put};

/// Tree packs fetched at once.
const FETCHES_IN_FLIGHT: usize = 8;

/// Tree objects by id.
pub type Nodes = ChunkMap<TreeNode>;

/// Reads every tree object reachable from `roots`, level by level; each pack is fetched once
/// (from `cache_dir/trees/` when it holds a copy: tree packs are immutable), and each frame is
/// decoded once (a first snapshot's tree is one frame that every level reads from).
pub async fn load(
    objects: &DynStore,
    index: &Index,
    roots: impl IntoIterator<Item = ChunkId>,
    cache_dir: Option<&Path>,
) -> Result<Nodes> {
    let mut loader = Loader::new(objects, index, cache_dir);
    let mut frontier: Vec<ChunkId> = roots.into_iter().collect();
    while !frontier.is_empty() {
        let read = loader.read(&frontier).await?;
        frontier = read.iter().flat_map(|id| loader.nodes[id].children()).copied().collect();
        frontier.sort();
        frontier.dedup();
        frontier.retain(|c| !loader.nodes.contains_key(c));
    }
    Ok(loader.nodes)
}

/// Reads tree objects on demand, keeping what it read: each pack fetched once, each frame
/// decoded once (`load` reads whole trees with it, `diff` only the directories that differ).
pub struct Loader<'a> {
    objects: &'a DynStore,
    index: &'a Index,
    cache: Option<std::path::PathBuf>,
    packs: HashMap<PackId, Bytes>,
    frames: Frames,
    /// Every object read so far.
    pub nodes: Nodes,
}

impl std::fmt::Debug for Loader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("packs", &self.packs.len())
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Loader<'a> {
    /// A loader that finds objects through `index` (and tree packs in `cache_dir/trees/`).
    pub fn new(objects: &'a DynStore, index: &'a Index, cache_dir: Option<&Path>) -> Self {
        let cache = cache_dir.map(|d| d.join("trees"));
        Self { objects, index, cache, packs: HashMap::new(), frames: Frames::default(), nodes: Nodes::default() }
    }

    /// Reads the objects of `ids` not read yet (their packs fetched together); returns those it read.
    pub async fn read(&mut self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let mut wanted: Vec<(ChunkId, Location)> = Vec::with_capacity(ids.len());
        for id in ids.iter().filter(|id| !self.nodes.contains_key(*id)) {
            let loc = self.index.get(id).ok_or_else(|| {
                FormatError::new(format!("tree object {}", id.short()), "is in no index: the store lost it")
            })?;
            wanted.push((*id, *loc));
        }
        wanted.sort_by_key(|(_, l)| (l.pack, l.blob.offset, l.blob.inner));
        wanted.dedup_by_key(|(id, _)| *id);
        let missing: HashSet<PackId> =
            wanted.iter().map(|(_, l)| l.pack).filter(|p| !self.packs.contains_key(p)).collect();
        let fetched: Vec<(PackId, Bytes)> = futures::stream::iter(missing)
            .map(|p| fetch(self.objects, p, self.cache.as_deref()))
            .buffer_unordered(FETCHES_IN_FLIGHT)
            .try_collect()
            .await?;
        self.packs.extend(fetched);
        let mut read = Vec::with_capacity(wanted.len());
        for (id, loc) in wanted {
            // Every wanted pack was fetched above.
            let Some(bytes) = self.packs.get(&loc.pack) else { continue };
            // The blob's hash is checked against its entry's id as it is extracted from its
            // frame; the index files each entry under its own id, which is `id`.
            if loc.blob.id != id {
                return Err(
                    FormatError::new(format!("tree object {}", id.short()), "is indexed under another id").into()
                );
            }
            let node = TreeNode::decode_checked(&id, self.frames.blob(&loc, bytes)?)?;
            self.nodes.insert(id, node);
            read.push(id);
        }
        Ok(read)
    }
}

/// Decoded frames of one `Loader`, kept across levels up to `FRAMES_KEPT` bytes (a hostile index
/// could name many large frames; past the bound they are decoded again when read again).
#[derive(Default)]
struct Frames {
    codecs: Codecs,
    decoded: HashMap<(PackId, u32), Vec<u8>>,
    bytes: usize,
}

/// Most decoded frame bytes one `Loader` keeps.
const FRAMES_KEPT: usize = 256 << 20;

impl Frames {
    /// The blob at `loc` in `pack` (the pack object's bytes), its hash checked.
    fn blob(&mut self, loc: &Location, pack: &[u8]) -> Result<&[u8]> {
        let b = &loc.blob;
        let key = (loc.pack, b.offset);
        if !self.decoded.contains_key(&key) {
            let frame = self.codecs.frame(pack, b)?;
            if self.bytes + frame.len() > FRAMES_KEPT {
                self.decoded.clear();
                self.bytes = 0;
            }
            self.bytes += frame.len();
            self.decoded.insert(key, frame);
        }
        let frame = self.decoded.get(&key).map(Vec::as_slice).unwrap_or_default();
        Ok(codec::extract(frame, b.inner, b.raw_len, &b.id)?)
    }
}

async fn fetch(objects: &DynStore, pack: PackId, cache: Option<&Path>) -> Result<(PackId, Bytes)> {
    let cached = cache.map(|d| d.join(pack.to_hex()));
    if let Some(bytes) = cached.as_deref().and_then(|f| std::fs::read(f).ok()) {
        if PackId::of(&bytes) == pack {
            return Ok((pack, Bytes::from(bytes)));
        }
    }
    let bytes = objects.get(&layout::pack(&pack)).await?;
    if let Some(file) = &cached {
        // The cache is an optimisation: failing to fill it is not an error.
        let _ = file.parent().map(std::fs::create_dir_all);
        let _ = write_atomic(file, &bytes);
    }
    Ok((pack, bytes))
}

/// Reads the tree under `root` and returns it as a validated manifest.
pub async fn manifest(objects: &DynStore, index: &Index, root: &ChunkId, cache_dir: Option<&Path>) -> Result<Manifest> {
    let nodes = load(objects, index, [*root], cache_dir).await?;
    Ok(tree::flatten(root, &nodes)?)
}

/// What writing a tree did.
#[derive(Debug)]
pub struct Written {
    /// The root object.
    pub root: ChunkId,
    /// The packs of new tree objects, for the index.
    pub packs: Vec<IndexedPack>,
    /// Tree objects the store did not have.
    pub objects_new: u64,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
}

/// Uploads, in packs of their own, the tree objects of `trees` that `index` does not hold in a
/// live pack.
pub async fn write(objects: &DynStore, trees: &Trees, index: &Index, nonce: [u8; 16]) -> Result<Written> {
    let new: Vec<&(ChunkId, Vec<u8>)> = trees.objects.iter().filter(|(id, _)| !index.is_reusable(id)).collect();
    let mut out = Written { root: trees.root, packs: Vec::new(), objects_new: new.len() as u64, bytes_uploaded: 0 };
    let mut codecs = Codecs::new();
    let mut builder = PackBuilder::new(nonce);
    let mut sealed = Vec::new();
    for (id, plain) in new {
        builder.add_chunk(&mut codecs, *id, plain);
        if builder.is_full() {
            sealed.push(builder.seal(&mut codecs));
        }
    }
    if !builder.is_empty() {
        sealed.push(builder.seal(&mut codecs));
    }
    for pack in sealed {
        let size = pack.bytes.len() as u64;
        if objects.put_if_absent(&layout::pack(&pack.id), Bytes::from(pack.bytes)).await? == Put::Created {
            out.bytes_uploaded += size;
        }
        out.packs.push(IndexedPack { id: pack.id, size, blobs: pack.entries });
    }
    Ok(out)
}
