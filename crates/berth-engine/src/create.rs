//! Taking a snapshot: scan, read only what changed, chunk, deduplicate, pack, upload, then
//! publish in durability order.
//!
//! # Guarantees
//! - Packs (of data and of tree objects) are durable before the index object naming them, the
//!   index before the snapshot record. The record is the only thing that makes a
//!   snapshot visible, so a crash or Ctrl-C at any point leaves the previous snapshot the
//!   latest, complete and restorable; what was uploaded is reused by the next run or pruned.
//! - The record is written create-if-absent at one more than the highest seq of the generation
//!   when the run started: a concurrent writer on the same workspace makes one of the two fail
//!   with `Conflict`, never both succeed.
//! - Fencing: the run carries its writer's lease epoch. When the generation's latest record
//!   (the greatest by (epoch, seq)) has a higher epoch, the run writes nothing and fails with
//!   `Fenced`; a record that wins the seq race under a higher epoch fences it too. So a writer
//!   never publishes into a lineage where a higher epoch has written, and a zombie's record,
//!   whatever its seq, never becomes the latest over the lease holder's.
//! - A run under a higher epoch than the latest record's publishes a record even when the tree
//!   is unchanged, so the new epoch owns the lineage from its first run.
//!
//! # Assumptions
//! - A run takes less than the prune grace period (see `berth_core::prune`).

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use berth_core::changes::ChangedPaths;
use berth_core::chunker::ChunkerParams;
use berth_core::codec::Codecs;
use berth_core::excludes::Excludes;
use berth_core::id::{ChunkId, IndexId, SnapshotId, TreeId};
use berth_core::index::{Index, IndexFile, IndexedPack};
use berth_core::layout;
use berth_core::lease::{Epoch, Fenced};
use berth_core::manifest::{ChunkRef, Entry, EntryKind, Manifest};
use berth_core::pack::{PackBuilder, SealedPack};
use berth_core::path::RelPath;
use berth_core::snapshot::{Contents, SnapshotRecord, RECORD_VERSION};
use berth_core::sync::{self, FileStat};
use berth_core::time::Timestamp;
use berth_core::tree::{self, DirIds, Trees};
use berth_core::workspace::{Generation, WorkspaceId};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::cache::{self, CachedFile, FileCache};
use crate::error::{EngineError, Result};
use crate::progress::Progress;
use crate::rescan::Update;
use crate::scan::{self, ScanEntry, ScanKind};
use crate::snapshot_store::{Head, KnownIndex, Snapshot, SnapshotStore};
use crate::store::{DynStore, Put};
use crate::trees;
use crate::warm::{Last, Memo, MemoKey, Scanned, Warm, CACHE_SAVE_EVERY};

/// Pack uploads in flight at once.
const UPLOADS_IN_FLIGHT: usize = 4;

/// What to snapshot and how.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The workspace the snapshot belongs to.
    pub workspace: WorkspaceId,
    /// Its generation.
    pub generation: Generation,
    /// The directory to snapshot.
    pub dir: PathBuf,
    /// What to leave out.
    pub excludes: Excludes,
    /// Largest total of file bytes to include; the largest files beyond it are skipped.
    pub budget: Option<u64>,
    /// Where the local file cache and index cache live (`None`: no cache, read everything).
    pub cache_dir: Option<PathBuf>,
    /// Host name recorded in the snapshot.
    pub host: String,
    /// Worker threads for reading, chunking and compressing.
    pub threads: usize,
    /// The writer's lease epoch (0 without a control plane). A run is refused when a higher
    /// epoch has written the workspace generation.
    pub epoch: Epoch,
}

/// What a snapshot run did.
#[derive(Debug, Clone, Serialize)]
pub struct CreateSummary {
    /// The snapshot now latest (the parent when nothing changed).
    pub snapshot: SnapshotId,
    /// Its sequence number.
    pub seq: u64,
    /// Whether the tree was identical to the latest snapshot, so nothing was published.
    pub unchanged: bool,
    /// Regular files in the snapshot.
    pub files_scanned: u64,
    /// Directories in the snapshot.
    pub dirs: u64,
    /// Bytes of regular files in the snapshot.
    pub bytes_scanned: u64,
    /// Files whose content was read (the rest matched the cache).
    pub files_read: u64,
    /// Bytes read from those files.
    pub bytes_read: u64,
    /// Chunks the store did not have.
    pub chunks_new: u64,
    /// Uncompressed bytes of those chunks.
    pub bytes_new: u64,
    /// Bytes written to the store (packs of data and tree objects, index, record).
    pub bytes_uploaded: u64,
    /// Packs written.
    pub packs_uploaded: u64,
    /// Files left out by the size budget.
    pub skipped_for_budget: Vec<String>,
    /// Entries that could not be read, with why.
    pub skipped_unreadable: Vec<String>,
    /// Sockets, FIFOs and devices, which are not snapshotted.
    pub special_files_skipped: u64,
    /// Wall time of the run.
    pub duration_secs: f64,
    /// Wall time per phase: loading the index and cache, scanning, reading and uploading, publishing.
    pub phase_secs: PhaseSecs,
}

