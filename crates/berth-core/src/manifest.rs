//! The manifest: one snapshot's whole tree (directories, files with their chunk lists, symlinks,
//! hard links), with modes and mtimes. A restore needs nothing else besides the chunks.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::chunker::MAX_CHUNK;
use crate::codec;
use crate::id::{ChunkId, FastHasher, ManifestId, TreeId};
use crate::path::{serde_bytes_vec, RelPath};
use crate::FormatError;

/// Largest decoded manifest berth accepts.
pub const MAX_MANIFEST: usize = 1 << 30;

/// A reference to one chunk of a file, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk.
    pub id: ChunkId,
    /// Its length in bytes.
    pub len: u32,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory (listed even when empty).
    Dir,
    /// A regular file and its content.
    File {
        /// Size in bytes: the sum of its chunk lengths.
        size: u64,
        /// The content, in order.
        chunks: Vec<ChunkRef>,
    },
    /// A symbolic link, stored as the link itself and never followed.
    Symlink {
        /// The link target, as raw bytes.
        #[serde(with = "target_bytes")]
        target: Vec<u8>,
    },
    /// A hard link to a regular file listed earlier in the manifest.
    Hardlink {
        /// The first path of the linked file.
        target: RelPath,
    },
}

mod target_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        super::serde_bytes_vec(d)
    }
}

/// One path in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where it lives, relative to the workspace root.
    pub path: RelPath,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// What it is.
    pub kind: EntryKind,
}

impl Entry {
    /// Returns the file size for files, 0 otherwise.
    pub fn size(&self) -> u64 {
        match &self.kind {
            EntryKind::File { size, .. } => *size,
            _ => 0,
        }
    }
}

/// A snapshot's tree, sorted by path bytes (so every parent precedes its children).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Entries sorted by path, each path once.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// Sorts entries into manifest order.
    pub fn sort(&mut self) {
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
    }

    /// Encodes the manifest as a new object; returns its id and the stored bytes.
    ///
    /// The plain encoding is `nonce (16 bytes) | entries`. The nonce (random per writer run)
    /// makes every published snapshot own its manifest object, so a writer never depends on an
    /// identical object that prune may be deleting. Equal trees are recognised by `tree_id`.
    pub fn encode_with(&self, nonce: [u8; 16]) -> (ManifestId, Vec<u8>) {
        let mut plain = nonce.to_vec();
        // Serializing plain structs into a Vec cannot fail.
        plain.extend(postcard::to_allocvec(self).unwrap_or_default());
        (ManifestId::of(&plain), codec::compress_object(&plain))
    }

    /// Encodes the manifest with a zero nonce (tests and tools that need no uniqueness).
    pub fn encode(&self) -> (ManifestId, Vec<u8>) {
        self.encode_with([0; 16])
    }

    /// Returns the id of the tree: equal for equal entries, whatever object holds them.
    pub fn tree_id(&self) -> TreeId {
        TreeId::of(&postcard::to_allocvec(self).unwrap_or_default())
    }

    /// Decodes stored bytes, checks the id and validates the tree.
    pub fn decode(id: &ManifestId, stored: &[u8]) -> Result<Self, FormatError> {
        let what = format!("manifest {}", id.short());
        let plain = codec::decompress_object(&what, stored, MAX_MANIFEST)?;
        if ManifestId::of(&plain) != *id {
            return Err(FormatError::new(what, "content does not match its id"));
        }
        let Some(plain) = plain.get(16..) else {
            return Err(FormatError::new(what, "shorter than its header"));
        };
        let manifest: Manifest = postcard::from_bytes(plain).map_err(|e| {
            let reason = match e {
                // Custom errors come from validation in deserializers (RelPath); postcard drops their text.
                postcard::Error::SerdeDeCustom => {
                    "an entry is invalid (a path that escapes the root, or a malformed field)".to_string()
                }
                e => e.to_string(),
            };
            FormatError::new(&what, reason)
        })?;
        manifest.validate().map_err(|reason| FormatError::new(what, reason))?;
        Ok(manifest)
    }

    /// Checks the invariants a restore relies on.
    ///
    /// Paths are already validated by `RelPath`; here: strict order, parents are directories
    /// listed earlier, sizes match chunk lists, hard links point to earlier regular files,
    /// symlink targets are sane.
    pub fn validate(&self) -> Result<(), String> {
        let mut dirs: HashSet<&[u8], FastHasher> = HashSet::default();
        let mut prev: Option<&RelPath> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(p) = prev {
                if p >= &e.path {
                    return Err(format!("entries are not sorted or repeat at {}", e.path));
                }
            }
            prev = Some(&e.path);
            if let Some(parent) = e.path.parent_bytes() {
                if !dirs.contains(parent) {
                    return Err(format!("the parent of {} is not a directory of the snapshot", e.path));
                }
            }
            if e.mode > 0o7777 {
                return Err(format!("{} has mode {:o}", e.path, e.mode));
            }
            match &e.kind {
                EntryKind::Dir => {
                    dirs.insert(e.path.as_bytes());
                }
                EntryKind::File { size, chunks } => {
                    let mut sum = 0u64;
                    for c in chunks {
                        if c.len == 0 || c.len > MAX_CHUNK {
                            return Err(format!("{} has a chunk of {} bytes", e.path, c.len));
                        }
                        sum += c.len as u64;
                    }
                    if sum != *size {
                        return Err(format!("{} claims {size} bytes but its chunks hold {sum}", e.path));
                    }
                }
                EntryKind::Symlink { target } => {
                    if target.is_empty() || target.contains(&0) || target.len() > crate::path::MAX_PATH {
                        return Err(format!("{} has an invalid link target", e.path));
                    }
                }
                EntryKind::Hardlink { target } => {
                    // The entries before this one are strictly sorted (checked above).
                    let earlier = &self.entries[..i];
                    let file = earlier.binary_search_by(|x| x.path.cmp(target)).ok().map(|j| &earlier[j].kind);
                    if !matches!(file, Some(EntryKind::File { .. })) {
                        return Err(format!("{} links to {target}, which is not an earlier regular file", e.path));
                    }
                }
            }
        }
        Ok(())
    }

    /// Returns every distinct chunk the manifest references.
    pub fn chunk_ids(&self) -> impl Iterator<Item = &ChunkId> {
        self.entries
            .iter()
            .flat_map(|e| match &e.kind {
                EntryKind::File { chunks, .. } => chunks.as_slice(),
                _ => &[],
            })
            .map(|c| &c.id)
    }

    /// Returns totals over the tree.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for e in &self.entries {
            match &e.kind {
                EntryKind::Dir => t.dirs += 1,
                EntryKind::File { size, .. } => {
                    t.files += 1;
                    t.bytes += size;
                }
                EntryKind::Symlink { .. } => t.symlinks += 1,
                EntryKind::Hardlink { .. } => t.hardlinks += 1,
            }
        }
        t
    }
}

