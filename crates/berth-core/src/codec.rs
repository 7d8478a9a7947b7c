//! Blob encoding: zstd when it pays, stored as is when it does not.

use serde::{Deserialize, Serialize};

use crate::chunker::MAX_CHUNK;
use crate::id::ChunkId;
use crate::pack::BlobEntry;
use crate::FormatError;

/// How a blob's bytes are stored in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    /// Stored as is (the content did not compress).
    Raw,
    /// zstd frame.
    Zstd,
}

/// zstd level used for chunk frames (one above zstd's default of 3).
pub const ZSTD_LEVEL: i32 = 4;

/// Reusable zstd contexts: creating one per blob costs more than compressing a small file.
/// One per worker thread.
pub struct Codecs {
    compressor: Option<zstd::bulk::Compressor<'static>>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
}

impl std::fmt::Debug for Codecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Codecs")
    }
}

impl Default for Codecs {
    fn default() -> Self {
        Self::new()
    }
}

impl Codecs {
    /// Creates the contexts (falling back to per-call contexts if zstd cannot allocate them).
    pub fn new() -> Self {
        Self {
            compressor: zstd::bulk::Compressor::new(ZSTD_LEVEL).ok(),
            decompressor: zstd::bulk::Decompressor::new().ok(),
        }
    }

    /// Encodes a chunk or frame: compressed when that makes it smaller, raw otherwise (zstd
    /// stores incompressible blocks inside a frame raw anyway, so decoding stays cheap).
    pub fn encode(&mut self, raw: &[u8]) -> (Codec, Vec<u8>) {
        if raw.len() >= 64 {
            let z = match &mut self.compressor {
                Some(c) => c.compress(raw),
                None => zstd::bulk::compress(raw, ZSTD_LEVEL),
            };
            if let Ok(z) = z {
                if z.len() < raw.len() {
                    return (Codec::Zstd, z);
                }
            }
        }
        (Codec::Raw, raw.to_vec())
    }

    /// Decodes a stored frame, refusing anything larger than `MAX_FRAME` or than it claims.
    pub fn decode_frame(&mut self, codec: Codec, stored: &[u8], frame_raw_len: u32) -> Result<Vec<u8>, FormatError> {
        let what = || format!("frame of {} bytes", stored.len());
        if frame_raw_len > MAX_FRAME {
            return Err(FormatError::new(what(), format!("claims {frame_raw_len} bytes, more than the 16 MiB limit")));
        }
        let raw = match codec {
            Codec::Raw => stored.to_vec(),
            Codec::Zstd => match &mut self.decompressor {
                Some(d) => d.decompress(stored, frame_raw_len as usize),
                None => zstd::bulk::decompress(stored, frame_raw_len as usize),
            }
            .map_err(|e| FormatError::new(what(), format!("zstd: {e}")))?,
        };
        if raw.len() != frame_raw_len as usize {
            return Err(FormatError::new(what(), format!("decodes to {} bytes instead of {frame_raw_len}", raw.len())));
        }
        Ok(raw)
    }

    /// Decodes the frame of `entry` (its stored bytes) and returns the blob, hash checked.
    pub fn decode(&mut self, entry: &BlobEntry, stored: &[u8]) -> Result<Vec<u8>, FormatError> {
        let frame = self.decode_frame(entry.codec, stored, entry.frame_raw_len)?;
        extract(&frame, entry.inner, entry.raw_len, &entry.id).map(<[u8]>::to_vec)
    }
}

/// The last frame decoded, so that blobs sharing a frame decode it once when read in
/// (offset, inner) order.
#[derive(Debug, Default)]
pub struct FrameCache {
    frame: Option<(u32, Vec<u8>)>,
}

impl Codecs {
    /// Returns the blob `entry` describes inside `pack` (the whole pack object), checking that
    /// its frame lies inside the pack, decodes to the size it claims, and that the blob matches
    /// its hash.
    pub fn blob<'a>(
        &mut self,
        cache: &'a mut FrameCache,
        pack: &[u8],
        entry: &BlobEntry,
    ) -> Result<&'a [u8], FormatError> {
        if cache.frame.as_ref().is_none_or(|(offset, _)| *offset != entry.offset) {
            cache.frame = None;
            cache.frame = Some((entry.offset, self.frame(pack, entry)?));
        }
        let frame = cache.frame.as_ref().map(|(_, f)| f.as_slice()).unwrap_or_default();
        extract(frame, entry.inner, entry.raw_len, &entry.id)
    }

    /// Decodes the frame that holds `entry` inside `pack` (the whole pack object), checking
    /// that it lies inside the pack; the blob itself is then `extract`ed from it.
    pub fn frame(&mut self, pack: &[u8], entry: &BlobEntry) -> Result<Vec<u8>, FormatError> {
        let (start, end) = (entry.offset as usize, entry.offset as usize + entry.len as usize);
        let stored = pack.get(start..end).ok_or_else(|| {
            FormatError::new(
                format!("chunk {}", entry.id.short()),
                format!("lies past its end: bytes {start}..{end} of a {}-byte pack", pack.len()),
            )
        })?;
        self.decode_frame(entry.codec, stored, entry.frame_raw_len)
    }
}

/// Largest decoded frame berth accepts.
pub const MAX_FRAME: u32 = MAX_CHUNK;

