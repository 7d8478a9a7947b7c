//! Fencing in the store: records are ordered by (epoch, seq), a run never publishes into a
//! lineage where a higher epoch has written, and a record that lands at the run's seq while it
//! runs makes the run fail with `Conflict` (or `Fenced`) and publish nothing.
//!
//! The interleavings come from a store decorator that acts on the run's first pack upload, not
//! from timing.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use berth_core::layout;
use berth_core::lease::{Epoch, Fenced};
use berth_core::retention::Policy;
use berth_core::snapshot::SnapshotRecord;
use berth_engine::create::{self, CreateOptions, CreateSummary};
use berth_engine::maintain;
use berth_engine::progress::Progress;
use berth_engine::snapshot_store::{self, Snapshot, SnapshotStore};
use berth_engine::store::{self, Deleted, DynStore, ObjectInfo, Put, Store, StoreError};
use berth_engine::EngineError;
use bytes::Bytes;
use common::{Rng, TreeImage, TreeShape};

/// Wraps a store: counts writes, and before the first pack upload of a run writes a prepared
/// object straight into the inner store (another writer publishing while the run reads).
#[derive(Debug)]
struct Intruder {
    inner: DynStore,
    /// Written into `inner` just before the first `packs/` put, once.
    pending: Mutex<Option<(String, Bytes)>>,
    /// Puts that went through this decorator.
    puts: AtomicU64,
}

impl Intruder {
    fn new(inner: DynStore, pending: Option<(String, Bytes)>) -> Arc<Intruder> {
        Arc::new(Intruder { inner, pending: Mutex::new(pending), puts: AtomicU64::new(0) })
    }

    fn puts(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }

    fn landed(&self) -> bool {
        self.pending.lock().expect("lock").is_none()
    }
}

