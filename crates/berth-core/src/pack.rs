//! Pack objects: frames of blobs, followed by a trailer that lists every blob, so a pack
//! describes itself and the index can be rebuilt or checked from packs alone.
//!
//! Layout: `frame* | header (zstd of postcard (nonce, Vec<BlobEntry>)) | header length (u32 LE) | MAGIC`.
//!
//! A frame is encoded (zstd or raw) as a unit. Chunks share frames of up to `FRAME_TARGET`
//! bytes, so that small files compress with each other's context the way a tar archive does,
//! while each chunk stays addressable by its id. A chunk of `SMALL_CHUNK` bytes or more (only
//! possible with chunker bounds above the default 4 MiB maximum) gets a frame of its own.

use serde::{Deserialize, Serialize};

use crate::codec::{self, Codec, Codecs};
use crate::id::{ChunkId, PackId};
use crate::FormatError;

/// Marks the end of a pack.
pub const MAGIC: &[u8; 8] = b"berthpk1";
/// Packs are sealed once they reach this size: large enough for object storage, small enough
/// to keep a few in memory per worker.
pub const TARGET_SIZE: usize = 8 * 1024 * 1024;
/// Largest pack berth will parse.
pub const MAX_PACK: usize = 256 * 1024 * 1024;
/// Chunks smaller than this share frames (every chunk, with the default chunker bounds).
pub const SMALL_CHUNK: usize = 4 * 1024 * 1024 + 1;
/// A shared frame is encoded once it holds this many bytes.
pub const FRAME_TARGET: usize = 8 * 1024 * 1024;

/// One blob inside a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    /// The chunk's id.
    pub id: ChunkId,
    /// Offset of the blob's frame from the start of the pack.
    pub offset: u32,
    /// Stored length of the frame.
    pub len: u32,
    /// Length of the blob.
    pub raw_len: u32,
    /// How the frame is stored.
    pub codec: Codec,
    /// Length of the frame after decoding.
    pub frame_raw_len: u32,
    /// Offset of the blob inside the decoded frame.
    pub inner: u32,
}

impl BlobEntry {
    /// Describes a blob stored alone in its frame.
    pub fn single(id: ChunkId, offset: u32, len: u32, raw_len: u32, codec: Codec) -> Self {
        BlobEntry { id, offset, len, raw_len, codec, frame_raw_len: raw_len, inner: 0 }
    }
}

/// The trailer's header (written as the tuple `(nonce, blobs)`, which encodes the same).
#[derive(Debug, Deserialize)]
struct Header {
    /// Random per writer run, so that no two runs ever write the same pack (a run never finds
    /// its pack "already there" in a state prune may be about to delete).
    _nonce: [u8; 16],
    blobs: Vec<BlobEntry>,
}

/// Collects blobs until the pack is large enough to seal.
#[derive(Debug, Default)]
pub struct PackBuilder {
    nonce: [u8; 16],
    buf: Vec<u8>,
    entries: Vec<BlobEntry>,
    /// Small chunks waiting to be encoded together: their raw bytes and (id, inner offset, length).
    frame: Vec<u8>,
    framed: Vec<(ChunkId, u32, u32)>,
}

/// A finished pack, ready to upload.
#[derive(Debug)]
pub struct SealedPack {
    /// The pack's id.
    pub id: PackId,
    /// The whole pack.
    pub bytes: Vec<u8>,
    /// The blobs it holds.
    pub entries: Vec<BlobEntry>,
}

impl PackBuilder {
    /// Creates a builder whose packs carry the run's random `nonce`.
    pub fn new(nonce: [u8; 16]) -> Self {
        Self { nonce, ..Self::default() }
    }

    /// Adds an already encoded blob as a frame of its own.
    pub fn add(&mut self, id: ChunkId, codec: Codec, stored: &[u8], raw_len: u32) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(TARGET_SIZE + stored.len());
        }
        self.entries.push(BlobEntry::single(id, self.buf.len() as u32, stored.len() as u32, raw_len, codec));
        self.buf.extend_from_slice(stored);
    }

    /// Adds a chunk: a large one is encoded as its own frame, a small one joins the shared frame.
    pub fn add_chunk(&mut self, codecs: &mut Codecs, id: ChunkId, raw: &[u8]) {
        if raw.len() >= SMALL_CHUNK {
            let (codec, stored) = codecs.encode(raw);
            self.add(id, codec, &stored, raw.len() as u32);
            return;
        }
        self.framed.push((id, self.frame.len() as u32, raw.len() as u32));
        self.frame.extend_from_slice(raw);
        if self.frame.len() >= FRAME_TARGET {
            self.flush_frame(codecs);
        }
    }

    /// Encodes the shared frame and appends it.
    fn flush_frame(&mut self, codecs: &mut Codecs) {
        if self.framed.is_empty() {
            return;
        }
        let (codec, stored) = codecs.encode(&self.frame);
        if self.buf.capacity() == 0 {
            self.buf.reserve(TARGET_SIZE + stored.len());
        }
        let offset = self.buf.len() as u32;
        let frame_raw_len = self.frame.len() as u32;
        for (id, inner, raw_len) in self.framed.drain(..) {
            self.entries.push(BlobEntry { id, offset, len: stored.len() as u32, raw_len, codec, frame_raw_len, inner });
        }
        self.buf.extend_from_slice(&stored);
        self.frame.clear();
    }

    /// Returns the bytes of blob data so far (shared frame counted unencoded).
    pub fn len(&self) -> usize {
        self.buf.len() + self.frame.len()
    }

    /// Returns whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.framed.is_empty()
    }

    /// Returns whether the pack should be sealed.
    pub fn is_full(&self) -> bool {
        self.len() >= TARGET_SIZE
    }

    /// Encodes any pending frame, appends the trailer and returns the finished pack; the
    /// builder is left empty.
    pub fn seal(&mut self, codecs: &mut Codecs) -> SealedPack {
        self.flush_frame(codecs);
        let mut bytes = std::mem::take(&mut self.buf);
        let entries = std::mem::take(&mut self.entries);
        // Serializing plain structs into a Vec cannot fail.
        let header = codec::compress_object(&postcard::to_allocvec(&(self.nonce, &entries)).unwrap_or_default());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(MAGIC);
        SealedPack { id: PackId::of(&bytes), bytes, entries }
    }
}

