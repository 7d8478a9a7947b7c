//! Maintenance over a whole store: verify, diff, forget (retention) and prune (two-phase
//! garbage collection). Each destructive operation computes a plan first and can stop there.

use std::collections::{HashMap, HashSet};

use berth_core::diff::{self, Change};
use berth_core::id::{ChunkId, IndexId, ManifestId, PackId, SnapshotId};
use berth_core::index::{Index, IndexFile, IndexedPack, Location};
use berth_core::layout;
use berth_core::manifest::Manifest;
use berth_core::prune::{self, PackObject, PruneInput, PrunePlan};
use berth_core::retention::{self, Candidate, Decision, Policy};
use berth_core::snapshot::Contents;
use berth_core::tree;
use berth_core::workspace::{Generation, WorkspaceId};
use berth_core::{codec, pack};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::create::now;
use crate::error::{EngineError, Result};
use crate::prune_lock::PruneLock;
use crate::snapshot_store::{Snapshot, SnapshotStore};
use crate::store::Deleted;
use crate::trees;

const CONCURRENCY: usize = 8;

/// The outcome of a verification.
#[derive(Debug, Default, Clone, Serialize)]
pub struct VerifyReport {
    /// Snapshots checked.
    pub snapshots: u64,
    /// Distinct chunks they reference.
    pub chunks: u64,
    /// Packs holding those chunks.
    pub packs: u64,
    /// Packs whose every blob was read, decoded and hashed (`--read-data`).
    pub packs_read: u64,
    /// Everything found wrong; empty means the snapshots restore.
    pub errors: Vec<String>,
}

