//! `berth serve` as a real process: started with no configuration, driven by the operator CLI,
//! killed with SIGKILL during deletion and during a GC sweep and restarted, and run as two
//! replicas on one PostgreSQL.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_api::client::EventQuery;
use berth_api::{Attach, Client, EnsureWorkspace, WorkspaceState};
use util::Run;

use util::serve::{metric_blocking as metric, rt, Server, ADMIN};

fn cli(cwd: &Path, server: &Server, args: &[&str]) -> Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    c.current_dir(cwd)
        .args(args)
        .env("BERTH_SERVER", &server.url)
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_DATA_DIR");
    Run::of(c)
}

fn fill(dir: &Path, files: usize) {
    for i in 0..files {
        let sub = dir.join(format!("d{}", i % 10));
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join(format!("f{i}")), [b'x'; 64]).unwrap();
    }
}

#[test]
fn serve_starts_with_no_configuration_and_the_cli_drives_it() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("serve.log");
    // No flags but a free port: SQLite and local volumes in ./berth-data, a generated admin token.
    let server = Server::start(tmp.path(), &log, &[], &[]);
    let token_file = tmp.path().join("berth-data/admin-token");
    let admin_token = fs::read_to_string(&token_file).unwrap().trim().to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);

    let out = cli(tmp.path(), &server, &["workspace", "ensure", "agent:1", "--label", "team=infra"]).ok();
    assert!(out.stdout.contains("created workspace agent:1"), "{out:?}");
    let out = cli(tmp.path(), &server, &["workspace", "ls", "--json"]).ok();
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list[0]["owner"], "agent:1");
    let volume = list[0]["volume"]["name"].as_str().unwrap().to_string();
    assert!(tmp.path().join("berth-data/volumes").join(&volume).is_dir());
    let out = cli(tmp.path(), &server, &["workspace", "show", "agent:1"]).ok();
    assert!(out.stdout.contains("label:       team=infra"), "{out:?}");

    // A sandbox session (its token passes through the server), with the agent's spec file.
    let spec = tmp.path().join("spec.json");
    let spec_s = spec.to_str().unwrap();
    let out = cli(
        tmp.path(),
        &server,
        &["workspace", "attach", "agent:1", "--instance", "pod-1", "--node", "n1", "--spec-out", spec_s],
    )
    .ok();
    assert!(out.stdout.contains("berth agent run --spec"), "{out:?}");
    assert_eq!(fs::metadata(&spec).unwrap().permissions().mode() & 0o777, 0o600);
    let spec: serde_json::Value = serde_json::from_slice(&fs::read(&spec).unwrap()).unwrap();
    assert_eq!(spec["server"], server.url.as_str());
    let session: berth_api::Session = serde_json::from_value(spec["session"].clone()).unwrap();
    assert_eq!((session.owner.as_str(), session.epoch), ("agent:1", berth_api::Epoch(1)));

    let out = cli(tmp.path(), &server, &["drain", "start", "node:n1", "--reason", "spot notice", "--json"]).ok();
    let drain: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let nonce = drain["nonce"].as_str().unwrap().to_string();
    let out = cli(tmp.path(), &server, &["drain", "status"]).ok();
    assert!(out.stdout.contains("node:n1") && out.stdout.contains("draining since"), "{out:?}");
    cli(tmp.path(), &server, &["drain", "ack", "node:n1", "--nonce", "wrong"]).fails(1);
    let out = cli(tmp.path(), &server, &["drain", "ack", "node:n1", "--nonce", &nonce]).ok();
    assert!(out.stdout.contains("drain cleared"), "{out:?}");

    let out = cli(tmp.path(), &server, &["gc", "run", "--dry-run", "--orphans"]).ok();
    assert!(out.stdout.contains("dry run: "), "{out:?}");
    let out = cli(tmp.path(), &server, &["events", "--json"]).ok();
    let kinds: Vec<String> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    for k in [
        "workspace_ensured",
        "volume_created",
        "session_attached",
        "drain_started",
        "drain_wrong_nonce",
        "drain_cleared",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} not in {kinds:?}");
    }
    // A workspace with a live lease is deleted on request (ending the session).
    let out = cli(tmp.path(), &server, &["workspace", "rm", "agent:1", "--wait"]).ok();
    assert!(out.stdout.contains("deleted workspace agent:1"), "{out:?}");
    assert!(!tmp.path().join("berth-data/volumes").join(&volume).exists());
    // Bad input: a clear error and exit 1; usage errors exit 2.
    let out = cli(tmp.path(), &server, &["workspace", "show", "no/such"]).fails(1);
    assert!(out.stderr.contains("not valid"), "{out:?}");
    cli(tmp.path(), &server, &["workspace", "frobnicate"]);
    let wrong = Run::of({
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.current_dir(tmp.path()).args(["workspace", "ls", "--server", &server.url, "--token", "nope-nope-nope"]);
        c
    })
    .fails(1);
    assert!(wrong.stderr.contains("unauthorized"), "{wrong:?}");

    server.terminate(10);
    let logs = fs::read_to_string(&log).unwrap();
    assert!(logs.contains("\"serve_started\""), "{logs}");
    assert!(!logs.contains(&admin_token), "the admin token is in the log");
    assert!(!logs.contains(&session.token), "a sandbox token is in the log");
    // The schema is current after a restart-free migrate.
    let out = Run::of({
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.current_dir(tmp.path()).args(["migrate"]);
        c
    })
    .ok();
    assert!(out.stdout.contains("up to date"), "{out:?}");
}

