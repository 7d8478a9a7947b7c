//! Scheduled retention, prune and row horizons, against SQLite and PostgreSQL, with real
//! snapshots in a directory store: what something points at is never forgotten (also under
//! concurrent publishes), a job runs once per period across two replicas on one database, and
//! old rows go in batches.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use berth_api::{
    ClientError, EnsureWorkspace, Epoch, PublishSnapshot, Ready, SetRetention, SnapshotStats, StartDrain,
    WorkspaceState,
};
use berth_control::meta::Table;
use berth_control::retention::{apply_retention, prune, purge_rows, tick, Job};
use berth_control::Config;
use berth_core::excludes::Excludes;
use berth_core::id::SnapshotId;
use berth_core::retention::Policy;
use berth_core::workspace::{Generation, WorkspaceId};
use berth_engine::create::{create, CreateOptions};
use berth_engine::progress::Progress;
use berth_engine::snapshot_store::SnapshotStore;
use common::{eventually, Db, TestServer};

both!(
    workspaces_with_their_own_policy,
    retention_keeps_what_is_pointed_at,
    retention_under_concurrent_publishes_keeps_the_pointer,
    old_rows_are_purged_in_batches,
);

/// Replicas share PostgreSQL (a SQLite file is one server's).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_run_once_across_two_replicas_on_postgres() {
    jobs_run_once_across_two_replicas(Db::Postgres).await
}

const KEEP_LATEST: Policy = Policy::NONE;

/// A workspace directory and the store it is snapshotted into.
struct Writer {
    dir: tempfile::TempDir,
    store: SnapshotStore,
    owner: WorkspaceId,
    n: u32,
}

impl Writer {
    async fn new(url: &str, owner: &str) -> Writer {
        let objects = berth_engine::store::open(url).unwrap();
        let store = SnapshotStore::open_or_init(objects).await.unwrap();
        Writer { dir: tempfile::tempdir().unwrap(), store, owner: WorkspaceId::new(owner).unwrap(), n: 0 }
    }

    /// Writes a change and snapshots it under `epoch` (not yet published to the control plane).
    async fn snapshot(&mut self, epoch: Epoch) -> SnapshotId {
        self.n += 1;
        std::fs::write(self.dir.path().join(format!("f{}", self.n % 3)), format!("change {}", self.n)).unwrap();
        let opts = CreateOptions {
            workspace: self.owner.clone(),
            generation: Generation(1),
            dir: self.dir.path().to_path_buf(),
            excludes: Excludes::new(&[], false).unwrap(),
            budget: None,
            cache_dir: None,
            host: "test".into(),
            threads: 1,
            epoch,
        };
        let summary = create(&self.store, &opts, &Arc::new(Progress::default())).await.unwrap();
        assert!(!summary.unchanged);
        summary.snapshot
    }

    async fn ids(&self) -> HashSet<SnapshotId> {
        self.store.list(Some(&self.owner), Some(Generation(1))).await.unwrap().into_iter().map(|s| s.id).collect()
    }
}

fn publish(epoch: Epoch, id: &SnapshotId, final_snapshot: bool) -> PublishSnapshot {
    PublishSnapshot { epoch, snapshot_id: id.to_hex(), stats: SnapshotStats::default(), final_snapshot }
}

async fn server(db: Db, store: &Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let url = format!("file://{}", store.display());
    TestServer::start(db, |c| {
        c.store = Some(url);
        tweak(c);
    })
    .await
}

/// The policy `keep-last=N` alone.
fn keep_last(n: u32) -> Policy {
    Policy { last: n, ..Policy::NONE }
}

fn own(policy: &str) -> EnsureWorkspace {
    EnsureWorkspace { retention: Some(policy.into()), ..Default::default() }
}

#[track_caller]
fn assert_bad_request(e: ClientError, names: &[&str]) {
    assert_eq!((e.status(), e.code()), (Some(400), Some("bad_request")), "{e}");
    for n in names {
        assert!(e.to_string().contains(n), "'{n}' in: {e}");
    }
}