/// Wall time per phase of a snapshot run, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhaseSecs {
    /// Listing and loading the index, the latest record and the local cache.
    pub load: f64,
    /// Walking the directory.
    pub scan: f64,
    /// Reading, chunking, compressing and uploading changed files.
    pub read: f64,
    /// Tree objects, index and record.
    pub publish: f64,
}

/// A file to read.
struct ReadJob {
    path: RelPath,
    slot: usize,
    size: u64,
}

/// Bytes of consecutive files a reader takes at once.
const BATCH_BYTES: u64 = 1024 * 1024;

/// A file that was read.
struct ReadDone {
    slot: usize,
    stat: FileStat,
    chunks: Vec<ChunkRef>,
    /// Whether the file stayed unchanged while it was read (only then is it cached).
    stable: bool,
}

#[derive(Default)]
struct ReadStats {
    files_read: u64,
    bytes_read: u64,
    chunks_new: u64,
    bytes_new: u64,
    skipped: Vec<String>,
}

/// Takes a snapshot of `opts.dir` and publishes it as the latest of its workspace generation.
pub async fn create(store: &SnapshotStore, opts: &CreateOptions, progress: &Arc<Progress>) -> Result<CreateSummary> {
    create_warm(store, opts, progress, &mut Warm::default(), None).await
}

/// Takes a snapshot like `create`, building on what `warm` kept of the previous run of the same
/// directory (see `Warm`): with `changed` (the paths a watcher reported), only those paths and
/// their parents are looked at again, planned and encoded.
pub async fn create_warm(
    store: &SnapshotStore,
    opts: &CreateOptions,
    progress: &Arc<Progress>,
    warm: &mut Warm,
    changed: Option<&ChangedPaths>,
) -> Result<CreateSummary> {
    let started = Instant::now();
    let nonce = run_nonce();
    progress.start("scan", 0, 0);
    let start = load(store, opts, warm).await?;
    let mut phases = PhaseSecs { load: started.elapsed().as_secs_f64(), ..PhaseSecs::default() };

    let mark = Instant::now();
    let Start { dir, head, cache_file, mut memo, additive } = start;
    let last = memo.last.take();
    let hint = changed.map(|c| {
        let mut hint = c.clone();
        last.iter().flat_map(|l| l.retry.iter().cloned()).for_each(|p| hint.insert(p));
        hint
    });
    let (prev, base) = match last {
        Some(Last { scan, manifest, dirs, over_budget, .. }) => {
            (Some(scan), Some((manifest, dirs)).filter(|_| additive && !over_budget))
        }
        None => (None, None),
    };
    let Scanned { scan, update } = warm.scan(&dir, opts, prev, hint).await?;
    let (entries, base) = match (update, base) {
        (Some(u), Some((manifest, dirs))) if builds_on(opts, &scan, &u) => {
            let replaced = u.replaced.into_iter().map(|e| e.path).collect();
            (u.inserted, Some(Base { manifest, dirs, replaced }))
        }
        _ => (scan.entries.clone(), None),
    };
    let budget = opts.budget.filter(|_| base.is_none());
    let mut planned = plan(&memo, dir, entries, budget);
    phases.scan = mark.elapsed().as_secs_f64();

    let mark = Instant::now();
    let index = std::mem::take(&mut memo.index.index);
    let read = read_and_upload(store, opts, index, &mut planned, nonce, progress).await?;
    memo.index.index =
        read.index.ok_or_else(|| EngineError::Invalid("the index is still shared after reading".into()))?;
    let mut built = build(planned, read.done, read.stats, &scan);
    built.packs = read.packs;
    built.bytes_uploaded = read.bytes_uploaded;
    phases.read = mark.elapsed().as_secs_f64();

    let mark = Instant::now();
    let incremental = base.is_some();
    let (manifest, trees) = finish_tree(&mut memo, &mut built, base, read.n_jobs);
    let written = trees::write(store.objects(), &trees, &memo.index.index, nonce).await?;
    built.packs.extend(written.packs);
    built.bytes_uploaded += written.bytes_uploaded;
    let published = publish(store, opts, &head, &built, &manifest, written.root).await?;
    if let Some((id, file)) = &published.index {
        memo.index.add(*id, file);
    }
    save_cache(cache_file.as_deref(), &mut memo, !incremental);
    phases.publish = mark.elapsed().as_secs_f64();
    if !published.unchanged {
        tracing::info!(event = "snapshot_created", workspace = %opts.workspace, seq = published.seq, snapshot = %published.snapshot);
    }
    let summary = built.summary(&manifest, published, started, phases);
    let over_budget = !summary.skipped_for_budget.is_empty();
    memo.last = Some(Last { scan, manifest, dirs: trees.dirs, over_budget, retry: std::mem::take(&mut built.retry) });
    warm.incremental = incremental;
    warm.keep(memo);
    Ok(summary)
}

