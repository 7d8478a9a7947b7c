//! `berth serve --substrate docker` as a real process on the machine's Docker Engine: killed
//! with SIGKILL in the middle of a GC sweep and restarted, the orphan sweep next to volumes
//! that are not its own, a foreign volume under a workspace's name, and an engine that cannot
//! be reached. Every volume and container a test makes carries its run's label
//! (`berth-test-run`, on the workspace and so on its volume) and is removed when it ends.

mod util;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_api::{Client, EnsureWorkspace, GcRun, WorkspaceState};
use berth_core::volume::VolumeName;
use berth_core::workspace::{Generation, WorkspaceId};
use berth_docker::testing::{TestRun, LABEL_TEST_RUN};

use util::serve::{events, marks, metric, rt, wait_until, Server, ADMIN};

/// `berth serve --substrate docker` with fast GC settings and `extra` flags.
fn start(tmp: &Path, log: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    Server::start_admin(tmp, &tmp.join("data"), log, &[&["--substrate", "docker"], extra].concat(), env)
}

fn labelled(run: &TestRun) -> EnsureWorkspace {
    EnsureWorkspace { labels: [(LABEL_TEST_RUN.to_string(), run.id().to_string())].into(), ..Default::default() }
}

/// The server's installation id, read from the labels of a probe workspace's volume.
async fn install_of(c: &Client, run: &TestRun) -> String {
    let probe = format!("agent:probe-{}", run.id());
    let name = c.ensure(&probe, &labelled(run)).await.unwrap().0.volume.name;
    let inspect: serde_json::Value = serde_json::from_str(&run.volume_json(&name)).unwrap();
    inspect[0]["Labels"]["berth.install"].as_str().unwrap().to_string()
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
    let orphan = VolumeName::derive(&install, &ghost, Generation(1)).to_string();
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

    let sweep = GcRun { dry_run: false, orphans: true, force: false };
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
    let install = rt.block_on(install_of(&c, &run));
    let name = VolumeName::derive(&install, &WorkspaceId::new(&owner).unwrap(), Generation(1)).to_string();
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
fn two_installations_on_one_engine_keep_one_owner_apart() {
    let run = TestRun::new();
    let (tmp_a, tmp_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt = rt();
    let a = start(tmp_a.path(), "serve.log", &["--gc-interval", "3600s"], &[]);
    let b = start(tmp_b.path(), "serve.log", &["--gc-interval", "3600s"], &[]);
    let (ca, cb) = (a.client(ADMIN), b.client(ADMIN));
    let owner = format!("agent:{}", run.id());
    let label = |name: &str| -> String {
        let inspect: serde_json::Value = serde_json::from_str(&run.volume_json(name)).unwrap();
        inspect[0]["Labels"]["berth.install"].as_str().unwrap().to_string()
    };
    rt.block_on(async {
        // Each installation gets its own volume for the same owner (one name for both used to
        // answer the second with 409 volume_foreign).
        let va = ca.ensure(&owner, &labelled(&run)).await.unwrap().0.volume.name;
        let vb = cb.ensure(&owner, &labelled(&run)).await.unwrap().0.volume.name;
        assert_ne!(va, vb);
        assert_ne!(label(&va), label(&vb));
        for (c, v) in [(&ca, &va), (&cb, &vb)] {
            let again = c.ensure(&owner, &labelled(&run)).await.unwrap().0.volume.name;
            assert_eq!(&again, v, "an ensure again keeps the volume");
        }
        // One installation's deletion removes its own volume only.
        ca.delete(&owner).await.unwrap();
        wait_until("the workspace deleted", 30, || async {
            ca.workspace(&owner).await.unwrap().state == WorkspaceState::Deleted
        })
        .await;
        assert!(!run.volume_exists(&va), "{va} was not removed");
        assert!(run.volume_exists(&vb), "{vb} of the other installation was removed");
    });
    a.terminate(10);
    b.terminate(10);
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
        let report = c.gc_run(&GcRun { dry_run: false, orphans: false, force: false }).await.unwrap();
        assert!(report.skipped.as_deref().unwrap_or("").contains("substrate unhealthy"), "{report:?}");
        // The periodic sweeps skip too, and the server keeps answering.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(reqwest::get(format!("{}/healthz", server.url)).await.unwrap().status(), 200);
    });
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("substrate unhealthy"), "no skipped sweep logged");
    server.terminate(10);
}

