//! The API contract suite: every case runs against SQLite and against PostgreSQL, through the
//! real HTTP server and client.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use berth_api::client::{EventQuery, WorkspaceQuery};
use berth_api::{
    Attach, ClientError, EnsureWorkspace, Epoch, Fenced, GcRun, Heartbeat, Mount, PublishSnapshot, Ready, RepoSpec,
    SnapshotStats, StartDrain, VolumeState, WorkspaceState,
};
use common::{eventually, Db, TestServer};

both!(
    ensure_is_idempotent_and_validated,
    concurrent_ensures_make_one_workspace,
    concurrent_attaches_give_one_lease,
    leases_expire_and_fence_the_old_holder,
    heartbeats_keep_the_lease,
    snapshots_are_fenced_by_epoch,
    drain_handover_clears_only_by_the_rules,
    drains_refuse_attaches_and_time_out,
    deletion_ends_sessions_and_starts_a_new_generation,
    deletion_waits_for_a_referenced_volume,
    gc_removes_closed_volumes_once,
    orphans_are_removed_after_the_grace_window,
    listing_pages_and_filters,
    close_refuses_a_live_lease,
    unclean_ends_put_work_at_risk_and_gc_rescues_it,
    at_risk_volumes_without_a_store_are_kept_until_forced,
    a_recorded_volume_name_is_kept_and_new_generations_carry_the_installation,
    a_session_handed_to_a_warm_sandbox_takes_its_token,
);

/// Reads from `conn` until the server closes it (or resets it); returns what it sent. Panics
/// when it stays open for `secs` seconds.
async fn read_until_closed(conn: &mut tokio::net::TcpStream, secs: u64) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(secs), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                panic!("the server kept the connection open for {secs} s; it sent {:?}", String::from_utf8_lossy(&out))
            }
        }
    }
}

