//! `berth serve --substrate docker` as a real process on the machine's Docker Engine: killed
//! with SIGKILL in the middle of a GC sweep and restarted, the orphan sweep next to volumes
//! that are not its own, a foreign volume under a workspace's name, and an engine that cannot
//! be reached. Every volume and container a test makes carries its run's label
//! (`berth-test-run`, on the workspace and so on its volume) and is removed when it ends.

mod util;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_api::client::EventQuery;
use berth_api::{Client, EnsureWorkspace, GcRun, WorkspaceState};
use berth_core::volume::VolumeName;
use berth_core::workspace::{Generation, WorkspaceId};
use berth_docker::testing::{TestRun, LABEL_TEST_RUN};

use util::serve::{rt, Server, ADMIN};

/// `berth serve --substrate docker` with fast GC settings and `extra` flags.
fn start(tmp: &Path, log: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let data = tmp.join("data");
    let mut args = vec![
        "--substrate",
        "docker",
        "--data-dir",
        data.to_str().unwrap(),
        "--gc-cooldown",
        "0s",
        "--gc-timeout",
        "1s",
        "--claim-ttl",
        "2s",
    ];
    args.extend(extra);
    let mut env = env.to_vec();
    env.push(("BERTH_ADMIN_TOKEN", ADMIN));
    Server::start(tmp, &tmp.join(log), &args, &env)
}

fn labelled(run: &TestRun) -> EnsureWorkspace {
    EnsureWorkspace { labels: [(LABEL_TEST_RUN.to_string(), run.id().to_string())].into(), ..Default::default() }
}

/// Reads one counter from `/metrics`.
async fn metric(url: &str, name: &str) -> f64 {
    let body = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    body.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Every event of `kind`, oldest first.
async fn events(c: &Client, kind: &str) -> Vec<berth_api::Event> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let q = EventQuery { kind: Some(kind.into()), after: Some(after), limit: Some(1000), ..Default::default() };
        let page = c.events(&q).await.unwrap().items;
        let Some(last) = page.last() else { return out };
        after = last.id;
        out.extend(page);
    }
}