/// A test of sandboxes: a server on the machine's engine with a `file://` store the sandbox
/// user can write, sandboxes on the host network.
struct Sandboxed {
    // Fields drop in order: the server stops before the run removes its containers (a warm
    // pool would refill after them).
    server: Server,
    run: TestRun,
    tmp: tempfile::TempDir,
    store: std::path::PathBuf,
    image: String,
}

impl Sandboxed {
    fn new(extra: &[&str]) -> Sandboxed {
        use std::os::unix::fs::PermissionsExt;
        let run = TestRun::new();
        let image = berth_docker::testing::image();
        let tmp = tempfile::tempdir().unwrap();
        // The sandbox user (uid 1000) reaches the store through the temporary directory.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = tmp.path().join("store");
        std::fs::create_dir(&store).unwrap();
        std::os::unix::fs::chown(&store, Some(1000), Some(1000)).unwrap();
        let store_url = format!("file://{}", store.display());
        let mut args = vec!["--gc-interval", "3600s", "--store", &store_url, "--sandbox-network", "host"];
        args.extend(extra);
        // At debug level, for the secret scan.
        let server = start(tmp.path(), "serve.log", &args, &[("BERTH_LOG", "debug")]);
        Sandboxed { server, run, tmp, store, image }
    }

    /// `berth ARGS` against the server; returns the finished command's output.
    fn berth(&self, args: &[&str]) -> std::process::Output {
        util::berth_command()
            .args(args)
            .env("BERTH_SERVER", &self.server.url)
            .env("BERTH_TOKEN", ADMIN)
            .env("HOME", self.tmp.path())
            .output()
            .unwrap()
    }

    /// `berth sandbox start OWNER --image IMG FLAGS -- sh -c SCRIPT`, labelled with the run.
    fn start_sandbox(&self, owner: &str, flags: &[&str], script: &str) {
        let label = self.run.label();
        let mut args = vec!["sandbox", "start", owner, "--image", &self.image, "--label", &label];
        args.extend(flags);
        args.extend(["--", "sh", "-c", script]);
        let out = self.berth(&args);
        assert!(out.status.success(), "sandbox start failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The name of `owner`'s volume, as its record holds it.
    fn volume_name(&self, owner: &str) -> String {
        rt().block_on(self.server.client(ADMIN).workspace(owner)).unwrap().volume.name
    }

    /// The host path of `owner`'s volume (the engine runs on this machine).
    fn volume_path(&self, owner: &str) -> std::path::PathBuf {
        let name = self.volume_name(owner);
        self.run.docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &name]).into()
    }

    /// The latest snapshot of `owner`, restored into a fresh directory.
    fn restore_latest(&self, owner: &str, name: &str) -> std::path::PathBuf {
        let dir = self.tmp.path().join(name);
        let store = format!("file://{}", self.store.display());
        let out = self.berth(&["snapshot", "restore", "--store", &store, "--workspace", owner, dir.to_str().unwrap()]);
        assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
        dir
    }

    /// What a secret must not reach from `owner`'s running sandbox: the container as the engine
    /// shows it (its command, environment, labels, mounts) and its logs. Returns them with the
    /// sandbox token berth put into it (read from its spec file, where it belongs).
    fn sandbox_secrets(&self, owner: &str) -> (String, Vec<(String, String)>) {
        let ids = self.containers(owner);
        assert_eq!(ids.len(), 1, "one running sandbox of {owner}: {ids:?}");
        let spec = self.run.docker(&["exec", &ids[0], "cat", "/berth/spec.json"]);
        let spec: serde_json::Value = serde_json::from_str(&spec).unwrap_or_else(|e| panic!("{e}: {spec}"));
        let token = spec["session"]["token"].as_str().expect("a sandbox token in the spec").to_string();
        let places = vec![
            (format!("docker inspect {}", ids[0]), self.run.docker(&["inspect", &ids[0]])),
            (format!("the logs of {owner}'s sandbox"), self.logs(owner)),
        ];
        (token, places)
    }

    /// Asserts no secret (the admin token, each of `tokens`) is in the server's log (at debug
    /// level), any of `places`, `owner`'s volume, the store, or what the API and the CLI show.
    fn assert_no_secret_leaked(&self, owner: &str, tokens: &[String], places: &[(String, String)]) {
        let c = self.server.client(ADMIN);
        let q = berth_api::client::EventQuery { owner: Some(owner.into()), ..Default::default() };
        let events = rt().block_on(c.events(&q)).unwrap().items;
        let mut scan = util::secrets::Scan::new();
        scan.secret("the admin token", ADMIN);
        for (i, t) in tokens.iter().enumerate() {
            scan.secret(&format!("sandbox token {i}"), t);
        }
        for (place, text) in places {
            scan.text(place, text);
        }
        scan.debug_log(&self.server.log)
            .tree(&self.volume_path(owner))
            .tree(&self.store)
            .json("the events", &events)
            .json("the workspace", &rt().block_on(c.workspace(owner)).unwrap())
            .text("berth sandbox ls --json", self.berth(&["sandbox", "ls", "--json"]).stdout)
            .assert_clean();
    }

