//! Index objects pile up, one per snapshot run, until a prune compacts them into one: restores
//! and new writers then read one object where they read hundreds. A reader whose listing a
//! compaction overtakes (the objects it listed are gone when it reads them) lists again.
//!
//! The race comes from a store decorator that runs the compaction on the reader's first index
//! read, not from timing.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use berth_core::layout;
use berth_engine::create;
use berth_engine::maintain;
use berth_engine::progress::Progress;
use berth_engine::restore;
use berth_engine::snapshot_store::SnapshotStore;
use berth_engine::store::{memory, Deleted, DynStore, ObjectInfo, Put, Store, StoreError};
use bytes::Bytes;
use common::{Rng, TreeImage, TreeShape};

/// Wraps a store: the first `index/` read runs a prune (grace one day: it only compacts) on the
/// inner store before it is answered, as a prune on another host would between a reader's
/// listing and its reads.
#[derive(Debug)]
struct Compactor {
    inner: DynStore,
    armed: Mutex<bool>,
}

#[async_trait]
impl Store for Compactor {
    fn url(&self) -> &str {
        self.inner.url()
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<Put, StoreError> {
        self.inner.put_if_absent(key, data).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let fire = key.starts_with(layout::INDEX) && std::mem::take(&mut *self.armed.lock().expect("lock"));
        if fire {
            let store = SnapshotStore::open(self.inner.clone()).await.expect("open");
            let plan = maintain::prune_plan(&store, 86_400).await.expect("plan");
            let done = maintain::prune_apply(&store, &plan).await.expect("compact");
            assert!(done.index_objects_compacted > 1, "the compaction replaced the listed objects: {done:?}");
        }
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<Deleted, StoreError> {
        self.inner.delete(key).await
    }
}

async fn index_objects(objects: &DynStore) -> usize {
    objects.list(layout::INDEX).await.expect("list").len()
}

/// Snapshots the tree in `dir` once per run of `runs`, each after a new file (so each adds an
/// index object); returns the last image.
async fn snapshot_runs(objects: &DynStore, dir: &std::path::Path, runs: std::ops::Range<u64>) -> TreeImage {
    let store = SnapshotStore::open_or_init(objects.clone()).await.expect("open");
    for run in runs {
        std::fs::write(dir.join(format!("run-{run}")), common::noise(run, 3_000)).expect("write");
        create::create(&store, &common::create_opts(dir, None), &Arc::new(Progress::default())).await.expect("create");
    }
    TreeImage::read(dir)
}

#[test]
fn a_prune_compacts_the_index_objects_and_readers_ride_over_it() {
    common::runtime().block_on(async {
        let tmp = tempfile::tempdir().expect("tmp");
        let objects: DynStore = memory();
        let dir = tmp.path().join("ws");
        std::fs::create_dir_all(&dir).expect("mkdir");
        common::random_tree(&dir, &mut Rng::new(7), TreeShape { files: 20, max_file: 20_000 });
        let image = snapshot_runs(&objects, &dir, 0..8).await;
        assert_eq!(index_objects(&objects).await, 8, "one index object per run");

        // A restore whose listing a compaction overtakes lists again and restores the tree.
        let racing: DynStore = Arc::new(Compactor { inner: objects.clone(), armed: Mutex::new(true) });
        let store = SnapshotStore::open(racing.clone()).await.expect("open");
        let out = tmp.path().join("restored");
        restore::restore(&store, &common::restore_opts(&out, None), &Arc::new(Progress::default()))
            .await
            .expect("restore");
        assert_eq!(TreeImage::read(&out).without(".berth"), image.without(".berth"));
        assert_eq!(index_objects(&objects).await, 1, "the prune left one index object");

        // A prune with one index object left rewrites nothing; a writer adds its own again.
        let store = SnapshotStore::open(objects.clone()).await.expect("open");
        let plan = maintain::prune_plan(&store, 86_400).await.expect("plan");
        assert_eq!(maintain::prune_apply(&store, &plan).await.expect("prune").index_objects_compacted, 0);
        snapshot_runs(&objects, &dir, 8..9).await;
        assert_eq!(index_objects(&objects).await, 2);
    });
}