/// Whether a run can plan only what the scan update looked at again, on top of the previous
/// tree: not when hard links are involved (which name of a file comes first is a matter of
/// the whole tree) nor when the size budget could leave something out (the budget weighs
/// every file).
fn builds_on(opts: &CreateOptions, scan: &scan::Scan, update: &Update) -> bool {
    let linked = |e: &ScanEntry| matches!(e.kind, ScanKind::File { nlink, .. } if nlink > 1);
    if update.replaced.iter().chain(&update.inserted).any(linked) {
        return false;
    }
    let total = || -> u64 {
        scan.entries.iter().filter(|e| matches!(e.kind, ScanKind::File { .. })).map(|e| e.stat.size).sum()
    };
    opts.budget.is_none_or(|budget| total() <= budget)
}

/// The previous run's tree, and the paths of it the scan looked at again.
struct Base {
    manifest: Manifest,
    dirs: DirIds,
    /// Paths of the previous scan looked at again (their entries are replaced), sorted.
    replaced: Vec<RelPath>,
}

/// Assembles the run's whole tree and its objects: from the previous tree and the planned
/// entries when there is a base, from the planned entries alone otherwise; and brings the
/// file cache in memory up to date.
fn finish_tree(memo: &mut Memo, built: &mut Built, base: Option<Base>, n_jobs: usize) -> (Manifest, Trees) {
    let assembled = std::mem::take(&mut built.assembled);
    let Some(base) = base else {
        let mut cache = FileCache::new();
        for (path, stat, chunks) in assembled.cache {
            cache.files.insert(path.as_bytes().to_vec(), CachedFile { stat, chunks });
        }
        // Every file matched the cache and none went away: the cache is unchanged.
        let same = n_jobs == 0 && cache.files.len() == memo.cache.files.len();
        memo.cache_dirty |= !same;
        memo.cache = cache;
        let trees = tree::build(&assembled.manifest);
        return (assembled.manifest, trees);
    };
    let mut gone: HashMap<Vec<u8>, CachedFile> = HashMap::new();
    for path in &base.replaced {
        if let Some(c) = memo.cache.files.remove(path.as_bytes()) {
            gone.insert(path.as_bytes().to_vec(), c);
        }
    }
    for (path, stat, chunks) in assembled.cache {
        let file = CachedFile { stat, chunks };
        let key = path.as_bytes().to_vec();
        memo.cache_dirty |= gone.remove(&key).as_ref() != Some(&file);
        memo.cache.files.insert(key, file);
    }
    memo.cache_dirty |= !gone.is_empty();
    let mut changed: Vec<RelPath> = built.planned_paths.iter().chain(&base.replaced).cloned().collect();
    changed.sort();
    changed.dedup();
    let entries = sync::splice(base.manifest.entries, &base.replaced, assembled.manifest.entries, |e| &e.path);
    let manifest = Manifest { entries };
    let trees = tree::rebuild(&manifest, base.dirs, &changed);
    (manifest, trees)
}

/// What a run starts from: the directory, the latest snapshot, and the index and cache.
struct Start {
    /// The directory, canonical.
    dir: PathBuf,
    /// The latest snapshot, which this run's builds on, and the highest seq in use.
    head: Head,
    /// Where the file cache of this directory lives, when there is a cache.
    cache_file: Option<PathBuf>,
    /// The index (up to date) and the file cache, carried over from the last run or loaded.
    memo: Memo,
    /// Whether the index only grew since the last run, so its tree can be built on.
    additive: bool,
}