/// A workspace's own policy (set at ensure or later, returned to the server's with `default`)
/// wins over the server's; bad policies are refused naming the field; with the server's
/// retention off, only workspaces with their own policy are touched.
async fn workspaces_with_their_own_policy(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let s = server(db, tmp.path(), |c| c.retention.policy = Some(keep_last(2))).await;
    let url = s.app.config.store.clone().unwrap();
    let (a, _) = s.admin.ensure("own:a", &own("keep-last=3")).await.unwrap();
    assert_eq!(a.retention.as_deref(), Some("keep-last=3,hourly=0,daily=0,weekly=0"));
    assert_eq!(s.ensure("own:b").await.retention, None, "the server's");
    // Ensuring again without a policy keeps the workspace's.
    assert_eq!(s.ensure("own:a").await.retention.as_deref(), Some("keep-last=3,hourly=0,daily=0,weekly=0"));
    let (c, _) = s.admin.ensure("own:c", &own("keep-last=1")).await.unwrap();
    assert!(c.retention.is_some());
    let c = s.admin.set_retention("own:c", &SetRetention { policy: Some("default".into()) }).await.unwrap();
    assert_eq!(c.retention, None, "back to the server's");
    let b = s.admin.set_retention("own:b", &SetRetention { policy: Some("keep-last=4".into()) }).await.unwrap();
    assert_eq!(b.retention.as_deref(), Some("keep-last=4,hourly=0,daily=0,weekly=0"));
    assert_eq!(s.admin.workspace("own:b").await.unwrap().retention, b.retention, "stored");
    // Bad policies: refused, naming the field and the fault; nothing changes.
    assert_bad_request(
        s.admin.ensure("own:a", &own("keep=3")).await.unwrap_err(),
        &["retention", "unknown retention key"],
    );
    let e = s.admin.set_retention("own:b", &SetRetention { policy: Some("hourly=x".into()) }).await.unwrap_err();
    assert_bad_request(e, &["policy", "not a count"]);
    assert_eq!(s.admin.workspace("own:b").await.unwrap().retention, b.retention);
    let e = s.admin.set_retention("own:none", &SetRetention { policy: None }).await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    // Each change is an event of its workspace.
    let set = s.app.meta.events(0, None, Some("retention_set"), 100).await.unwrap();
    let policies: Vec<_> = set.iter().map(|e| e.detail["policy"].as_str().unwrap_or("default")).collect();
    assert_eq!(policies.len(), 4, "a, c, c back, b: {policies:?}");

    // Six snapshots each: a keeps 3 (its own), b 4 (its own), c 2 (the server's).
    let mut writers = Vec::new();
    for owner in ["own:a", "own:b", "own:c"] {
        let mut w = Writer::new(&url, owner).await;
        for _ in 0..6 {
            w.snapshot(Epoch(1)).await;
        }
        writers.push(w);
    }
    let r = apply_retention(&s.app, s.app.config.retention.policy.as_ref()).await.unwrap();
    assert_eq!((r.workspaces, r.kept, r.forgotten), (3, 9, 9), "{r:?}");
    let kept: Vec<usize> =
        futures::future::join_all(writers.iter().map(|w| w.ids())).await.iter().map(|i| i.len()).collect();
    assert_eq!(kept, [3, 4, 2]);
    let run = s.app.meta.events(0, None, Some("retention_applied"), 10).await.unwrap();
    assert_eq!(run[0].detail["own_policies"].as_u64(), Some(2), "{:?}", run[0].detail);

    // The server's retention off: only b (its own keep-last=4) and a now set to 1 are touched.
    s.admin.set_retention("own:a", &SetRetention { policy: Some("keep-last=1".into()) }).await.unwrap();
    for w in &mut writers {
        w.snapshot(Epoch(1)).await;
    }
    let r = apply_retention(&s.app, None).await.unwrap();
    assert_eq!((r.workspaces, r.forgotten), (2, 4), "{r:?}");
    let kept: Vec<usize> =
        futures::future::join_all(writers.iter().map(|w| w.ids())).await.iter().map(|i| i.len()).collect();
    assert_eq!(kept, [1, 4, 3]);
    // With nothing of their own either, a run with retention off does nothing, not even list.
    for owner in ["own:a", "own:b"] {
        s.admin.set_retention(owner, &SetRetention { policy: None }).await.unwrap();
    }
    assert_eq!(apply_retention(&s.app, None).await.unwrap(), Default::default());
    assert_eq!(s.app.meta.count_events("retention_applied").await.unwrap(), 2);

    // A deleted workspace takes no policy; its next generation starts on the server's.
    s.admin.ensure("own:d", &own("keep-last=5")).await.unwrap();
    s.admin.delete("own:d").await.unwrap();
    let e = s.admin.set_retention("own:d", &SetRetention { policy: Some("keep-last=1".into()) }).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(409), Some("wrong_state")), "{e}");
    eventually(20, "the deletion to complete", || async {
        (s.admin.workspace("own:d").await.unwrap().state == WorkspaceState::Deleted).then_some(())
    })
    .await;
    let (d, _) = s.admin.ensure("own:d", &EnsureWorkspace::default()).await.unwrap();
    assert_eq!((d.generation, d.retention), (2, None), "a new generation, on the server's policy");
}

