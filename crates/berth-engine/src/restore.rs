//! Restoring a snapshot into a directory, empty or not.
//!
//! # Guarantees
//! - Nothing is written, linked or removed outside the target, and no symlink is followed on
//!   the way (see `beneath`); a manifest that tries is refused before any data is written.
//! - Every chunk is checked against its hash before its bytes reach a file.
//! - Every chunk is located in the index before the target is touched, so a damaged store
//!   fails the restore without destroying what the target held.
//! - Entries the snapshot does not hold are removed from the target, except excluded paths,
//!   which a snapshot never holds and a restore leaves alone.
//! - Before any of that, the target is checked (`berth_core::target`): a symlink, `/`, the home
//!   directory, a directory holding or inside the store or the cache are refused, and so is a
//!   non-empty directory without berth's restore marker unless `delete` is set. The marker is
//!   written before the first change to the target.
//!
//! # Caveats
//! - Ownership, ACLs and extended attributes are not restored; files belong to the restoring user.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use berth_core::codec::{Codecs, FrameCache};
use berth_core::excludes::Excludes;
use berth_core::id::{ChunkId, PackId, SnapshotId};
use berth_core::index::{Index, Location};
use berth_core::layout;
use berth_core::manifest::{Entry, EntryKind, Manifest};
use berth_core::path::RelPath;
use berth_core::target::{self, TargetFacts};
use berth_core::workspace::{Generation, WorkspaceId};
use bytes::Bytes;
use futures::StreamExt;
use rustix::fs::OFlags;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::beneath::{self, Root};
use crate::cache::{self, CachedFile, FileCache};
use crate::error::{EngineError, Result};
use crate::progress::Progress;
use crate::scan::{self, FileStat, ScanKind};
use crate::snapshot_store::SnapshotStore;
use crate::store::DynStore;

/// Packs fetched at once.
const FETCHES_IN_FLIGHT: usize = 4;

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// Its generation.
    pub generation: Generation,
    /// `latest` or a snapshot id prefix.
    pub snapshot: String,
    /// The target directory (created when missing).
    pub dir: PathBuf,
    /// Paths a restore leaves alone in an existing target.
    pub excludes: Excludes,
    /// Where to seed the local file cache (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Worker threads for decoding and writing.
    pub threads: usize,
    /// Clear a non-empty target that berth did not restore into (the CLI's `--delete`); without
    /// it such a target is refused.
    pub delete: bool,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreSummary {
    /// The snapshot restored.
    pub snapshot: SnapshotId,
    /// Its sequence number.
    pub seq: u64,
    /// Regular files written.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Hard links.
    pub hardlinks: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Entries of the target removed because the snapshot does not hold them.
    pub removed: u64,
    /// Packs read from the store.
    pub packs_fetched: u64,
    /// Bytes read from the store.
    pub bytes_fetched: u64,
    /// Wall time.
    pub duration_secs: f64,
}

/// One destination of a chunk.
#[derive(Clone, Copy)]
struct Dest {
    file: u32,
    offset: u64,
}

/// The chunks one pack provides.
struct PackWork {
    pack: PackId,
    chunks: Vec<(ChunkId, Location, Vec<Dest>)>,
}

/// A regular file being written.
struct Target {
    entry: usize,
    /// Chunk writes still to do; whoever does the last one sets the metadata.
    remaining: AtomicU32,
}

