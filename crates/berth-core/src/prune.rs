//! Prune planning: which unreferenced objects to mark, and which marked objects to delete.
//!
//! Deletion is two-phase. A run marks what no snapshot references; a later run, once the
//! grace period has passed since the mark, deletes what is *still* unreferenced.
//!
//! # Guarantees
//! - An object referenced by any snapshot visible to the planning run is never deleted.
//! - A writer's fresh packs, written before its snapshot is published, are at worst marked:
//!   they are deleted only if still unreferenced a grace period later.
//!
//! # Assumptions
//! - Writers never deduplicate against packs named in a mark (see `Index`), and a snapshot
//!   takes less than the grace period from loading the index to publishing.

use std::collections::HashSet;

use serde::Serialize;

use crate::id::{ChunkId, ManifestId, MarkId, PackId};
use crate::mark::Mark;
use crate::time::Timestamp;

/// A pack object found in the store.
#[derive(Clone, Debug)]
pub struct PackObject {
    /// Its id.
    pub id: PackId,
    /// Its size in bytes.
    pub size: u64,
    /// Its chunks and their stored sizes, as the index says; `None` when no index lists it.
    pub chunks: Option<Vec<(ChunkId, u32)>>,
}

/// Everything the planner looks at.
#[derive(Clone, Debug, Default)]
pub struct PruneInput {
    /// Chunks referenced by any snapshot's manifest.
    pub referenced_chunks: HashSet<ChunkId>,
    /// Manifests referenced by any snapshot record.
    pub referenced_manifests: HashSet<ManifestId>,
    /// Pack objects in the store.
    pub packs: Vec<PackObject>,
    /// Manifest objects in the store.
    pub manifests: Vec<ManifestId>,
    /// Existing marks.
    pub marks: Vec<(MarkId, Mark)>,
}

/// What a prune run will do, in order: write `new_mark`; when `delete_packs` is not empty,
/// write a new index without them and delete the old index objects; delete packs and
/// manifests; delete the retired marks.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PrunePlan {
    /// Packs to delete now.
    pub delete_packs: Vec<PackId>,
    /// Bytes those packs hold.
    pub delete_pack_bytes: u64,
    /// Manifests to delete now.
    pub delete_manifests: Vec<ManifestId>,
    /// Marks whose grace period has passed; removed after the deletions.
    pub retire_marks: Vec<MarkId>,
    /// A new mark for unreferenced objects not marked yet.
    pub new_mark: Option<Mark>,
    /// Objects marked earlier and still inside their grace period.
    pub waiting: usize,
    /// Packs in the store.
    pub packs_total: usize,
    /// Packs with both referenced and unreferenced chunks (kept whole; not repacked).
    pub packs_partly_used: usize,
    /// Unreferenced bytes inside partly used packs.
    pub partly_used_waste_bytes: u64,
}

impl PrunePlan {
    /// Returns whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.delete_packs.is_empty()
            && self.delete_manifests.is_empty()
            && self.retire_marks.is_empty()
            && self.new_mark.is_none()
    }
}