async fn retention_keeps_what_is_pointed_at(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let s = server(db, tmp.path(), |_| {}).await;
    let url = s.app.config.store.clone().unwrap();
    s.ensure("keep:a").await;
    let a = s.attach("keep:a", "pod-a").await;
    let ac = s.client(&a.token);
    let mut w = Writer::new(&url, "keep:a").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = w.snapshot(a.epoch).await;
        ac.publish_snapshot("keep:a", &publish(a.epoch, &id, false)).await.unwrap();
        ids.push(id);
    }
    // A fourth is in the store, its publish not yet made: the pointer is still the third.
    ids.push(w.snapshot(a.epoch).await);
    let r = apply_retention(&s.app, Some(&KEEP_LATEST)).await.unwrap();
    assert_eq!((r.workspaces, r.kept, r.pinned, r.forgotten), (1, 2, 1, 2), "{r:?}");
    assert_eq!(w.ids().await, HashSet::from([ids[2], ids[3]]), "the latest and the pointer are kept");
    // The forgotten snapshots' pointers are retired: the API lists what the store holds.
    let listed: Vec<String> =
        s.admin.snapshots("keep:a").await.unwrap().items.into_iter().map(|x| x.snapshot_id).collect();
    assert_eq!(listed, [ids[2].to_hex()]);
    ac.publish_snapshot("keep:a", &publish(a.epoch, &ids[3], false)).await.unwrap();
    let r = apply_retention(&s.app, Some(&KEEP_LATEST)).await.unwrap();
    assert_eq!((r.kept, r.forgotten), (1, 1), "{r:?}");

    // A drain: the old session publishes its final snapshot and lets go; the replacement
    // attaches and publishes before it acknowledges the handover. Until then the old
    // session's final snapshot is pinned (the replacement may still be restoring it).
    let scope = "workspace:keep:a";
    ac.start_drain(&StartDrain { scope: scope.into(), instance_id: None, reason: None }).await.unwrap();
    let fin = w.snapshot(a.epoch).await;
    ac.publish_snapshot("keep:a", &publish(a.epoch, &fin, true)).await.unwrap();
    ac.detach(&a.session_id).await.unwrap();
    let b = s.attach("keep:a", "pod-b").await;
    let bc = s.client(&b.token);
    let nonce = b.handover.clone().expect("a handover").nonce;
    let next = w.snapshot(b.epoch).await;
    bc.publish_snapshot("keep:a", &publish(b.epoch, &next, false)).await.unwrap();
    let r = apply_retention(&s.app, Some(&KEEP_LATEST)).await.unwrap();
    assert_eq!((r.kept, r.pinned, r.forgotten), (2, 1, 1), "{r:?}");
    assert_eq!(w.ids().await, HashSet::from([fin, next]), "the handover's snapshot is kept while it is pending");
    bc.ready(scope, &Ready { nonce, epoch: Some(b.epoch) }).await.unwrap();
    let r = apply_retention(&s.app, Some(&KEEP_LATEST)).await.unwrap();
    assert_eq!((r.kept, r.forgotten), (1, 1), "{r:?}");
    assert_eq!(w.ids().await, HashSet::from([next]));

    // Each run is an event with its counts; forgotten data goes with the prunes.
    let events = s.app.meta.events(0, None, Some("retention_applied"), 100).await.unwrap();
    let forgotten: Vec<u64> = events.iter().map(|e| e.detail["forgotten"].as_u64().unwrap()).collect();
    assert_eq!(forgotten, [2, 1, 1, 1]);
    let first = prune(&s.app).await.unwrap();
    assert!(first.marked > 0 && first.packs_deleted == 0, "marked first: {first:?}");
    let p = s.app.meta.events(0, None, Some("prune_done"), 10).await.unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].detail["marked"].as_u64(), Some(first.marked));
}