async fn load(store: &SnapshotStore, opts: &CreateOptions, warm: &mut Warm) -> Result<Start> {
    let dir = std::fs::canonicalize(&opts.dir).map_err(|e| EngineError::io("opening directory", &opts.dir, e))?;
    let url = store.objects().url();
    let key = MemoKey { store: url.to_string(), workspace: opts.workspace.clone(), generation: opts.generation, dir };
    // Taken now: a run that fails or is abandoned leaves nothing behind.
    let mut memo = warm.take(&key);
    let mut records = memo.as_mut().map(|m| std::mem::take(&mut m.records)).unwrap_or_default();
    let head = store.head_known(&opts.workspace, opts.generation, &mut records).await?;
    if let Some(latest) = head.latest.as_ref().filter(|l| l.record.epoch > opts.epoch) {
        return Err(fenced(opts, latest));
    }
    let cache_dir = opts.cache_dir.as_deref();
    let cache_file = cache_dir.map(|d| cache::path(d, url, &opts.workspace, opts.generation, &key.dir));
    let (memo, additive) = match memo {
        Some(mut memo) => {
            let additive = store.refresh_index(&mut memo.index, cache_dir).await?;
            memo.records = records;
            (memo, additive)
        }
        None => {
            let index = KnownIndex::from(store.load_index(cache_dir).await?);
            let cache = cache_file.as_deref().map(FileCache::load).unwrap_or_default();
            let memo = Memo {
                key: key.clone(),
                index,
                records,
                cache,
                cache_dirty: false,
                cache_saved: Some(Instant::now()),
                last: None,
            };
            (memo, false)
        }
    };
    Ok(Start { dir: key.dir, head, cache_file, memo, additive })
}

/// The entries a run plans and what they leave to read.
struct Planned {
    /// The canonical directory.
    dir: PathBuf,
    /// The entries planned: the whole scan, or what an update looked at again.
    entries: Vec<ScanEntry>,
    /// The files to read, in path order.
    jobs: Vec<ReadJob>,
    /// Their bytes.
    bytes_to_read: u64,
    /// Manifest entries known without reading, per planned entry.
    slots: Vec<Option<Entry>>,
    /// Metadata to cache, per planned entry.
    stats: Vec<Option<FileStat>>,
    /// Slots the size budget leaves out.
    over_budget: Vec<usize>,
}

/// Plans `entries`: what the cache lets the run reuse, what it must read.
fn plan(memo: &Memo, dir: PathBuf, entries: Vec<ScanEntry>, budget: Option<u64>) -> Planned {
    let plan = sync::plan(
        &entries,
        budget,
        |path, stat| memo.cache.lookup(path.as_bytes(), stat).map(<[ChunkRef]>::to_vec),
        |id| memo.index.index.is_reusable(id),
    );
    let jobs = plan
        .read
        .iter()
        .map(|&slot| ReadJob { path: entries[slot].path.clone(), slot, size: entries[slot].stat.size })
        .collect();
    Planned {
        dir,
        entries,
        jobs,
        bytes_to_read: plan.bytes_to_read,
        slots: plan.slots,
        stats: plan.stats,
        over_budget: plan.over_budget,
    }
}

/// What reading and uploading produced.
struct ReadOutcome {
    done: Vec<ReadDone>,
    stats: ReadStats,
    /// How many files were to be read.
    n_jobs: usize,
    /// The packs uploaded, for the index.
    packs: Vec<IndexedPack>,
    /// Bytes of those packs the store did not have.
    bytes_uploaded: u64,
    /// The store's index as the run loaded it (this run's packs not included); `None` if it
    /// could not be taken back from the readers.
    index: Option<Index>,
}

