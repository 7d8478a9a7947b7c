//! Crash consistency through the store port: a workload of snapshot, change, snapshot, forget
//! and two prunes runs over `FaultyStore`, with a fault at operation k for every k of a clean
//! run, in three modes: every operation from k on fails (a crash), only operation k fails (a
//! lone error no step may swallow), and operation k lands but reports failure (a lost reply).
//! Data packs and tree-object packs are operations like any other. After each round the store
//! left behind (the inner memory store) must hold exactly the snapshots the failed step allows,
//! each restoring byte for byte and verifying with `--read-data`, and a rerun of the whole
//! workload on it must finish with the second tree restorable and nothing left for prune to
//! collect.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_core::excludes::Excludes;
use berth_core::layout;
use berth_core::retention::Policy;
use berth_core::snapshot::Contents;
use berth_core::workspace::{Generation, WorkspaceId};
use berth_engine::create::{create, CreateOptions};
use berth_engine::maintain::{self, PruneOutcome};
use berth_engine::progress::Progress;
use berth_engine::restore::{restore, RestoreOptions};
use berth_engine::snapshot_store::{Snapshot, SnapshotStore};
use berth_engine::store::{memory, DynStore, Fault, FaultyStore};
use berth_engine::EngineError;
use common::{chain, Rng, TreeImage};

/// The multi-chunk file changed in the middle between the two trees (chunking is min 256 KiB,
/// avg 1 MiB, max 4 MiB, so it also takes the streaming path for files over 4 MiB).
const BIG: usize = 6 * 1024 * 1024;
/// A file only the first tree has, just over the 8 MiB pack target: read first (paths are
/// read in sorted order with one reader thread), its chunks fill a pack of their own, which
/// the prunes then delete, exercising the index rewrite.
const DOOMED: usize = 8 * 1024 * 1024 + 128 * 1024;
/// Where the big file is overwritten for the second tree, and with how much.
const PATCH_AT: usize = 3 * 1024 * 1024;
const PATCH_LEN: usize = 64 * 1024;

/// The workload's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    CreateV1,
    CreateV2,
    Forget,
    Prune1,
    Prune2,
}

/// The content of both trees, generated once.
struct Fixture {
    doomed: Vec<u8>,
    big: Vec<u8>,
    patch: Vec<u8>,
    /// Small files of the first tree: (path, content, mode, mtime); those whose name starts
    /// with `gone-` are deleted for the second tree.
    small: Vec<(String, Vec<u8>, u32, i64)>,
    /// Small files the second tree adds.
    added: Vec<(String, Vec<u8>, u32, i64)>,
    mtimes: [i64; 4],
    seed: u64,
}

impl Fixture {
    fn new(seed: u64) -> Fixture {
        let mut rng = Rng::new(seed);
        let doomed = rng.bytes(DOOMED);
        let big = rng.bytes(BIG);
        let patch = rng.bytes(PATCH_LEN);
        let mut small = Vec::new();
        for i in 0..6 {
            let name = if i % 2 == 0 { format!("dir/keep-{i}.txt") } else { format!("dir/gone-{i}.txt") };
            let len = rng.below(3000) as usize;
            small.push((name, rng.bytes(len), 0o644, rng.mtime()));
        }
        small.push(("dir/sub/empty-file".into(), Vec::new(), 0o600, rng.mtime()));
        small.push(("run.sh".into(), rng.bytes(200), 0o755, rng.mtime()));
        let mut added = Vec::new();
        for i in 0..3 {
            let len = 1 + rng.below(2000) as usize;
            added.push((format!("dir/new-{i}.txt"), rng.bytes(len), 0o640, rng.mtime()));
        }
        added.push(("new-dir/nested/x.bin".into(), rng.bytes(5000), 0o600, rng.mtime()));
        let mtimes = [rng.mtime(), rng.mtime(), rng.mtime(), rng.mtime()];
        Fixture { doomed, big, patch, small, added, mtimes, seed }
    }

    /// Makes `ws` hold exactly the first tree.
    fn write_v1(&self, ws: &Path) {
        if ws.exists() {
            std::fs::remove_dir_all(ws).expect("clearing the workspace");
        }
        std::fs::create_dir_all(ws).expect("creating the workspace");
        common::write_file(&ws.join("a-doomed.bin"), &self.doomed, 0o644, self.mtimes[0]);
        common::write_file(&ws.join("big.bin"), &self.big, 0o644, self.mtimes[1]);
        for (name, data, mode, mtime) in &self.small {
            common::write_file(&ws.join(name), data, *mode, *mtime);
        }
        std::fs::create_dir_all(ws.join("empty")).expect("mkdir");
        common::symlink("big.bin", &ws.join("link-to-big"), self.mtimes[2]);
        common::stamp_dirs(ws, &mut Rng::new(self.seed ^ 1));
    }