/// Counts over a manifest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Extra names of hard-linked files.
    pub hardlinks: u64,
    /// Bytes in regular files.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry { path: p(path), mode: 0o644, mtime_ns: 0, kind }
    }

    fn file(path: &str, data: &[u8]) -> Entry {
        let chunks = vec![ChunkRef { id: ChunkId::of(data), len: data.len() as u32 }];
        entry(path, EntryKind::File { size: data.len() as u64, chunks })
    }

    #[test]
    fn round_trip() {
        let mut m = Manifest {
            entries: vec![
                entry("d", EntryKind::Dir),
                file("d/a", b"hello"),
                entry("d/l", EntryKind::Symlink { target: b"../x\xff".to_vec() }),
                entry("d/h", EntryKind::Hardlink { target: p("d/a") }),
            ],
        };
        m.sort();
        let (id, stored) = m.encode();
        assert_eq!(Manifest::decode(&id, &stored).unwrap(), m);
        let (id2, _) = m.encode_with([7; 16]);
        assert_ne!(id2, id, "the nonce makes each object unique");
        assert_eq!(Manifest::decode(&id2, &m.encode_with([7; 16]).1).unwrap().tree_id(), m.tree_id());
        assert!(Manifest::decode(&ManifestId::of(b"other"), &stored).is_err());
    }

    fn invalid(entries: Vec<Entry>) -> String {
        Manifest { entries }.validate().unwrap_err()
    }

    #[test]
    fn hostile_trees_are_rejected() {
        assert!(invalid(vec![file("a/b", b"x")]).contains("parent"));
        assert!(invalid(vec![file("a", b"x"), file("a/b", b"x")]).contains("parent"));
        assert!(invalid(vec![file("b", b"x"), file("a", b"x")]).contains("sorted"));
        assert!(invalid(vec![file("a", b"x"), file("a", b"x")]).contains("sorted"));
        let lie = EntryKind::File { size: 1 << 40, chunks: vec![ChunkRef { id: ChunkId::of(b""), len: 1 }] };
        assert!(invalid(vec![entry("a", lie)]).contains("claims"));
        let huge =
            EntryKind::File { size: u32::MAX as u64, chunks: vec![ChunkRef { id: ChunkId::of(b""), len: u32::MAX }] };
        assert!(invalid(vec![entry("a", huge)]).contains("chunk of"));
        assert!(invalid(vec![entry("h", EntryKind::Hardlink { target: p("z") })]).contains("links to"));
        assert!(invalid(vec![entry("l", EntryKind::Symlink { target: vec![] })]).contains("link target"));
        let mut bad_mode = file("a", b"x");
        bad_mode.mode = 0o170000;
        assert!(invalid(vec![bad_mode]).contains("mode"));
    }

    #[test]
    fn hostile_bytes_are_rejected() {
        // A path with `..` smuggled past the encoder is caught by RelPath's deserializer.
        #[derive(Serialize)]
        struct RawEntry {
            path: serde_bytes_wrapper::Bytes,
            mode: u32,
            mtime_ns: i64,
            kind: EntryKind,
        }
        mod serde_bytes_wrapper {
            pub struct Bytes(pub Vec<u8>);
            impl serde::Serialize for Bytes {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_bytes(&self.0)
                }
            }
        }
        #[derive(Serialize)]
        struct RawManifest {
            entries: Vec<RawEntry>,
        }
        for evil in [&b"../escape"[..], b"/etc/passwd", b"a/../../b"] {
            let raw = RawManifest {
                entries: vec![RawEntry {
                    path: serde_bytes_wrapper::Bytes(evil.to_vec()),
                    mode: 0o644,
                    mtime_ns: 0,
                    kind: EntryKind::Dir,
                }],
            };
            let mut plain = vec![0u8; 16];
            plain.extend(postcard::to_allocvec(&raw).unwrap());
            let id = ManifestId::of(&plain);
            let err = Manifest::decode(&id, &codec::compress_object(&plain)).unwrap_err();
            assert!(err.reason.contains("escapes the root"), "{err}");
        }
        assert!(Manifest::decode(&ManifestId::of(b""), b"").is_err());
        assert!(Manifest::decode(&ManifestId::of(b"x"), &[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]).is_err());
    }
}