/// Checks that every object the selected snapshots need exists (and, with `read_data`, that
/// every chunk decodes to its hash).
pub async fn verify(store: &SnapshotStore, snapshots: &[Snapshot], read_data: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport { snapshots: snapshots.len() as u64, ..VerifyReport::default() };
    let loaded = store.load_index(None).await?;
    let listed: HashMap<String, u64> =
        store.objects().list(layout::PACKS).await?.into_iter().map(|o| (o.key, o.size)).collect();
    let (tree_objects, manifests) = read_trees(store, &loaded.index, snapshots).await;
    // Tree objects are blobs in packs like chunks: their packs are checked the same way.
    let mut needed: HashSet<ChunkId> = tree_objects;
    for (s, manifest) in manifests {
        match manifest {
            Ok(m) => needed.extend(m.chunk_ids().copied()),
            Err(e) => report.errors.push(format!("snapshot {} (seq {}): {e}", s.id.short(), s.record.seq)),
        }
    }
    report.chunks = needed.len() as u64;
    let mut packs: HashMap<PackId, Vec<ChunkId>> = HashMap::new();
    for c in &needed {
        match loaded.index.get(c) {
            Some(loc) => packs.entry(loc.pack).or_default().push(*c),
            None => report.errors.push(format!("chunk {} is in no index", c.short())),
        }
    }
    report.packs = packs.len() as u64;
    for (p, size) in loaded.index.packs() {
        if !packs.contains_key(p) {
            continue;
        }
        match listed.get(&layout::pack(p)) {
            None => report.errors.push(format!("pack {} is missing from the store", p.short())),
            Some(s) if s != size => {
                report.errors.push(format!("pack {} has {s} bytes, the index says {size}", p.short()))
            }
            Some(_) => {}
        }
    }
    if read_data {
        let objects = store.objects().clone();
        let index = &loaded.index;
        let results: Vec<Vec<String>> = futures::stream::iter(packs.keys().copied().collect::<Vec<_>>())
            .map(|p| {
                let objects = objects.clone();
                let locations: Vec<(ChunkId, Location)> =
                    packs[&p].iter().filter_map(|c| index.get(c).map(|l| (*c, *l))).collect();
                async move {
                    let bytes = match objects.get(&layout::pack(&p)).await {
                        Ok(b) => b,
                        Err(e) => return vec![e.to_string()],
                    };
                    tokio::task::spawn_blocking(move || {
                        let mut errors = check_pack(p, &bytes);
                        errors.extend(check_locations(p, &bytes, &locations));
                        errors
                    })
                    .await
                    .unwrap_or_else(|e| vec![e.to_string()])
                }
            })
            // Each pack in flight holds the pack and a decoded frame (up to 8 MiB each): bound
            // the concurrency by the cores that decode them, not by the store.
            .buffer_unordered(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .collect()
            .await;
        report.packs_read = results.len() as u64;
        report.errors.extend(results.into_iter().flatten());
    }
    Ok(report)
}

/// Reads and validates the trees of `snapshots`, in either form: the tree objects read, and
/// each snapshot's manifest or why it cannot be read. Directories shared by several snapshots
/// are read once.
async fn read_trees<'a>(
    store: &SnapshotStore,
    index: &Index,
    snapshots: &'a [Snapshot],
) -> (HashSet<ChunkId>, Vec<(&'a Snapshot, Result<Manifest>)>) {
    let roots: Vec<ChunkId> = snapshots.iter().filter_map(|s| as_root(&s.record.contents)).collect();
    let mut failed: HashMap<ChunkId, EngineError> = HashMap::new();
    let nodes = match trees::load(store.objects(), index, roots.iter().copied(), None).await {
        Ok(nodes) => nodes,
        // Some tree is unreadable: read each on its own, so each snapshot gets its own verdict.
        Err(_) => {
            let mut nodes = trees::Nodes::default();
            for root in &roots {
                match trees::load(store.objects(), index, [*root], None).await {
                    Ok(n) => nodes.extend(n),
                    Err(e) => {
                        failed.insert(*root, e);
                    }
                }
            }
            nodes
        }
    };
    let mut out = Vec::with_capacity(snapshots.len());
    for s in snapshots {
        let manifest = match &s.record.contents {
            Contents::Manifest(id) => store.manifest(id).await,
            Contents::Root(root) => match failed.remove(root) {
                Some(e) => Err(e),
                None => tree::flatten(root, &nodes).map_err(EngineError::from),
            },
        };
        out.push((s, manifest));
    }
    (nodes.into_keys().collect(), out)
}

fn as_root(contents: &Contents) -> Option<ChunkId> {
    match contents {
        Contents::Root(root) => Some(*root),
        Contents::Manifest(_) => None,
    }
}

/// Parses a pack and decodes every blob, returning what is wrong.
fn check_pack(id: PackId, bytes: &[u8]) -> Vec<String> {
    let what = format!("pack {}", id.short());
    if PackId::of(bytes) != id {
        return vec![format!("{what}: content does not match its id")];
    }
    let entries = match pack::parse(&what, bytes) {
        Ok(e) => e,
        Err(e) => return vec![e.to_string()],
    };
    let mut codecs = codec::Codecs::new();
    let mut frame = codec::FrameCache::default();
    let mut sorted = entries;
    sorted.sort_by_key(|e| (e.offset, e.inner));
    sorted.iter().filter_map(|e| codecs.blob(&mut frame, bytes, e).err().map(|err| format!("{what}: {err}"))).collect()
}

/// Decodes each needed chunk where the index places it, which is where a restore reads it
/// (the pack's own trailer may agree with itself and not with the index); returns what is wrong.
fn check_locations(id: PackId, bytes: &[u8], needed: &[(ChunkId, Location)]) -> Vec<String> {
    let what = format!("pack {}", id.short());
    // Blobs exactly as the trailer lists them were decoded by `check_pack`.
    let trailer: HashMap<ChunkId, pack::BlobEntry> =
        pack::parse(&what, bytes).unwrap_or_default().into_iter().map(|e| (e.id, e)).collect();
    let mut codecs = codec::Codecs::new();
    let mut errors = Vec::new();
    for (c, loc) in needed {
        if trailer.get(c) == Some(&loc.blob) {
            continue;
        }
        if let Err(err) = codecs.blob(&mut codec::FrameCache::default(), bytes, &loc.blob) {
            errors.push(format!("{what}: chunk {} where the index places it: {err}", c.short()));
        }
    }
    errors
}

/// Lists the changes between two snapshots.
pub async fn diff(store: &SnapshotStore, old: &Snapshot, new: &Snapshot) -> Result<Vec<Change>> {
    let index = match (&old.record.contents, &new.record.contents) {
        (Contents::Manifest(_), Contents::Manifest(_)) => None,
        _ => Some(store.load_index(None).await?.index),
    };
    // Two trees: compared level by level, reading only the directories whose objects differ
    // (a directory with the same object on both sides is the same with all it holds).
    if let (Contents::Root(a), Contents::Root(b), Some(index)) = (&old.record.contents, &new.record.contents, &index) {
        let mut loader = trees::Loader::new(store.objects(), index, None);
        let (mut changes, mut budget) = (Vec::new(), diff::ENTRIES_COMPARED);
        let mut level = vec![(None, Some(*a), Some(*b))];
        while !level.is_empty() {
            loop {
                let missing = diff::missing(&level, &loader.nodes);
                if missing.is_empty() {
                    break;
                }
                loader.read(&missing).await?;
            }
            level = diff::diff_level(level, &loader.nodes, &mut changes, &mut budget)?;
        }
        return Ok(diff::in_path_order(changes));
    }
    let a = store.tree(&old.record.contents, index.as_ref()).await?;
    let b = store.tree(&new.record.contents, index.as_ref()).await?;
    Ok(diff::diff(&a, &b))
}

/// Retention decisions for one workspace generation.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetGroup {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// The generation.
    pub generation: Generation,
    /// One decision per snapshot, newest first.
    pub decisions: Vec<Decision>,
}