/// Reads, chunks and packs the planned files on worker threads, uploading packs as they fill.
async fn read_and_upload(
    store: &SnapshotStore,
    opts: &CreateOptions,
    index: Index,
    planned: &mut Planned,
    nonce: [u8; 16],
    progress: &Arc<Progress>,
) -> Result<ReadOutcome> {
    let jobs = std::mem::take(&mut planned.jobs);
    let n_jobs = jobs.len();
    progress.start("read", jobs.len() as u64, planned.bytes_to_read);
    let threads = opts.threads.max(1);
    let (tx, rx) = mpsc::channel::<SealedPack>(threads);
    let uploader = tokio::spawn(upload_packs(store.objects().clone(), rx));
    let ctx = Arc::new(ReadCtx {
        root: planned.dir.clone(),
        params: store.config().chunker,
        index,
        claimed: Mutex::new(HashSet::new()),
        nonce,
        stop: AtomicBool::new(false),
        next: AtomicUsize::new(0),
        batches: sync::batches(&jobs.iter().map(|j| j.size).collect::<Vec<_>>(), BATCH_BYTES),
        jobs,
    });
    let reader = {
        let (ctx, progress) = (ctx.clone(), progress.clone());
        tokio::task::spawn_blocking(move || read_files(&ctx, threads, tx, &progress))
    };
    let read_result = reader.await.map_err(|e| EngineError::Invalid(format!("read task failed: {e}")))?;
    let upload_result = uploader.await.map_err(|e| EngineError::Invalid(format!("upload task failed: {e}")))?;
    // An upload error explains a reader that stopped because the uploader hung up.
    let (packs, bytes_uploaded) = upload_result?;
    let (done, stats) = read_result?;
    // The readers are done, so this is the last reference.
    let index = Arc::try_unwrap(ctx).ok().map(|c| c.index);
    Ok(ReadOutcome { done, stats, n_jobs, packs, bytes_uploaded, index })
}

/// What a run produced, with what its summary and the cache need.
struct Built {
    /// The planned entries as manifest entries, and what to cache of them.
    assembled: sync::Assembled,
    /// The paths planned.
    planned_paths: Vec<RelPath>,
    /// Planned files whose read failed or raced a write.
    retry: Vec<RelPath>,
    packs: Vec<IndexedPack>,
    bytes_uploaded: u64,
    files_read: u64,
    bytes_read: u64,
    chunks_new: u64,
    bytes_new: u64,
    skipped_for_budget: Vec<String>,
    skipped_unreadable: Vec<String>,
    special_files_skipped: u64,
}

/// Puts the read files into their slots and assembles the planned entries and what to cache.
fn build(planned: Planned, done: Vec<ReadDone>, read: ReadStats, scan: &scan::Scan) -> Built {
    let Planned { entries, mut slots, mut stats, over_budget, .. } = planned;
    for d in done {
        let e = &entries[d.slot];
        let size = d.chunks.iter().map(|c| c.len as u64).sum();
        let kind = EntryKind::File { size, chunks: d.chunks };
        slots[d.slot] = Some(Entry { path: e.path.clone(), mode: e.mode, mtime_ns: d.stat.mtime_ns, kind });
        if d.stable {
            stats[d.slot] = Some(d.stat);
        }
    }
    let skipped_for_budget = over_budget.iter().map(|s| scan::show(&entries[*s].path)).collect();
    let over: HashSet<usize> = over_budget.into_iter().collect();
    // A file read while it changed, or not read at all, is not settled: the next run looks again.
    let retry = entries
        .iter()
        .enumerate()
        .filter(|(slot, e)| match &slots[*slot] {
            Some(Entry { kind: EntryKind::File { .. }, .. }) => stats[*slot].is_none(),
            Some(_) => false,
            None => matches!(e.kind, ScanKind::File { .. }) && !over.contains(slot),
        })
        .map(|(_, e)| e.path.clone())
        .collect();
    let assembled = sync::assemble(slots, &stats);
    let mut skipped_unreadable = scan.problems.clone();
    skipped_unreadable.extend(read.skipped);
    skipped_unreadable.extend(assembled.skipped.iter().cloned());
    Built {
        assembled,
        planned_paths: entries.into_iter().map(|e| e.path).collect(),
        retry,
        packs: Vec::new(),
        bytes_uploaded: 0,
        files_read: read.files_read,
        bytes_read: read.bytes_read,
        chunks_new: read.chunks_new,
        bytes_new: read.bytes_new,
        skipped_for_budget,
        skipped_unreadable,
        special_files_skipped: scan.special,
    }
}

impl Built {
    fn summary(
        &self,
        manifest: &Manifest,
        published: Published,
        started: Instant,
        phase_secs: PhaseSecs,
    ) -> CreateSummary {
        let totals = manifest.totals();
        CreateSummary {
            snapshot: published.snapshot,
            seq: published.seq,
            unchanged: published.unchanged,
            files_scanned: totals.files + totals.hardlinks,
            dirs: totals.dirs,
            bytes_scanned: totals.bytes,
            files_read: self.files_read,
            bytes_read: self.bytes_read,
            chunks_new: self.chunks_new,
            bytes_new: self.bytes_new,
            bytes_uploaded: self.bytes_uploaded + published.bytes_uploaded,
            packs_uploaded: self.packs.len() as u64,
            skipped_for_budget: self.skipped_for_budget.clone(),
            skipped_unreadable: self.skipped_unreadable.clone(),
            special_files_skipped: self.special_files_skipped,
            duration_secs: started.elapsed().as_secs_f64(),
            phase_secs,
        }
    }
}