async fn retention_under_concurrent_publishes_keeps_the_pointer(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let s = server(db, tmp.path(), |_| {}).await;
    let url = s.app.config.store.clone().unwrap();
    s.ensure("keep:race").await;
    let a = s.attach("keep:race", "pod-a").await;
    let ac = s.client(&a.token);
    let stop = tokio_util::sync::CancellationToken::new();
    let retainer = {
        let (app, stop) = (s.app.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0;
            while !stop.is_cancelled() {
                apply_retention(&app, Some(&KEEP_LATEST)).await.expect("retention beside publishes");
                runs += 1;
            }
            runs
        })
    };
    let mut w = Writer::new(&url, "keep:race").await;
    for _ in 0..12 {
        // Store first, control plane second, as the agent does; retention runs in between.
        let id = w.snapshot(a.epoch).await;
        tokio::task::yield_now().await;
        ac.publish_snapshot("keep:race", &publish(a.epoch, &id, false)).await.unwrap();
        tokio::task::yield_now().await;
        let pointer = s.admin.workspace("keep:race").await.unwrap().latest_snapshot.unwrap();
        assert_eq!(pointer, id.to_hex());
        assert!(w.ids().await.contains(&id), "the pointer's record is in the store");
    }
    stop.cancel();
    let runs = retainer.await.unwrap();
    assert!(runs > 0);
    apply_retention(&s.app, Some(&KEEP_LATEST)).await.unwrap();
    assert_eq!(w.ids().await.len(), 1, "only the latest is left");
}

async fn jobs_run_once_across_two_replicas(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let first = server(db, tmp.path(), |c| c.retention.prune_grace_secs = 0).await;
    let url = first.app.config.store.clone().unwrap();
    s_publish_one(&first, &url).await;
    let mut config = first.app.config.clone();
    config.data_dir = first.data_dir.parent().unwrap().join("replica-2");
    let second = TestServer::start_with(config, None).await;
    assert_ne!(first.app.replica, second.app.replica);
    // Both replicas tick at once, twice: one prune and one retention run in all.
    for _ in 0..2 {
        for job in [Job::Prune, Job::Retention] {
            let (x, y) = tokio::join!(tick(&first.app, job), tick(&second.app, job));
            let ran = [x.unwrap(), y.unwrap()].into_iter().flatten().count();
            assert!(ran <= 1, "{job:?} ran on both replicas");
        }
    }
    for kind in ["prune_done", "retention_applied"] {
        assert_eq!(first.app.meta.count_events(kind).await.unwrap(), 1, "{kind} once across replicas");
    }
    // The next period belongs to whichever replica ticks first, again once.
    let later = berth_control::app::now().plus_secs(7 * 3600);
    let (x, y) = tokio::join!(
        first.app.meta.take_turn("prune", &first.app.replica, later, 3600),
        second.app.meta.take_turn("prune", &second.app.replica, later, 3600),
    );
    assert_eq!(u8::from(x.unwrap()) + u8::from(y.unwrap()), 1);
}

/// Publishes one snapshot of a fresh workspace, so the store exists and prune has work.
async fn s_publish_one(s: &TestServer, url: &str) {
    s.ensure("keep:one").await;
    let a = s.attach("keep:one", "pod-a").await;
    let mut w = Writer::new(url, "keep:one").await;
    let id = w.snapshot(a.epoch).await;
    s.client(&a.token).publish_snapshot("keep:one", &publish(a.epoch, &id, false)).await.unwrap();
}