/// How many volumes are marked removed (by removed or not_found), per owner.
async fn marks(c: &Client) -> BTreeMap<String, usize> {
    let mut marks = BTreeMap::new();
    for kind in ["volume_removed", "volume_not_found"] {
        for e in events(c, kind).await {
            *marks.entry(e.owner.unwrap()).or_default() += 1;
        }
    }
    marks
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, secs: u64, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn sigkill_during_a_docker_gc_sweep_then_restart_never_retries_marked_volumes() {
    const TOTAL: usize = 30;
    const PAUSE_AFTER: usize = 10;
    let run = TestRun::new();
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();

    // No sweep while the workspaces are made and closed.
    let server = start(tmp.path(), "a.log", &["--gc-interval", "3600s"], &[]);
    let c = server.client(ADMIN);
    let owners: Vec<String> = rt.block_on(async {
        let mut owners = Vec::new();
        for i in 0..TOTAL {
            let owner = format!("thread:{i:03}");
            let (w, _) = c.ensure(&owner, &labelled(&run)).await.unwrap();
            assert!(run.volume_exists(&w.volume.name), "{} was not created", w.volume.name);
            c.close(&owner).await.unwrap();
            owners.push(owner);
        }
        owners
    });
    assert_eq!(run.volumes().len(), TOTAL);
    server.kill9();

    // Sweeps every second; the substrate lets 10 removals through and holds every later one,
    // so the kill lands inside a sweep after exactly 10 removals, whatever the machine's speed.
    let pause = PAUSE_AFTER.to_string();
    let server =
        start(tmp.path(), "b.log", &["--gc-interval", "1s"], &[("BERTH_TEST_PAUSE_DELETES_AFTER", pause.as_str())]);
    let c = server.client(ADMIN);
    rt.block_on(async {
        wait_until("10 volumes marked", 60, || async { marks(&c).await.len() == PAUSE_AFTER }).await;
        // The sweep is stuck on the held removals: attempts beyond the 10 started, none ended.
        wait_until("the held removals started", 10, || async {
            metric(&server.url, "berth_gc_attempts_total").await as usize > PAUSE_AFTER
        })
        .await;
    });
    assert_eq!(run.volumes().len(), TOTAL - PAUSE_AFTER, "exactly the marked volumes are gone");
    server.kill9();
    eprintln!("killed inside a sweep with {} of {TOTAL} volumes marked removed", PAUSE_AFTER);

    let server = start(tmp.path(), "c.log", &["--gc-interval", "1s"], &[]);
    let c = server.client(ADMIN);
    rt.block_on(async {
        wait_until("every volume marked after the restart", 90, || async { marks(&c).await.len() == TOTAL }).await;
        let marks = marks(&c).await;
        assert_eq!(marks.keys().cloned().collect::<Vec<_>>(), owners);
        assert!(marks.values().all(|n| *n == 1), "a volume was marked twice: {marks:?}");
        // The restarted process attempted exactly the volumes that were not marked: none
        // twice, none already marked.
        assert_eq!(metric(&server.url, "berth_gc_attempts_total").await as usize, TOTAL - PAUSE_AFTER);
        for o in &owners {
            assert_eq!(c.workspace(o).await.unwrap().state, WorkspaceState::Closed);
        }
    });
    assert!(run.volumes().is_empty(), "volumes left behind: {:?}", run.volumes());
    server.terminate(10);
}

#[test]
fn orphans_are_removed_after_the_grace_and_nothing_else_is_touched() {
    let run = TestRun::new();
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let server = start(
        tmp.path(),
        "serve.log",
        &["--gc-interval", "3600s", "--orphan-interval", "3600s", "--orphan-grace", "2s"],
        &[],
    );
    let c = server.client(ADMIN);
    let kept = rt.block_on(c.ensure("agent:kept", &labelled(&run))).unwrap().0.volume.name;
    let inspect: serde_json::Value = serde_json::from_str(&run.volume_json(&kept)).unwrap();
    let install = inspect[0]["Labels"]["berth.install"].as_str().unwrap().to_string();

    // This installation's labels, no record: an orphan.
    let ghost = WorkspaceId::new("agent:ghost").unwrap();
    let orphan = VolumeName::derive(&ghost, Generation(1)).to_string();
    run.create_volume(
        &orphan,
        &[
            ("berth.managed", "true"),
            ("berth.install", &install),
            ("berth.owner", "agent:ghost"),
            ("berth.generation", "1"),
        ],
    );
    // Not berth's, and another installation's: never touched.
    let unlabelled = format!("ws-unlabelled-{}", run.id());
    run.create_volume(&unlabelled, &[]);
    let other = format!("ws-other-install-{}", run.id());
    run.create_volume(&other, &[("berth.managed", "true"), ("berth.install", "another-installation")]);

    let sweep = GcRun { dry_run: false, orphans: true };
    rt.block_on(async {
        let report = c.gc_run(&sweep).await.unwrap();
        let items = report.orphans.unwrap();
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!((items[0].volume.as_str(), items[0].action.as_str()), (orphan.as_str(), "track"));
        assert!(run.volume_exists(&orphan), "removed before the grace");
        let started = Instant::now();
        let mut removed = false;
        while !removed {
            assert!(started.elapsed() < Duration::from_secs(30), "the orphan was not removed after the grace");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let items = c.gc_run(&sweep).await.unwrap().orphans.unwrap();
            for i in &items {
                assert_eq!(i.volume, orphan, "the sweep considered a volume that is not an orphan: {items:?}");
            }
            removed = items.iter().any(|i| i.action == "removed");
        }
        assert!(started.elapsed() >= Duration::from_secs(1), "removed before the grace");
    });
    assert!(!run.volume_exists(&orphan));
    for name in [&kept, &unlabelled, &other] {
        assert!(run.volume_exists(name), "{name} was removed");
    }
    server.terminate(10);
}

#[test]
fn a_foreign_volume_under_a_workspace_name_is_refused_with_409_and_left_alone() {
    let run = TestRun::new();
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let server = start(tmp.path(), "serve.log", &["--gc-interval", "3600s"], &[]);
    let c = server.client(ADMIN);
    let owner = format!("agent:{}", run.id());
    let name = VolumeName::derive(&WorkspaceId::new(&owner).unwrap(), Generation(1)).to_string();
    run.create_volume(&name, &[("app", "someone-else")]);
    run.docker(&[
        "run",
        "--rm",
        "--label",
        &run.label(),
        "-v",
        &format!("{name}:/data"),
        &berth_docker::testing::image(),
        "sh",
        "-c",
        "echo theirs > /data/file",
    ]);
    rt.block_on(async {
        let e = c.ensure(&owner, &labelled(&run)).await.unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(409), Some("volume_foreign")), "{e}");
        assert!(e.to_string().contains(&name) && e.to_string().contains("never adopts"), "{e}");
        // Deleting the workspace finishes without touching the other volume: berth's own
        // volume was never there.
        c.delete(&owner).await.unwrap();
        wait_until("the workspace deleted", 30, || async {
            c.workspace(&owner).await.unwrap().state == WorkspaceState::Deleted
        })
        .await;
    });
    let content = run.docker(&[
        "run",
        "--rm",
        "--label",
        &run.label(),
        "-v",
        &format!("{name}:/data"),
        &berth_docker::testing::image(),
        "cat",
        "/data/file",
    ]);
    assert_eq!(content, "theirs");
    server.terminate(10);
}

#[test]
fn an_unreachable_engine_fails_readyz_and_skips_gc_without_crashing() {
    let run = TestRun::new();
    let tmp = tempfile::tempdir().unwrap();
    // A socket file nobody serves: connections are refused.
    let sock = tmp.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let host = format!("unix://{}", sock.display());
    let rt = rt();
    let server = start(tmp.path(), "serve.log", &["--gc-interval", "1s"], &[("DOCKER_HOST", host.as_str())]);
    let c = server.client(ADMIN);
    rt.block_on(async {
        let health = reqwest::get(format!("{}/healthz", server.url)).await.unwrap();
        assert_eq!(health.status(), 200);
        let ready = reqwest::get(format!("{}/readyz", server.url)).await.unwrap();
        assert_eq!(ready.status(), 503);
        let body = ready.text().await.unwrap();
        assert!(body.contains("dead.sock") && body.contains("DOCKER_HOST"), "{body}");

        let e = c.ensure("agent:1", &labelled(&run)).await.unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(503), Some("substrate")), "{e}");
        let report = c.gc_run(&GcRun { dry_run: false, orphans: false }).await.unwrap();
        assert!(report.skipped.as_deref().unwrap_or("").contains("substrate unhealthy"), "{report:?}");
        // The periodic sweeps skip too, and the server keeps answering.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(reqwest::get(format!("{}/healthz", server.url)).await.unwrap().status(), 200);
    });
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("substrate unhealthy"), "no skipped sweep logged");
    server.terminate(10);
}