/// Plans a prune run at `now` with the given grace period.
pub fn plan(input: &PruneInput, now: Timestamp, grace_secs: i64) -> PrunePlan {
    let mut plan = PrunePlan { packs_total: input.packs.len(), ..PrunePlan::default() };
    let mut unref_packs: HashSet<PackId> = HashSet::new();
    for p in &input.packs {
        match &p.chunks {
            None => {
                unref_packs.insert(p.id);
            }
            Some(chunks) => {
                let used = chunks.iter().filter(|(c, _)| input.referenced_chunks.contains(c)).count();
                if used == 0 {
                    unref_packs.insert(p.id);
                } else if used < chunks.len() {
                    plan.packs_partly_used += 1;
                    plan.partly_used_waste_bytes += chunks
                        .iter()
                        .filter(|(c, _)| !input.referenced_chunks.contains(c))
                        .map(|(_, n)| *n as u64)
                        .sum::<u64>();
                }
            }
        }
    }
    let unref_manifests: HashSet<ManifestId> =
        input.manifests.iter().filter(|m| !input.referenced_manifests.contains(m)).copied().collect();

    let cutoff = now.plus_secs(-grace_secs);
    let mut marked_packs: HashSet<PackId> = HashSet::new();
    let mut marked_manifests: HashSet<ManifestId> = HashSet::new();
    let mut delete_packs: HashSet<PackId> = HashSet::new();
    let mut delete_manifests: HashSet<ManifestId> = HashSet::new();
    for (id, mark) in &input.marks {
        marked_packs.extend(mark.packs.iter().copied());
        marked_manifests.extend(mark.manifests.iter().copied());
        if mark.time <= cutoff {
            plan.retire_marks.push(*id);
            delete_packs.extend(mark.packs.iter().filter(|p| unref_packs.contains(p)));
            delete_manifests.extend(mark.manifests.iter().filter(|m| unref_manifests.contains(m)));
        } else {
            plan.waiting += mark.packs.iter().filter(|p| unref_packs.contains(p)).count()
                + mark.manifests.iter().filter(|m| unref_manifests.contains(m)).count();
        }
    }
    let mut new_packs: Vec<PackId> = unref_packs.iter().filter(|p| !marked_packs.contains(p)).copied().collect();
    let mut new_manifests: Vec<ManifestId> =
        unref_manifests.iter().filter(|m| !marked_manifests.contains(m)).copied().collect();
    new_packs.sort();
    new_manifests.sort();
    if !new_packs.is_empty() || !new_manifests.is_empty() {
        plan.new_mark = Some(Mark { time: now, packs: new_packs, manifests: new_manifests });
    }
    plan.delete_packs = delete_packs.into_iter().collect();
    plan.delete_packs.sort();
    plan.delete_pack_bytes =
        input.packs.iter().filter(|p| plan.delete_packs.binary_search(&p.id).is_ok()).map(|p| p.size).sum();
    plan.delete_manifests = delete_manifests.into_iter().collect();
    plan.delete_manifests.sort();
    plan.retire_marks.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn c(n: u8) -> ChunkId {
        ChunkId::of(&[n])
    }

    fn pack(n: u8, chunks: Option<&[u8]>) -> PackObject {
        PackObject {
            id: PackId::of(&[n]),
            size: 100,
            chunks: chunks.map(|cs| cs.iter().map(|x| (c(*x), 10)).collect()),
        }
    }

    #[test]
    fn two_phases_with_grace() {
        let mut input = PruneInput {
            referenced_chunks: [c(1), c(2)].into(),
            packs: vec![pack(1, Some(&[1, 2])), pack(2, Some(&[3])), pack(3, None), pack(4, Some(&[2, 4]))],
            ..PruneInput::default()
        };
        // Phase 1: mark, delete nothing.
        let p1 = plan(&input, Timestamp(1000 * S), 3600);
        assert!(p1.delete_packs.is_empty());
        let mark = p1.new_mark.clone().unwrap();
        assert_eq!(mark.packs.len(), 2);
        assert_eq!((p1.packs_partly_used, p1.partly_used_waste_bytes), (1, 10));
        input.marks.push((MarkId::of(b"m"), mark));

        // Inside the grace period: nothing happens, the marked objects wait.
        let p2 = plan(&input, Timestamp(2000 * S), 3600);
        assert!(p2.is_empty());
        assert_eq!(p2.waiting, 2);

        // Pack 3 (a writer's fresh pack) became referenced meanwhile: only pack 2 goes.
        input.packs[2] = pack(3, Some(&[5]));
        input.referenced_chunks.insert(c(5));
        let p3 = plan(&input, Timestamp(5000 * S), 3600);
        assert_eq!(p3.delete_packs, vec![PackId::of(&[2])]);
        assert_eq!(p3.retire_marks, vec![MarkId::of(b"m")]);
        assert!(p3.new_mark.is_none());
    }
}