fn serve_args(data: &Path, gc_interval: &str) -> Vec<String> {
    [
        "--data-dir",
        data.to_str().unwrap(),
        "--gc-interval",
        gc_interval,
        "--gc-cooldown",
        "0s",
        "--gc-timeout",
        "1s",
        "--claim-ttl",
        "2s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start(tmp: &Path, data: &Path, log: &str, extra: &[&str]) -> Server {
    start_gc_every(tmp, data, log, "1s", extra)
}

fn start_gc_every(tmp: &Path, data: &Path, log: &str, gc_interval: &str, extra: &[&str]) -> Server {
    let mut args = serve_args(data, gc_interval);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(tmp, &tmp.join(log), &args, &[("BERTH_ADMIN_TOKEN", ADMIN)])
}

async fn make_workspaces(c: &Client, n: usize, files: usize, data: &Path) -> Vec<String> {
    let mut owners = Vec::new();
    for i in 0..n {
        let owner = format!("thread:{i:03}");
        let (w, _) = c.ensure(&owner, &EnsureWorkspace::default()).await.unwrap();
        fill(&data.join("volumes").join(&w.volume.name), files);
        owners.push(owner);
    }
    owners
}

async fn wait_for_event(c: &Client, kind: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let q = EventQuery { kind: Some(kind.into()), limit: Some(1), ..Default::default() };
        if !c.events(&q).await.unwrap().items.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no {kind} event within 60 s");
}

async fn all_events(c: &Client, kind: &str) -> Vec<berth_api::Event> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let q = EventQuery { kind: Some(kind.into()), after: Some(after), limit: Some(1000), ..Default::default() };
        let page = c.events(&q).await.unwrap().items;
        if page.is_empty() {
            return out;
        }
        after = page.last().unwrap().id;
        out.extend(page);
    }
}

async fn open_meta(data: &Path) -> berth_control::meta::Meta {
    let url = format!("sqlite://{}?mode=rwc", data.join("berth.db").display());
    berth_control::meta::Meta::open(&url, 2, Default::default()).await.unwrap()
}

#[test]
fn sigkill_during_deletion_then_restart_completes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = start(tmp.path(), &data, "a.log", &[]);
    let rt = rt();
    let c = server.client(ADMIN);
    let owners = rt.block_on(make_workspaces(&c, 40, 200, &data));
    rt.block_on(async {
        for o in &owners {
            c.delete(o).await.unwrap();
        }
        wait_for_event(&c, "workspace_deleted").await;
    });
    server.kill9();
    let deleting = rt.block_on(async {
        open_meta(&data).await.count_workspaces(berth_control::meta::State::Deleting).await.unwrap()
    });
    eprintln!("killed with {deleting} of {} workspaces still deleting", owners.len());
    assert!(deleting > 0, "the kill landed after every deletion finished; make the workload larger");

    let server = start(tmp.path(), &data, "b.log", &[]);
    let c = server.client(ADMIN);
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        for o in &owners {
            loop {
                let w = c.workspace(o).await.unwrap();
                if w.state == WorkspaceState::Deleted {
                    assert_eq!(w.generation, 2, "{o}: the generation is bumped exactly once");
                    break;
                }
                assert!(Instant::now() < deadline, "{o} still {:?} after the restart", w.deletion);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let deleted = all_events(&c, "workspace_deleted").await;
        let per_owner: BTreeMap<_, usize> = deleted.iter().fold(BTreeMap::new(), |mut m, e| {
            *m.entry(e.owner.clone().unwrap()).or_default() += 1;
            m
        });
        assert_eq!(per_owner.len(), owners.len());
        assert!(per_owner.values().all(|n| *n == 1), "a deletion completed twice: {per_owner:?}");
    });
    let volumes = data.join("volumes");
    let left: Vec<_> = fs::read_dir(&volumes)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".meta" && n != ".trash")
        .collect();
    assert!(left.is_empty(), "volumes left behind: {left:?}");
    assert_eq!(fs::read_dir(volumes.join(".trash")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(volumes.join(".meta")).unwrap().count(), 0);
}