/// Restores a snapshot into `opts.dir`.
pub async fn restore(store: &SnapshotStore, opts: &RestoreOptions, progress: &Arc<Progress>) -> Result<RestoreSummary> {
    let started = Instant::now();
    let checked = check_target(store.objects().url(), opts)?;
    let snapshot = store.resolve(&opts.workspace, opts.generation, &opts.snapshot).await?;
    let loaded = store.load_index(opts.cache_dir.as_deref()).await?;
    let manifest = Arc::new(store.tree(&snapshot.record.contents, Some(&loaded.index)).await?);
    let work = plan_packs(&manifest, &loaded.index)?;

    std::fs::create_dir_all(&opts.dir).map_err(|e| EngineError::io("creating", &opts.dir, e))?;
    let dir = std::fs::canonicalize(&opts.dir).map_err(|e| EngineError::io("opening", &opts.dir, e))?;
    if dir != checked {
        return Err(EngineError::Invalid(format!(
            "the restore target {} changed while the restore started (it now resolves to {}); nothing was written",
            opts.dir.display(),
            dir.display()
        )));
    }
    let root = Arc::new(Root::open(&dir).map_err(|e| EngineError::io("opening", &dir, e))?);
    write_marker(&root, &dir, opts, &snapshot.id)?;

    // Prepare the tree: clear what does not belong, make directories, links and empty files.
    let (m, r, d, ex) = (manifest.clone(), root.clone(), dir.clone(), opts.excludes.clone());
    let skip: Vec<PathBuf> = opts.cache_dir.iter().filter_map(|c| std::fs::canonicalize(c).ok()).collect();
    let (targets, finished, removed) = blocking(move || prepare(&r, &d, &m, &ex, &skip)).await??;
    let totals = manifest.totals();
    progress.start("restore", totals.files, totals.bytes);

    let writers = Writers::spawn(root.clone(), manifest.clone(), targets, finished, opts.threads.max(1), progress);
    let fetched = fetch_packs(store.objects(), work, &writers, progress).await;
    let stable = writers.join().await;
    let (n_packs, bytes_fetched) = fetched?;
    let stable = stable?;

    // Hard links, then directory metadata deepest first (so read-only directories come last).
    let (m, r) = (manifest.clone(), root.clone());
    blocking(move || finish(&r, &m)).await??;
    if let Some(cache_dir) = &opts.cache_dir {
        let path = cache::path(cache_dir, store.objects().url(), &opts.workspace, opts.generation, &dir);
        seed_cache(&path, &dir, &manifest, stable);
    }
    tracing::info!(event = "snapshot_restored", workspace = %opts.workspace, seq = snapshot.record.seq, snapshot = %snapshot.id);
    Ok(RestoreSummary {
        snapshot: snapshot.id,
        seq: snapshot.record.seq,
        files: totals.files,
        dirs: totals.dirs,
        symlinks: totals.symlinks,
        hardlinks: totals.hardlinks,
        bytes: totals.bytes,
        removed,
        packs_fetched: n_packs,
        bytes_fetched,
        duration_secs: started.elapsed().as_secs_f64(),
    })
}

/// Checks that a restore may go into `opts.dir` (see `berth_core::target`), touching nothing;
/// returns it resolved (as it will be once created, when it is missing).
fn check_target(store_url: &str, opts: &RestoreOptions) -> Result<PathBuf> {
    let given = &opts.dir;
    let meta = std::fs::symlink_metadata(given);
    let is_symlink = meta.as_ref().is_ok_and(|m| m.file_type().is_symlink());
    let resolved = resolve_missing(given)?;
    let (mut holds_entries, mut has_marker) = (false, false);
    if meta.is_ok() && !is_symlink {
        let entries = std::fs::read_dir(&resolved).map_err(|e| EngineError::io("reading", &resolved, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| EngineError::io("reading", &resolved, e))?;
            holds_entries |= !target::is_ignorable(entry.file_name().as_bytes());
        }
        has_marker = std::fs::symlink_metadata(resolved.join(target::RESTORE_MARKER)).is_ok_and(|m| m.is_file());
    }
    let resolve = |p: &Path| std::fs::canonicalize(p).ok();
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).and_then(|h| resolve(Path::new(&h)));
    let store_dir = store_url.strip_prefix("file://").and_then(|p| resolve(Path::new(p)));
    let cache_dir = opts.cache_dir.as_deref().map(resolve_missing).transpose()?;
    let mut protected: Vec<(&str, &Path)> = Vec::new();
    if let Some(p) = &store_dir {
        protected.push(("the store", p));
    }
    if let Some(p) = &cache_dir {
        protected.push(("the cache", p));
    }
    let facts = TargetFacts {
        given,
        is_symlink,
        resolved: &resolved,
        holds_entries,
        has_marker,
        home: home.as_deref(),
        protected: &protected,
    };
    target::check(&facts, opts.delete)?;
    Ok(resolved)
}