/// Stalled clients cannot hold the server: half a request head is cut after the header timeout,
/// half a body gets 408, an idle keep-alive connection is closed after the idle timeout, and past
/// the connection cap a fresh connection is served once a slot frees, while the reconcilers go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_connections_time_out_under_the_cap() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let s = TestServer::start(Db::Sqlite, |c| {
        c.http = berth_control::HttpLimits {
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3),
            max_connections: 3,
        };
        c.lease_ttl_secs = 1;
        c.expiry_interval_secs = 1;
    })
    .await;
    let addr = s.url.trim_start_matches("http://").to_string();
    s.ensure("agent:h").await;
    let a = s.attach("agent:h", "pod").await;
    // Three connections fill the cap, each with half a request head; a fourth waits unserved.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        stalled.push(c);
    }
    let fresh = tokio::spawn({
        let url = s.url.clone();
        async move { reqwest::Client::new().get(format!("{url}/healthz")).send().await.map(|r| r.status().as_u16()) }
    });
    // The reconcilers are not held up: the unrenewed lease expires and its session ends.
    let session = berth_core::session::SessionId::new(a.session_id.clone()).unwrap();
    eventually(10, "the lease to expire", || async { s.app.meta.session(&session).await.unwrap().ended_at }).await;
    for c in &mut stalled {
        assert!(read_until_closed(c, 10).await.is_empty(), "a stalled head gets no answer, only a close");
    }
    assert_eq!(fresh.await.unwrap().unwrap(), 200, "the fresh connection is served once a slot frees");

    // Half a body: 408 after the body timeout, and the connection closes.
    let mut c = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/gc/run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        common::ADMIN
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut c, 10).await).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");

    // An idle keep-alive connection lives past the header timeout, then closes at the idle one.
    let mut c = TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answered = tokio::time::Instant::now();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut c, 10).await).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let open_for = answered.elapsed();
    assert!(open_for >= Duration::from_secs(2), "closed after {open_for:?}, before the idle timeout");
    let metrics = scrape(&s).await;
    for phase in ["header", "body", "idle"] {
        let n = metrics
            .lines()
            .find(|l| l.starts_with("berth_http_timeouts_total") && l.contains(&format!("phase=\"{phase}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        assert!(n.is_some_and(|n| n >= 1.0), "no {phase} timeout counted:\n{metrics}");
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The data dir, the database, the admin token and the volumes root end up private whoever made
/// them: a data dir left 0755 with a 0644 database and token and a 0755 volumes root is
/// tightened at start. With a sandbox user set, the directories let it pass through, nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_are_private_whoever_made_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for dir in [data.clone(), data.join("volumes")] {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (file, body) in [("berth.db", ""), ("admin-token", "pre-made-admin-token-0123456789\n")] {
        std::fs::write(data.join(file), body).unwrap();
        std::fs::set_permissions(data.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let s = TestServer::start_with(berth_control::Config::new(&data), None).await;
    let admin = s.client("pre-made-admin-token-0123456789");
    admin.ensure("agent:m", &EnsureWorkspace::default()).await.unwrap();
    let modes = |names: &[&str]| names.iter().map(|n| (n.to_string(), mode_of(&data.join(n)))).collect::<Vec<_>>();
    let want = |pairs: &[(&str, u32)]| pairs.iter().map(|(n, m)| (n.to_string(), *m)).collect::<Vec<_>>();
    assert_eq!(
        modes(&["", "berth.db", "berth.db-wal", "admin-token", "volumes"]),
        want(&[("", 0o700), ("berth.db", 0o600), ("berth.db-wal", 0o600), ("admin-token", 0o600), ("volumes", 0o700)])
    );
    s.stop().await;
    // A sandbox user needs to pass through to its workspace directory.
    let mut config = berth_control::Config::new(&data);
    config.volume_owner = Some((1000, 1000));
    let s = TestServer::start_with(config, None).await;
    assert_eq!(modes(&["", "volumes", "berth.db"]), want(&[("", 0o711), ("volumes", 0o711), ("berth.db", 0o600)]));
    s.stop().await;
}

fn code(e: &ClientError) -> (u16, &str) {
    (e.status().unwrap_or(0), e.code().unwrap_or("?"))
}

fn hb(epoch: Epoch, instance: &str) -> Heartbeat {
    Heartbeat { epoch, instance_id: instance.into(), init_done: None }
}

fn snap(epoch: Epoch, n: u8) -> PublishSnapshot {
    PublishSnapshot {
        epoch,
        snapshot_id: format!("{:02x}", n).repeat(32),
        stats: SnapshotStats::default(),
        final_snapshot: false,
    }
}

fn attach_body(instance: &str) -> Attach {
    Attach { instance_id: instance.into(), node: None, pool: None }
}

fn volume_path(mount: &Mount) -> String {
    match mount {
        Mount::Local { path, .. } => path.clone(),
        other => panic!("expected a local mount, got {other:?}"),
    }
}

async fn ensure_is_idempotent_and_validated(db: Db) {
    let s = TestServer::start(db, |_| {}).await;
    let body = EnsureWorkspace {
        labels: [("team".to_string(), "infra".to_string())].into(),
        repos: vec![RepoSpec {
            url: "https://git.example.test/org/app.git".into(),
            branch: None,
            depth: None,
            path: None,
        }],
        ..Default::default()
    };
    let (a, created) = s.admin.ensure("agent:42", &body).await.unwrap();
    assert!(created);
    let (b, created) = s.admin.ensure("agent:42", &EnsureWorkspace::default()).await.unwrap();
    assert!(!created);
    assert_eq!((a.id.clone(), a.volume.name.clone(), a.generation), (b.id, b.volume.name, b.generation));
    assert_eq!(a.state, WorkspaceState::Active);
    assert_eq!(a.volume.state, VolumeState::Present);
    assert_eq!(a.size_bytes, 10 << 30);
    assert_eq!(a.labels.get("team").map(String::as_str), Some("infra"));
    assert!(a.volume.name.starts_with("ws-agent-42-"), "{}", a.volume.name);
    assert!(s.data_dir.join("volumes").join(&a.volume.name).is_dir());
    // Bad input names the problem and stores nothing.
    for (owner, body, want) in [
        ("bad/owner", EnsureWorkspace::default(), "not valid"),
        ("agent:43", EnsureWorkspace { size_bytes: Some(0), ..Default::default() }, "size_bytes"),
        (
            "agent:43",
            EnsureWorkspace { labels: [("berth.owner".into(), "x".into())].into(), ..Default::default() },
            "reserved",
        ),
        (
            "agent:43",
            EnsureWorkspace {
                repos: vec![RepoSpec {
                    url: "https://u:secret@git.example.test/a.git".into(),
                    branch: None,
                    depth: None,
                    path: None,
                }],
                ..Default::default()
            },
            "credentials",
        ),
        (
            "agent:43",
            EnsureWorkspace {
                repos: vec![RepoSpec {
                    url: "https://git.example.test/a.git".into(),
                    branch: None,
                    depth: None,
                    path: Some("../up".into()),
                }],
                ..Default::default()
            },
            "'..'",
        ),
    ] {
        let err = s.admin.ensure(owner, &body).await.unwrap_err();
        assert_eq!(code(&err).0, 400, "{err}");
        assert!(err.to_string().contains(want), "{err} lacks {want}");
        assert!(!err.to_string().contains("secret"), "{err} leaks the token");
    }
    assert_eq!(s.admin.workspace("agent:43").await.unwrap_err().status(), Some(404));
    // Unknown fields are refused rather than ignored.
    let raw = reqwest::Client::new()
        .put(format!("{}/v1/workspaces/agent:44", s.url))
        .bearer_auth(common::ADMIN)
        .body(r#"{"size": 5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert!(raw.text().await.unwrap().contains("unknown field `size`"));
}

async fn concurrent_ensures_make_one_workspace(db: Db) {
    let s = TestServer::start(db, |_| {}).await;
    let body = EnsureWorkspace::default();
    let results = futures::future::join_all((0..16).map(|_| s.admin.ensure("thread:race", &body))).await;
    let ids: std::collections::BTreeSet<_> =
        results.into_iter().map(|r| r.expect("every ensure succeeds").0.id).collect();
    assert_eq!(ids.len(), 1);
    let volumes = s.app.volumes.list(&berth_control::volumes::install_selector(&s.app.install)).await.unwrap();
    assert_eq!(volumes.len(), 1);
    assert_eq!(s.app.meta.count_events("workspace_ensured").await.unwrap(), 1);
}

async fn concurrent_attaches_give_one_lease(db: Db) {
    let s = TestServer::start(db, |_| {}).await;
    s.ensure("agent:1").await;
    let results = futures::future::join_all((0..16).map(|i| {
        let admin = s.admin.clone();
        async move { admin.attach("agent:1", &attach_body(&format!("pod-{i}"))).await }
    }))
    .await;
    let (ok, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    assert_eq!(ok.len(), 1, "exactly one attach wins");
    let winner = ok.into_iter().next().unwrap().unwrap();
    assert_eq!(winner.epoch, Epoch(1));
    for r in refused {
        let e = r.unwrap_err();
        assert_eq!(code(&e), (409, "lease_held"), "{e}");
        let ClientError::Api { detail, .. } = e else { unreachable!() };
        assert_eq!(detail.holder.unwrap().session_id, winner.session_id);
    }
}

async fn leases_expire_and_fence_the_old_holder(db: Db) {
    // Four seconds, so the new holder's lease outlives the old holder's refused writes on a loaded
    // machine; no expiry reconciler, so the expired session lives on until the takeover.
    let s = TestServer::start(db, |c| {
        c.lease_ttl_secs = 4;
        c.expiry_interval_secs = 3600;
    })
    .await;
    s.ensure("agent:2").await;
    let a = s.attach("agent:2", "pod-a").await;
    let a_client = s.client(&a.token);
    a_client.heartbeat(&a.session_id, &hb(a.epoch, "pod-a")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4300)).await;
    // A lease that expired is stale even before anyone takes over.
    let e = a_client.heartbeat(&a.session_id, &hb(a.epoch, "pod-a")).await.unwrap_err();
    assert_eq!(code(&e), (409, "stale_epoch"));
    let b = s.attach("agent:2", "pod-b").await;
    assert!(b.epoch > a.epoch, "the epoch only grows");
    // Every later write under the old epoch is rejected as stale; the client hands the writer the
    // one fencing error, naming both epochs.
    let fenced = Some(Fenced { presented: a.epoch, current: Some(b.epoch) });
    let e = s.admin.publish_snapshot("agent:2", &snap(a.epoch, 1)).await.unwrap_err();
    assert_eq!((code(&e), e.fenced()), ((409, "stale_epoch"), fenced));
    assert!(!e.is_temporary());
    // The takeover ended the old session, and its token with it: it can neither write nor
    // start a drain that would evict the new holder.
    assert_eq!(
        code(&a_client.heartbeat(&a.session_id, &hb(a.epoch, "pod-a")).await.unwrap_err()),
        (401, "unauthorized")
    );
    assert_eq!(code(&a_client.publish_snapshot("agent:2", &snap(a.epoch, 1)).await.unwrap_err()).0, 401);
    let evict = StartDrain { scope: "workspace:agent:2".into(), instance_id: None, reason: None };
    assert_eq!(code(&a_client.start_drain(&evict).await.unwrap_err()).0, 401);
    assert!(!s.admin.drain("workspace:agent:2").await.unwrap().draining);
    // The new holder writes fine.
    s.client(&b.token).publish_snapshot("agent:2", &snap(b.epoch, 2)).await.unwrap();
    let kinds: Vec<_> =
        s.admin.events(&EventQuery::default()).await.unwrap().items.into_iter().map(|e| e.kind).collect();
    assert!(kinds.iter().any(|k| k == "lease_taken_over" || k == "lease_expired"), "{kinds:?}");
}

async fn heartbeats_keep_the_lease(db: Db) {
    let s = TestServer::start(db, |c| c.lease_ttl_secs = 4).await;
    s.ensure("agent:3").await;
    let a = s.attach("agent:3", "pod-a").await;
    let c = s.client(&a.token);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.heartbeat(&a.session_id, &hb(a.epoch, "pod-a")).await.unwrap();
    }
    let e = s.admin.attach("agent:3", &attach_body("pod-b")).await.unwrap_err();
    assert_eq!(code(&e), (409, "lease_held"));
    // Detach releases at once; the next attach gets a higher epoch. Detach is idempotent for the
    // admin; the session's own token died with the session.
    c.detach(&a.session_id).await.unwrap();
    s.admin.detach(&a.session_id).await.unwrap();
    assert_eq!(code(&c.detach(&a.session_id).await.unwrap_err()).0, 401);
    let b = s.attach("agent:3", "pod-b").await;
    assert_eq!(b.epoch, a.epoch.next());
}

async fn snapshots_are_fenced_by_epoch(db: Db) {
    let s = TestServer::start(db, |_| {}).await;
    s.ensure("agent:4").await;
    let a = s.attach("agent:4", "pod-a").await;
    let c = s.client(&a.token);
    let first = c.publish_snapshot("agent:4", &snap(a.epoch, 1)).await.unwrap();
    assert!(first.latest);
    c.publish_snapshot("agent:4", &snap(a.epoch, 2)).await.unwrap();
    let e = c.publish_snapshot("agent:4", &snap(a.epoch.next(), 3)).await.unwrap_err();
    assert_eq!(code(&e), (409, "stale_epoch"));
    let mut bad = snap(a.epoch, 4);
    bad.snapshot_id = "not-hex".into();
    assert_eq!(code(&c.publish_snapshot("agent:4", &bad).await.unwrap_err()).0, 400);
    let list = c.snapshots("agent:4").await.unwrap().items;
    assert_eq!(list.len(), 2);
    assert!(list.iter().any(|x| x.latest && x.snapshot_id == snap(Epoch::ZERO, 2).snapshot_id));
    let w = s.admin.workspace("agent:4").await.unwrap();
    assert_eq!(w.latest_snapshot, Some(snap(Epoch::ZERO, 2).snapshot_id));
    // The next session learns the latest snapshot in its init spec.
    c.detach(&a.session_id).await.unwrap();
    let b = s.attach("agent:4", "pod-b").await;
    assert_eq!(b.init.latest_snapshot, Some(snap(Epoch::ZERO, 2).snapshot_id));
    assert_eq!(b.init.generation, 1);
}

async fn drain_handover_clears_only_by_the_rules(db: Db) {
    let s = TestServer::start(db, |_| {}).await;
    s.ensure("agent:5").await;
    let a = s.attach("agent:5", "pod-a").await;
    let ac = s.client(&a.token);
    let scope = "workspace:agent:5";
    // The sandbox reports its eviction; the drain names its instance.
    let d = ac
        .start_drain(&StartDrain { scope: scope.into(), instance_id: None, reason: Some("SIGTERM".into()) })
        .await
        .unwrap();
    assert!(d.draining);
    assert_eq!(d.instance_id.as_deref(), Some("pod-a"));
    let nonce = d.nonce.clone().unwrap();
    // A second eviction keeps the nonce.
    let again = ac.start_drain(&StartDrain { scope: scope.into(), instance_id: None, reason: None }).await.unwrap();
    assert_eq!(again.nonce.as_deref(), Some(nonce.as_str()));
    // A late heartbeat from the old instance never clears it.
    let r = ac.heartbeat(&a.session_id, &hb(a.epoch, "pod-a")).await.unwrap();
    assert!(r.draining);
    assert_eq!(r.drains[0].nonce.as_deref(), Some(nonce.as_str()));
    // A heartbeat naming another instance (a made-up "new instance") is refused and clears nothing.
    let e = ac.heartbeat(&a.session_id, &hb(a.epoch, "pod-made-up")).await.unwrap_err();
    assert_eq!(code(&e), (409, "wrong_instance"));
    assert!(e.to_string().contains("attached by instance pod-a"), "{e}");
    assert!(s.admin.drain(scope).await.unwrap().draining);
    assert_eq!(s.admin.workspace("agent:5").await.unwrap().lease.unwrap().instance_id, "pod-a");
    // The drained session cannot acknowledge its own drain, even with the right nonce.
    let e = ac.ready(scope, &Ready { nonce: nonce.clone(), epoch: Some(a.epoch) }).await.unwrap_err();
    assert_eq!(code(&e), (403, "forbidden"));
    assert!(s.admin.drain(scope).await.unwrap().draining);
    // A wrong nonce leaves it draining.
    let e = s.admin.ready(scope, &Ready { nonce: "wrong".into(), epoch: None }).await.unwrap_err();
    assert_eq!(code(&e), (409, "wrong_nonce"));
    assert!(s.admin.drain(scope).await.unwrap().draining);
    // While the old sandbox still holds its lease, the replacement waits (503, Retry-After).
    let e = s.admin.attach("agent:5", &attach_body("pod-b")).await.unwrap_err();
    assert_eq!(code(&e), (503, "draining"));
    // Once it lets go, the replacement attaches and gets the nonce to acknowledge with.
    ac.detach(&a.session_id).await.unwrap();
    let b = s.attach("agent:5", "pod-b").await;
    let handover = b.handover.clone().expect("a handover");
    assert_eq!((handover.scope.as_str(), handover.nonce.as_str()), (scope, nonce.as_str()));
    assert!(s.admin.workspace("agent:5").await.unwrap().draining);
    // The old session's late heartbeat is refused (its token died with it) and clears nothing.
    assert_eq!(code(&ac.heartbeat(&a.session_id, &hb(a.epoch, "pod-a")).await.unwrap_err()), (401, "unauthorized"));
    assert!(s.admin.drain(scope).await.unwrap().draining);
    let bc = s.client(&b.token);
    let r = bc.ready(scope, &Ready { nonce: nonce.clone(), epoch: Some(b.epoch) }).await.unwrap();
    assert!(r.cleared);
    assert_eq!(r.drain.cleared_by.as_deref(), Some("ack"));
    // An ack while not draining is a no-op.
    let r = bc.ready(scope, &Ready { nonce, epoch: None }).await.unwrap();
    assert!(!r.cleared);
    assert!(!r.drain.draining);

    // The heartbeat of a new instance's session clears a drain; the drained session's own
    // heartbeats cannot, whatever instance they name.
    let d = s.admin.start_drain(&StartDrain { scope: scope.into(), instance_id: None, reason: None }).await.unwrap();
    assert_eq!(d.instance_id.as_deref(), Some("pod-b"));
    assert!(bc.heartbeat(&b.session_id, &hb(b.epoch, "pod-b")).await.unwrap().draining);
    let e = bc.heartbeat(&b.session_id, &hb(b.epoch, "pod-b-resumed")).await.unwrap_err();
    assert_eq!(code(&e), (409, "wrong_instance"));
    assert!(s.admin.drain(scope).await.unwrap().draining);
    bc.detach(&b.session_id).await.unwrap();
    let c = s.attach("agent:5", "pod-c").await;
    assert_eq!(c.instance_id, "pod-c");
    let r = s.client(&c.token).heartbeat(&c.session_id, &hb(c.epoch, "pod-c")).await.unwrap();
    assert!(!r.draining);
    let d = s.admin.drain(scope).await.unwrap();
    assert_eq!((d.draining, d.cleared_by.as_deref()), (false, Some("new_instance")));
    let refused =
        s.admin.events(&EventQuery { kind: Some("drain_own_ack_refused".into()), ..Default::default() }).await.unwrap();
    assert_eq!(refused.items.len(), 1, "the refused ack is audited");
}

async fn drains_refuse_attaches_and_time_out(db: Db) {
    let s = TestServer::start(db, |c| {
        c.drain_timeout_secs = 2;
        c.expiry_interval_secs = 1;
    })
    .await;
    s.ensure("agent:6").await;
    let d = s
        .admin
        .start_drain(&StartDrain { scope: "node:n1".into(), instance_id: None, reason: Some("spot".into()) })
        .await
        .unwrap();
    assert!(d.draining && d.instance_id.is_none());
    let attach = Attach { instance_id: "pod-a".into(), node: Some("n1".into()), pool: None };
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/workspaces/agent:6/sessions", s.url))
        .bearer_auth(common::ADMIN)
        .json(&attach)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 503);
    assert!(raw.headers().get("retry-after").is_some(), "Retry-After is set");
    // Elsewhere, work goes on; the session on n2 sees no drain.
    let other = s
        .admin
        .attach("agent:6", &Attach { instance_id: "pod-b".into(), node: Some("n2".into()), pool: None })
        .await
        .unwrap();
    let r = s.client(&other.token).heartbeat(&other.session_id, &hb(other.epoch, "pod-b")).await.unwrap();
    assert!(!r.draining);
    // A heartbeat from a session on the draining node says so, without the node's nonce.
    s.client(&other.token).detach(&other.session_id).await.unwrap();
    s.admin.start_drain(&StartDrain { scope: "pool:gpu".into(), instance_id: None, reason: None }).await.unwrap();
    // The hard timeout clears it, recorded by the reconciler.
    let cleared = eventually(10, "the hard timeout to clear node:n1", || async {
        let d = s.admin.drain("node:n1").await.unwrap();
        let events =
            s.admin.events(&EventQuery { kind: Some("drain_cleared".into()), ..Default::default() }).await.unwrap();
        (!d.draining && events.items.iter().any(|e| e.scope.as_deref() == Some("node:n1"))).then_some(d)
    })
    .await;
    assert_eq!(cleared.cleared_by.as_deref(), Some("timeout"));
    s.admin.attach("agent:6", &attach).await.expect("attach after the drain cleared");
}

async fn deletion_ends_sessions_and_starts_a_new_generation(db: Db) {
    let s = TestServer::start(db, |_| {}).await;
    let w = s.ensure("thread:7").await;
    let a = s.attach("thread:7", "pod-a").await;
    let c = s.client(&a.token);
    c.publish_snapshot("thread:7", &snap(a.epoch, 7)).await.unwrap();
    let dir = volume_path(&a.mount);
    std::fs::write(Path::new(&dir).join("work.txt"), b"work").unwrap();
    let d = s.admin.delete("thread:7").await.unwrap();
    assert_eq!(d.state, WorkspaceState::Deleting);
    let done = eventually(20, "the deletion to complete", || async {
        let w = s.admin.workspace("thread:7").await.unwrap();
        (w.state == WorkspaceState::Deleted).then_some(w)
    })
    .await;
    assert!(!Path::new(&dir).exists(), "the volume is gone");
    assert_eq!(done.generation, w.generation + 1);
    assert_eq!(done.volume.state, VolumeState::Removed);
    // The deletion ended the session: its token is dead.
    assert_eq!(code(&c.heartbeat(&a.session_id, &hb(a.epoch, "pod-a")).await.unwrap_err()), (401, "unauthorized"));
    // A second delete is idempotent.
    assert_eq!(s.admin.delete("thread:7").await.unwrap().state, WorkspaceState::Deleted);
    // The reused name is a new generation with a new volume and none of the old state.
    let (w2, created) = s.admin.ensure("thread:7", &EnsureWorkspace::default()).await.unwrap();
    assert!(!created);
    assert_eq!(w2.generation, w.generation + 1);
    assert_ne!(w2.volume.name, w.volume.name);
    assert_ne!(w2.id, w.id);
    assert_eq!(w2.latest_snapshot, None);
    let b = s.attach("thread:7", "pod-b").await;
    assert_eq!(b.init.latest_snapshot, None);
    assert_eq!(b.init.generation, w.generation + 1);
    assert!(b.epoch > a.epoch, "epochs keep growing across generations");
    assert!(s.client(&b.token).snapshots("thread:7").await.unwrap().items.is_empty());
    let kinds: Vec<_> = s
        .admin
        .events(&EventQuery { owner: Some("thread:7".into()), ..Default::default() })
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for k in
        ["workspace_delete_requested", "sessions_ended", "volume_removed", "snapshots_retired", "workspace_deleted"]
    {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
}

async fn deletion_waits_for_a_referenced_volume(db: Db) {
    let s = TestServer::start(db, |_| {}).await;
    s.ensure("thread:8").await;
    let a = s.attach("thread:8", "pod-a").await;
    let Mount::Local { path, lock } = &a.mount else { panic!("local mount") };
    // A live process (this test) holds the volume's lock, as a sandbox using it does.
    let held = std::fs::File::open(lock).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockShared).unwrap();
    s.admin.delete("thread:8").await.unwrap();
    let w = eventually(20, "the referenced outcome to show", || async {
        let w = s.admin.workspace("thread:8").await.unwrap();
        w.deletion.as_ref().and_then(|d| d.error.clone()).map(|_| w)
    })
    .await;
    assert_eq!(w.state, WorkspaceState::Deleting, "stays visibly retryable");
    assert_eq!(w.volume.last_outcome.as_deref(), Some("referenced"));
    assert!(Path::new(path).exists(), "a referenced volume is never removed");
    drop(held);
    // Backoff is durable; make the retry due now rather than in 30 s.
    sqlx_exec(&s, "UPDATE workspaces SET retry_at = 0 WHERE owner = 'thread:8'").await;
    s.app.wake_delete.notify_one();
    eventually(20, "the deletion to complete", || async {
        (s.admin.workspace("thread:8").await.unwrap().state == WorkspaceState::Deleted).then_some(())
    })
    .await;
    assert!(!Path::new(path).exists());
}

async fn sqlx_exec(s: &TestServer, sql: &str) {
    let url = s.app.config.database_url();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query(sql).execute(&pool).await.unwrap();
    pool.close().await;
}

async fn gc_removes_closed_volumes_once(db: Db) {
    let s = TestServer::start(db, |_| {}).await;
    let mut dirs = Vec::new();
    for i in 0..5 {
        let owner = format!("thread:gc{i}");
        s.ensure(&owner).await;
        let a = s.attach(&owner, "pod").await;
        dirs.push((owner.clone(), a.mount.clone()));
        // A clean end: the final snapshot, then the detach.
        let c = s.client(&a.token);
        c.publish_snapshot(&owner, &PublishSnapshot { final_snapshot: true, ..snap(a.epoch, i) }).await.unwrap();
        c.detach(&a.session_id).await.unwrap();
        assert!(!s.admin.workspace(&owner).await.unwrap().at_risk, "a clean end leaves nothing at risk");
        s.admin.close(&owner).await.unwrap();
    }
    s.ensure("thread:active").await;
    // One closed volume is still mounted (its lock is held).
    let Mount::Local { lock, .. } = &dirs[0].1 else { panic!() };
    let held = std::fs::File::open(lock).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockShared).unwrap();

    let plan = s.admin.gc_run(&GcRun { dry_run: true, orphans: false, force: false }).await.unwrap();
    assert_eq!(plan.volumes.len(), 5);
    assert!(plan.volumes.iter().all(|v| v.outcome == "remove"));
    assert!(dirs.iter().all(|(_, m)| Path::new(&volume_path(m)).exists()), "a dry run removes nothing");

    let r = s.admin.gc_run(&GcRun::default()).await.unwrap();
    assert_eq!((r.counts["removed"], r.counts["referenced"], r.counts["error"]), (4, 1, 0), "{r:?}");
    assert!(Path::new(&volume_path(&dirs[0].1)).exists(), "the referenced volume stays");
    for (_, m) in &dirs[1..] {
        assert!(!Path::new(&volume_path(m)).exists());
    }
    // Marked volumes are never candidates again; the referenced one backs off durably.
    let r = s.admin.gc_run(&GcRun::default()).await.unwrap();
    assert!(r.volumes.is_empty(), "{r:?}");
    assert_eq!(r.counts["cooldown"], 1);
    let w = s.admin.workspace(&dirs[1].0).await.unwrap();
    assert_eq!((w.volume.state, w.volume.last_outcome.as_deref()), (VolumeState::Removed, Some("removed")));
    assert!(s.admin.workspace("thread:active").await.unwrap().volume.state == VolumeState::Present);
    // A closed workspace reopened gets its volume back (empty; the sandbox restores it).
    let (w, _) = s.admin.ensure(&dirs[1].0, &EnsureWorkspace::default()).await.unwrap();
    assert_eq!((w.state, w.volume.state), (WorkspaceState::Active, VolumeState::Present));
    assert!(Path::new(&volume_path(&dirs[1].1)).exists());
    drop(held);
}

async fn orphans_are_removed_after_the_grace_window(db: Db) {
    let s = TestServer::start(db, |c| c.gc.orphan_grace_secs = 1).await;
    s.ensure("agent:kept").await;
    // A volume with berth's labels and no record (e.g. its record was lost with a database restore).
    let owner = berth_core::workspace::WorkspaceId::new("agent:lost").unwrap();
    let name = berth_core::volume::VolumeName::derive(&s.app.install, &owner, berth_core::workspace::Generation(1));
    let spec = berth_control::volumes::VolumeSpec {
        labels: berth_control::volumes::volume_labels(
            &s.app.install,
            &owner,
            berth_core::workspace::Generation(1),
            &Default::default(),
        ),
        name: name.clone(),
        size_bytes: 1,
        storage_class: None,
        access_mode: Default::default(),
    };
    s.app.volumes.ensure(&spec).await.unwrap();
    let dir = s.data_dir.join("volumes").join(name.as_str());
    assert!(dir.is_dir());
    let orphans = |r: &berth_api::GcReport| {
        r.orphans.clone().unwrap_or_default().into_iter().map(|o| (o.volume, o.action)).collect::<Vec<_>>()
    };
    let dry = s.admin.gc_run(&GcRun { dry_run: true, orphans: true, force: false }).await.unwrap();
    assert_eq!(orphans(&dry), [(name.to_string(), "track".to_string())]);
    let r = s.admin.gc_run(&GcRun { dry_run: false, orphans: true, force: false }).await.unwrap();
    assert_eq!(orphans(&r), [(name.to_string(), "track".to_string())]);
    assert!(dir.is_dir(), "inside the grace window it stays");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = s.admin.gc_run(&GcRun { dry_run: false, orphans: true, force: false }).await.unwrap();
    assert_eq!(orphans(&r), [(name.to_string(), "removed".to_string())]);
    assert!(!dir.exists());
    assert!(s.data_dir.join("volumes").join(s.admin.workspace("agent:kept").await.unwrap().volume.name).is_dir());
}

async fn listing_pages_and_filters(db: Db) {
    let s = TestServer::start(db, |_| {}).await;
    for i in 0..7 {
        let labels = [("tier".to_string(), if i % 2 == 0 { "a" } else { "b" }.to_string())].into();
        s.admin.ensure(&format!("o{i}"), &EnsureWorkspace { labels, ..Default::default() }).await.unwrap();
    }
    s.admin.close("o3").await.unwrap();
    let mut seen = Vec::new();
    let mut q = WorkspaceQuery { limit: Some(3), ..Default::default() };
    loop {
        let page = s.admin.workspaces(&q).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|w| w.owner));
        match page.next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ["o0", "o1", "o2", "o3", "o4", "o5", "o6"]);
    let closed = s
        .admin
        .workspaces(&WorkspaceQuery { state: Some(WorkspaceState::Closed), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(closed.items.iter().map(|w| w.owner.as_str()).collect::<Vec<_>>(), ["o3"]);
    let b = s
        .admin
        .workspaces(&WorkspaceQuery { labels: vec![("tier".into(), "b".into())], limit: Some(2), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(b.items.iter().map(|w| w.owner.as_str()).collect::<Vec<_>>(), ["o1", "o3"]);
    assert_eq!(b.next.as_deref(), Some("o3"));
}

async fn close_refuses_a_live_lease(db: Db) {
    let s = TestServer::start(db, |_| {}).await;
    s.ensure("agent:9").await;
    let a = s.attach("agent:9", "pod-a").await;
    assert_eq!(code(&s.admin.close("agent:9").await.unwrap_err()), (409, "lease_held"));
    // The admin may detach any session (a crashed sandbox), then close.
    s.admin.detach(&a.session_id).await.unwrap();
    let w = s.admin.close("agent:9").await.unwrap();
    assert_eq!(w.state, WorkspaceState::Closed);
    assert_eq!(code(&s.admin.attach("agent:9", &attach_body("pod-b")).await.unwrap_err()), (409, "wrong_state"));
    // Permissions of the volume root let the sandbox user write (A5).
    let mode = std::fs::metadata(volume_path(&a.mount)).unwrap().permissions().mode();
    assert_eq!(mode & 0o700, 0o700);
}

async fn kinds_of(s: &TestServer, owner: &str) -> Vec<(String, serde_json::Value)> {
    let q = EventQuery { owner: Some(owner.into()), limit: Some(1000), ..Default::default() };
    s.admin.events(&q).await.unwrap().items.into_iter().map(|e| (e.kind, e.detail)).collect()
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find(|l| l.split([' ', '{']).next() == Some(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn scrape(s: &TestServer) -> String {
    reqwest::get(format!("{}/metrics", s.url)).await.unwrap().text().await.unwrap()
}

/// Attaches to `owner`, writes a file into the volume, and ends the session `how`: detached
/// without a final snapshot, or with one (clean). Returns the volume path.
async fn session_ending(s: &TestServer, owner: &str, clean: bool) -> String {
    let a = s.attach(owner, "pod-a").await;
    let dir = volume_path(&a.mount);
    std::fs::write(Path::new(&dir).join("work.txt"), format!("work of {owner}")).unwrap();
    let c = s.client(&a.token);
    if clean {
        c.publish_snapshot(owner, &PublishSnapshot { final_snapshot: true, ..snap(a.epoch, 1) }).await.unwrap();
    } else {
        // A final snapshot taken back by a later publish is not a clean end.
        c.publish_snapshot(owner, &PublishSnapshot { final_snapshot: true, ..snap(a.epoch, 1) }).await.unwrap();
        c.publish_snapshot(owner, &snap(a.epoch, 2)).await.unwrap();
    }
    c.detach(&a.session_id).await.unwrap();
    dir
}

async fn unclean_ends_put_work_at_risk_and_gc_rescues_it(db: Db) {
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}", store.path().display());
    let s = TestServer::start(db, |c| c.store = Some(url.clone())).await;
    s.ensure("thread:risky").await;
    s.ensure("thread:clean").await;
    let dir = session_ending(&s, "thread:risky", false).await;
    session_ending(&s, "thread:clean", true).await;
    let w = s.admin.workspace("thread:risky").await.unwrap();
    assert!(w.at_risk, "{w:?}");
    assert!(w.at_risk_reason.as_deref().unwrap_or("").contains("without a final snapshot"), "{w:?}");
    assert!(!s.admin.workspace("thread:clean").await.unwrap().at_risk);
    let events = kinds_of(&s, "thread:risky").await;
    assert!(events.iter().any(|(k, d)| k == "session_ended" && d["outcome"] == "unclean"), "{events:?}");
    assert!(events.iter().any(|(k, _)| k == "at_risk"), "{events:?}");
    assert_eq!(metric(&scrape(&s).await, "berth_workspaces_at_risk"), Some(1.0));
    // Its deletion is refused unless forced, saying how to save the work.
    let e = s.admin.delete("thread:risky").await.unwrap_err();
    assert_eq!(code(&e), (409, "at_risk"), "{e}");
    assert!(e.to_string().contains("--force") && e.to_string().contains("rescue"), "{e}");
    for o in ["thread:risky", "thread:clean"] {
        s.admin.close(o).await.unwrap();
    }
    let plan = s.admin.gc_run(&GcRun { dry_run: true, ..GcRun::default() }).await.unwrap();
    let planned: Vec<_> = plan.volumes.iter().map(|v| (v.owner.as_str(), v.outcome.as_str())).collect();
    assert_eq!(planned, [("thread:clean", "remove"), ("thread:risky", "rescue")]);
    let r = s.admin.gc_run(&GcRun::default()).await.unwrap();
    assert_eq!((r.counts["removed"], r.counts["at_risk"]), (2, 0), "{r:?}");
    assert!(!Path::new(&dir).exists(), "removed once rescued");
    let w = s.admin.workspace("thread:risky").await.unwrap();
    assert!(!w.at_risk, "{w:?}");
    // The rescue's snapshot holds the volume's content, under a new epoch, and is the latest.
    let events = kinds_of(&s, "thread:risky").await;
    let rescued = events.iter().find(|(k, _)| k == "rescue_succeeded").map(|(_, d)| d.clone()).expect("rescued");
    assert_eq!(w.latest_snapshot.as_deref(), rescued["snapshot"].as_str());
    assert!(rescued["epoch"].as_u64() > Some(1), "{rescued}");
    let snaps = s.admin.snapshots("thread:risky").await.unwrap().items;
    assert!(snaps[0].latest && snaps[0].epoch.0 == rescued["epoch"].as_u64().unwrap(), "{snaps:?}");
    let objects = berth_engine::store::open(&url).unwrap();
    let repo = berth_engine::snapshot_store::SnapshotStore::open(objects).await.unwrap();
    let owner = berth_core::workspace::WorkspaceId::new("thread:risky").unwrap();
    let latest = repo.latest(&owner, berth_core::workspace::Generation(1)).await.unwrap().expect("a record");
    assert_eq!(Some(latest.id.to_hex()), w.latest_snapshot);
    assert_eq!(latest.record.host, "berth-rescue");
    for k in ["rescue_started", "rescue_succeeded", "volume_removed"] {
        assert!(events.iter().any(|(x, _)| x == k), "{k} missing from {events:?}");
    }
    assert!(!events.iter().any(|(k, _)| k == "at_risk_removed"), "a rescued volume is not given up");
    assert_eq!(metric(&scrape(&s).await, "berth_workspaces_at_risk"), Some(0.0));
}

async fn at_risk_volumes_without_a_store_are_kept_until_forced(db: Db) {
    let s = TestServer::start(db, |c| c.store = None).await;
    s.ensure("thread:kept").await;
    let dir = session_ending(&s, "thread:kept", false).await;
    s.admin.close("thread:kept").await.unwrap();
    let r = s.admin.gc_run(&GcRun::default()).await.unwrap();
    assert_eq!((r.counts["removed"], r.counts["at_risk"]), (0, 1), "{r:?}");
    let error = r.volumes[0].error.clone().unwrap_or_default();
    assert!(error.contains("--store"), "the report says why: {error}");
    assert!(Path::new(&dir).join("work.txt").exists(), "an at-risk volume is never removed unrescued");
    let w = s.admin.workspace("thread:kept").await.unwrap();
    assert!(w.at_risk && w.volume.state == VolumeState::Present, "{w:?}");
    assert_eq!(w.volume.last_outcome.as_deref(), Some("at_risk"));
    // Backing off: the next sweep does not try again at once; a forced one removes it.
    sqlx_exec(&s, "UPDATE workspaces SET retry_at = NULL").await;
    let r = s.admin.gc_run(&GcRun { force: true, ..GcRun::default() }).await.unwrap();
    assert_eq!(r.counts["removed"], 1, "{r:?}");
    assert!(!Path::new(&dir).exists());
    let events = kinds_of(&s, "thread:kept").await;
    let removed = events.iter().find(|(k, _)| k == "at_risk_removed").map(|(_, d)| d.clone()).expect("recorded");
    assert_eq!((removed["reason"].as_str(), removed["outcome"].as_str()), (Some("forced"), Some("unclean")));
    assert!(!s.admin.workspace("thread:kept").await.unwrap().at_risk);
    // A forced deletion of an at-risk workspace records the same.
    s.ensure("thread:forced").await;
    session_ending(&s, "thread:forced", false).await;
    s.admin.delete_forced("thread:forced").await.unwrap();
    eventually(20, "the forced deletion", || async {
        (s.admin.workspace("thread:forced").await.unwrap().state == WorkspaceState::Deleted).then_some(())
    })
    .await;
    let events = kinds_of(&s, "thread:forced").await;
    assert!(events.iter().any(|(k, d)| k == "at_risk_removed" && d["reason"] == "forced"), "{events:?}");
}

/// A record written before volume names carried the installation keeps its name: reopened after
/// GC, its volume is created again under that name, and attaches, GC and reopens use it; only a
/// new generation is named with the installation.
async fn a_recorded_volume_name_is_kept_and_new_generations_carry_the_installation(db: Db) {
    use berth_core::volume::VolumeName;
    use berth_core::workspace::{Generation, WorkspaceId};
    let s = TestServer::start(db, |_| {}).await;
    let owner = WorkspaceId::new("agent:legacy").unwrap();
    let w = s.ensure(owner.as_str()).await;
    assert_eq!(w.volume.name, VolumeName::derive(&s.app.install, &owner, Generation(1)).as_str());
    // The name the derivation without the installation gave this owner.
    let legacy = "ws-agent-legacy-5f0c2a9e1";
    s.admin.close(owner.as_str()).await.unwrap();
    let r = s.admin.gc_run(&GcRun::default()).await.unwrap();
    assert_eq!(r.counts["removed"], 1, "{r:?}");
    sqlx_exec(&s, &format!("UPDATE workspaces SET volume = '{legacy}' WHERE owner = 'agent:legacy'")).await;
    let volumes = s.data_dir.join("volumes");

    let w = s.ensure(owner.as_str()).await;
    assert_eq!((w.volume.name.as_str(), w.volume.state), (legacy, VolumeState::Present));
    assert!(volumes.join(legacy).is_dir(), "reopened under its recorded name");
    assert!(!volumes.join(VolumeName::derive(&s.app.install, &owner, Generation(1)).as_str()).exists());
    let a = s.attach(owner.as_str(), "pod").await;
    assert_eq!(volume_path(&a.mount), volumes.join(legacy).to_str().unwrap());
    std::fs::write(volumes.join(legacy).join("work"), b"kept").unwrap();
    let c = s.client(&a.token);
    c.publish_snapshot(owner.as_str(), &PublishSnapshot { final_snapshot: true, ..snap(a.epoch, 1) }).await.unwrap();
    c.detach(&a.session_id).await.unwrap();
    s.admin.close(owner.as_str()).await.unwrap();
    s.ensure(owner.as_str()).await;
    assert_eq!(std::fs::read(volumes.join(legacy).join("work")).unwrap(), b"kept", "the volume is not made anew");

    // Deleted, the next generation's volume is named with the installation.
    s.admin.delete(owner.as_str()).await.unwrap();
    eventually(20, "the deletion to complete", || async {
        (s.admin.workspace(owner.as_str()).await.unwrap().state == WorkspaceState::Deleted).then_some(())
    })
    .await;
    assert!(!volumes.join(legacy).exists(), "deletion removed the recorded volume");
    let w = s.ensure(owner.as_str()).await;
    assert_eq!(w.volume.name, VolumeName::derive(&s.app.install, &owner, Generation(2)).as_str());
}

/// A claimed warm sandbox that fetches its claim: the session takes the token the sandbox was
/// made with (the attach's dies), that token reads the claim and acts as the session, and both
/// end with the session.
async fn a_session_handed_to_a_warm_sandbox_takes_its_token(db: Db) {
    let s = TestServer::start(db, |_| {}).await;
    s.ensure("agent:warm").await;
    let a = s.attach("agent:warm", "sb-warm-1").await;
    let own = "bst_the-warm-sandboxes-own-token-0123456789";
    let warm = s.client(own);
    assert_eq!(code(&warm.sandbox_claim().await.unwrap_err()), (401, "unauthorized"), "nobody's token yet");
    // A long poll that no claim answers ends in 401 once its wait is over, not before.
    let asked = std::time::Instant::now();
    assert_eq!(code(&warm.sandbox_claim_within(1).await.unwrap_err()).0, 401);
    assert!(asked.elapsed() >= std::time::Duration::from_secs(1), "the server held the ask for its wait");
    // One that is waiting when the claim is made gets it.
    let waiting = tokio::spawn({
        let warm = warm.clone();
        async move { warm.sandbox_claim_within(berth_api::CLAIM_WAIT_MAX_SECS).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the ask waits for the claim");
    let claim = serde_json::json!({"spec": {"session": {"token": ""}}, "command": ["sh"], "env": {"A": "1"}});
    let session = berth_core::session::SessionId::new(a.session_id.clone()).unwrap();
    let hash = berth_control::meta::token_hash(own);
    s.app.meta.hand_to_warm(&session, &hash, &claim.to_string()).await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), claim, "the waiting ask got the claim");
    assert_eq!(warm.sandbox_claim().await.unwrap(), claim);
    warm.heartbeat(&a.session_id, &hb(a.epoch, "sb-warm-1")).await.unwrap();
    let attach_token = s.client(&a.token);
    assert_eq!(code(&attach_token.heartbeat(&a.session_id, &hb(a.epoch, "sb-warm-1")).await.unwrap_err()).0, 401);
    assert_eq!(code(&s.admin.sandbox_claim().await.unwrap_err()).0, 403, "only the sandbox reads its claim");
    // Another session's token reads no claim.
    s.ensure("agent:cold").await;
    let cold = s.attach("agent:cold", "sb-cold-1").await;
    assert_eq!(code(&s.client(&cold.token).sandbox_claim().await.unwrap_err()).0, 404);
    warm.detach(&a.session_id).await.unwrap();
    assert_eq!(code(&warm.sandbox_claim().await.unwrap_err()).0, 401, "the token died with the session");
    assert!(s.app.meta.warm_claim(&session).await.unwrap().is_none());
    let e = s.app.meta.hand_to_warm(&session, &hash, "{}").await.unwrap_err();
    assert!(matches!(e, berth_control::error::Error::NotFound(_)), "{e}");
    // A waiting ask does not hold the server's shutdown open: it ends with 503, to be asked again.
    let waiting = tokio::spawn({
        let other = s.client("bst_a-warm-sandbox-nobody-has-claimed");
        async move { other.sandbox_claim_within(berth_api::CLAIM_WAIT_MAX_SECS).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), s.stop()).await;
    assert!(stopped.is_ok(), "the server stopped without waiting for the ask's 25 s");
    assert_eq!(code(&waiting.await.unwrap().unwrap_err()).0, 503);
}