    /// Turns the first tree in `ws` into the second, in place: the big file is overwritten in
    /// the middle (same inode), the doomed file and the `gone-` files are deleted, files added.
    fn mutate_to_v2(&self, ws: &Path) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(ws.join("big.bin")).expect("opening big.bin");
        f.write_all_at(&self.patch, PATCH_AT as u64).expect("patching big.bin");
        drop(f);
        common::set_mtime(&ws.join("big.bin"), self.mtimes[3]);
        std::fs::remove_file(ws.join("a-doomed.bin")).expect("rm");
        for (name, ..) in self.small.iter().filter(|(n, ..)| n.contains("gone-")) {
            std::fs::remove_file(ws.join(name)).expect("rm");
        }
        for (name, data, mode, mtime) in &self.added {
            common::write_file(&ws.join(name), data, *mode, *mtime);
        }
        common::stamp_dirs(ws, &mut Rng::new(self.seed ^ 2));
    }
}

fn workspace() -> WorkspaceId {
    WorkspaceId::new("crash:ws").expect("valid id")
}

fn create_opts(ws: &Path, cache: Option<&Path>) -> CreateOptions {
    CreateOptions {
        workspace: workspace(),
        generation: Generation::default(),
        dir: ws.to_path_buf(),
        excludes: Excludes::new(&[], false).expect("no excludes"),
        budget: None,
        cache_dir: cache.map(Path::to_path_buf),
        host: "crash-test".into(),
        // One reader: packs are filled in path order, so the op sequence is the same every run.
        threads: 1,
        epoch: berth_core::lease::Epoch::ZERO,
    }
}

/// What a complete run did, to check that the workload exercises what it is meant to.
#[derive(Debug)]
struct Done {
    forgotten: u64,
    prunes: [PruneOutcome; 2],
}

/// Runs the workload, stopping at the first error and saying in which step it happened;
/// `started` hears each step as it begins.
async fn workload(
    store: DynStore,
    fx: &Fixture,
    ws: &Path,
    cache: Option<&Path>,
    started: &mut dyn FnMut(Step),
) -> Result<Done, (Step, EngineError)> {
    let progress = Arc::new(Progress::default());
    let opts = create_opts(ws, cache);
    fx.write_v1(ws);
    started(Step::CreateV1);
    let snapshots = SnapshotStore::open_or_init(store).await.map_err(|e| (Step::CreateV1, e))?;
    create(&snapshots, &opts, &progress).await.map_err(|e| (Step::CreateV1, e))?;
    fx.mutate_to_v2(ws);
    started(Step::CreateV2);
    create(&snapshots, &opts, &progress).await.map_err(|e| (Step::CreateV2, e))?;
    let policy = Policy { last: 1, hourly: 0, daily: 0, weekly: 0, monthly: 0 };
    started(Step::Forget);
    let forgotten = async {
        let snaps = snapshots.list(None, None).await?;
        maintain::forget_apply(&snapshots, &maintain::forget_plan(&snaps, &policy)).await
    }
    .await
    .map_err(|e| (Step::Forget, e))?;
    let mut prunes = [PruneOutcome::default(), PruneOutcome::default()];
    for (i, step) in [Step::Prune1, Step::Prune2].into_iter().enumerate() {
        started(step);
        prunes[i] = async {
            let plan = maintain::prune_plan(&snapshots, 0).await?;
            maintain::prune_apply(&snapshots, &plan).await
        }
        .await
        .map_err(|e| (step, e))?;
    }
    Ok(Done { forgotten, prunes })
}

/// Restores one snapshot into a fresh directory under `scratch` and captures it.
async fn restore_tree(snapshots: &SnapshotStore, snap: &Snapshot, scratch: &Path, name: &str) -> TreeImage {
    let dir = scratch.join(name);
    let opts = RestoreOptions {
        workspace: workspace(),
        generation: Generation::default(),
        snapshot: snap.id.to_hex(),
        dir: dir.clone(),
        excludes: Excludes::new(&[], false).expect("no excludes"),
        cache_dir: None,
        threads: 2,
        delete: false,
    };
    restore(snapshots, &opts, &Arc::new(Progress::default()))
        .await
        .unwrap_or_else(|e| panic!("{name}: restoring snapshot seq {} failed: {e}", snap.record.seq));
    let tree = TreeImage::read(&dir);
    std::fs::remove_dir_all(&dir).expect("cleaning up a restore");
    tree
}