/// Resolves `path` as it will be once created: its longest existing ancestor resolved, and the
/// rest appended.
fn resolve_missing(path: &Path) -> Result<PathBuf> {
    let cwd = std::env::current_dir().map_err(|e| EngineError::io("resolving", path, e))?;
    let abs = cwd.join(path);
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut out) = std::fs::canonicalize(existing) {
            out.extend(rest.iter().rev());
            return Ok(out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return Ok(abs),
        }
    }
}

/// Writes the restore marker into the target (beneath it, through no symlink) before the
/// first change: it says that berth may make this directory match a snapshot again.
fn write_marker(root: &Root, dir: &Path, opts: &RestoreOptions, snapshot: &SnapshotId) -> Result<()> {
    let marker = target::RESTORE_MARKER.as_bytes();
    let rel = RelPath::new(marker.to_vec()).map_err(|e| EngineError::Invalid(e.to_string()))?;
    let fail = |op, e| io_err(op, dir, &rel, e);
    let mut parent = rel.parent();
    let mut parents = Vec::new();
    while let Some(p) = parent {
        parent = p.parent();
        parents.push(p);
    }
    for p in parents.iter().rev() {
        root.mkdir(p.as_bytes(), 0o700).map_err(|e| fail("creating", e))?;
    }
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC;
    let mut f = File::from(root.open_at(marker, flags, 0o600).map_err(|e| fail("writing", e))?);
    let text = format!("workspace {} generation {} snapshot {}\n", opts.workspace, opts.generation, snapshot);
    f.write_all(text.as_bytes()).map_err(|e| fail("writing", e))
}

/// The threads that decode fetched packs and write their chunks into files.
struct Writers {
    tx: mpsc::Sender<(PackWork, Bytes)>,
    /// Set by a writer that failed, so fetching stops.
    failed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<Finished>>,
}

impl Writers {
    /// Starts `threads` writers over the prepared `targets`; `finished` are files already complete.
    fn spawn(
        root: Arc<Root>,
        manifest: Arc<Manifest>,
        targets: Vec<Target>,
        finished: Finished,
        threads: usize,
        progress: &Arc<Progress>,
    ) -> Writers {
        let (tx, rx) = mpsc::channel::<(PackWork, Bytes)>(threads * 2);
        let rx = Mutex::new(rx);
        let failed = Arc::new(AtomicBool::new(false));
        let (flag, progress) = (failed.clone(), progress.clone());
        let task = tokio::task::spawn_blocking(move || {
            let stable = Mutex::new(finished);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| {
                            let r = write_worker(&root, &manifest, &targets, &rx, &stable, &progress);
                            if r.is_err() {
                                flag.store(true, Ordering::Relaxed);
                            }
                            r
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(EngineError::Invalid("restore thread panicked".into()))))
                    .collect::<Result<Vec<()>>>()
            })?;
            Ok(stable.into_inner().unwrap_or_else(|e| e.into_inner()))
        });
        Writers { tx, failed, task }
    }

    /// Hands a fetched pack to the writers; `false` when they stopped (one failed).
    async fn send(&self, work: PackWork, bytes: Bytes) -> bool {
        !self.failed.load(Ordering::Relaxed) && self.tx.send((work, bytes)).await.is_ok()
    }

    /// Waits for the writers to drain; returns the files written completely, with their stat.
    async fn join(self) -> Result<Finished> {
        drop(self.tx);
        self.task.await.map_err(|e| EngineError::Invalid(format!("restore task failed: {e}")))?
    }
}

/// Fetches the packs, 4 at once, and hands them to the writers in plan order. Returns how many
/// packs and bytes it fetched; stops at the first error, or when the writers stop.
async fn fetch_packs(
    objects: &DynStore,
    work: Vec<PackWork>,
    writers: &Writers,
    progress: &Progress,
) -> Result<(u64, u64)> {
    let n_packs = work.len() as u64;
    let mut fetches = futures::stream::iter(work)
        .map(|w| async move {
            let bytes = objects.get(&layout::pack(&w.pack)).await?;
            Ok::<_, EngineError>((w, bytes))
        })
        .buffered(FETCHES_IN_FLIGHT);
    let mut bytes_fetched = 0u64;
    while let Some(item) = fetches.next().await {
        let (w, bytes) = item?;
        bytes_fetched += bytes.len() as u64;
        progress.transferred(bytes.len() as u64);
        if !writers.send(w, bytes).await {
            break;
        }
    }
    Ok((n_packs, bytes_fetched))
}