/// What publishing did.
struct Published {
    /// The snapshot now latest.
    snapshot: SnapshotId,
    /// Its position.
    seq: u64,
    /// Whether the tree equalled the parent's, so no record was written.
    unchanged: bool,
    /// Bytes of the index and record written.
    bytes_uploaded: u64,
    /// The index object written, naming the run's packs.
    index: Option<(IndexId, IndexFile)>,
}

/// Publishes in durability order: packs of data and of tree objects (already uploaded), index,
/// record. A tree unchanged since a record of the same epoch writes the index only (so the
/// packs are found) and no record.
async fn publish(
    store: &SnapshotStore,
    opts: &CreateOptions,
    head: &Head,
    built: &Built,
    manifest: &Manifest,
    root: ChunkId,
) -> Result<Published> {
    let objects = store.objects();
    let parent = head.latest.as_ref();
    let mut bytes_uploaded = 0;
    let mut index = None;
    if !built.packs.is_empty() {
        let file = IndexFile { packs: built.packs.clone() };
        let (index_id, bytes) = file.encode();
        bytes_uploaded += bytes.len() as u64;
        objects.put_if_absent(&layout::index(&index_id), Bytes::from(bytes)).await?;
        index = Some((index_id, file));
    }
    // The root object's id names the whole tree.
    let tree = TreeId(root.0);
    if let Some(p) = parent.filter(|p| p.record.tree == tree && p.record.epoch == opts.epoch) {
        return Ok(Published { snapshot: p.id, seq: p.record.seq, unchanged: true, bytes_uploaded, index });
    }
    let seq = head.max_seq + 1;
    let record = SnapshotRecord {
        version: RECORD_VERSION,
        workspace: opts.workspace.clone(),
        generation: opts.generation,
        seq,
        epoch: opts.epoch,
        time: now(),
        contents: Contents::Root(root),
        tree,
        parent: parent.map(|p| p.id),
        host: opts.host.clone(),
        totals: manifest.totals(),
        skipped_for_budget: built.skipped_for_budget.clone(),
    };
    let (snapshot_id, record_bytes) = record.encode();
    bytes_uploaded += record_bytes.len() as u64;
    let key = layout::snapshot(&opts.workspace, opts.generation, seq);
    if objects.put_if_absent(&key, Bytes::from(record_bytes)).await? == Put::AlreadyExists {
        return Err(lost_race(store, opts, &key, seq).await);
    }
    Ok(Published { snapshot: snapshot_id, seq, unchanged: false, bytes_uploaded, index })
}

/// The error of a run whose record key was taken by another writer: `Fenced` when that writer
/// has a higher epoch, `Conflict` otherwise.
async fn lost_race(store: &SnapshotStore, opts: &CreateOptions, key: &str, seq: u64) -> EngineError {
    match store.record_at(key).await {
        Ok(Some(winner)) if winner.record.epoch > opts.epoch => fenced(opts, &winner),
        _ => EngineError::Conflict(format!(
            "another writer published snapshot {seq} of workspace {} (generation {}) while this one ran; \
             nothing of this run is visible. Make sure one sandbox writes a workspace at a time, then rerun",
            opts.workspace, opts.generation
        )),
    }
}

/// The refusal of a run under `opts.epoch` because `latest` was written under a higher one.
fn fenced(opts: &CreateOptions, latest: &Snapshot) -> EngineError {
    EngineError::Fenced {
        fenced: Fenced { presented: opts.epoch, current: Some(latest.record.epoch) },
        detail: format!(
            "snapshot {} (seq {}) of workspace {} (generation {}) was published under epoch {}; \
             nothing of this run is visible. Only the workspace's current lease holder may write it \
             (`berth snapshot create --epoch` sets the epoch of a run)",
            latest.id.short(),
            latest.record.seq,
            opts.workspace,
            opts.generation,
            latest.record.epoch
        ),
    }
}