/// Snapshots in the store, none when it was never initialised.
async fn snapshots_of(store: &DynStore) -> (Option<SnapshotStore>, Vec<Snapshot>) {
    match SnapshotStore::open(store.clone()).await {
        Ok(snapshots) => {
            let snaps = snapshots.list(None, None).await.expect("listing snapshots after the crash");
            (Some(snapshots), snaps)
        }
        Err(EngineError::NotFound { .. }) => (None, Vec::new()),
        Err(e) => panic!("opening the store after the crash: {e}"),
    }
}

/// Asserts every snapshot in the store restores to the tree of its seq and verifies clean.
async fn check_restorable(store: &DynStore, expect: &[TreeImage; 2], scratch: &Path, ctx: &str) -> Vec<u64> {
    let (snapshots, snaps) = snapshots_of(store).await;
    let seqs: Vec<u64> = snaps.iter().map(|s| s.record.seq).collect();
    let Some(snapshots) = snapshots else { return seqs };
    for s in &snaps {
        // Seq 1 and 3 hold the first tree, 2 and 4 the second (after a rerun).
        let want = &expect[((s.record.seq + 1) % 2) as usize];
        let got = restore_tree(&snapshots, s, scratch, &format!("seq{}", s.record.seq)).await;
        common::assert_same(want, &got, &format!("{ctx}: snapshot seq {}", s.record.seq));
    }
    let report =
        maintain::verify(&snapshots, &snaps, true).await.unwrap_or_else(|e| panic!("{ctx}: verify failed: {e}"));
    assert!(report.errors.is_empty(), "{ctx}: verify --read-data found errors: {:#?}", report.errors);
    if !snaps.is_empty() {
        assert!(report.packs_read > 0, "{ctx}: verify read no pack");
    }
    seqs
}

/// The snapshots in the store when the workload stopped in `step`, before it finished it.
fn published_before(step: Step) -> Vec<u64> {
    match step {
        Step::CreateV1 => vec![],
        Step::CreateV2 => vec![1],
        // forget deletes seq 1 as its very last operation.
        Step::Forget => vec![1, 2],
        Step::Prune1 | Step::Prune2 => vec![2],
    }
}

/// The snapshots in the store once the workload finished `step`.
fn published_after(step: Step) -> Vec<u64> {
    match step {
        Step::CreateV1 => vec![1],
        Step::CreateV2 => vec![1, 2],
        Step::Forget | Step::Prune1 | Step::Prune2 => vec![2],
    }
}

/// Which fault every round injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Operation k and all after it fail: a crash.
    From,
    /// Only operation k fails.
    Only,
    /// Operation k lands, then reports failure.
    Applied,
}

impl Mode {
    fn at(self, k: u64) -> Fault {
        match self {
            Mode::From => Fault::From(k),
            Mode::Only => Fault::Only(k),
            Mode::Applied => Fault::AppliedThenFailed(k),
        }
    }
}

/// A clean run of the workload: its operations in order and the first operation of each step.
struct CleanRun {
    log: Vec<(&'static str, String)>,
    starts: Vec<(Step, u64)>,
}

impl CleanRun {
    fn step_of(&self, k: u64) -> Step {
        self.starts.iter().rev().find(|(_, at)| *at <= k).map(|(s, _)| *s).expect("op 0 is in the first step")
    }
}

/// Runs the workload without faults, checks it does what the crash rounds rely on, and returns
/// its operations.
async fn clean_run(fx: &Fixture, ws: &Path, cache: Option<&Path>) -> CleanRun {
    let inner = memory();
    let counter = Arc::new(FaultyStore::recording(inner.clone()));
    let mut starts = Vec::new();
    let done = workload(counter.clone(), fx, ws, cache, &mut |step| starts.push((step, counter.ops())))
        .await
        .expect("clean run");
    let log = counter.log();
    let n = log.len();
    assert_eq!(done.forgotten, 1, "forget keeps the last of two snapshots");
    assert!(done.prunes[0].marked > 0 && done.prunes[0].packs_deleted == 0, "first prune only marks: {done:?}");
    assert!(
        done.prunes[1].packs_deleted >= 1 && done.prunes[1].manifests_deleted == 0,
        "second prune deletes the doomed pack (the trees are tree objects in packs, no manifest): {done:?}"
    );
    assert!((30..1000).contains(&n), "a clean run took {n} store operations");
    // The kept snapshot's root tree object sits in a pack of its own, uploaded by one of the
    // operations the rounds fault.
    let snapshots = SnapshotStore::open(inner).await.expect("open");
    let latest = snapshots.latest(&workspace(), Generation::default()).await.expect("latest").expect("a snapshot");
    let Contents::Root(root) = latest.record.contents else { panic!("a version 2 record: {latest:?}") };
    let index = snapshots.load_index(None).await.expect("index").index;
    let pack = layout::pack(&index.get(&root).expect("the root tree object is indexed").pack);
    assert!(log.iter().any(|(op, key)| *op == "put" && *key == pack), "the tree pack {pack} was uploaded");
    eprintln!("clean run: {n} store operations (cache: {})", cache.is_some());
    CleanRun { log, starts }
}

/// For every operation k of a clean run that `mode` and the cache make worth faulting, runs the
/// workload with the fault at k on a fresh memory store, then checks the store left behind and
/// that a rerun on it recovers.
async fn crash_at_every_op(mode: Mode, use_cache: bool) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ws = tmp.path().join("ws");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    let fx = Fixture::new(0xC0FFEE);