    /// The container ids of `owner`'s sandboxes.
    fn containers(&self, owner: &str) -> Vec<String> {
        let filter = format!("label=berth.owner={owner}");
        self.run.docker(&["ps", "-aq", "--filter", &filter]).lines().map(str::to_string).collect()
    }
}

/// The tree below `root` without berth's own `.berth` directory.
fn work_tree(root: &Path) -> util::TreeImage {
    util::read_tree(root).without(".berth")
}

fn read_counter(path: &Path) -> u64 {
    std::fs::read_to_string(path.join("counter")).unwrap_or_default().trim().parse().unwrap_or(0)
}

const COUNTER: &str =
    "echo hello > /workspace/hello; i=0; while :; do i=$((i+1)); echo $i > /workspace/counter; sleep 0.2; done";

#[test]
fn sandbox_snapshots_drains_on_stop_and_comes_back_after_kill_and_volume_loss() {
    let t = Sandboxed::new(&[]);
    let owner = format!("agent:{}", t.run.id());
    let c = t.server.client(ADMIN);
    let rt = rt();

    // Start: the command runs under the supervisor and snapshots are published.
    t.start_sandbox(&owner, &["--interval", "1s", "--grace", "10s"], COUNTER);
    rt.block_on(wait_until("a snapshot published", 60, || async {
        c.snapshots(&owner).await.map(|s| s.items.len() >= 2).unwrap_or(false)
    }));
    let (token, mut places) = t.sandbox_secrets(&owner);
    let mut tokens = vec![token];
    let ls: serde_json::Value = serde_json::from_slice(&t.berth(&["sandbox", "ls", "--json"]).stdout).unwrap();
    let mine: Vec<_> = ls["items"].as_array().unwrap().iter().filter(|s| s["owner"] == owner.as_str()).collect();
    assert_eq!(mine.len(), 1, "{ls}");
    assert_eq!(mine[0]["state"], "running");

    // Stop drains within the grace, exits 0, and the final snapshot is the volume.
    let started = Instant::now();
    let out = t.berth(&["sandbox", "stop", &owner]);
    let took = started.elapsed();
    assert!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("exit 0"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(took < Duration::from_secs(10), "the drain took {took:?}, past its 10 s grace");
    eprintln!("sandbox stop (drain) took {took:?}");
    assert!(t.containers(&owner).is_empty(), "the stopped container was not removed");
    let restored = t.restore_latest(&owner, "after-stop");
    let volume = t.volume_path(&owner);
    util::assert_same_tree(&work_tree(&volume), &work_tree(&restored));
    assert_eq!(std::fs::read_to_string(restored.join("hello")).unwrap(), "hello\n");

    // docker kill, then the volume is lost (a dead node): the next start brings the work back.
    t.start_sandbox(&owner, &["--interval", "1s"], COUNTER);
    let before = read_counter(&volume);
    rt.block_on(wait_until("the counter moved on", 60, || async { read_counter(&volume) > before + 15 }));
    let (token, more) = t.sandbox_secrets(&owner);
    tokens.push(token);
    places.extend(more);
    let ids = t.containers(&owner);
    assert_eq!(ids.len(), 1);
    t.run.docker(&["kill", &ids[0]]);
    let killed_at = read_counter(&volume);
    rt.block_on(wait_until("the session ended and the container removed", 30, || async {
        c.workspace(&owner).await.unwrap().lease.is_none() && t.containers(&owner).is_empty()
    }));
    let name = t.volume_name(&owner);
    t.run.docker(&["volume", "rm", &name]);
    t.start_sandbox(&owner, &[], "sleep 600");
    let volume = t.volume_path(&owner);
    rt.block_on(wait_until("the workspace restored", 60, || async { volume.join(".berth/run/ready").exists() }));
    let back = read_counter(&volume);
    assert_eq!(std::fs::read_to_string(volume.join("hello")).unwrap(), "hello\n");
    let (token, more) = t.sandbox_secrets(&owner);
    tokens.push(token);
    places.extend(more);
    // One step is 0.2 s; the loss bound is the interval plus the debounce (1.5 s) plus a
    // snapshot's own time.
    let lost = killed_at.saturating_sub(back);
    eprintln!("killed at counter {killed_at}, restored {back}: lost {lost} steps of 0.2 s");
    assert!(back > 0 && lost <= 12, "lost {lost} steps (killed at {killed_at}, restored {back})");
    let out = t.berth(&["sandbox", "stop", &owner]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(&t.server.log).unwrap();
    assert!(log.contains("\"exit_code\":137"), "the kill was not seen as a death");
    t.assert_no_secret_leaked(&owner, &tokens, &places);
}

#[test]
fn an_oom_killed_agent_leaves_a_final_snapshot() {
    let t = Sandboxed::new(&[]);
    let owner = format!("agent:{}", t.run.id());
    let c = t.server.client(ADMIN);
    let rt = rt();
    // No interval snapshot comes before the kill; the marker is written right before it.
    let script = "echo marker > /workspace/marker; head -c 2000000000 /dev/zero | sort > /dev/null";
    t.start_sandbox(&owner, &["--memory", "96MiB", "--interval", "3600s"], script);
    rt.block_on(wait_until("the sandbox died", 60, || async {
        std::fs::read_to_string(&t.server.log).unwrap().contains("\"event\":\"sandbox_died\"")
    }));
    let log = std::fs::read_to_string(&t.server.log).unwrap();
    let died = log.lines().find(|l| l.contains("\"event\":\"sandbox_died\"")).unwrap();
    assert!(died.contains("\"oom_killed\":true") && died.contains("\"exit_code\":137"), "{died}");
    rt.block_on(async {
        let snaps = c.snapshots(&owner).await.unwrap().items;
        assert!(!snaps.is_empty(), "no snapshot after the OOM kill");
        let detached = events(&c, "session_detached").await;
        assert!(detached.iter().any(|e| e.owner.as_deref() == Some(owner.as_str())), "the session did not end");
    });
    let restored = t.restore_latest(&owner, "after-oom");
    assert_eq!(std::fs::read_to_string(restored.join("marker")).unwrap(), "marker\n");
    rt.block_on(wait_until("the container removed", 30, || async { t.containers(&owner).is_empty() }));
}

impl Sandboxed {
    /// `berth sandbox ls --json`'s items.
    fn sandboxes(&self) -> Vec<serde_json::Value> {
        let out = self.berth(&["sandbox", "ls", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["items"].as_array().unwrap().clone()
    }

    /// Idle warm containers.
    fn idle_warm(&self) -> usize {
        self.sandboxes().iter().filter(|s| s["kind"] == "warm" && s["state"] == "running").count()
    }

    fn logs(&self, owner: &str) -> String {
        String::from_utf8_lossy(&self.berth(&["sandbox", "logs", owner]).stdout).into_owned()
    }

    /// The container id of `owner`'s sandbox, from `berth sandbox start --json`.
    fn start_json(&self, owner: &str, flags: &[&str], script: &str) -> serde_json::Value {
        let label = self.run.label();
        let mut args = vec!["sandbox", "start", owner, "--image", &self.image, "--label", &label, "--json"];
        args.extend(flags);
        args.extend(["--", "sh", "-c", script]);
        let out = self.berth(&args);
        assert!(out.status.success(), "sandbox start failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[test]
fn warm_pool_claims_restore_run_never_share_and_refill() {
    let image = berth_docker::testing::image();
    let pool = format!("{image}=2");
    let run_label = TestRun::new();
    let label = run_label.label();
    let t = Sandboxed::new(&["--warm-pool", &pool, "--sandbox-label", &label]);
    let rt = rt();
    // The warm containers carry the run's label, so the run removes them.
    let t = Sandboxed { run: run_label, ..t };
    let owner = format!("agent:{}", t.run.id());
    rt.block_on(wait_until("two warm containers", 120, || async { t.idle_warm() == 2 }));

    // A cold sandbox (limits skip the pool) leaves work in the store.
    t.start_sandbox(&owner, &["--memory", "256MiB"], "echo seeded > seed; sleep 600");
    rt.block_on(wait_until("the seed snapshotted", 60, || async {
        t.server.client(ADMIN).snapshots(&owner).await.map(|s| !s.items.is_empty()).unwrap_or(false)
    }));
    assert!(t.berth(&["sandbox", "stop", &owner]).status.success());

    // A warm claim: the workspace comes back from the store, then the command runs.
    let started = Instant::now();
    let s = t.start_json(&owner, &["--interval", "1s"], "cat seed; echo command-running; sleep 600");
    assert_eq!((s["warm"].as_bool(), s["kind"].as_str()), (Some(true), Some("workspace")), "{s}");
    rt.block_on(wait_until("the command running", 60, || async { t.logs(&owner).contains("command-running") }));
    eprintln!("warm claim to command running: {:?}", started.elapsed());
    let logs = t.logs(&owner);
    assert!(logs.contains("seeded"), "the workspace was not restored into the warm container:\n{logs}");
    let stop = t.berth(&["sandbox", "stop", &owner]);
    assert!(String::from_utf8_lossy(&stop.stdout).contains("exit 0"), "{}", String::from_utf8_lossy(&stop.stdout));

    // Three concurrent starts on a pool of two: no container is claimed twice.
    rt.block_on(wait_until("the pool refilled", 120, || async { t.idle_warm() == 2 }));
    let owners: Vec<String> = (0..3).map(|i| format!("{owner}-{i}")).collect();
    let ids: Vec<(String, bool)> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            owners.iter().map(|o| scope.spawn(|| t.start_json(o, &[], "echo command-running; sleep 600"))).collect();
        handles
            .into_iter()
            .map(|h| {
                let s = h.join().unwrap();
                (s["id"].as_str().unwrap().to_string(), s["warm"].as_bool().unwrap())
            })
            .collect()
    });
    let distinct: std::collections::BTreeSet<_> = ids.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(distinct.len(), 3, "a container was claimed twice: {ids:?}");
    assert!(ids.iter().filter(|(_, warm)| *warm).count() <= 2, "{ids:?}");
    for o in &owners {
        rt.block_on(wait_until("each command running", 60, || async { t.logs(o).contains("command-running") }));
    }
    // The pool refills in the background.
    rt.block_on(wait_until("the pool refilled again", 120, || async { t.idle_warm() == 2 }));
    for o in &owners {
        assert!(t.berth(&["sandbox", "stop", o]).status.success());
    }
}

#[test]
fn an_at_risk_docker_volume_is_rescued_by_a_short_container_before_gc_removes_it() {
    let image = berth_docker::testing::image();
    let t = Sandboxed::new(&["--rescue-image", &image]);
    let owner = format!("agent:{}", t.run.id());
    let c = t.server.client(ADMIN);
    let rt = rt();
    t.start_sandbox(&owner, &["--interval", "3600s"], "echo saved > saved; sleep 600");
    rt.block_on(wait_until("a snapshot published", 60, || async {
        c.snapshots(&owner).await.map(|s| !s.items.is_empty()).unwrap_or(false)
    }));
    // Killed: the session ends uncleanly and the workspace is at risk.
    t.run.docker(&["kill", &t.containers(&owner)[0]]);
    rt.block_on(wait_until("at risk", 30, || async { c.workspace(&owner).await.unwrap().at_risk }));
    rt.block_on(wait_until("the container removed", 30, || async { t.containers(&owner).is_empty() }));
    // Work after the last snapshot: only the volume has it.
    let volume = t.volume_path(&owner);
    std::fs::write(volume.join("unsaved.txt"), b"written after the last snapshot").unwrap();
    let expected = work_tree(&volume);
    rt.block_on(async {
        c.close(&owner).await.unwrap();
        let report = c.gc_run(&GcRun { dry_run: false, orphans: false, force: false }).await.unwrap();
        let mine: Vec<_> = report.volumes.iter().filter(|v| v.owner == owner).collect();
        assert_eq!(mine.len(), 1, "{report:?}");
        assert_eq!(mine[0].outcome, "removed", "{report:?}");
        let w = c.workspace(&owner).await.unwrap();
        assert!(!w.at_risk, "{w:?}");
        let kinds: Vec<String> = events(&c, "rescue_succeeded").await.into_iter().filter_map(|e| e.owner).collect();
        assert!(kinds.contains(&owner), "no rescue_succeeded for {owner}");
    });
    let name = t.volume_name(&owner);
    assert!(!t.run.volume_exists(&name), "the volume is removed once rescued");
    let restored = t.restore_latest(&owner, "rescued");
    util::assert_same_tree(&expected, &work_tree(&restored));
    let leftover = t.run.docker(&["ps", "-aq", "--filter", "label=berth.rescue"]);
    assert!(leftover.is_empty(), "a rescue container was left behind: {leftover}");
}

/// The server's log events named `name`, in order, each with its line number.
fn logged(log: &Path, name: &str) -> Vec<(usize, serde_json::Value)> {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| serde_json::from_str::<serde_json::Value>(l).ok().map(|v| (i, v)))
        .filter(|(_, v)| v["fields"]["event"] == name)
        .collect()
}

/// Waits up to `secs` for a connection to `listener`, and keeps it open without answering.
fn accept_within(listener: &std::net::TcpListener, secs: u64) -> std::net::TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match listener.accept() {
            Ok((conn, _)) => return conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("no connection within {secs} s: {e}"),
        }
    }
}

#[test]
fn a_warm_pool_refill_waits_for_the_claimed_sandboxs_init_but_never_past_the_hold() {
    const HOLD_MS: u64 = 15_000;
    let image = berth_docker::testing::image();
    let pool = format!("{image}=1");
    let run_label = TestRun::new();
    let label = run_label.label();
    let t = Sandboxed::new(&["--warm-pool", &pool, "--sandbox-label", &label, "--warm-refill-hold", "15s"]);
    // The warm containers carry the run's label, so the run removes them.
    let t = Sandboxed { run: run_label, ..t };
    let rt = rt();
    let log = t.server.log.clone();
    rt.block_on(wait_until("a warm container", 120, || async { t.idle_warm() == 1 }));

    // A claimed sandbox whose init cannot end: its repo's host takes the clone's connection and
    // never answers. The refill waits the whole hold, then refills all the same.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let repos = format!(r#"[{{"url": "http://127.0.0.1:{port}/never.git", "path": "never"}}]"#);
    let slow = format!("agent:{}-slow", t.run.id());
    let s = t.start_json(&slow, &["--repos", &repos], "echo command-running; sleep 600");
    assert_eq!(s["warm"], true, "{s}");
    let slow_name = s["name"].as_str().unwrap().to_string();
    let clone = accept_within(&host, 60);
    rt.block_on(wait_until("the pool refilled past the hold", 120, || async { t.idle_warm() == 1 }));
    assert!(!t.logs(&slow).contains("command-running"), "the init that cannot end ended");
    let claimed =
        logged(&log, "sandbox_started").iter().find(|(_, v)| v["fields"]["container"] == *slow_name).unwrap().0;
    let released = logged(&log, "warm_refill_released");
    let (at, bound) = released.iter().find(|(i, _)| *i > claimed).expect("the hold was never released");
    assert_eq!(bound["fields"]["reason"], "bound", "{bound}");
    assert!(bound["fields"]["held_ms"].as_u64().unwrap() >= HOLD_MS, "{bound}");
    let started: Vec<usize> = logged(&log, "warm_started").iter().map(|(i, _)| *i).collect();
    assert!(!started.iter().any(|i| (claimed..*at).contains(i)), "a warm container started during the hold");
    assert!(started.iter().any(|i| i > at), "no refill after the hold");
    // It stays in its clone until the run removes it.
    let _clone = clone;

    // A claimed sandbox whose init ends (nothing to restore, no repo): its heartbeat saying so
    // releases the refill, well before the hold.
    let fast = format!("agent:{}-fast", t.run.id());
    let s = t.start_json(&fast, &[], "echo command-running; sleep 600");
    assert_eq!(s["warm"], true, "{s}");
    let fast_name = s["name"].as_str().unwrap().to_string();
    rt.block_on(wait_until("the pool refilled after the init", 120, || async { t.idle_warm() == 1 }));
    let claimed =
        logged(&log, "sandbox_started").iter().find(|(_, v)| v["fields"]["container"] == *fast_name).unwrap().0;
    let released = logged(&log, "warm_refill_released");
    let (at, done) = released.iter().find(|(i, _)| *i > claimed).expect("the hold was never released");
    assert_eq!(
        (&done["fields"]["reason"], &done["fields"]["instance"]),
        (&"init_done".into(), &fast_name.clone().into())
    );
    assert!(done["fields"]["held_ms"].as_u64().unwrap() < HOLD_MS, "{done}");
    let started: Vec<usize> = logged(&log, "warm_started").iter().map(|(i, _)| *i).collect();
    assert!(!started.iter().any(|i| (claimed..*at).contains(i)), "a warm container started during the init");
    assert!(t.logs(&fast).contains("command-running"));
    assert!(t.berth(&["sandbox", "stop", &fast]).status.success());
}