/// Plans retention for every workspace generation among `snapshots`.
pub fn forget_plan(snapshots: &[Snapshot], policy: &Policy) -> Vec<ForgetGroup> {
    forget_plan_pinned(snapshots, policy, |_| false)
}

/// Like [`forget_plan`]; snapshots `pinned` says yes to are kept too (something points at them).
pub fn forget_plan_pinned(
    snapshots: &[Snapshot],
    policy: &Policy,
    pinned: impl Fn(&SnapshotId) -> bool,
) -> Vec<ForgetGroup> {
    let mut groups: HashMap<(WorkspaceId, Generation), Vec<Candidate>> = HashMap::new();
    for s in snapshots {
        groups.entry((s.record.workspace.clone(), s.record.generation)).or_default().push(Candidate {
            id: s.id,
            seq: s.record.seq,
            epoch: s.record.epoch,
            time: s.record.time,
        });
    }
    let mut out: Vec<ForgetGroup> = groups
        .into_iter()
        .map(|((workspace, generation), c)| ForgetGroup {
            workspace,
            generation,
            decisions: retention::plan_pinned(&c, policy, &pinned),
        })
        .collect();
    out.sort_by(|a, b| (&a.workspace, a.generation).cmp(&(&b.workspace, b.generation)));
    out
}