/// Parses a pack's trailer and checks that every blob lies inside the data region.
pub fn parse(what: &str, bytes: &[u8]) -> Result<Vec<BlobEntry>, FormatError> {
    let fail = |reason: String| Err(FormatError::new(what, reason));
    if bytes.len() > MAX_PACK {
        return fail(format!("{} bytes is larger than any pack berth writes", bytes.len()));
    }
    if bytes.len() < 12 || &bytes[bytes.len() - 8..] != MAGIC {
        return fail("missing pack trailer".into());
    }
    let len_at = bytes.len() - 12;
    let header_len =
        u32::from_le_bytes([bytes[len_at], bytes[len_at + 1], bytes[len_at + 2], bytes[len_at + 3]]) as usize;
    if header_len > len_at {
        return fail(format!("header length {header_len} exceeds the pack"));
    }
    let data_end = len_at - header_len;
    let header = codec::decompress_object(what, &bytes[data_end..len_at], MAX_PACK)?;
    let entries: Vec<BlobEntry> = match postcard::from_bytes::<Header>(&header) {
        Ok(h) => h.blobs,
        Err(e) => return fail(format!("header: {e}")),
    };
    for e in &entries {
        if e.offset as usize + e.len as usize > data_end {
            return fail(format!("blob {} lies outside the pack data", e.id.short()));
        }
        if e.inner as u64 + e.raw_len as u64 > e.frame_raw_len as u64 {
            return fail(format!("blob {} lies outside its frame", e.id.short()));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_parse() {
        let mut codecs = Codecs::new();
        let mut b = PackBuilder::default();
        let mut chunks = Vec::new();
        // Small chunks share frames; a large one gets its own; one more is added pre-encoded.
        for i in 0..10u8 {
            let raw = vec![i; 100 + i as usize];
            b.add_chunk(&mut codecs, ChunkId::of(&raw), &raw);
            chunks.push(raw);
        }
        let large: Vec<u8> = (0..SMALL_CHUNK as u32 + 10).map(|i| (i % 251) as u8).collect();
        b.add_chunk(&mut codecs, ChunkId::of(&large), &large);
        chunks.push(large);
        let sealed = b.seal(&mut codecs);
        assert!(b.is_empty());
        assert_eq!(PackId::of(&sealed.bytes), sealed.id);
        let entries = parse("pack", &sealed.bytes).unwrap();
        assert_eq!(entries, sealed.entries);
        assert_eq!(entries.iter().filter(|e| e.inner > 0).count(), 9, "small chunks share a frame");
        for raw in &chunks {
            let e = entries.iter().find(|e| e.id == ChunkId::of(raw)).unwrap();
            let stored = &sealed.bytes[e.offset as usize..(e.offset + e.len) as usize];
            assert_eq!(&codecs.decode(e, stored).unwrap(), raw);
        }
    }

    #[test]
    fn hostile_packs_are_rejected() {
        assert!(parse("p", b"").is_err());
        assert!(parse("p", b"random bytes here").is_err());
        let mut bogus = vec![0u8; 4];
        bogus.extend_from_slice(&u32::MAX.to_le_bytes());
        bogus.extend_from_slice(MAGIC);
        assert!(parse("p", &bogus).is_err());
        // A header that points a blob past the data.
        let entries = vec![BlobEntry::single(ChunkId::of(b""), 0, 1000, 0, Codec::Raw)];
        let header = codec::compress_object(&postcard::to_allocvec(&([0u8; 16], &entries)).unwrap());
        let mut p = header.clone();
        p.extend_from_slice(&(header.len() as u32).to_le_bytes());
        p.extend_from_slice(MAGIC);
        assert!(parse("p", &p).is_err());
    }
}
