//! The `Store` port's contract, one suite run against every adapter: memory,
//! `FsStore` in a temporary directory, and a real S3 server (moto, which `./dev test` starts;
//! the S3 tests fail, never skip, without it). Plus one end-to-end snapshot, restore and
//! verify through S3.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use berth_core::excludes::Excludes;
use berth_core::workspace::{Generation, WorkspaceId};
use berth_engine::create::{create, CreateOptions};
use berth_engine::maintain;
use berth_engine::progress::Progress;
use berth_engine::restore::{restore, RestoreOptions};
use berth_engine::snapshot_store::SnapshotStore;
use berth_engine::store::{self, Deleted, DynStore, FsStore, ObjectInfo, Put, StoreError};
use bytes::Bytes;
use common::{Rng, TreeImage, TreeShape};

/// Which adapter is under test, for the one place the contract allows a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adapter {
    Memory,
    Fs,
    S3,
}

/// The whole contract. Each check works under its own key prefix, so they share one store.
async fn contract(store: DynStore, adapter: Adapter) {
    put_if_absent_creates_once(&store).await;
    get_missing_is_not_found(&store).await;
    list_returns_exactly_the_prefix(&store).await;
    delete_removes(&store, adapter).await;
    concurrent_puts_have_one_winner(&store).await;
    binary_payloads_round_trip(&store).await;
    keys_in_the_workspace_alphabet(&store).await;
    full_listing_is_sorted_and_sized(&store).await;
    listing_beside_deletes_never_fails(&store).await;
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[track_caller]
fn assert_not_found(r: Result<Bytes, StoreError>, key: &str) {
    match r {
        Err(StoreError::NotFound { key: k, .. }) => assert_eq!(k, key, "NotFound names the key"),
        other => panic!("get {key}: expected NotFound, got {other:?}"),
    }
}

async fn put_if_absent_creates_once(s: &DynStore) {
    let key = "put/object";
    assert_eq!(s.put_if_absent(key, b("first")).await.expect("put"), Put::Created);
    assert_eq!(s.get(key).await.expect("get"), b("first"));
    // A second put, with other content, changes nothing.
    assert_eq!(s.put_if_absent(key, b("second, longer content")).await.expect("put again"), Put::AlreadyExists);
    assert_eq!(s.get(key).await.expect("get again"), b("first"));
    assert_eq!(
        s.list("put/").await.expect("list"),
        vec![ObjectInfo { key: key.into(), size: 5 }],
        "the size is the first content's"
    );
    // A deeper key under the same prefix is a different object.
    assert_eq!(s.put_if_absent("put/deeper/object", b("x")).await.expect("put"), Put::Created);
}

async fn get_missing_is_not_found(s: &DynStore) {
    assert_not_found(s.get("missing/object").await, "missing/object");
    assert_not_found(s.get("put/objec").await, "put/objec");
    assert_not_found(s.get("put/object/below").await, "put/object/below");
    assert_not_found(s.get("nowhere/at/all/deep").await, "nowhere/at/all/deep");
}

async fn list_returns_exactly_the_prefix(s: &DynStore) {
    // Written out of order; sizes all differ.
    let keys = [
        ("snapshots/a/3", 3),
        ("snapshots/ab/1", 11),
        ("snapshots/a/1", 1),
        ("snapshots/b/1", 21),
        ("snapshots/a/sub/2", 2),
        ("snapshots/a/10", 10),
        ("snapshotsx/a/1", 31),
    ];
    for (key, size) in keys {
        assert_eq!(s.put_if_absent(key, Bytes::from(vec![7u8; size])).await.expect("put"), Put::Created);
    }
    let info = |key: &str, size: u64| ObjectInfo { key: key.into(), size };
    assert_eq!(
        s.list("snapshots/a/").await.expect("list"),
        vec![
            info("snapshots/a/1", 1),
            info("snapshots/a/10", 10),
            info("snapshots/a/3", 3),
            info("snapshots/a/sub/2", 2)
        ],
        "snapshots/a/ lists its keys, sorted, and nothing from snapshots/ab/"
    );
    assert_eq!(s.list("snapshots/ab/").await.expect("list"), vec![info("snapshots/ab/1", 11)]);
    assert_eq!(s.list("snapshots/a/sub/").await.expect("list"), vec![info("snapshots/a/sub/2", 2)]);
    let all: Vec<String> = s.list("snapshots/").await.expect("list").into_iter().map(|o| o.key).collect();
    assert_eq!(
        all,
        ["snapshots/a/1", "snapshots/a/10", "snapshots/a/3", "snapshots/a/sub/2", "snapshots/ab/1", "snapshots/b/1"],
        "snapshots/ does not include snapshotsx/"
    );
    assert_eq!(s.list("snapshots/c/").await.expect("list of an absent prefix"), vec![]);
    assert_eq!(s.list("no-such-prefix/").await.expect("list of an absent prefix"), vec![]);
}

async fn delete_removes(s: &DynStore, adapter: Adapter) {
    let key = "del/object";
    s.put_if_absent(key, b("doomed")).await.expect("put");
    s.put_if_absent("del/neighbour", b("stays")).await.expect("put");
    assert_eq!(s.delete(key).await.expect("delete"), Deleted::Removed);
    assert_not_found(s.get(key).await, key);
    // S3's DeleteObject answers 204 whether or not the key existed, so the S3 adapter cannot
    // tell the two apart; `object_store`'s in-memory store, behind `memory()`, mirrors that
    // (its delete of a missing key succeeds). Both mean "done", which is all callers rely on.
    // The filesystem knows, and must say so.
    let exact = adapter == Adapter::Fs;
    for missing in [key, "del/never-existed", "put/object/below"] {
        let d = s.delete(missing).await.unwrap_or_else(|e| panic!("deleting missing {missing} is not an error: {e}"));
        if exact {
            assert_eq!(d, Deleted::NotFound, "delete of missing {missing}");
        }
    }
    assert_eq!(s.list("del/").await.expect("list"), vec![ObjectInfo { key: "del/neighbour".into(), size: 5 }]);
    // The key can be written again after a delete.
    assert_eq!(s.put_if_absent(key, b("again")).await.expect("put after delete"), Put::Created);
    assert_eq!(s.get(key).await.expect("get"), b("again"));
}

async fn concurrent_puts_have_one_winner(s: &DynStore) {
    const WRITERS: usize = 8;
    for round in 0..4 {
        let key = format!("race/{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let (s, key, barrier) = (s.clone(), key.clone(), barrier.clone());
                // Distinct, non-trivial payloads, so the winner's content is recognisable.
                let payload = Bytes::from(format!("writer {i} ").repeat(2000 + i));
                tokio::spawn(async move {
                    barrier.wait().await;
                    (i, s.put_if_absent(&key, payload.clone()).await, payload)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            let (i, put, payload) = t.await.expect("writer task");
            match put.unwrap_or_else(|e| panic!("writer {i} on {key}: {e}")) {
                Put::Created => winners.push((i, payload)),
                Put::AlreadyExists => {}
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one of {WRITERS} concurrent writers creates the object, got writers {:?}",
            winners.iter().map(|w| w.0).collect::<Vec<_>>()
        );
        assert_eq!(s.get(&key).await.expect("get"), winners[0].1, "round {round}: the winner's content is stored");
    }
}

/// A listing taken while other writers delete objects under the prefix (retention forgetting
/// records beside a create looking for its parent) succeeds, and lists only objects that were
/// stored. On a directory store an entry read from the directory can be gone by its stat.
async fn listing_beside_deletes_never_fails(s: &DynStore) {
    const N: usize = 600;
    let keys: Vec<String> = (0..N).map(|i| format!("churn/{:04}", i)).collect();
    for k in &keys {
        s.put_if_absent(k, b("x")).await.expect("put");
    }
    let deleter = {
        let (s, keys) = (s.clone(), keys.clone());
        tokio::spawn(async move {
            for k in keys {
                s.delete(&k).await.expect("delete");
            }
        })
    };
    let mut lists = 0;
    while !deleter.is_finished() || lists == 0 {
        let listed = s.list("churn/").await.unwrap_or_else(|e| panic!("list beside deletes (listing {lists}): {e}"));
        assert!(listed.iter().all(|o| keys.contains(&o.key) && o.size == 1), "{listed:?}");
        lists += 1;
    }
    deleter.await.expect("deleter");
    assert_eq!(s.list("churn/").await.expect("list"), vec![]);
}

async fn binary_payloads_round_trip(s: &DynStore) {
    let mut rng = Rng::new(42);
    let mut all_bytes: Vec<u8> = (0..=255u8).collect();
    all_bytes.extend((0..=255u8).rev());
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("bin/empty", Vec::new()),
        ("bin/one", vec![0]),
        ("bin/all-bytes", all_bytes),
        ("bin/crlf", b"\r\n\r\n\0\0\xff".to_vec()),
        ("bin/large", rng.bytes(5 * 1024 * 1024 + 7)),
    ];
    for (key, data) in &payloads {
        assert_eq!(s.put_if_absent(key, Bytes::from(data.clone())).await.expect("put"), Put::Created, "{key}");
    }
    for (key, data) in &payloads {
        let got = s.get(key).await.unwrap_or_else(|e| panic!("get {key}: {e}"));
        assert_eq!(got.len(), data.len(), "{key}: length");
        assert!(got.as_ref() == data.as_slice(), "{key}: content differs");
    }
    let mut expected: Vec<ObjectInfo> =
        payloads.iter().map(|(k, d)| ObjectInfo { key: k.to_string(), size: d.len() as u64 }).collect();
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(s.list("bin/").await.expect("list"), expected);
}

/// Snapshot keys carry workspace ids, whose alphabet is `A-Z a-z 0-9 . _ : @ + = -`.
async fn keys_in_the_workspace_alphabet(s: &DynStore) {
    let keys = ["ws/agent:42/1/0000000001", "ws/a.b_c@d+e=f-g/1/0000000002", "ws/X+Y=/7/0000000003"];
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(s.put_if_absent(key, Bytes::from(vec![i as u8; i + 1])).await.expect("put"), Put::Created);
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(s.get(key).await.expect("get").as_ref(), vec![i as u8; i + 1].as_slice(), "{key}");
    }
    let mut expected: Vec<ObjectInfo> =
        keys.iter().enumerate().map(|(i, k)| ObjectInfo { key: k.to_string(), size: i as u64 + 1 }).collect();
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(s.list("ws/").await.expect("list"), expected);
    let agent: Vec<ObjectInfo> = expected.iter().filter(|o| o.key.starts_with("ws/agent:42/")).cloned().collect();
    assert_eq!(agent.len(), 1);
    assert_eq!(s.list("ws/agent:42/").await.expect("list"), agent);
    assert_eq!(s.list("ws/agent:42/1/").await.expect("list"), agent);
    assert_eq!(s.delete(keys[1]).await.expect("delete"), Deleted::Removed);
    assert_not_found(s.get(keys[1]).await, keys[1]);
}

/// `list("")` is everything: sorted, each key once, with the size `get` returns.
async fn full_listing_is_sorted_and_sized(s: &DynStore) {
    let all = s.list("").await.expect("list everything");
    assert!(all.len() >= 20, "everything written so far is listed: {all:?}");
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "sorted, no duplicates: {all:?}");
    for o in &all {
        assert!(!o.key.starts_with('/') && !o.key.is_empty(), "keys are relative: {o:?}");
        let got = s.get(&o.key).await.unwrap_or_else(|e| panic!("get {}: {e}", o.key));
        assert_eq!(got.len() as u64, o.size, "{}: listed size", o.key);
    }
    for key in ["put/object", "snapshots/ab/1", "bin/empty", "ws/agent:42/1/0000000001"] {
        assert!(all.iter().any(|o| o.key == key), "{key} is listed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_meets_contract() {
    contract(store::memory(), Adapter::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fs_store_meets_contract() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("store");
    let url = format!("file://{}", root.display());
    let s = store::open(&url).expect("open file store");
    assert_eq!(s.url(), url);
    contract(s, Adapter::Fs).await;
    // No temporary files are left behind, even after the races.
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(!name.contains("berth-tmp"), "temporary file left: {}", e.path().display());
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            }
        }
    }
    // A second handle on the same directory sees the same objects.
    let again: DynStore = Arc::new(FsStore::new(&root, "file://again"));
    assert_eq!(again.get("put/object").await.expect("get"), b("first"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_store_meets_contract() {
    let bucket = common::s3_bucket("contract");
    let s = store::open(&format!("s3://{bucket}")).expect("open s3 store");
    contract(s, Adapter::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_store_with_prefix_meets_contract() {
    let bucket = common::s3_bucket("prefixed");
    // Something outside the prefix, which the prefixed store must never see.
    let root = store::open(&format!("s3://{bucket}")).expect("open bucket");
    root.put_if_absent("outside/object", b("x")).await.expect("put outside");
    root.put_if_absent("team/berthx/object", b("x")).await.expect("put in a sibling prefix");

    let s = store::open(&format!("s3://{bucket}/team/berth/")).expect("open s3 store with a prefix");
    contract(s.clone(), Adapter::S3).await;

    let inside = s.list("").await.expect("list");
    let outside = root.list("").await.expect("list bucket");
    assert_eq!(outside.len(), inside.len() + 2, "the bucket holds the prefix's objects and the two others");
    for o in &inside {
        let full = format!("team/berth/{}", o.key);
        assert!(outside.iter().any(|x| x.key == full && x.size == o.size), "{full} is in the bucket");
    }
}

/// Snapshot, change, snapshot again, restore both and verify, all through an S3 store with a
/// prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_snapshot_restore_verify_end_to_end() {
    let bucket = common::s3_bucket("e2e");
    let store = store::open(&format!("s3://{bucket}/berth")).expect("open s3 store");
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    let mut rng = Rng::new(7);
    common::random_tree(&src, &mut rng, TreeShape::default());
    // A file read whole and cut into several chunks, and one over the 4 MiB chunk maximum,
    // which is streamed.
    common::write_file(&src.join("data/three-mib.bin"), &rng.bytes(3 << 20), 0o644, rng.mtime());
    common::write_file(&src.join("data/five-mib.bin"), &rng.bytes(5 << 20), 0o600, rng.mtime());
    common::stamp_dirs(&src, &mut rng);
    let v1 = TreeImage::read(&src);

    let ws = WorkspaceId::new("agent:42").expect("id");
    let progress = Arc::new(Progress::default());
    let copts = CreateOptions {
        workspace: ws.clone(),
        generation: Generation::default(),
        dir: src.clone(),
        excludes: Excludes::new(&[], false).expect("excludes"),
        budget: None,
        cache_dir: Some(tmp.path().join("cache")),
        host: "e2e".into(),
        threads: 2,
        epoch: berth_core::lease::Epoch::ZERO,
    };
    let snapshots = SnapshotStore::open_or_init(store.clone()).await.expect("init");
    let first = create(&snapshots, &copts, &progress).await.expect("first snapshot");
    assert!(!first.unchanged && first.seq == 1 && first.packs_uploaded >= 1, "{first:?}");

    // Change the tree: append to the big file, remove one file, add another.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(src.join("data/five-mib.bin")).expect("open");
        f.write_all(&rng.bytes(1000)).expect("append");
    }
    // A non-empty file in no hard-link group: the first in `Path` order (by components, not bytes).
    let victim = v1
        .nodes
        .iter()
        .filter(|(p, n)| matches!(n.kind, common::Kind::File { len, .. } if len > 0) && !v1.is_linked(p))
        .map(|(p, _)| Path::new(OsStr::from_bytes(p)))
        .min()
        .expect("a file to remove");
    std::fs::remove_file(src.join(victim)).expect("rm");
    common::write_file(&src.join("src/added.txt"), b"added in v2\n", 0o644, rng.mtime());
    let v2 = TreeImage::read(&src);
    let second = create(&snapshots, &copts, &progress).await.expect("second snapshot");
    assert_eq!(second.seq, 2);
    assert!(second.bytes_new < 5 << 20, "the second snapshot uploads only what changed: {second:?}");
    let unchanged = create(&snapshots, &copts, &progress).await.expect("third run");
    assert!(unchanged.unchanged && unchanged.seq == 2, "nothing changed: {unchanged:?}");

    // Restore both, through a freshly opened store, and compare.
    let store = store::open(&format!("s3://{bucket}/berth")).expect("reopen");
    let snapshots = SnapshotStore::open(store).await.expect("open");
    let snaps = snapshots.list(Some(&ws), None).await.expect("list");
    assert_eq!(snaps.iter().map(|s| s.record.seq).collect::<Vec<_>>(), vec![1, 2]);
    for (selector, want) in [(snaps[0].id.to_hex()[..8].to_string(), &v1), ("latest".to_string(), &v2)] {
        let dir = tmp.path().join(format!("restored-{selector}"));
        let ropts = RestoreOptions {
            workspace: ws.clone(),
            generation: Generation::default(),
            snapshot: selector.clone(),
            dir: dir.clone(),
            excludes: Excludes::new(&[], false).expect("excludes"),
            cache_dir: None,
            threads: 2,
            delete: false,
        };
        restore(&snapshots, &ropts, &progress).await.unwrap_or_else(|e| panic!("restore {selector}: {e}"));
        common::assert_same(want, &TreeImage::read(&dir), &format!("restore of {selector}"));
    }
    let report = maintain::verify(&snapshots, &snaps, true).await.expect("verify");
    assert!(report.errors.is_empty(), "verify: {:?}", report.errors);
    assert!(report.packs_read >= 1 && report.packs_read == report.packs, "{report:?}");

    // Everything lives under the prefix.
    let root = store::open(&format!("s3://{bucket}")).expect("open bucket");
    let all = root.list("").await.expect("list bucket");
    assert!(!all.is_empty() && all.iter().all(|o| o.key.starts_with("berth/")), "{all:?}");
    assert!(all.iter().any(|o| o.key == "berth/config"), "{all:?}");
}
