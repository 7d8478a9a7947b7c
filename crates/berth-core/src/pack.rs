//! Pack objects: many blobs concatenated, followed by a trailer that lists them, so a pack
//! describes itself and the index can be rebuilt or checked from packs alone.
//!
//! Layout: `blob* | header (postcard Vec<BlobEntry>) | header length (u32 LE) | MAGIC`.

use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::id::{ChunkId, PackId};
use crate::FormatError;

/// Marks the end of a pack.
pub const MAGIC: &[u8; 8] = b"berthpk1";
/// Packs are sealed once they reach this size: large enough for object storage, small enough
/// to keep a few in memory per worker.
pub const TARGET_SIZE: usize = 8 * 1024 * 1024;
/// Largest pack berth will parse.
pub const MAX_PACK: usize = 256 * 1024 * 1024;

/// One blob inside a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    /// The chunk's id.
    pub id: ChunkId,
    /// Offset of the stored bytes from the start of the pack.
    pub offset: u32,
    /// Length of the stored bytes.
    pub len: u32,
    /// Length after decoding.
    pub raw_len: u32,
    /// How the bytes are stored.
    pub codec: Codec,
}

/// Collects blobs until the pack is large enough to seal.
#[derive(Debug, Default)]
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<BlobEntry>,
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
    /// Adds an encoded blob.
    pub fn add(&mut self, id: ChunkId, codec: Codec, stored: &[u8], raw_len: u32) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(TARGET_SIZE + stored.len());
        }
        self.entries.push(BlobEntry { id, offset: self.buf.len() as u32, len: stored.len() as u32, raw_len, codec });
        self.buf.extend_from_slice(stored);
    }

    /// Returns the bytes of blob data so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Returns whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns whether the pack should be sealed.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= TARGET_SIZE
    }

    /// Appends the trailer and returns the finished pack; the builder is left empty.
    pub fn seal(&mut self) -> SealedPack {
        let mut bytes = std::mem::take(&mut self.buf);
        let entries = std::mem::take(&mut self.entries);
        // Serializing plain structs into a Vec cannot fail.
        let header = postcard::to_allocvec(&entries).unwrap_or_default();
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
    let entries: Vec<BlobEntry> = match postcard::from_bytes(&bytes[data_end..len_at]) {
        Ok(e) => e,
        Err(e) => return fail(format!("header: {e}")),
    };
    for e in &entries {
        if e.offset as usize + e.len as usize > data_end {
            return fail(format!("blob {} lies outside the pack data", e.id.short()));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn seal_then_parse() {
        let mut b = PackBuilder::default();
        let mut chunks = Vec::new();
        for i in 0..10u8 {
            let raw = vec![i; 100 + i as usize];
            let (c, stored) = codec::encode(&raw);
            b.add(ChunkId::of(&raw), c, &stored, raw.len() as u32);
            chunks.push(raw);
        }
        let sealed = b.seal();
        assert!(b.is_empty());
        assert_eq!(PackId::of(&sealed.bytes), sealed.id);
        let entries = parse("pack", &sealed.bytes).unwrap();
        assert_eq!(entries, sealed.entries);
        for (e, raw) in entries.iter().zip(&chunks) {
            let stored = &sealed.bytes[e.offset as usize..(e.offset + e.len) as usize];
            assert_eq!(&codec::decode(e.codec, stored, e.raw_len, &e.id).unwrap(), raw);
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
        let entries = vec![BlobEntry { id: ChunkId::of(b""), offset: 0, len: 1000, raw_len: 0, codec: Codec::Raw }];
        let header = postcard::to_allocvec(&entries).unwrap();
        let mut p = header.clone();
        p.extend_from_slice(&(header.len() as u32).to_le_bytes());
        p.extend_from_slice(MAGIC);
        assert!(parse("p", &p).is_err());
    }
}