#[test]
fn sigkill_during_a_gc_sweep_then_restart_never_retries_marked_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Sweeps wait for the test to have closed everything.
    let t0 = Instant::now();
    let server = start_gc_every(tmp.path(), &data, "a.log", "3600s", &[]);
    let rt = rt();
    let c = server.client(ADMIN);
    let owners = rt.block_on(async {
        let owners = make_workspaces(&c, 150, 60, &data).await;
        for o in &owners {
            c.close(o).await.unwrap();
        }
        owners
    });
    server.kill9();
    eprintln!("{:?}: {} closed workspaces made", t0.elapsed(), owners.len());
    let server = start(tmp.path(), &data, "b.log", &[]);
    let c = server.client(ADMIN);
    rt.block_on(wait_for_event(&c, "volume_removed"));
    server.kill9();
    eprintln!("{:?}: killed during a sweep", t0.elapsed());

    let unmarked = rt.block_on(async { open_meta(&data).await.count_unremoved().await.unwrap() as usize });
    eprintln!("killed with {unmarked} of {} closed volumes not yet marked removed", owners.len());
    assert!(unmarked > 0 && unmarked < owners.len(), "the kill must land inside the sweeps");

    let server = start(tmp.path(), &data, "c.log", &[]);
    let c = server.client(ADMIN);
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if open_meta(&data).await.count_unremoved().await.unwrap() == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "GC did not finish after the restart");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every volume is marked exactly once, by removed or not_found.
        let mut marks: BTreeMap<String, usize> = BTreeMap::new();
        for kind in ["volume_removed", "volume_not_found"] {
            for e in all_events(&c, kind).await {
                *marks.entry(e.owner.unwrap()).or_default() += 1;
            }
        }
        assert_eq!(marks.len(), owners.len());
        assert!(marks.values().all(|n| *n == 1), "a volume was marked twice: {marks:?}");
    });
    eprintln!("{:?}: every volume marked after the restart", t0.elapsed());
    // The restarted process attempted exactly the volumes that were not marked: none twice,
    // none already marked (asserted through its metrics, not its logs).
    assert_eq!(metric(&server.url, "berth_gc_attempts_total") as usize, unmarked);
    let left: Vec<_> = fs::read_dir(data.join("volumes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".meta" && n != ".trash")
        .collect();
    assert!(left.is_empty(), "volumes left behind: {left:?}");
    server.terminate(10);
}

#[test]
fn two_replicas_on_one_postgres_never_process_a_workspace_twice() {
    let Ok(base) = std::env::var("BERTH_TEST_PG_URL") else {
        panic!("BERTH_TEST_PG_URL is not set: this test needs the PostgreSQL test cluster; run it with `./dev test`");
    };
    let rt = rt();
    let db = rt.block_on(async { sqlx_create_db(&base).await });
    let tmp = tempfile::tempdir().unwrap();
    // One data dir for both: the local substrate stands in for a shared one (Docker host, cluster).
    let data = tmp.path().join("data");
    let extra = ["--database-url", db.as_str()];
    let r1 = start(tmp.path(), &data, "r1.log", &extra);
    let r2 = start(tmp.path(), &data, "r2.log", &extra);
    let (c1, c2) = (r1.client(ADMIN), r2.client(ADMIN));
    rt.block_on(async {
        let owners = make_workspaces(&c1, 60, 20, &data).await;
        // Attaches to one workspace through both replicas at once: one lease.
        let attaches = futures::future::join_all(
            (0..20)
                .map(|i| {
                    let c = if i % 2 == 0 { c1.clone() } else { c2.clone() };
                    let owner = owners[0].clone();
                    async move {
                        c.attach(&owner, &Attach { instance_id: format!("pod-{i}"), node: None, pool: None }).await
                    }
                })
                .collect::<Vec<_>>(),
        )
        .await;
        assert_eq!(attaches.iter().filter(|r: &&Result<_, berth_api::ClientError>| r.is_ok()).count(), 1);
        for (i, o) in owners.iter().enumerate() {
            let c = if i % 2 == 0 { &c1 } else { &c2 };
            if i < 30 {
                c.delete(o).await.unwrap();
            } else {
                c.close(o).await.unwrap();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        for (i, o) in owners.iter().enumerate() {
            loop {
                let w = c2.workspace(o).await.unwrap();
                let done = if i < 30 {
                    w.state == WorkspaceState::Deleted
                } else {
                    w.volume.state == berth_api::VolumeState::Removed
                };
                if done {
                    break;
                }
                assert!(Instant::now() < deadline, "{o} not done: {w:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let removed = all_events(&c1, "volume_removed").await;
        let not_found = all_events(&c1, "volume_not_found").await;
        assert_eq!(removed.len(), 60, "every volume removed once");
        assert!(not_found.is_empty(), "a second replica acted on a workspace already processed: {not_found:?}");
        assert_eq!(all_events(&c2, "workspace_deleted").await.len(), 30);
    });
    r1.terminate(10);
    r2.terminate(10);
}

async fn sqlx_create_db(base: &str) -> String {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(base).await.expect("connect to the PostgreSQL test cluster");
    let mut buf = [0u8; 6];
    rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty()).unwrap();
    let name = format!("berth_replicas_{}", buf.iter().map(|b| format!("{b:02x}")).collect::<String>());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&pool).await.unwrap();
    pool.close().await;
    format!("{}/{name}", &base[..base.rfind('/').unwrap()])
}