/// Seeds the file cache with what the restore wrote, so the next snapshot reads none of it.
fn seed_cache(path: &Path, dir: &Path, manifest: &Manifest, stable: Finished) {
    let mut c = FileCache::new();
    // Linking changed the ctime of every hard-linked file: take its stat again.
    let linked: HashSet<&RelPath> = manifest
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::Hardlink { target } => Some(target),
            _ => None,
        })
        .collect();
    for (entry, mut stat) in stable {
        let e = &manifest.entries[entry];
        if linked.contains(&e.path) {
            match std::fs::symlink_metadata(scan::join(dir, &e.path)) {
                Ok(m) => stat = scan::stat_of(&m),
                Err(_) => continue,
            }
        }
        if let EntryKind::File { chunks, .. } = &e.kind {
            c.files.insert(e.path.as_bytes().to_vec(), CachedFile { stat, chunks: chunks.clone() });
        }
    }
    if let Err(e) = c.save(path) {
        tracing::warn!(event = "cache_save_failed", path = %path.display(), error = %e);
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| EngineError::Invalid(format!("restore task failed: {e}")))
}

/// Groups every chunk the manifest needs by pack, in order of first use. Fails if any chunk
/// is missing from the index.
fn plan_packs(manifest: &Manifest, index: &Index) -> Result<Vec<PackWork>> {
    let mut order: Vec<PackWork> = Vec::new();
    let mut pack_slot: HashMap<PackId, usize> = HashMap::new();
    let mut chunk_slot: HashMap<ChunkId, (usize, usize)> = HashMap::new();
    let mut file = 0u32;
    for e in &manifest.entries {
        let EntryKind::File { chunks, .. } = &e.kind else { continue };
        let mut offset = 0u64;
        for c in chunks {
            let dest = Dest { file, offset };
            offset += c.len as u64;
            if let Some((p, i)) = chunk_slot.get(&c.id) {
                order[*p].chunks[*i].2.push(dest);
                continue;
            }
            let loc = *index.get(&c.id).ok_or_else(|| EngineError::NotFound {
                what: format!("chunk {} of {}", c.id.short(), e.path),
                hint: "the store is damaged (an object was deleted outside berth); run `berth snapshot verify` and restore an older snapshot".into(),
            })?;
            if loc.blob.raw_len != c.len {
                return Err(berth_core::FormatError::new(
                    format!("chunk {}", c.id.short()),
                    "the index and the manifest disagree on its length",
                )
                .into());
            }
            let p = *pack_slot.entry(loc.pack).or_insert_with(|| {
                order.push(PackWork { pack: loc.pack, chunks: Vec::new() });
                order.len() - 1
            });
            order[p].chunks.push((c.id, loc, vec![dest]));
            chunk_slot.insert(c.id, (p, order[p].chunks.len() - 1));
        }
        file += 1;
    }
    // In frame order, so that each shared frame is decoded once.
    for w in &mut order {
        w.chunks.sort_by_key(|(_, loc, _)| (loc.blob.offset, loc.blob.inner));
    }
    Ok(order)
}

fn io_err(op: &'static str, dir: &Path, rel: &RelPath, e: std::io::Error) -> EngineError {
    if beneath::is_link_refusal(&e) {
        return EngineError::Unsafe {
            path: rel.to_string(),
            reason: "a symlink or non-directory stands in its path".into(),
        };
    }
    EngineError::io(op, scan::join(dir, rel), e)
}

fn kind_matches(scanned: &ScanKind, entry: &EntryKind) -> bool {
    matches!(
        (scanned, entry),
        (ScanKind::Dir, EntryKind::Dir) | (ScanKind::File { nlink: 1, .. }, EntryKind::File { .. })
    )
}