#[async_trait]
impl Store for Intruder {
    fn url(&self) -> &str {
        self.inner.url()
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<Put, StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        if key.starts_with(layout::PACKS) {
            let pending = self.pending.lock().expect("lock").take();
            if let Some((k, b)) = pending {
                assert_eq!(self.inner.put_if_absent(&k, b).await.expect("intruder put"), Put::Created);
            }
        }
        self.inner.put_if_absent(key, data).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<Deleted, StoreError> {
        self.inner.delete(key).await
    }
}

fn opts(dir: &std::path::Path, epoch: u64) -> CreateOptions {
    CreateOptions { epoch: Epoch(epoch), ..common::create_opts(dir, None) }
}

async fn run(objects: DynStore, dir: &std::path::Path, epoch: u64) -> berth_engine::Result<CreateSummary> {
    let snapshots = SnapshotStore::open(objects).await?;
    create::create(&snapshots, &opts(dir, epoch), &Arc::new(Progress::default())).await
}

async fn listing(objects: &DynStore) -> Vec<(String, u64, u64)> {
    let snapshots = SnapshotStore::open(objects.clone()).await.expect("open");
    let listed = snapshots.list(None, None).await.expect("ls");
    listed.iter().map(|s| (s.id.to_hex(), s.record.epoch.0, s.record.seq)).collect()
}

/// A copy of `s`'s record moved to `seq` under `epoch`: its key and bytes.
fn moved(s: &Snapshot, epoch: u64, seq: u64) -> (String, Bytes) {
    let record = SnapshotRecord { epoch: Epoch(epoch), seq, ..s.record.clone() };
    let key = layout::snapshot(&record.workspace, record.generation, seq);
    (key, Bytes::from(record.encode().1))
}

/// Writes a random tree into a new directory under `root`; returns it and its image.
fn fill(root: &std::path::Path, seed: u64) -> (std::path::PathBuf, TreeImage) {
    let dir = root.join(format!("tree-{seed}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    common::random_tree(&dir, &mut Rng::new(seed), TreeShape { files: 12, max_file: 20_000 });
    let image = TreeImage::read(&dir);
    (dir, image)
}

/// Another writer of the same epoch publishes at the run's seq while the run uploads: the run
/// fails with `Conflict` and adds nothing to the listing.
#[test]
fn record_landing_at_next_seq_mid_run_is_a_conflict() {
    common::runtime().block_on(async {
        let tmp = tempfile::tempdir().expect("tmp");
        let memory = store::memory();
        let dir = fill(tmp.path(), 1).0;
        let snapshots = SnapshotStore::open_or_init(memory.clone()).await.expect("init");
        let first = common::snapshot(&snapshots, &dir, None).await;
        assert_eq!(first.seq, 1);
        let parent = snapshots.latest(&common::workspace(), opts(&dir, 0).generation).await.expect("latest");
        let other = moved(parent.as_ref().expect("seq 1"), 0, 2);
        let before_run = listing(&memory).await;

        let dir = fill(tmp.path(), 2).0;
        let hook = Intruder::new(memory.clone(), Some(other));
        let err = run(hook.clone(), &dir, 0).await.expect_err("the seq was taken mid-run");
        assert!(hook.landed(), "the other writer's record must land during the run");
        assert!(matches!(err, EngineError::Conflict(_)), "want Conflict, got {err:?}");
        assert!(err.is_temporary());
        // The listing is the old one plus the other writer's record: nothing of the run.
        let after = listing(&memory).await;
        assert_eq!(after.len(), before_run.len() + 1, "{after:?}");
        assert_eq!(after[..before_run.len()], before_run[..]);
        assert_eq!((after[1].1, after[1].2), (0, 2));
    });
}

/// A higher epoch's record landing at the run's seq mid-run fences the run (not a plain conflict).
#[test]
fn higher_epoch_landing_mid_run_fences() {
    common::runtime().block_on(async {
        let tmp = tempfile::tempdir().expect("tmp");
        let memory = store::memory();
        let dir = fill(tmp.path(), 3).0;
        let snapshots = SnapshotStore::open_or_init(memory.clone()).await.expect("init");
        run(memory.clone(), &dir, 1).await.expect("epoch 1 writes seq 1");
        let parent = snapshots.latest(&common::workspace(), opts(&dir, 1).generation).await.expect("latest");
        let taker = moved(parent.as_ref().expect("seq 1"), 2, 2);

        let dir = fill(tmp.path(), 4).0;
        let hook = Intruder::new(memory.clone(), Some(taker));
        let err = run(hook.clone(), &dir, 1).await.expect_err("epoch 2 took seq 2 mid-run");
        assert!(hook.landed());
        assert_eq!(err.fenced(), Some(Fenced { presented: Epoch(1), current: Some(Epoch(2)) }), "{err:?}");
        assert!(!err.is_temporary());
        let after = listing(&memory).await;
        assert_eq!(after.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(), vec![(1, 1), (2, 2)]);
    });
}

/// A run under a lower epoch than the latest record's writes nothing at all, and says so.
#[test]
fn lower_epoch_is_fenced_before_any_write() {
    common::runtime().block_on(async {
        let tmp = tempfile::tempdir().expect("tmp");
        let memory = store::memory();
        let dir = fill(tmp.path(), 5).0;
        SnapshotStore::open_or_init(memory.clone()).await.expect("init");
        run(memory.clone(), &dir, 2).await.expect("epoch 2 writes seq 1");
        let before = listing(&memory).await;

        let dir = fill(tmp.path(), 6).0;
        let hook = Intruder::new(memory.clone(), None);
        let err = run(hook.clone(), &dir, 1).await.expect_err("epoch 1 is fenced by epoch 2");
        assert_eq!(err.fenced(), Some(Fenced { presented: Epoch(1), current: Some(Epoch(2)) }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("epoch 1 is fenced") && text.contains("--epoch"), "{text}");
        assert_eq!(hook.puts(), 0, "a fenced run writes no object");
        assert_eq!(listing(&memory).await, before);
        // The default epoch 0 (the CLI's) is fenced too.
        let err = run(memory.clone(), &dir, 0).await.expect_err("epoch 0 is fenced by epoch 2");
        assert!(matches!(err, EngineError::Fenced { .. }), "{err:?}");
    });
}

/// Records are ordered by (epoch, seq): epoch 2 seq 5 beats epoch 1 seq 9 in `latest`, `ls
/// --latest`, restore and retention; the next run writes at seq 10 on top of seq 5.
#[test]
fn epoch_orders_before_seq() {
    common::runtime().block_on(async {
        let tmp = tempfile::tempdir().expect("tmp");
        let out = tmp.path().join("out");
        let memory = store::memory();
        let snapshots = SnapshotStore::open_or_init(memory.clone()).await.expect("init");
        let (dir, zombie_tree) = fill(tmp.path(), 7);
        common::snapshot(&snapshots, &dir, None).await;
        let (dir, holder_tree) = fill(tmp.path(), 8);
        common::snapshot(&snapshots, &dir, None).await;
        let made = snapshots.list(None, None).await.expect("ls");
        assert_eq!(made.len(), 2);
        // The zombie's tree under epoch 1 at seq 9, the holder's under epoch 2 at seq 5.
        for (s, epoch, seq) in [(&made[0], 1, 9), (&made[1], 2, 5)] {
            let (key, bytes) = moved(s, epoch, seq);
            memory.put_if_absent(&key, bytes).await.expect("put");
            memory.delete(&s.key).await.expect("delete");
        }

        let ws = common::workspace();
        let generation = opts(&dir, 0).generation;
        let latest = snapshots.latest(&ws, generation).await.expect("latest").expect("some");
        assert_eq!((latest.record.epoch, latest.record.seq), (Epoch(2), 5));
        let listed = snapshots.list(None, None).await.expect("ls");
        assert_eq!(listed.iter().map(|s| s.record.seq).collect::<Vec<_>>(), vec![9, 5], "oldest first");
        let each = snapshot_store::latest_of_each(listed.clone());
        assert_eq!(each.iter().map(|s| s.record.seq).collect::<Vec<_>>(), vec![5]);
        // Retention keeps the holder's record as the latest.
        let none = Policy { last: 0, hourly: 0, daily: 0, weekly: 0, monthly: 0 };
        let plan = maintain::forget_plan(&listed, &none);
        let kept: Vec<u64> = plan[0].decisions.iter().filter(|d| d.keep).map(|d| d.seq).collect();
        assert_eq!(kept, vec![5]);
        // Restore of `latest` gives the holder's tree, not the zombie's.
        common::restore(&snapshots, &out, None).await.expect("restore");
        common::assert_same(&holder_tree, &TreeImage::read(&out), "latest is epoch 2 seq 5");
        assert_ne!(zombie_tree.files(), 0);
        // The next run of epoch 2 publishes above every seq in use, on top of seq 5; the same
        // tree under a higher epoch is published too, so epoch 3 owns the lineage at once.
        let dir = fill(tmp.path(), 9).0;
        let next = run(memory.clone(), &dir, 2).await.expect("epoch 2 run");
        assert_eq!(next.seq, 10);
        let rec = snapshots.latest(&ws, generation).await.expect("latest").expect("some");
        assert_eq!((rec.record.epoch, rec.record.parent), (Epoch(2), Some(latest.id)));
        let same = run(memory.clone(), &dir, 3).await.expect("epoch 3 run");
        assert!(!same.unchanged && same.seq == 11, "{same:?}");
        let again = run(memory.clone(), &dir, 3).await.expect("epoch 3 again");
        assert!(again.unchanged && again.seq == 11, "{again:?}");
    });
}

/// A store written before records carried epochs still restores; its records are epoch 0 and
/// the first run under a lease supersedes them.
#[test]
fn records_without_epoch_restore_as_epoch_zero() {
    common::runtime().block_on(async {
        let tmp = tempfile::tempdir().expect("tmp");
        let out = tmp.path().join("out");
        let memory = store::memory();
        let snapshots = SnapshotStore::open_or_init(memory.clone()).await.expect("init");
        let (dir, tree) = fill(tmp.path(), 10);
        common::snapshot(&snapshots, &dir, None).await;
        // Rewrite the record as the previous format wrote it: no `epoch` field.
        let s = snapshots.list(None, None).await.expect("ls").pop().expect("one");
        let mut json: serde_json::Value =
            serde_json::from_slice(&memory.get(&s.key).await.expect("get")).expect("json");
        assert!(json.as_object_mut().expect("object").remove("epoch").is_some());
        memory.delete(&s.key).await.expect("delete");
        let old = serde_json::to_vec_pretty(&json).expect("encode");
        assert!(!String::from_utf8_lossy(&old).contains("epoch"));
        memory.put_if_absent(&s.key, Bytes::from(old)).await.expect("put");

        let latest = snapshots.latest(&common::workspace(), s.record.generation).await.expect("latest").expect("some");
        assert_eq!((latest.record.epoch, latest.record.seq), (Epoch::ZERO, 1));
        common::restore(&snapshots, &out, None).await.expect("restore of an old-format record");
        common::assert_same(&tree, &TreeImage::read(&out), "old-format record");
        let next = run(memory.clone(), &dir, 1).await.expect("epoch 1 after the old records");
        assert_eq!((next.seq, next.unchanged), (2, false));
    });
}

/// A writer that keeps its memory between runs (`Warm`, as the agent does) reads only the
/// records that appeared since its last run, and still sees a higher epoch published in
/// between: its next run is fenced and writes no record.
#[test]
fn a_warm_writer_sees_a_higher_epoch_published_between_its_runs() {
    common::runtime().block_on(async {
        let tmp = tempfile::tempdir().expect("tmp");
        let memory = store::memory();
        let (dir, _) = fill(tmp.path(), 7);
        let snapshots = SnapshotStore::open_or_init(memory.clone()).await.expect("init");
        let mut warm = berth_engine::warm::Warm::default();
        let progress = Arc::new(Progress::default());
        let warm_run = |warm: &mut berth_engine::warm::Warm, n: u64| {
            std::fs::write(dir.join("changing"), n.to_string()).expect("write");
            let (snapshots, opts, progress) = (snapshots.clone(), opts(&dir, 1), progress.clone());
            let warm = std::mem::take(warm);
            async move {
                let mut warm = warm;
                let r = create::create_warm(&snapshots, &opts, &progress, &mut warm, None).await;
                (r, warm)
            }
        };
        for n in 0..3 {
            let (r, w) = warm_run(&mut warm, n).await;
            assert_eq!(r.expect("epoch 1 writes").seq, n + 1);
            warm = w;
        }
        let latest = snapshots.latest(&common::workspace(), berth_core::workspace::Generation(1)).await.unwrap();
        let (key, bytes) = moved(&latest.expect("a record"), 2, 4);
        assert_eq!(memory.put_if_absent(&key, bytes).await.expect("put"), Put::Created);
        let before = listing(&memory).await;
        let (r, w) = warm_run(&mut warm, 9).await;
        let err = r.expect_err("epoch 1 is fenced by epoch 2");
        assert_eq!(err.fenced(), Some(Fenced { presented: Epoch(1), current: Some(Epoch(2)) }), "{err:?}");
        assert_eq!(listing(&memory).await, before, "no record written");
        warm = w;
        // The fenced run kept nothing; once the intruder's record is gone, epoch 1 writes again.
        assert_eq!(memory.delete(&key).await.expect("delete"), Deleted::Removed);
        let (r, _) = warm_run(&mut warm, 10).await;
        assert_eq!(r.expect("epoch 1 writes again").seq, 4);
    });
}