/// Returns a blob from its decoded frame after checking its bounds and hash.
pub fn extract<'a>(frame: &'a [u8], inner: u32, raw_len: u32, id: &ChunkId) -> Result<&'a [u8], FormatError> {
    let what = || format!("chunk {}", id.short());
    let raw = frame
        .get(inner as usize..inner as usize + raw_len as usize)
        .ok_or_else(|| FormatError::new(what(), "lies outside its frame"))?;
    if ChunkId::of(raw) != *id {
        return Err(FormatError::new(what(), "content does not match its hash"));
    }
    Ok(raw)
}

/// Encodes a chunk with a one-off context (see `Codecs` for the reusable form).
pub fn encode(raw: &[u8]) -> (Codec, Vec<u8>) {
    Codecs::new().encode(raw)
}

/// Decodes a blob stored alone in its frame, with a one-off context, checking length and hash.
pub fn decode(codec: Codec, stored: &[u8], raw_len: u32, id: &ChunkId) -> Result<Vec<u8>, FormatError> {
    Codecs::new().decode(&BlobEntry::single(*id, 0, stored.len() as u32, raw_len, codec), stored)
}

/// Compresses a whole metadata object (manifest, index) into one zstd frame.
pub fn compress_object(bytes: &[u8]) -> Vec<u8> {
    compress_object_with(bytes, |b| zstd::bulk::compress(b, ZSTD_LEVEL))
}

/// `compress_object` with the compressor as a parameter. Should it fail (zstd cannot allocate
/// its context), the bytes are stored in a frame of raw blocks instead, which every zstd
/// decoder (and so `decompress_object`) reads: the object is larger, never unreadable.
fn compress_object_with(bytes: &[u8], compress: impl FnOnce(&[u8]) -> std::io::Result<Vec<u8>>) -> Vec<u8> {
    compress(bytes).unwrap_or_else(|_| raw_frame(bytes))
}

/// Largest block of a zstd frame.
const MAX_BLOCK: usize = 128 * 1024;

/// Wraps `bytes` in a zstd frame of raw (stored) blocks: the frame magic, a header with a
/// 128 KiB window and no content size or checksum, then blocks of at most 128 KiB, the last
/// one flagged (an empty input is one empty last block).
fn raw_frame(bytes: &[u8]) -> Vec<u8> {
    const MAGIC: u32 = 0xFD2F_B528;
    // Frame header descriptor 0: no content size, not single-segment, no checksum, no dictionary.
    // Window descriptor: exponent 7, mantissa 0, so a 2^(10+7) = 128 KiB window.
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / MAX_BLOCK * 3 + 12);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[0x00, 7 << 3]);
    let mut blocks = bytes.chunks(MAX_BLOCK).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0]);
    }
    while let Some(block) = blocks.next() {
        let last = u32::from(blocks.peek().is_none());
        // Block header, 3 bytes little-endian: last flag, type 0 (raw), size.
        let header = last | ((block.len() as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(block);
    }
    out
}

/// Decompresses a metadata object, refusing to grow past `limit` bytes.
pub fn decompress_object(what: &str, bytes: &[u8], limit: usize) -> Result<Vec<u8>, FormatError> {
    use std::io::Read;
    let mut out = Vec::new();
    let decoder = zstd::stream::read::Decoder::new(bytes).map_err(|e| FormatError::new(what, format!("zstd: {e}")))?;
    decoder.take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| FormatError::new(what, format!("zstd: {e}")))?;
    if out.len() > limit {
        return Err(FormatError::new(what, format!("decompresses to more than {limit} bytes")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_raw_fallback() {
        let text = b"hello hello hello hello hello hello hello hello hello hello hello".repeat(10);
        let (codec, stored) = encode(&text);
        assert_eq!(codec, Codec::Zstd);
        assert_eq!(decode(codec, &stored, text.len() as u32, &ChunkId::of(&text)).unwrap(), text);

        let mut x = 0x9e3779b97f4a7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let (codec, stored) = encode(&noise);
        assert_eq!(codec, Codec::Raw);
        assert_eq!(stored, noise);
    }

    #[test]
    fn hostile_blobs_are_rejected() {
        let id = ChunkId::of(b"abc");
        assert!(decode(Codec::Raw, b"abd", 3, &id).is_err());
        assert!(decode(Codec::Zstd, b"not zstd", 3, &id).is_err());
        assert!(decode(Codec::Raw, b"abc", u32::MAX, &id).is_err());
        assert!(decode(Codec::Raw, b"abc", 2, &id).is_err());
        assert!(extract(b"abc", 2, 5, &id).is_err());
        assert!(decompress_object("x", b"garbage", 10).is_err());
        let big = compress_object(&vec![0u8; 1000]);
        assert!(decompress_object("x", &big, 999).is_err());
        assert_eq!(decompress_object("x", &big, 1000).unwrap().len(), 1000);
    }

    #[test]
    fn a_failed_compression_stores_a_frame_every_decoder_reads() {
        let fail = |_: &[u8]| Err(std::io::Error::other("no memory for a context"));
        for len in [0, 1, 64, MAX_BLOCK - 1, MAX_BLOCK, MAX_BLOCK + 1, 3 * MAX_BLOCK + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let stored = compress_object_with(&data, fail);
            assert_eq!(stored, raw_frame(&data), "{len} bytes");
            assert_eq!(decompress_object("x", &stored, len).unwrap(), data, "{len} bytes");
            assert_eq!(zstd::stream::decode_all(stored.as_slice()).unwrap(), data, "{len} bytes, zstd's own decoder");
            if len > 0 {
                assert!(decompress_object("x", &stored, len - 1).is_err(), "the size limit holds for raw frames");
            }
        }
        // A working compressor is used as is.
        assert_eq!(compress_object_with(b"abc", |_| Ok(b"z".to_vec())), b"z");
    }
}