/// Saves the file cache when it changed: after a run that planned every entry, and otherwise
/// at most every `CACHE_SAVE_EVERY` (a cache on disk that lags costs reads, never correctness).
/// A cache that cannot be saved costs a full read next time, no more.
fn save_cache(path: Option<&std::path::Path>, memo: &mut Memo, planned_all: bool) {
    let Some(path) = path.filter(|_| memo.cache_dirty) else { return };
    if !planned_all && memo.cache_saved.is_some_and(|t| t.elapsed() < CACHE_SAVE_EVERY) {
        return;
    }
    match memo.cache.save(path) {
        Ok(()) => {
            memo.cache_dirty = false;
            memo.cache_saved = Some(Instant::now());
        }
        Err(e) => tracing::warn!(event = "cache_save_failed", path = %path.display(), error = %e),
    }
}

/// Returns 16 random bytes for this run (falling back to time and pid if the kernel has no
/// entropy call, which only weakens uniqueness, never safety of what is already stored).
fn run_nonce() -> [u8; 16] {
    let mut nonce = [0u8; 16];
    if rustix::rand::getrandom(&mut nonce[..], rustix::rand::GetRandomFlags::empty()).map_or(true, |n| n < 16) {
        let seed = format!("{:?}{}{:?}", now(), std::process::id(), std::thread::current().id());
        nonce.copy_from_slice(&blake3::hash(seed.as_bytes()).as_bytes()[..16]);
    }
    nonce
}

/// Returns the current time.
pub fn now() -> Timestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp(d.as_nanos() as i64)
}

async fn upload_packs(store: DynStore, rx: mpsc::Receiver<SealedPack>) -> Result<(Vec<IndexedPack>, u64)> {
    let packs = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) });
    let uploaded: Vec<(IndexedPack, u64)> = packs
        .map(|pack| {
            let store = store.clone();
            async move {
                let size = pack.bytes.len() as u64;
                let put = store.put_if_absent(&layout::pack(&pack.id), Bytes::from(pack.bytes)).await?;
                let sent = if put == Put::Created { size } else { 0 };
                Ok::<_, EngineError>((IndexedPack { id: pack.id, size, blobs: pack.entries }, sent))
            }
        })
        .buffer_unordered(UPLOADS_IN_FLIGHT)
        .try_collect()
        .await?;
    let bytes = uploaded.iter().map(|(_, n)| n).sum();
    Ok((uploaded.into_iter().map(|(p, _)| p).collect(), bytes))
}

struct ReadCtx {
    root: PathBuf,
    params: ChunkerParams,
    index: Index,
    /// Chunks already packed by this run.
    claimed: Mutex<HashSet<ChunkId>>,
    /// This run's random nonce, carried by its packs.
    nonce: [u8; 16],
    stop: AtomicBool,
    /// The next batch to take.
    next: AtomicUsize,
    /// The files to read.
    jobs: Vec<ReadJob>,
    /// Ranges of consecutive jobs, taken whole by one reader.
    batches: Vec<std::ops::Range<usize>>,
}

fn read_files(
    ctx: &ReadCtx,
    threads: usize,
    tx: mpsc::Sender<SealedPack>,
    progress: &Progress,
) -> Result<(Vec<ReadDone>, ReadStats)> {
    let results: Vec<Result<(Vec<ReadDone>, ReadStats)>> = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..threads.min(ctx.jobs.len())).map(|_| s.spawn(|| worker(ctx, &tx, progress))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(EngineError::Invalid("reader thread panicked".into()))))
            .collect()
    });
    let mut done = Vec::new();
    let mut stats = ReadStats::default();
    for r in results {
        let (d, s) = r?;
        done.extend(d);
        stats.files_read += s.files_read;
        stats.bytes_read += s.bytes_read;
        stats.chunks_new += s.chunks_new;
        stats.bytes_new += s.bytes_new;
        stats.skipped.extend(s.skipped);
    }
    Ok((done, stats))
}

/// Why one file was not read.
enum Skip {
    /// The file is gone or changed type; report and go on.
    File(String),
    /// The run must stop.
    Fatal(EngineError),
}