    // The two trees, as the workload builds them.
    fx.write_v1(&ws);
    let v1 = TreeImage::read(&ws);
    fx.mutate_to_v2(&ws);
    let v2 = TreeImage::read(&ws);
    assert_ne!(v1, v2);
    let expect = [v1, v2];

    let cache_of = |name: &str| {
        use_cache.then(|| {
            let d = tmp.path().join("cache").join(name);
            let _ = std::fs::remove_dir_all(&d);
            d
        })
    };
    let clean = clean_run(&fx, &ws, cache_of("clean").as_deref()).await;
    let n = clean.log.len() as u64;
    let rounds: Vec<u64> = (0..=n)
        .filter(|&k| k == n || worth_faulting(mode, use_cache, clean.step_of(k), clean.log[k as usize].0))
        .collect();
    let mut seen = std::collections::BTreeMap::<Step, u64>::new();
    for &k in &rounds {
        let ctx = match clean.log.get(k as usize) {
            Some((op, key)) => format!("{mode:?} fault at op {k} of {n} ({op} {key}, cache: {use_cache})"),
            None => format!("{mode:?} fault at op {k} of {n} (none, cache: {use_cache})"),
        };
        if let Some(step) = round(mode, k, &clean, &fx, &ws, cache_of(&format!("k{k}")), &scratch, &expect, &ctx).await
        {
            *seen.entry(step).or_default() += 1;
        }
    }
    // Every step the rounds cover was interrupted at least once.
    let mut steps = vec![Step::CreateV1, Step::CreateV2];
    if !use_cache {
        steps.extend([Step::Forget, Step::Prune1, Step::Prune2]);
    }
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), steps, "steps interrupted: {seen:?}");
    eprintln!("{mode:?} faults per step: {seen:?} ({} rounds)", rounds.len());
}

/// Whether a fault at an operation of `step` named `op` tells something new: a cache changes
/// only what a create reads and uploads, and an applied read is just a read.
fn worth_faulting(mode: Mode, use_cache: bool, step: Step, op: &str) -> bool {
    let creates = matches!(step, Step::CreateV1 | Step::CreateV2);
    let writes = matches!(op, "put" | "delete");
    (creates || !use_cache) && (writes || mode != Mode::Applied)
}