async fn old_rows_are_purged_in_batches(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    // Horizon 0: every row that qualifies is old by the time the purge runs.
    let s = server(db, tmp.path(), |c| {
        c.retention.purge_batch = 2;
        c.retention.events_secs = Some(0);
        c.retention.sessions_secs = Some(0);
        c.retention.snapshots_secs = Some(0);
        c.retention.drains_secs = Some(0);
    })
    .await;
    let fake = |n: u8| SnapshotId::from_hex(&format!("{n:02x}").repeat(32)).unwrap();
    // An unclean end: the workspace is at risk and names the session, which stays.
    s.ensure("rows:risky").await;
    let r = s.attach("rows:risky", "pod-r").await;
    s.client(&r.token).publish_snapshot("rows:risky", &publish(r.epoch, &fake(1), false)).await.unwrap();
    s.client(&r.token).detach(&r.session_id).await.unwrap();
    // A clean end (gone after the purge), then a live session (stays).
    s.ensure("rows:b").await;
    let b1 = s.attach("rows:b", "pod-1").await;
    let b1c = s.client(&b1.token);
    b1c.publish_snapshot("rows:b", &publish(b1.epoch, &fake(2), false)).await.unwrap();
    b1c.publish_snapshot("rows:b", &publish(b1.epoch, &fake(3), true)).await.unwrap();
    // A drain of the workspace, cleared by the replacement's ack (gone), and a node drain
    // still running (stays).
    let scope = "workspace:rows:b";
    b1c.start_drain(&StartDrain { scope: scope.into(), instance_id: None, reason: None }).await.unwrap();
    b1c.detach(&b1.session_id).await.unwrap();
    let b2 = s.attach("rows:b", "pod-2").await;
    let nonce = b2.handover.clone().unwrap().nonce;
    s.client(&b2.token).ready(scope, &Ready { nonce, epoch: Some(b2.epoch) }).await.unwrap();
    s.admin.start_drain(&StartDrain { scope: "node:n9".into(), instance_id: None, reason: None }).await.unwrap();
    // Retention retired one pointer (gone); the others stay.
    let owner = WorkspaceId::new("rows:b").unwrap();
    let t = berth_control::app::now();
    assert_eq!(s.app.meta.retire_snapshots(&owner, Generation(1), &[fake(2)], t).await.unwrap(), 1);
    let events_before = s.app.meta.events(0, None, None, 1000).await.unwrap().len() as u64;
    assert!(events_before > 4, "several batches of 2: {events_before}");

    let purged: std::collections::BTreeMap<Table, u64> = purge_rows(&s.app).await.unwrap().into_iter().collect();
    let want = [(Table::Events, events_before), (Table::Sessions, 1), (Table::Snapshots, 1), (Table::Drains, 1)];
    assert_eq!(purged, want.into_iter().collect());
    s.app.meta.session(&session_id(&r.session_id)).await.expect("the at-risk session stays");
    s.app.meta.session(&session_id(&b2.session_id)).await.expect("a live session stays");
    let gone = s.app.meta.session(&session_id(&b1.session_id)).await;
    assert!(matches!(gone, Err(berth_control::error::Error::NotFound(_))), "an ended session goes: {gone:?}");
    let listed: Vec<String> =
        s.admin.snapshots("rows:b").await.unwrap().items.into_iter().map(|x| x.snapshot_id).collect();
    assert_eq!(listed, [fake(3).to_hex()], "live pointers stay");
    let drains: Vec<String> = s.admin.drains().await.unwrap().items.into_iter().map(|d| d.scope).collect();
    assert_eq!(drains, ["node:n9"], "a running drain stays");
    let events = s.app.meta.events(0, None, None, 1000).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["rows_purged"], "old events go; the purge says what it did");
    assert_eq!(events[0].detail["sessions"].as_u64(), Some(1));
}

fn session_id(s: &str) -> berth_core::session::SessionId {
    berth_core::session::SessionId::new(s.to_string()).unwrap()
}
