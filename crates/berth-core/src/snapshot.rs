//! Snapshot records: the small immutable object that makes a tree a snapshot of a
//! workspace. Writing it is the act that publishes the snapshot.

use serde::{Deserialize, Serialize};

use crate::id::{ChunkId, ManifestId, SnapshotId, TreeId};
use crate::lease::Epoch;
use crate::manifest::Totals;
use crate::time::Timestamp;
use crate::workspace::{Generation, WorkspaceId};
use crate::FormatError;

/// Format version of the records berth writes: the tree is stored as tree objects.
pub const RECORD_VERSION: u32 = 2;
/// Format version of records whose tree is one manifest object (written by berth before tree
/// objects; still read).
pub const RECORD_VERSION_MANIFEST: u32 = 1;

/// Where a snapshot's tree is stored: the record's `manifest` or `root` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contents {
    /// One manifest object holding the whole tree (records of version 1).
    Manifest(ManifestId),
    /// The root tree object (records of version 2): one object per directory, in packs.
    Root(ChunkId),
}
/// Largest snapshot record berth parses.
pub const MAX_RECORD: usize = 1 << 20;

/// The published description of one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Format version.
    pub version: u32,
    /// The workspace it belongs to.
    pub workspace: WorkspaceId,
    /// The workspace generation it belongs to.
    pub generation: Generation,
    /// Position in the workspace's history: one more than the highest seq of the generation
    /// when it was written (records are keyed by it, written create-if-absent).
    pub seq: u64,
    /// The lease epoch of the writer that published it; records written before epochs existed
    /// read as epoch 0. The latest record of a generation is the greatest by (epoch, seq).
    #[serde(default)]
    pub epoch: Epoch,
    /// When it was taken.
    pub time: Timestamp,
    /// Where the tree is stored (`"manifest": id` or `"root": id` in the record).
    #[serde(flatten)]
    pub contents: Contents,
    /// The tree's id: equal trees have equal ids (used to skip publishing an unchanged tree).
    /// For a tree stored as tree objects it is the root object's id.
    pub tree: TreeId,
    /// The snapshot it was taken on top of, if any.
    pub parent: Option<SnapshotId>,
    /// Host that took it.
    pub host: String,
    /// Counts over the tree.
    pub totals: Totals,
    /// Paths left out because of the size budget.
    #[serde(default)]
    pub skipped_for_budget: Vec<String>,
}

impl SnapshotRecord {
    /// The record's place in its generation's order: a higher epoch always supersedes, and
    /// within one epoch the higher seq is newer.
    pub fn order(&self) -> (Epoch, u64) {
        (self.epoch, self.seq)
    }

    /// Encodes the record as JSON; returns the snapshot id and the stored bytes.
    pub fn encode(&self) -> (SnapshotId, Vec<u8>) {
        // Serializing plain structs into a Vec cannot fail.
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        (SnapshotId::of(&bytes), bytes)
    }

    /// Decodes a stored record; its id is the digest of the stored bytes.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<(SnapshotId, Self), FormatError> {
        let what = format!("snapshot record {key}");
        if bytes.len() > MAX_RECORD {
            return Err(FormatError::new(what, "larger than 1 MiB"));
        }
        let record: SnapshotRecord =
            serde_json::from_slice(bytes).map_err(|e| FormatError::new(&what, e.to_string()))?;
        let expected = match record.contents {
            Contents::Manifest(_) => RECORD_VERSION_MANIFEST,
            Contents::Root(_) => RECORD_VERSION,
        };
        if record.version != expected {
            let reason = match record.version {
                RECORD_VERSION_MANIFEST | RECORD_VERSION => "its version does not match how it stores its tree".into(),
                v => format!("format version {v} is not supported by this berth; upgrade berth to read it"),
            };
            return Err(FormatError::new(what, reason));
        }
        Ok((SnapshotId::of(bytes), record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = SnapshotRecord {
            version: RECORD_VERSION,
            workspace: WorkspaceId::new("agent:1").unwrap(),
            generation: Generation(2),
            seq: 7,
            epoch: Epoch(3),
            time: Timestamp(5),
            contents: Contents::Root(ChunkId::of(b"r")),
            tree: TreeId::of(b"t"),
            parent: None,
            host: "h".into(),
            totals: Totals::default(),
            skipped_for_budget: vec![],
        };
        let (id, bytes) = r.encode();
        assert!(String::from_utf8_lossy(&bytes).contains(&format!("\"root\": \"{}\"", ChunkId::of(b"r"))));
        assert_eq!(SnapshotRecord::decode("k", &bytes).unwrap(), (id, r.clone()));
        let old = SnapshotRecord {
            version: RECORD_VERSION_MANIFEST,
            contents: Contents::Manifest(ManifestId::of(b"m")),
            ..r.clone()
        };
        let (_, bytes) = old.encode();
        assert!(String::from_utf8_lossy(&bytes).contains("\"manifest\":"));
        assert_eq!(SnapshotRecord::decode("k", &bytes).unwrap().1, old);
        let mismatched = SnapshotRecord { version: RECORD_VERSION_MANIFEST, ..r.clone() };
        assert!(SnapshotRecord::decode("k", &mismatched.encode().1).unwrap_err().reason.contains("does not match"));
        let future = SnapshotRecord { version: 9, ..r.clone() };
        assert!(SnapshotRecord::decode("k", &future.encode().1).unwrap_err().reason.contains("upgrade"));
        assert!(SnapshotRecord::decode("k", b"{}").is_err());
        assert!(SnapshotRecord::decode("k", b"\xff").is_err());
        // A higher epoch supersedes whatever the seqs say.
        let old = SnapshotRecord { epoch: Epoch(1), seq: 9, ..r.clone() };
        let new = SnapshotRecord { epoch: Epoch(2), seq: 5, ..r };
        assert!(new.order() > old.order());
    }

    /// A record written before epochs existed (no `epoch` field) still decodes, as epoch 0.
    #[test]
    fn record_without_epoch_reads_as_epoch_zero() {
        let (_, record) = SnapshotRecord::decode("k", OLD_FORMAT_RECORD.as_bytes()).unwrap();
        assert_eq!((record.epoch, record.seq, record.host.as_str()), (Epoch::ZERO, 3, "old-host"));
    }

    /// A record as berth wrote it before epochs were added.
    const OLD_FORMAT_RECORD: &str = r#"{
  "version": 1,
  "workspace": "agent:old",
  "generation": 1,
  "seq": 3,
  "time": 1700000000000000000,
  "manifest": "0000000000000000000000000000000000000000000000000000000000000001",
  "tree": "0000000000000000000000000000000000000000000000000000000000000002",
  "parent": null,
  "host": "old-host",
  "totals": {"files": 1, "dirs": 1, "symlinks": 0, "hardlinks": 0, "bytes": 5},
  "skipped_for_budget": []
}"#;
}