/// One round: the workload with the fault at `k`, the store it leaves, the rerun. Returns the
/// step the fault stopped.
#[allow(clippy::too_many_arguments)]
async fn round(
    mode: Mode,
    k: u64,
    clean: &CleanRun,
    fx: &Fixture,
    ws: &Path,
    cache: Option<PathBuf>,
    scratch: &Path,
    expect: &[TreeImage; 2],
    ctx: &str,
) -> Option<Step> {
    let n = clean.log.len() as u64;
    let inner = memory();
    let faulty = Arc::new(FaultyStore::with(inner.clone(), mode.at(k)));
    let failed = match workload(faulty, fx, ws, cache.as_deref(), &mut |_| {}).await {
        Ok(_) => {
            // No step may swallow an error: every fault stops the workload.
            assert_eq!(k, n, "{ctx}: the workload finished although op {k} failed");
            None
        }
        Err((step, e)) => {
            assert!(k < n, "{ctx}: the workload failed with no fault injected: {step:?}: {e}");
            assert!(e.is_temporary(), "{ctx}: an injected fault surfaced as a permanent error: {e}");
            assert!(chain(&e).contains("injected fault"), "{ctx}: the error is not the injected one: {e}");
            assert_eq!(step, clean.step_of(k), "{ctx}: the fault stopped another step than its own");
            Some(step)
        }
    };

    // The store left behind: exactly the snapshots the failed step allows, all restorable. A
    // write that landed may have been the step's last (a record put, forget's delete).
    let seqs = check_restorable(&inner, expect, scratch, ctx).await;
    match failed {
        Some(step) if mode == Mode::Applied => assert!(
            seqs == published_before(step) || seqs == published_after(step),
            "{ctx}: {seqs:?} is neither before nor after {step:?}"
        ),
        Some(step) => assert_eq!(seqs, published_before(step), "{ctx}: snapshots after a fault in {step:?}"),
        None => assert_eq!(seqs, vec![2], "{ctx}: after a clean run"),
    }

    // Recovery: the same workload, on the same store (and cache), completes.
    let rerun = workload(inner.clone(), fx, ws, cache.as_deref(), &mut |_| {})
        .await
        .unwrap_or_else(|(step, e)| panic!("{ctx}: the rerun failed in {step:?}: {e}"));
    let seqs = check_restorable(&inner, expect, scratch, &format!("{ctx}, after the rerun")).await;
    let last = *seqs.last().expect("a snapshot after the rerun");
    assert_eq!(seqs.len(), 1, "{ctx}: after the rerun one snapshot is kept: {seqs:?}");
    assert_eq!(last % 2, 0, "{ctx}: the latest snapshot holds the second tree (seq {last})");
    let snapshots = SnapshotStore::open(inner.clone()).await.expect("open");
    let plan = maintain::prune_plan(&snapshots, 0).await.expect("prune plan");
    assert!(plan.plan.is_empty(), "{ctx}: garbage left after the rerun: {:#?} (rerun: {rerun:?})", plan.plan);
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_op_without_cache() {
    crash_at_every_op(Mode::From, false).await;
}

/// With a file cache, faults in the creates only: forget and prune never read the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_create_op_with_cache() {
    crash_at_every_op(Mode::From, true).await;
}

/// A lone failed operation, everything after it fine: no step may swallow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_failure_at_every_op_stops_the_workload() {
    crash_at_every_op(Mode::Only, false).await;
}

/// A write that lands but reports failure, at every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_landed_write_reported_as_failed_at_every_write() {
    crash_at_every_op(Mode::Applied, false).await;
}

/// The fault wrapper itself: op k fails and every op after it, none before.
#[tokio::test]
async fn faulty_store_fails_from_k_on() {
    use berth_engine::store::{Put, Store};
    let inner = memory();
    let s = FaultyStore::new(inner.clone(), 2);
    assert_eq!(s.put_if_absent("a", bytes::Bytes::from_static(b"1")).await.expect("op 0"), Put::Created);
    assert_eq!(s.get("a").await.expect("op 1").as_ref(), b"1");
    assert!(s.get("a").await.expect_err("op 2").is_temporary());
    let e = s.list("").await.expect_err("op 3");
    assert!(e.is_temporary() && e.to_string().contains("injected fault at operation 3"), "{e}");
    let e = s.put_if_absent("b", bytes::Bytes::new()).await.expect_err("op 4");
    assert!(e.is_temporary() && e.to_string().contains("injected fault at operation 4"), "{e}");
    assert_eq!(s.ops(), 5);
    // A failed put wrote nothing.
    assert!(inner.list("").await.expect("list").iter().all(|o| o.key == "a"));
}

/// `Only(k)` fails op k alone, before it reaches the store.
#[tokio::test]
async fn faulty_store_fails_only_op_k() {
    use berth_engine::store::{Put, Store};
    let inner = memory();
    let s = FaultyStore::with(inner.clone(), Fault::Only(1));
    assert_eq!(s.put_if_absent("a", bytes::Bytes::from_static(b"1")).await.expect("op 0"), Put::Created);
    assert!(s.put_if_absent("b", bytes::Bytes::new()).await.expect_err("op 1").is_temporary());
    assert_eq!(s.get("a").await.expect("op 2").as_ref(), b"1");
    let keys: Vec<String> = inner.list("").await.expect("list").into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["a"], "the failed put wrote nothing");
}

/// `AppliedThenFailed(k)` lets op k land, then reports it failed.
#[tokio::test]
async fn faulty_store_applies_op_k_then_reports_failure() {
    use berth_engine::store::{Put, Store};
    let inner = memory();
    let s = FaultyStore::with(inner.clone(), Fault::AppliedThenFailed(0));
    let e = s.put_if_absent("a", bytes::Bytes::from_static(b"1")).await.expect_err("op 0 reports failure");
    assert!(e.is_temporary() && e.to_string().contains("applied"), "{e}");
    assert_eq!(inner.get("a").await.expect("op 0 landed").as_ref(), b"1");
    assert_eq!(s.put_if_absent("a", bytes::Bytes::new()).await.expect("op 1"), Put::AlreadyExists);
}