/// Deletes the snapshot records the plan forgets; returns how many were deleted.
pub async fn forget_apply(store: &SnapshotStore, plan: &[ForgetGroup]) -> Result<u64> {
    let mut n = 0;
    for g in plan {
        for d in g.decisions.iter().filter(|d| !d.keep) {
            store.objects().delete(&layout::snapshot(&g.workspace, g.generation, d.seq)).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Forgets every snapshot of one workspace generation, the latest included: for an owner whose
/// deletion was asked for. Their data goes with the next prune. Returns how many were forgotten;
/// forgetting again finds nothing (idempotent).
pub async fn forget_generation(store: &SnapshotStore, workspace: &WorkspaceId, generation: Generation) -> Result<u64> {
    let mut n = 0;
    for s in store.list(Some(workspace), Some(generation)).await? {
        store.objects().delete(&s.key).await?;
        n += 1;
    }
    Ok(n)
}

/// A prune plan with what it was computed from.
#[derive(Debug)]
pub struct Prune {
    /// The plan.
    pub plan: PrunePlan,
    index_files: Vec<(IndexId, IndexFile)>,
}

/// Computes what a prune run would do now.
pub async fn prune_plan(store: &SnapshotStore, grace_secs: i64) -> Result<Prune> {
    let objects = store.objects();
    // Order matters: index and pack listings first, snapshots last, so that a snapshot
    // published meanwhile is seen with everything it references.
    let loaded = store.load_index(None).await?;
    let pack_objects = objects.list(layout::PACKS).await?;
    let manifest_objects = objects.list(layout::MANIFESTS).await?;
    let snapshots = store.list(None, None).await?;
    let referenced_manifests: HashSet<ManifestId> = snapshots
        .iter()
        .filter_map(|s| match s.record.contents {
            Contents::Manifest(id) => Some(id),
            Contents::Root(_) => None,
        })
        .collect();
    let manifests: Vec<_> = futures::stream::iter(referenced_manifests.iter().copied())
        .map(|id| async move { store.manifest(&id).await })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let mut referenced_chunks: HashSet<ChunkId> = manifests.iter().flat_map(|m| m.chunk_ids().copied()).collect();
    // Tree objects reachable from any snapshot are kept like the chunks they list; an
    // unreadable tree stops the prune (it cannot know what that tree references).
    let roots = snapshots.iter().filter_map(|s| as_root(&s.record.contents));
    let nodes = trees::load(objects, &loaded.index, roots, None).await?;
    for (id, node) in &nodes {
        referenced_chunks.insert(*id);
        referenced_chunks.extend(node.chunk_ids().copied());
    }
    let mut by_pack: HashMap<PackId, Vec<(ChunkId, u32)>> = HashMap::new();
    for (_, f) in &loaded.files {
        for p in &f.packs {
            by_pack.entry(p.id).or_default().extend(p.blobs.iter().map(|b| (b.id, b.len)));
        }
    }
    let packs = pack_objects
        .iter()
        .filter_map(|o| {
            let id = PackId::from_hex(layout::parse_id_hex(&o.key)?).ok()?;
            Some(PackObject { id, size: o.size, chunks: by_pack.get(&id).cloned() })
        })
        .collect();
    let manifests =
        manifest_objects.iter().filter_map(|o| ManifestId::from_hex(layout::parse_id_hex(&o.key)?).ok()).collect();
    let input = PruneInput { referenced_chunks, referenced_manifests, packs, manifests, marks: loaded.marks };
    Ok(Prune { plan: prune::plan(&input, now(), grace_secs), index_files: loaded.files })
}

/// What a prune run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneOutcome {
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Bytes they held.
    pub bytes_deleted: u64,
    /// Manifests deleted.
    pub manifests_deleted: u64,
    /// Objects newly marked.
    pub marked: u64,
    /// Index objects replaced by one that holds them all (one per snapshot run accumulates
    /// until a prune compacts them).
    pub index_objects_compacted: u64,
}

/// Carries out a prune plan.
///
/// # Guarantees
/// Order: the new mark; then, when packs go or index objects have piled up, one new index
/// object (without the packs that go) before the old index objects are deleted, and those
/// before the packs; the retired marks last. A crash between any two steps leaves every
/// snapshot restorable, and the next run finishes the work. An index object written after the
/// plan listed them is not in the new one and is left alone.
pub async fn prune_apply(store: &SnapshotStore, prune: &Prune) -> Result<PruneOutcome> {
    let objects = store.objects();
    let plan = &prune.plan;
    let mut out = PruneOutcome::default();
    if let Some(mark) = &plan.new_mark {
        let (id, bytes) = mark.encode();
        objects.put_if_absent(&layout::mark(&id), Bytes::from(bytes)).await?;
        out.marked = (mark.packs.len() + mark.manifests.len()) as u64;
    }
    if !plan.delete_packs.is_empty() || prune.index_files.len() > 1 {
        let doomed: HashSet<PackId> = plan.delete_packs.iter().copied().collect();
        let mut seen = HashSet::new();
        let kept: Vec<IndexedPack> = prune
            .index_files
            .iter()
            .flat_map(|(_, f)| f.packs.iter())
            .filter(|p| !doomed.contains(&p.id) && seen.insert(p.id))
            .cloned()
            .collect();
        let (new_id, bytes) = IndexFile { packs: kept }.encode();
        objects.put_if_absent(&layout::index(&new_id), Bytes::from(bytes)).await?;
        for (id, _) in prune.index_files.iter().filter(|(id, _)| *id != new_id) {
            objects.delete(&layout::index(id)).await?;
            out.index_objects_compacted += 1;
        }
        // Owned ids: a stream over borrowed ones is not `Send` for every lifetime, which a
        // spawned prune (the scheduled ones) needs.
        let deleted: Vec<Deleted> = futures::stream::iter(plan.delete_packs.clone())
            .map(|p| async move { objects.delete(&layout::pack(&p)).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        out.packs_deleted = deleted.len() as u64;
        out.bytes_deleted = plan.delete_pack_bytes;
    }
    for m in &plan.delete_manifests {
        objects.delete(&layout::manifest(m)).await?;
        out.manifests_deleted += 1;
    }
    for id in &plan.retire_marks {
        objects.delete(&layout::mark(id)).await?;
    }
    Ok(out)
}

/// Plans a prune and, unless `dry_run`, carries it out; both under the prune lock (refreshed
/// every `heartbeat`), so that two prunes never interleave. A dry run takes no lock and changes
/// nothing.
pub async fn prune(
    store: &SnapshotStore,
    grace_secs: i64,
    host: &str,
    heartbeat: std::time::Duration,
    dry_run: bool,
) -> Result<(Prune, Option<PruneOutcome>)> {
    if dry_run {
        return Ok((prune_plan(store, grace_secs).await?, None));
    }
    let lock = PruneLock::acquire(store, host, heartbeat).await?;
    let result = async {
        let prune = prune_plan(store, grace_secs).await?;
        crate::prune_lock::pause_if_asked().await;
        lock.check().await?;
        let outcome = prune_apply(store, &prune).await?;
        Ok::<_, EngineError>((prune, Some(outcome)))
    }
    .await;
    // Released whether or not the prune succeeded: a failed run is resumed by the next one.
    let released = lock.release().await;
    let done = result?;
    released?;
    Ok(done)
}
