//! Index objects (which pack holds which chunk) and the in-memory index built from them.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::id::{ChunkId, ChunkMap, IndexId, PackId};
use crate::pack::BlobEntry;
use crate::FormatError;

/// Largest decoded index object berth accepts.
pub const MAX_INDEX: usize = 1 << 30;

/// One pack as listed in an index object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedPack {
    /// The pack's id.
    pub id: PackId,
    /// The pack's size in bytes.
    pub size: u64,
    /// The blobs it holds.
    pub blobs: Vec<BlobEntry>,
}

/// The content of one index object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    /// Packs this object describes.
    pub packs: Vec<IndexedPack>,
}

impl IndexFile {
    /// Encodes the object; returns its id and stored bytes.
    pub fn encode(&self) -> (IndexId, Vec<u8>) {
        // Serializing plain structs into a Vec cannot fail.
        let plain = postcard::to_allocvec(self).unwrap_or_default();
        let stored = codec::compress_object(&plain);
        (IndexId::of(&stored), stored)
    }

    /// Decodes a stored index object and checks it against its id.
    pub fn decode(id: &IndexId, stored: &[u8]) -> Result<Self, FormatError> {
        let what = format!("index {}", id.short());
        if IndexId::of(stored) != *id {
            return Err(FormatError::new(what, "content does not match its id"));
        }
        let plain = codec::decompress_object(&what, stored, MAX_INDEX)?;
        postcard::from_bytes(&plain).map_err(|e| FormatError::new(what, e.to_string()))
    }
}

/// Where a chunk's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The pack.
    pub pack: PackId,
    /// The blob's entry in the pack (frame position, codec, position inside the frame).
    pub blob: BlobEntry,
}

/// What the store holds, as far as its index objects say.
///
/// Packs named in a prune mark are "doomed": their chunks may still be read (a snapshot
/// published just after the mark may reference them), but a writer never deduplicates
/// against them, so nothing new comes to depend on a pack that prune may delete.
#[derive(Debug, Default)]
pub struct Index {
    chunks: ChunkMap<Location>,
    packs: HashMap<PackId, u64>,
    doomed: HashSet<PackId>,
}

impl Index {
    /// Creates an index that treats `doomed` packs as unusable for deduplication.
    pub fn new(doomed: HashSet<PackId>) -> Self {
        Self { doomed, ..Self::default() }
    }

    /// Makes room for `blobs` more locations at once (an index load knows how many it adds).
    pub fn reserve(&mut self, blobs: usize) {
        self.chunks.reserve(blobs);
    }

    /// Adds every pack of an index object; a location in a live pack wins over a doomed one.
    pub fn add(&mut self, file: &IndexFile) {
        for pack in &file.packs {
            self.add_pack(pack.id, pack.size, &pack.blobs);
        }
    }

    /// Adds one pack's blobs.
    pub fn add_pack(&mut self, pack: PackId, size: u64, blobs: &[BlobEntry]) {
        self.packs.insert(pack, size);
        let live = !self.doomed.contains(&pack);
        for b in blobs {
            let loc = Location { pack, blob: *b };
            match self.chunks.entry(b.id) {
                Entry::Occupied(old) if !live || !self.doomed.contains(&old.get().pack) => {}
                Entry::Occupied(mut old) => {
                    old.insert(loc);
                }
                Entry::Vacant(slot) => {
                    slot.insert(loc);
                }
            }
        }
    }

    /// Returns where a chunk can be read, doomed packs included.
    pub fn get(&self, id: &ChunkId) -> Option<&Location> {
        self.chunks.get(id)
    }

    /// Returns whether a writer may reference the chunk without uploading it again.
    pub fn is_reusable(&self, id: &ChunkId) -> bool {
        self.chunks.get(id).is_some_and(|l| !self.doomed.contains(&l.pack))
    }

    /// Returns every indexed pack with its size.
    pub fn packs(&self) -> &HashMap<PackId, u64> {
        &self.packs
    }

    /// Returns the number of distinct chunks.
    pub fn n_chunks(&self) -> usize {
        self.chunks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;

    fn blob(id: ChunkId) -> BlobEntry {
        BlobEntry::single(id, 0, 1, 1, Codec::Raw)
    }

    #[test]
    fn encode_decode_and_doomed_packs() {
        let c = ChunkId::of(b"c");
        let (p1, p2) = (PackId::of(b"1"), PackId::of(b"2"));
        let file = IndexFile { packs: vec![IndexedPack { id: p1, size: 10, blobs: vec![blob(c)] }] };
        let (id, stored) = file.encode();
        assert_eq!(IndexFile::decode(&id, &stored).unwrap(), file);
        assert!(IndexFile::decode(&IndexId::of(b"x"), &stored).is_err());

        let mut index = Index::new([p1].into());
        index.add(&file);
        assert!(index.get(&c).is_some());
        assert!(!index.is_reusable(&c));
        index.add_pack(p2, 10, &[blob(c)]);
        assert!(index.is_reusable(&c));
        assert_eq!(index.get(&c).unwrap().pack, p2);
    }
}
