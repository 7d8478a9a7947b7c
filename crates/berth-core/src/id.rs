//! Typed, content-derived ids (BLAKE3 digests) for chunks, packs, index files, manifests,
//! snapshots and prune marks.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// An id string that is not 64 hex digits.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not an id (64 hex digits)")]
pub struct IdError(pub String);

/// The hasher of maps and sets keyed by ids or paths that hold a whole tree or index: seeded per
/// process like the standard one, several times faster on 32-byte ids and short paths (the
/// standard SipHash was most of an index load and of a tree's validation).
pub type FastHasher = foldhash::fast::RandomState;

/// A map keyed by chunk ids, with `FastHasher`.
pub type ChunkMap<V> = std::collections::HashMap<ChunkId, V, FastHasher>;

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Returns the id of `bytes`: their BLAKE3 digest.
            pub fn of(bytes: &[u8]) -> Self {
                Self(*blake3::hash(bytes).as_bytes())
            }

            /// Returns the full lowercase hex form.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Returns the first 12 hex digits, for display.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }

            /// Parses the full hex form.
            pub fn from_hex(s: &str) -> Result<Self, IdError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| IdError(s.to_string()))?;
                Ok(Self(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    Self::from_hex(&s).map_err(de::Error::custom)
                } else {
                    <[u8; 32]>::deserialize(d).map(Self)
                }
            }
        }
    };
}

hash_id!(
    /// The id of a chunk: the BLAKE3 digest of its uncompressed bytes.
    ChunkId
);
hash_id!(
    /// The id of a pack object: the digest of the whole pack.
    PackId
);
hash_id!(
    /// The id of an index object: the digest of its stored bytes.
    IndexId
);
hash_id!(
    /// The id of a manifest: the digest of its uncompressed encoding.
    ManifestId
);
hash_id!(
    /// The id of a snapshot: the digest of its stored record.
    SnapshotId
);
hash_id!(
    /// The id of a tree: the digest of a manifest's entries alone, equal for equal trees.
    TreeId
);
hash_id!(
    /// The id of a prune mark: the digest of its stored bytes.
    MarkId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_json_form() {
        let id = ChunkId::of(b"hello");
        assert_eq!(ChunkId::from_hex(&id.to_hex()).unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.to_hex()));
        let bin = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bin.len(), 32);
        assert_eq!(postcard::from_bytes::<ChunkId>(&bin).unwrap(), id);
        assert!(ChunkId::from_hex("xyz").is_err());
    }
}
