//! `SnapshotStore`: an object store opened as berth's snapshot store: its config, index,
//! snapshot records and manifests, read with validation.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use berth_core::config::StoreConfig;
use berth_core::id::{IndexId, ManifestId, MarkId, PackId, SnapshotId};
use berth_core::index::{Index, IndexFile};
use berth_core::layout;
use berth_core::manifest::Manifest;
use berth_core::mark::Mark;
use berth_core::snapshot::{Contents, SnapshotRecord};
use berth_core::workspace::{Generation, WorkspaceId};
use berth_core::FormatError;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::error::{EngineError, Result};
use crate::store::{DynStore, Put, StoreError};
use crate::trees;

/// How many small objects are fetched at once.
const FETCH_CONCURRENCY: usize = 16;

/// How many times a reader lists the index objects again when a prune compacts them under it.
const INDEX_READ_TRIES: usize = 3;

/// A published snapshot.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Its id.
    pub id: SnapshotId,
    /// Its record's key.
    pub key: String,
    /// Its record.
    pub record: SnapshotRecord,
}

/// The store's index with the objects it was built from.
#[derive(Debug, Default)]
pub struct LoadedIndex {
    /// Chunk locations.
    pub index: Index,
    /// The index objects read, with their content.
    pub files: Vec<(IndexId, IndexFile)>,
    /// The prune marks in force.
    pub marks: Vec<(MarkId, Mark)>,
}

/// An index kept in memory between runs of one writer, with what it was built from.
#[derive(Debug, Default)]
pub struct KnownIndex {
    /// Chunk locations.
    pub index: Index,
    /// The index objects it holds.
    pub ids: HashSet<IndexId>,
    /// The prune marks in force when it was loaded.
    pub marks: BTreeSet<MarkId>,
}

impl KnownIndex {
    /// Adds an index object (one this writer wrote, or one found since).
    pub fn add(&mut self, id: IndexId, file: &IndexFile) {
        if self.ids.insert(id) {
            self.index.add(file);
        }
    }
}

impl From<LoadedIndex> for KnownIndex {
    fn from(loaded: LoadedIndex) -> Self {
        KnownIndex {
            index: loaded.index,
            ids: loaded.files.iter().map(|(id, _)| *id).collect(),
            marks: loaded.marks.iter().map(|(id, _)| *id).collect(),
        }
    }
}

fn mark_id(o: &crate::store::ObjectInfo) -> Option<MarkId> {
    MarkId::from_hex(layout::parse_id_hex(&o.key)?).ok()
}

/// Records read earlier, by key, with the size they were listed with.
pub type KnownRecords = HashMap<String, (u64, Snapshot)>;

/// The state of one workspace generation's lineage.
#[derive(Clone, Debug, Default)]
pub struct Head {
    /// The latest snapshot: the greatest by (epoch, seq).
    pub latest: Option<Snapshot>,
    /// The highest seq of any record (0 when there is none); the next record is written at
    /// one more.
    pub max_seq: u64,
}

/// berth's snapshot store inside an object store.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    objects: DynStore,
    config: StoreConfig,
}