/// Files written completely, by manifest entry, with their stat then (to seed the cache).
type Finished = Vec<(usize, FileStat)>;

/// Clears the target of what the snapshot does not hold, creates directories, symlinks and
/// empty files, and pre-sizes multi-chunk files. Returns the regular files to fill, the empty
/// files it finished (with their stat, for the cache) and how many entries it removed.
fn prepare(
    root: &Root,
    dir: &Path,
    manifest: &Manifest,
    excludes: &Excludes,
    skip: &[PathBuf],
) -> Result<(Vec<Target>, Finished, u64)> {
    let wanted: HashMap<&RelPath, &EntryKind> = manifest.entries.iter().map(|e| (&e.path, &e.kind)).collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let existing = scan::scan(dir, excludes, skip, threads)?;
    let mut removed = 0u64;
    let mut gone: HashSet<RelPath> = HashSet::new();
    // Entries are removed and created below read-only directories too: open those up until
    // `finish` sets the snapshot's modes (the ones the snapshot lacks are removed anyway).
    for e in existing.entries.iter().filter(|e| matches!(e.kind, ScanKind::Dir) && e.mode & 0o700 != 0o700) {
        if let Ok(fd) = root.open_at(e.path.as_bytes(), OFlags::RDONLY | OFlags::DIRECTORY, 0) {
            rustix::fs::fchmod(&fd, rustix::fs::Mode::from_bits_truncate(e.mode | 0o700))
                .map_err(|err| io_err("making writable", dir, &e.path, err.into()))?;
        }
    }
    for e in &existing.entries {
        if std::iter::successors(e.path.parent(), |p| p.parent()).any(|p| gone.contains(&p)) {
            continue;
        }
        // Symlinks and hard links are always made anew; files linked elsewhere are replaced,
        // never written through; so are read-only files, which cannot be opened for writing.
        let keep = wanted.get(&e.path).is_some_and(|k| kind_matches(&e.kind, k))
            && (matches!(e.kind, ScanKind::Dir) || e.mode & 0o200 != 0)
            // berth's own directory holds the restore marker: emptied, never removed, unless the
            // snapshot wants something else there.
            || (e.path.as_bytes() == scan::BERTH_DIR
                && matches!(e.kind, ScanKind::Dir)
                && wanted.get(&e.path).is_none_or(|k| matches!(k, EntryKind::Dir)));
        if !keep {
            root.remove(e.path.as_bytes()).map_err(|err| io_err("removing", dir, &e.path, err))?;
            if !wanted.contains_key(&e.path) {
                removed += 1;
            }
            gone.insert(e.path.clone());
        }
    }
    let mut targets = Vec::new();
    let mut finished = Vec::new();
    for (i, e) in manifest.entries.iter().enumerate() {
        let rel = e.path.as_bytes();
        match &e.kind {
            EntryKind::Dir => root.mkdir(rel, 0o700).map_err(|err| io_err("creating", dir, &e.path, err))?,
            EntryKind::Symlink { target } => {
                root.symlink(target, rel, e.mtime_ns).map_err(|err| io_err("creating", dir, &e.path, err))?
            }
            EntryKind::Hardlink { .. } => {}
            EntryKind::File { chunks, size } => {
                if chunks.len() != 1 {
                    // Empty files are finished here; multi-chunk files are sized for positional writes.
                    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC;
                    let fd = root.open_at(rel, flags, 0o600).map_err(|err| io_err("creating", dir, &e.path, err))?;
                    let f = File::from(fd);
                    f.set_len(*size).map_err(|err| io_err("sizing", dir, &e.path, err))?;
                    if chunks.is_empty() {
                        beneath::set_meta(&f, e.mode, e.mtime_ns)
                            .map_err(|err| io_err("setting metadata of", dir, &e.path, err))?;
                        let meta = f.metadata().map_err(|err| io_err("reading metadata of", dir, &e.path, err))?;
                        finished.push((i, scan::stat_of(&meta)));
                    }
                }
                targets.push(Target { entry: i, remaining: AtomicU32::new(chunks.len() as u32) });
            }
        }
    }
    Ok((targets, finished, removed))
}