fn worker(ctx: &ReadCtx, tx: &mpsc::Sender<SealedPack>, progress: &Progress) -> Result<(Vec<ReadDone>, ReadStats)> {
    let mut pack = PackBuilder::new(ctx.nonce);
    let mut codecs = Codecs::new();
    let mut buf = Vec::new();
    let mut done = Vec::new();
    let mut stats = ReadStats::default();
    let mut mine = 0..0;
    while !ctx.stop.load(Ordering::Relaxed) {
        let i = match mine.next() {
            Some(i) => i,
            None => match ctx.batches.get(ctx.next.fetch_add(1, Ordering::Relaxed)) {
                Some(batch) => {
                    mine = batch.clone();
                    continue;
                }
                None => break,
            },
        };
        let job = &ctx.jobs[i];
        match read_one(ctx, job, &mut buf, &mut codecs, &mut pack, tx, &mut stats) {
            Ok(d) => {
                progress.file_done(d.stat.size);
                done.push(d);
            }
            Err(Skip::File(why)) => {
                progress.file_done(0);
                stats.skipped.push(format!("{}: {why}", job.path));
            }
            Err(Skip::Fatal(e)) => {
                ctx.stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
    }
    if !pack.is_empty() {
        send(tx, pack.seal(&mut codecs)).map_err(|s| match s {
            Skip::Fatal(e) => e,
            Skip::File(m) => EngineError::Invalid(m),
        })?;
    }
    Ok((done, stats))
}

fn send(tx: &mpsc::Sender<SealedPack>, pack: SealedPack) -> Result<(), Skip> {
    // The uploader only hangs up when it failed; its error is the one reported.
    tx.blocking_send(pack).map_err(|_| Skip::Fatal(EngineError::Invalid("pack upload stopped".into())))
}

fn read_one(
    ctx: &ReadCtx,
    job: &ReadJob,
    buf: &mut Vec<u8>,
    codecs: &mut Codecs,
    pack: &mut PackBuilder,
    tx: &mpsc::Sender<SealedPack>,
    stats: &mut ReadStats,
) -> Result<ReadDone, Skip> {
    let path = scan::join(&ctx.root, &job.path);
    let io_skip = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => Skip::File("vanished while the snapshot ran".into()),
        _ if e.raw_os_error() == Some(eloop()) => Skip::File("became a symlink while the snapshot ran".into()),
        std::io::ErrorKind::PermissionDenied => Skip::File(format!("cannot read: {e}")),
        _ => Skip::Fatal(EngineError::io("reading", &path, e)),
    };
    // O_NOFOLLOW: a file swapped for a link after the scan is not followed out of the workspace.
    let file = OpenOptions::new().read(true).custom_flags(o_nofollow()).open(&path).map_err(io_skip)?;
    let before = file.metadata().map_err(io_skip)?;
    if !before.is_file() {
        return Err(Skip::File("is no longer a regular file".into()));
    }
    let mut chunks = Vec::new();
    let mut add = |data: &[u8], pack: &mut PackBuilder, stats: &mut ReadStats| -> Result<(), Skip> {
        let id = ChunkId::of(data);
        let len = data.len() as u32;
        chunks.push(ChunkRef { id, len });
        if ctx.index.is_reusable(&id) || !ctx.claimed.lock().map(|mut c| c.insert(id)).unwrap_or(true) {
            return Ok(());
        }
        pack.add_chunk(codecs, id, data);
        stats.chunks_new += 1;
        stats.bytes_new += len as u64;
        if pack.is_full() {
            send(tx, pack.seal(codecs))?;
        }
        Ok(())
    };
    let mut read = 0u64;
    if before.len() <= ctx.params.max as u64 {
        buf.clear();
        (&file).read_to_end(buf).map_err(io_skip)?;
        read = buf.len() as u64;
        for range in ctx.params.chunks(buf) {
            add(&buf[range], pack, stats)?;
        }
    } else {
        let p = ctx.params;
        let cdc = fastcdc::v2020::StreamCDC::new(&file, p.min as usize, p.avg as usize, p.max as usize);
        for chunk in cdc {
            let chunk = chunk.map_err(|e| match e {
                fastcdc::v2020::Error::IoError(e) => io_skip(e),
                other => Skip::Fatal(EngineError::Invalid(format!("chunking {}: {other}", path.display()))),
            })?;
            read += chunk.data.len() as u64;
            add(&chunk.data, pack, stats)?;
        }
    }
    let after = file.metadata().map_err(io_skip)?;
    stats.files_read += 1;
    stats.bytes_read += read;
    let stat = scan::stat_of(&before);
    Ok(ReadDone { slot: job.slot, stat, chunks, stable: scan::stat_of(&after) == stat && read == stat.size })
}

fn o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

fn eloop() -> i32 {
    rustix::io::Errno::LOOP.raw_os_error()
}