impl SnapshotStore {
    /// Opens an existing snapshot store.
    pub async fn open(objects: DynStore) -> Result<SnapshotStore> {
        match objects.get(layout::CONFIG).await {
            Ok(bytes) => Ok(SnapshotStore { config: StoreConfig::decode(&bytes)?, objects }),
            Err(StoreError::NotFound { .. }) => Err(EngineError::NotFound {
                what: format!("a berth store at {}", objects.url()),
                hint: "check the --store URL; `berth snapshot create` initialises a new store".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a snapshot store, initialising it when the object store has no config yet.
    pub async fn open_or_init(objects: DynStore) -> Result<SnapshotStore> {
        match SnapshotStore::open(objects.clone()).await {
            Err(EngineError::NotFound { .. }) => {
                let config = StoreConfig::default();
                // Two writers initialising at once both end up with the one config that won.
                if objects.put_if_absent(layout::CONFIG, Bytes::from(config.encode())).await? == Put::AlreadyExists {
                    return SnapshotStore::open(objects).await;
                }
                Ok(SnapshotStore { objects, config })
            }
            other => other,
        }
    }

    /// Returns the underlying object store.
    pub fn objects(&self) -> &DynStore {
        &self.objects
    }

    /// Returns the store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Reads every prune mark.
    pub async fn marks(&self) -> Result<Vec<(MarkId, Mark)>> {
        let objects = self.objects.list(layout::MARKS).await?;
        futures::stream::iter(objects)
            .map(|o| async move {
                let hex = layout::parse_id_hex(&o.key).ok_or_else(|| FormatError::new(&o.key, "not a mark key"))?;
                let id = MarkId::from_hex(hex).map_err(|e| FormatError::new(&o.key, e.to_string()))?;
                let bytes = self.objects.get(&o.key).await?;
                Ok::<_, EngineError>((id, Mark::decode(&id, &bytes)?))
            })
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Loads every index object, using `cache_dir/index/` as a local cache of them (they are
    /// immutable and verified against their id).
    pub async fn load_index(&self, cache_dir: Option<&Path>) -> Result<LoadedIndex> {
        let marks = self.marks().await?;
        let doomed: HashSet<PackId> = marks.iter().flat_map(|(_, m)| m.packs.iter().copied()).collect();
        let files = self.all_index_files(cache_dir).await?;
        let mut index = Index::new(doomed);
        index.reserve(files.iter().flat_map(|(_, f)| &f.packs).map(|p| p.blobs.len()).sum());
        for (_, f) in &files {
            index.add(f);
        }
        Ok(LoadedIndex { index, files, marks })
    }

    /// Brings `known` (an index loaded earlier) up to date, reading only the index objects that
    /// appeared since. When a prune mark came or went, or an index object went away (a prune
    /// rewrote the index), it loads everything again instead and returns `false`: then what was
    /// reusable before may not be any more.
    pub async fn refresh_index(&self, known: &mut KnownIndex, cache_dir: Option<&Path>) -> Result<bool> {
        let marks: BTreeSet<MarkId> = self.objects.list(layout::MARKS).await?.iter().filter_map(mark_id).collect();
        let listed = self.index_ids().await?;
        let ids: HashSet<IndexId> = listed.iter().map(|(id, _)| *id).collect();
        if marks == known.marks && known.ids.is_subset(&ids) {
            let new: Vec<(IndexId, String)> = listed.into_iter().filter(|(id, _)| !known.ids.contains(id)).collect();
            // `None`: a prune compacted the index since the listing.
            if let Some(files) = self.index_files(new, cache_dir).await? {
                for (id, file) in files {
                    known.add(id, &file);
                }
                return Ok(true);
            }
        }
        *known = KnownIndex::from(self.load_index(cache_dir).await?);
        Ok(false)
    }

    /// Lists and reads every index object. A prune that compacts the index between the
    /// listing and the reads deletes what was listed: the listing is then taken again.
    async fn all_index_files(&self, cache_dir: Option<&Path>) -> Result<Vec<(IndexId, IndexFile)>> {
        for _ in 0..INDEX_READ_TRIES {
            let listed = self.index_ids().await?;
            if let Some(files) = self.index_files(listed, cache_dir).await? {
                return Ok(files);
            }
        }
        Err(EngineError::Conflict(format!(
            "the index objects changed under {INDEX_READ_TRIES} readings in a row (prunes running back to back?); \
             try again"
        )))
    }

    /// Lists the index objects.
    async fn index_ids(&self) -> Result<Vec<(IndexId, String)>> {
        let listed = self.objects.list(layout::INDEX).await?;
        listed
            .into_iter()
            .map(|o| {
                let hex = layout::parse_id_hex(&o.key).ok_or_else(|| FormatError::new(&o.key, "not an index key"))?;
                let id = IndexId::from_hex(hex).map_err(|e| FormatError::new(&o.key, e.to_string()))?;
                Ok((id, o.key))
            })
            .collect()
    }

    /// Reads index objects, from `cache_dir/index/` when it holds a valid copy; `None` when one
    /// of them is gone since it was listed (a prune compacted the index).
    async fn index_files(
        &self,
        keys: Vec<(IndexId, String)>,
        cache_dir: Option<&Path>,
    ) -> Result<Option<Vec<(IndexId, IndexFile)>>> {
        let cache = cache_dir.map(|d| d.join("index"));
        futures::stream::iter(keys)
            .map(|(id, key)| {
                let cache = cache.clone();
                async move {
                    let hex = id.to_hex();
                    if let Some(dir) = &cache {
                        if let Ok(bytes) = std::fs::read(dir.join(&hex)) {
                            if let Ok(file) = IndexFile::decode(&id, &bytes) {
                                return Ok(Some((id, file)));
                            }
                        }
                    }
                    let bytes = match self.objects.get(&key).await {
                        Ok(bytes) => bytes,
                        Err(StoreError::NotFound { .. }) => return Ok(None),
                        Err(e) => return Err(e.into()),
                    };
                    let file = IndexFile::decode(&id, &bytes)?;
                    if let Some(dir) = &cache {
                        // The cache is an optimisation: failing to fill it is not an error.
                        let _ = std::fs::create_dir_all(dir).and_then(|()| write_atomic(&dir.join(&hex), &bytes));
                    }
                    Ok::<_, EngineError>(Some((id, file)))
                }
            })
            .buffered(FETCH_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await
            .map(|files| files.into_iter().collect())
    }

    async fn read_records(&self, keys: Vec<String>) -> Result<Vec<Snapshot>> {
        futures::stream::iter(keys)
            .map(|key| async move {
                let bytes = match self.objects.get(&key).await {
                    Ok(bytes) => bytes,
                    // Forgotten since it was listed (retention runs beside readers and writers).
                    Err(StoreError::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let (id, record) = SnapshotRecord::decode(&key, &bytes)?;
                let expected = layout::snapshot(&record.workspace, record.generation, record.seq);
                if expected != key {
                    return Err(
                        FormatError::new(format!("snapshot record {key}"), "its content names another key").into()
                    );
                }
                Ok(Some(Snapshot { id, key, record }))
            })
            .buffered(FETCH_CONCURRENCY)
            .try_filter_map(|s| async move { Ok(s) })
            .try_collect()
            .await
    }

    /// Lists snapshots, of one workspace (and generation) or of the whole store, oldest first.
    pub async fn list(&self, workspace: Option<&WorkspaceId>, generation: Option<Generation>) -> Result<Vec<Snapshot>> {
        let prefix = match (workspace, generation) {
            (Some(ws), Some(g)) => layout::snapshots_of(ws, g),
            (Some(ws), None) => format!("{}{ws}/", layout::SNAPSHOTS),
            _ => layout::SNAPSHOTS.to_string(),
        };
        let keys: Vec<String> = self
            .objects
            .list(&prefix)
            .await?
            .into_iter()
            .filter(|o| layout::parse_snapshot(&o.key).is_some())
            .map(|o| o.key)
            .collect();
        let mut snaps = self.read_records(keys).await?;
        snaps.sort_by(|a, b| {
            (&a.record.workspace, a.record.generation, a.record.order()).cmp(&(
                &b.record.workspace,
                b.record.generation,
                b.record.order(),
            ))
        });
        Ok(snaps)
    }

    /// Returns the latest snapshot of a workspace generation (the greatest by (epoch, seq)),
    /// if any.
    pub async fn latest(&self, workspace: &WorkspaceId, generation: Generation) -> Result<Option<Snapshot>> {
        Ok(self.head(workspace, generation).await?.latest)
    }

    /// Returns the latest snapshot of a workspace generation and the highest seq in use there.
    /// Every record is read: a record's epoch is in its content, not in its key.
    pub async fn head(&self, workspace: &WorkspaceId, generation: Generation) -> Result<Head> {
        let snaps = self.list(Some(workspace), Some(generation)).await?;
        let max_seq = snaps.iter().map(|s| s.record.seq).max().unwrap_or(0);
        Ok(Head { latest: snaps.into_iter().last(), max_seq })
    }

    /// Like `head`, reading only the records that `known` (records read earlier, by key) does
    /// not hold with the size listed now; `known` becomes what is listed now. A record's key
    /// is written once, create-if-absent, and only a forget removes one, never the latest of a
    /// generation, so nobody writes a key again below the highest seq: a key listed with the
    /// size it had holds the record it held.
    pub async fn head_known(
        &self,
        workspace: &WorkspaceId,
        generation: Generation,
        known: &mut KnownRecords,
    ) -> Result<Head> {
        let listed = self.objects.list(&layout::snapshots_of(workspace, generation)).await?;
        let mut now = KnownRecords::new();
        let mut sizes: HashMap<String, u64> = HashMap::new();
        for o in listed.into_iter().filter(|o| layout::parse_snapshot(&o.key).is_some()) {
            match known.remove(&o.key) {
                Some((size, snapshot)) if size == o.size => drop(now.insert(o.key, (size, snapshot))),
                _ => drop(sizes.insert(o.key, o.size)),
            }
        }
        for snapshot in self.read_records(sizes.keys().cloned().collect()).await? {
            let size = sizes.get(&snapshot.key).copied().unwrap_or_default();
            now.insert(snapshot.key.clone(), (size, snapshot));
        }
        *known = now;
        let max_seq = known.values().map(|(_, s)| s.record.seq).max().unwrap_or(0);
        let latest = known.values().map(|(_, s)| s).max_by_key(|s| s.record.order()).cloned();
        Ok(Head { latest, max_seq })
    }

    /// Reads the record under `key`, if there is one.
    pub async fn record_at(&self, key: &str) -> Result<Option<Snapshot>> {
        match self.read_records(vec![key.to_string()]).await {
            Ok(mut found) => Ok(found.pop()),
            Err(EngineError::Store(StoreError::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Finds a snapshot by `latest` or by a unique prefix of its id (at least 4 hex digits).
    pub async fn resolve(&self, workspace: &WorkspaceId, generation: Generation, selector: &str) -> Result<Snapshot> {
        let not_found = |what: String| EngineError::NotFound {
            what,
            hint: format!("list them with `berth snapshot ls --workspace {workspace}`"),
        };
        let shown = berth_core::bounded(selector, berth_core::ECHO_MAX);
        if selector == "latest" {
            return self
                .latest(workspace, generation)
                .await?
                .ok_or_else(|| not_found(format!("a snapshot of workspace {workspace} (generation {generation})")));
        }
        if selector.len() < 4 || !selector.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EngineError::Invalid(format!(
                "snapshot '{shown}' is neither 'latest' nor an id prefix of at least 4 hex digits"
            )));
        }
        let matches: Vec<Snapshot> = self
            .list(Some(workspace), Some(generation))
            .await?
            .into_iter()
            .filter(|s| s.id.to_hex().starts_with(&selector.to_ascii_lowercase()))
            .collect();
        match matches.len() {
            0 => Err(not_found(format!("snapshot {shown} of workspace {workspace} (generation {generation})"))),
            1 => Ok(matches.into_iter().next().expect("one match")),
            n => {
                Err(EngineError::Invalid(format!("snapshot prefix '{shown}' matches {n} snapshots; give more digits")))
            }
        }
    }

    /// Returns the snapshot `selector` names (`latest` or an id prefix), or with `None` every
    /// snapshot of the workspace generation; an empty selection is an error.
    pub async fn select(
        &self,
        workspace: &WorkspaceId,
        generation: Generation,
        selector: Option<&str>,
    ) -> Result<Vec<Snapshot>> {
        if let Some(selector) = selector {
            return Ok(vec![self.resolve(workspace, generation, selector).await?]);
        }
        let snapshots = self.list(Some(workspace), Some(generation)).await?;
        if snapshots.is_empty() {
            return Err(EngineError::NotFound {
                what: format!("a snapshot of workspace {workspace} (generation {generation})"),
                hint: "list what the store holds with `berth snapshot ls`".into(),
            });
        }
        Ok(snapshots)
    }

    /// Reads and validates a manifest (the tree of a record of the single-manifest form).
    pub async fn manifest(&self, id: &ManifestId) -> Result<Manifest> {
        let bytes = self.objects.get(&layout::manifest(id)).await?;
        Ok(Manifest::decode(id, &bytes)?)
    }

    /// Reads and validates a snapshot's tree, in either form. Tree objects are found through
    /// `index` (loaded here when `None`).
    pub async fn tree(&self, contents: &Contents, index: Option<&Index>) -> Result<Manifest> {
        match contents {
            Contents::Manifest(id) => self.manifest(id).await,
            Contents::Root(root) => match index {
                Some(index) => trees::manifest(&self.objects, index, root, None).await,
                None => trees::manifest(&self.objects, &self.load_index(None).await?.index, root, None).await,
            },
        }
    }
}

/// Keeps the latest snapshot (the greatest by (epoch, seq)) of each workspace generation of a
/// listing sorted as `SnapshotStore::list` sorts it.
pub fn latest_of_each(snapshots: Vec<Snapshot>) -> Vec<Snapshot> {
    let mut latest: Vec<Snapshot> = Vec::new();
    for s in snapshots {
        match latest.last_mut() {
            Some(prev)
                if prev.record.workspace == s.record.workspace && prev.record.generation == s.record.generation =>
            {
                *prev = s
            }
            _ => latest.push(s),
        }
    }
    latest
}

/// Writes a file atomically: a temporary sibling, then a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
