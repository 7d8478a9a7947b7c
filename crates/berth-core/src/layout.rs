//! Where each kind of object lives in the store.
//!
//! ```text
//! config                               store format and chunker parameters
//! packs/<2 hex>/<pack id>              blobs (chunks, or tree objects) + trailer (immutable)
//! index/<index id>                     which pack holds which chunk or tree object (immutable)
//! manifests/<manifest id>              one whole tree per snapshot (records of version 1: read,
//!                                      no longer written)
//! snapshots/<workspace>/<gen>/<seq>    snapshot records, each naming its writer's epoch; the
//!                                      latest is the greatest by (epoch, seq)
//! prune/marks/<mark id>                objects found unreferenced, deleted after a grace period
//! prune/lock                           held by the running prune
//! prune/lock-beats/<nonce>/<seq>       its heartbeats (the newest one is kept)
//! prune/lock-breaks/<nonce>            the claim of one takeover of a stale lock
//! ```

use crate::id::{IndexId, ManifestId, MarkId, PackId};
use crate::workspace::{Generation, WorkspaceId};

/// The store's configuration object.
pub const CONFIG: &str = "config";
/// Prefix of pack objects.
pub const PACKS: &str = "packs/";
/// Prefix of index objects.
pub const INDEX: &str = "index/";
/// Prefix of manifests.
pub const MANIFESTS: &str = "manifests/";
/// Prefix of snapshot records.
pub const SNAPSHOTS: &str = "snapshots/";
/// Prefix of prune marks.
pub const MARKS: &str = "prune/marks/";
/// The lock a prune run holds, so that two prunes never interleave their deletions.
pub const PRUNE_LOCK: &str = "prune/lock";
/// Prefix of the prune lock's heartbeats.
pub const PRUNE_LOCK_BEATS: &str = "prune/lock-beats/";
/// Prefix of the claims of takeovers of a stale prune lock.
pub const PRUNE_LOCK_BREAKS: &str = "prune/lock-breaks/";

/// Returns the prefix of the heartbeats of the prune lock's holding `nonce`.
pub fn prune_lock_beats(nonce: &str) -> String {
    format!("{PRUNE_LOCK_BEATS}{nonce}/")
}

/// Returns one heartbeat's key. Zero-padded so that key order is beat order.
pub fn prune_lock_beat(nonce: &str, seq: u64) -> String {
    format!("{}{seq:020}", prune_lock_beats(nonce))
}

/// Returns the key that claims the takeover of the holding `name` of the prune lock.
pub fn prune_lock_break(name: &str) -> String {
    format!("{PRUNE_LOCK_BREAKS}{name}")
}

/// Returns a pack's key.
pub fn pack(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("{PACKS}{}/{hex}", &hex[..2])
}

/// Returns an index object's key.
pub fn index(id: &IndexId) -> String {
    format!("{INDEX}{id}")
}

/// Returns a manifest's key.
pub fn manifest(id: &ManifestId) -> String {
    format!("{MANIFESTS}{id}")
}

/// Returns a prune mark's key.
pub fn mark(id: &MarkId) -> String {
    format!("{MARKS}{id}")
}

/// Returns the prefix of one workspace generation's snapshot records.
pub fn snapshots_of(ws: &WorkspaceId, generation: Generation) -> String {
    format!("{SNAPSHOTS}{ws}/{generation}/")
}

/// Returns a snapshot record's key. Zero-padded so that key order is seq order.
pub fn snapshot(ws: &WorkspaceId, generation: Generation, seq: u64) -> String {
    format!("{}{seq:020}", snapshots_of(ws, generation))
}

/// A snapshot record key, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotKey {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// The generation.
    pub generation: Generation,
    /// The sequence number.
    pub seq: u64,
}

/// Parses a snapshot record key; `None` for anything else.
pub fn parse_snapshot(key: &str) -> Option<SnapshotKey> {
    let rest = key.strip_prefix(SNAPSHOTS)?;
    let mut parts = rest.split('/');
    let workspace = WorkspaceId::new(parts.next()?).ok()?;
    let generation = Generation(parts.next()?.parse().ok()?);
    let seq_text = parts.next()?;
    if parts.next().is_some() || seq_text.len() != 20 {
        return None;
    }
    Some(SnapshotKey { workspace, generation, seq: seq_text.parse().ok()? })
}

/// Parses the id at the end of a `packs/`, `index/`, `manifests/` or `prune/marks/` key.
pub fn parse_id_hex(key: &str) -> Option<&str> {
    let last = key.rsplit('/').next()?;
    (last.len() == 64 && last.bytes().all(|b| b.is_ascii_hexdigit())).then_some(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_keys_round_trip_and_sort() {
        let ws = WorkspaceId::new("agent:7").unwrap();
        let k = snapshot(&ws, Generation(3), 42);
        assert_eq!(k, "snapshots/agent:7/3/00000000000000000042");
        let parsed = parse_snapshot(&k).unwrap();
        assert_eq!((parsed.workspace, parsed.generation, parsed.seq), (ws.clone(), Generation(3), 42));
        assert!(snapshot(&ws, Generation(3), 9) < snapshot(&ws, Generation(3), 10));
        assert_eq!(parse_snapshot("snapshots/a/1/12"), None);
        assert_eq!(parse_snapshot("snapshots/../1/00000000000000000001"), None);
        let p = PackId::of(b"x");
        assert_eq!(parse_id_hex(&pack(&p)), Some(p.to_hex().as_str()));
    }
}