fn write_worker(
    root: &Root,
    manifest: &Manifest,
    targets: &[Target],
    rx: &Mutex<mpsc::Receiver<(PackWork, Bytes)>>,
    stable: &Mutex<Vec<(usize, FileStat)>>,
    progress: &Progress,
) -> Result<()> {
    let mut codecs = Codecs::new();
    loop {
        let next = match rx.lock() {
            Ok(mut rx) => rx.blocking_recv(),
            Err(_) => None,
        };
        let Some((work, bytes)) = next else { return Ok(()) };
        let mut frame = FrameCache::default();
        for (id, loc, dests) in &work.chunks {
            let raw = codecs
                .blob(&mut frame, &bytes, &loc.blob)
                .map_err(|e| corrupt(&work, id, dests, manifest, targets, e))?;
            for dest in dests {
                let target = &targets[dest.file as usize];
                let entry = &manifest.entries[target.entry];
                if write_chunk(root, entry, target, dest.offset, raw, stable)? {
                    progress.file_done(entry.size());
                }
            }
        }
    }
}

/// Describes a chunk that failed to decode: which pack, which chunk, which file needed it.
fn corrupt(
    work: &PackWork,
    id: &ChunkId,
    dests: &[Dest],
    manifest: &Manifest,
    targets: &[Target],
    e: berth_core::FormatError,
) -> EngineError {
    let file =
        dests.first().map(|d| manifest.entries[targets[d.file as usize].entry].path.to_string()).unwrap_or_default();
    EngineError::Format(berth_core::FormatError::new(
        format!("chunk {} of {file} in pack {}", id.short(), work.pack.short()),
        format!("{}; run `berth snapshot verify --read-data` and restore an older snapshot", e.reason),
    ))
}

/// Writes one chunk into its file; returns whether that finished the file.
fn write_chunk(
    root: &Root,
    entry: &Entry,
    target: &Target,
    offset: u64,
    raw: &[u8],
    stable: &Mutex<Vec<(usize, FileStat)>>,
) -> Result<bool> {
    let EntryKind::File { chunks, .. } = &entry.kind else { return Ok(false) };
    let rel = entry.path.as_bytes();
    let fail = |op, e| io_err(op, Path::new(""), &entry.path, e);
    let single = chunks.len() == 1;
    let flags = if single { OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC } else { OFlags::WRONLY };
    let mut f = File::from(root.open_at(rel, flags, 0o600).map_err(|e| fail("writing", e))?);
    if single {
        f.write_all(raw).map_err(|e| fail("writing", e))?;
    } else {
        f.write_all_at(raw, offset).map_err(|e| fail("writing", e))?;
    }
    if target.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        beneath::set_meta(&f, entry.mode, entry.mtime_ns).map_err(|e| fail("setting metadata of", e))?;
        let meta = f.metadata().map_err(|e| fail("reading metadata of", e))?;
        if let Ok(mut s) = stable.lock() {
            s.push((target.entry, scan::stat_of(&meta)));
        }
        return Ok(true);
    }
    Ok(false)
}

/// Makes hard links and sets directory metadata, deepest directories first.
fn finish(root: &Root, manifest: &Manifest) -> Result<()> {
    let here = Path::new("");
    for e in &manifest.entries {
        if let EntryKind::Hardlink { target } = &e.kind {
            root.hard_link(target.as_bytes(), e.path.as_bytes())
                .map_err(|err| io_err("linking", here, &e.path, err))?;
        }
    }
    let dirs: Vec<&Entry> = manifest.entries.iter().filter(|e| matches!(e.kind, EntryKind::Dir)).collect();
    for e in dirs.iter().rev() {
        let fd = root
            .open_at(e.path.as_bytes(), OFlags::RDONLY | OFlags::DIRECTORY, 0)
            .map_err(|err| io_err("opening", here, &e.path, err))?;
        beneath::set_meta(&fd, e.mode, e.mtime_ns).map_err(|err| io_err("setting metadata of", here, &e.path, err))?;
    }
    Ok(())
}
