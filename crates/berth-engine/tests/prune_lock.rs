//! The prune lock's heartbeat, on the memory and file stores and a real S3 server: a beating
//! lock is never taken over, a stale one is taken over by exactly one of several takers at once
//! (also when a taker died in the middle), and a holder whose lock was taken over stops. The
//! SIGKILL of a real pruner is in `crates/berth/tests/cli.rs`.

mod common;

use std::time::{Duration, Instant};

use berth_core::layout;
use berth_core::time::Timestamp;
use berth_engine::error::EngineError;
use berth_engine::prune_lock::PruneLock;
use berth_engine::snapshot_store::SnapshotStore;
use berth_engine::store::{self, DynStore, Put};
use bytes::Bytes;
use serde_json::json;

/// Long enough that a loaded machine (a slow S3 server) never delays a beat by the stale window
/// (6 beats), which would let a test's live holder be taken over.
const BEAT: Duration = Duration::from_secs(2);

fn now() -> Timestamp {
    Timestamp(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64)
}

/// The three adapters' stores, each a fresh initialised snapshot store.
async fn stores(name: &str) -> Vec<(&'static str, SnapshotStore, Option<tempfile::TempDir>)> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs = store::open(&format!("file://{}", tmp.path().join("store").display())).expect("file store");
    let s3 = store::open(&format!("s3://{}", common::s3_bucket(name))).expect("s3 store");
    let mut out = Vec::new();
    for (adapter, objects, dir) in [("memory", store::memory(), None), ("fs", fs, Some(tmp)), ("s3", s3, None)] {
        out.push((adapter, SnapshotStore::open_or_init(objects).await.expect("init store"), dir));
    }
    out
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(r: Result<T, EngineError>, what: &str) {
    match r {
        Err(EngineError::Conflict(_)) => {}
        other => panic!("{what}: expected a conflict, got {other:?}"),
    }
}

/// The lock object as JSON.
async fn lock_json(objects: &DynStore) -> serde_json::Value {
    serde_json::from_slice(&objects.get(layout::PRUNE_LOCK).await.expect("lock")).expect("lock json")
}

/// A lock (or takeover claim) as `host` writes it: last beaten `ago` seconds before, to beat
/// every `beat_secs`.
fn lock_body(host: &str, nonce: &str, ago: i64, beat_secs: u64) -> Bytes {
    let body =
        json!({"host": host, "pid": 1, "time": now().plus_secs(-ago), "nonce": nonce, "heartbeat_secs": beat_secs});
    Bytes::from(body.to_string())
}

/// Writes a lock as a prune that was to beat every second and died `ago` seconds before,
/// never having beaten.
async fn dead_lock(objects: &DynStore, nonce: &str, ago: i64) {
    let put = objects.put_if_absent(layout::PRUNE_LOCK, lock_body("gone", nonce, ago, 1)).await.expect("put lock");
    assert_eq!(put, Put::Created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_beating_lock_is_never_taken_over() {
    let stores = stores("beating").await;
    let checks = stores.iter().map(|(adapter, store, _)| async move {
        let holder = PruneLock::acquire(store, "holder", BEAT).await.expect("first acquire");
        // Past the stale window (6 beats): the holder keeps beating, so every attempt is refused.
        let until = Instant::now() + BEAT * 7;
        let mut tries = 0;
        while Instant::now() < until {
            assert_conflict(PruneLock::acquire(store, "other", BEAT).await, &format!("{adapter}: try {tries}"));
            tries += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(tries >= 3, "{adapter}: {tries} tries");
        holder.check().await.expect("the holder still holds it");
        // Only the newest beat is kept.
        let nonce = lock_json(store.objects()).await["nonce"].as_str().expect("nonce").to_string();
        let beats = store.objects().list(&layout::prune_lock_beats(&nonce)).await.expect("list");
        assert!((1..=2).contains(&beats.len()), "{adapter}: {beats:?}");
        holder.release().await.expect("release");
        assert!(store.objects().list("prune/lock").await.expect("list").is_empty(), "{adapter}: released clean");
        PruneLock::acquire(store, "other", BEAT).await.expect("free again").release().await.expect("release");
    });
    futures::future::join_all(checks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_taker_of_a_stale_lock() {
    let stores = stores("takers").await;
    for (adapter, store, _) in &stores {
        for round in 0..4 {
            let dead = format!("dead{round}");
            dead_lock(store.objects(), &dead, 60).await;
            let takers = (0..6).map(|i| {
                let store = store.clone();
                tokio::spawn(async move { PruneLock::acquire(&store, &format!("taker{i}"), BEAT).await })
            });
            let results: Vec<_> = futures::future::join_all(takers).await.into_iter().map(|r| r.unwrap()).collect();
            let winners: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
            assert_eq!(winners.len(), 1, "{adapter} round {round}: {results:?}");
            for r in results.iter().filter(|r| r.is_err()) {
                assert!(matches!(r, Err(EngineError::Conflict(_))), "{adapter} round {round}: {r:?}");
            }
            let lock = lock_json(store.objects()).await;
            assert_ne!(lock["nonce"], dead.as_str(), "{adapter}: the lock is the taker's");
            assert!(lock["host"].as_str().unwrap().starts_with("taker"), "{adapter}: {lock}");
            for lock in results.into_iter().flatten() {
                lock.release().await.expect("release");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_taker_that_died_midway_is_taken_over_once_stale() {
    let stores = stores("midway").await;
    for (adapter, store, _) in &stores {
        let objects = store.objects();
        dead_lock(objects, "deadholder", 60).await;
        // A taker claimed the takeover a second ago and is still within its window: refused.
        let marker = layout::prune_lock_break("deadholder");
        objects.put_if_absent(&marker, lock_body("taker", "t1", 1, 20)).await.expect("marker");
        assert_conflict(PruneLock::acquire(store, "next", BEAT).await, adapter);
        assert_eq!(lock_json(objects).await["nonce"], "deadholder", "{adapter}: left alone");
        // That taker died long ago: its claim is taken over in turn, and the lock with it.
        objects.delete(&marker).await.expect("delete marker");
        objects.put_if_absent(&marker, lock_body("taker", "t1", 600, 20)).await.expect("marker");
        let lock = PruneLock::acquire(store, "next", BEAT).await.expect("takes over");
        assert_eq!(lock_json(objects).await["host"], "next", "{adapter}");
        lock.release().await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_whose_lock_was_taken_over_stops() {
    let stores = stores("stops").await;
    for (adapter, store, _) in &stores {
        let objects = store.objects();
        let holder = PruneLock::acquire(store, "slow", BEAT).await.expect("acquire");
        let nonce = lock_json(objects).await["nonce"].as_str().expect("nonce").to_string();
        // What a taker does once it judged the holder gone: claim, delete, take.
        let taker = lock_body("taker", "t2", 0, 1);
        objects.put_if_absent(&layout::prune_lock_break(&nonce), taker.clone()).await.expect("claim");
        objects.delete(layout::PRUNE_LOCK).await.expect("delete");
        objects.put_if_absent(layout::PRUNE_LOCK, taker).await.expect("take");
        assert_conflict(holder.check().await, adapter);
        assert_conflict(holder.release().await, adapter);
        assert_eq!(lock_json(objects).await["host"], "taker", "{adapter}: the taker's lock is left alone");
    }
}
