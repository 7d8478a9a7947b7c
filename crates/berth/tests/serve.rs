//! `berth serve` as a real process: started with no configuration, driven by the operator CLI,
//! killed with SIGKILL during deletion and during a GC sweep and restarted, and run as two
//! replicas on one PostgreSQL.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_api::client::EventQuery;
use berth_api::{Attach, Client, EnsureWorkspace, WorkspaceState};
use berth_testkit::eventually_async;
use util::Run;

use util::serve::{metric_blocking as metric, rt, Server, ADMIN};

fn cli(cwd: &Path, server: &Server, args: &[&str]) -> Run {
    let mut c = util::berth_command();
    c.current_dir(cwd).args(args).env("BERTH_SERVER", &server.url);
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
    // At debug level, for the secret scan.
    let server = Server::start(tmp.path(), &log, &[], &[("BERTH_LOG", "debug")]);
    let token_file = tmp.path().join("berth-data/admin-token");
    let admin_token = fs::read_to_string(&token_file).unwrap().trim().to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);

    let out = cli(tmp.path(), &server, &["workspace", "ensure", "agent:1", "--label", "team=infra"]).ok();
    assert!(out.stdout.contains("created workspace agent:1"), "{out:?}");
    let out = cli(tmp.path(), &server, &["workspace", "ls", "--json"]).ok();
    let out_ls = out.stdout.clone();
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list[0]["owner"], "agent:1");
    let volume = list[0]["volume"]["name"].as_str().unwrap().to_string();
    assert!(tmp.path().join("berth-data/volumes").join(&volume).is_dir());
    let out = cli(tmp.path(), &server, &["workspace", "show", "agent:1"]).ok();
    assert!(out.stdout.contains("label:       team=infra"), "{out:?}");
    assert!(out.stdout.contains("retention:   the server's"), "{out:?}");
    // Its own retention policy, at ensure or later; a bad one is refused, naming the fault.
    cli(tmp.path(), &server, &["workspace", "ensure", "agent:1", "--retention", "keep-last=3,daily=7"]).ok();
    let out = cli(tmp.path(), &server, &["workspace", "show", "agent:1"]).ok();
    assert!(out.stdout.contains("retention:   keep-last=3,hourly=0,daily=7,weekly=0 (its own)"), "{out:?}");
    let out = cli(tmp.path(), &server, &["workspace", "retention", "agent:1", "weekly=many"]).fails(1);
    assert!(out.stderr.contains("policy: 'many' in 'weekly=many' is not a count"), "{out:?}");
    let out = cli(tmp.path(), &server, &["workspace", "retention", "agent:1", "default", "--json"]).ok();
    assert!(!out.stdout.contains("\"retention\""), "back to the server's: {out:?}");

    // A sandbox session (its token passes through the server), with the agent's spec file.
    let spec = tmp.path().join("spec.json");
    let spec_s = spec.to_str().unwrap();
    let attached = cli(
        tmp.path(),
        &server,
        &["workspace", "attach", "agent:1", "--instance", "pod-1", "--node", "n1", "--spec-out", spec_s],
    )
    .ok();
    assert!(attached.stdout.contains("berth agent run --spec"), "{attached:?}");
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
    let events = cli(tmp.path(), &server, &["events", "--json"]).ok();
    let kinds: Vec<String> = events
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
    let usage = cli(tmp.path(), &server, &["workspace", "frobnicate"]).fails(2);
    assert!(usage.stderr.contains("frobnicate"), "the usage error names the word: {usage:?}");
    let wrong = Run::of({
        let mut c = util::berth_command();
        c.current_dir(tmp.path()).args(["workspace", "ls", "--server", &server.url, "--token", "nope-nope-nope"]);
        c
    })
    .fails(1);
    assert!(wrong.stderr.contains("unauthorized"), "{wrong:?}");

    server.terminate(10);
    let logs = fs::read_to_string(&log).unwrap();
    assert!(logs.contains("\"serve_started\""), "{logs}");
    // The admin token is in its file and the sandbox token in the spec file, and neither is in
    // the log (at debug level) or what the CLI printed.
    util::secrets::Scan::new()
        .secret("the admin token", &admin_token)
        .secret("the sandbox token", &session.token)
        .debug_log(&log)
        .text("berth workspace attach's output", format!("{}{}", attached.stdout, attached.stderr))
        .text("berth events --json", &events.stdout)
        .text("berth workspace ls --json", &out_ls)
        .assert_clean();
    // The schema is current after a restart-free migrate.
    let out = Run::of({
        let mut c = util::berth_command();
        c.current_dir(tmp.path()).args(["migrate"]);
        c
    })
    .ok();
    assert!(out.stdout.contains("up to date"), "{out:?}");
}

fn start(tmp: &Path, data: &Path, log: &str, extra: &[&str]) -> Server {
    start_gc_every(tmp, data, log, "1s", extra)
}

fn start_gc_every(tmp: &Path, data: &Path, log: &str, gc_interval: &str, extra: &[&str]) -> Server {
    start_with_env(tmp, data, log, gc_interval, extra, &[])
}

fn start_with_env(
    tmp: &Path,
    data: &Path,
    log: &str,
    gc_interval: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Server {
    Server::start_admin(tmp, data, log, &[&["--gc-interval", gc_interval], extra].concat(), env)
}

/// Starts a server whose substrate lets `n` volume deletes through and holds every later one
/// (the `BERTH_TEST_PAUSE_DELETES_AFTER` hook), so a SIGKILL lands at a known point.
fn start_paused_after(tmp: &Path, data: &Path, log: &str, gc_interval: &str, n: usize) -> Server {
    let n = n.to_string();
    start_with_env(tmp, data, log, gc_interval, &[], &[("BERTH_TEST_PAUSE_DELETES_AFTER", n.as_str())])
}

/// How many events of `kind` the server recorded.
async fn count_events(c: &Client, kind: &str) -> usize {
    all_events(c, kind).await.len()
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
    // The substrate lets 10 volume deletes through and holds the rest: the kill lands with
    // exactly 10 deletions done, whatever the machine's speed.
    const DONE: usize = 10;
    let server = start_paused_after(tmp.path(), &data, "a.log", "1s", DONE);
    let rt = rt();
    let c = server.client(ADMIN);
    let owners = rt.block_on(make_workspaces(&c, 40, 20, &data));
    rt.block_on(async {
        for o in &owners {
            c.delete(o).await.unwrap();
        }
        eventually_async(60, "10 deletions done", || async {
            (count_events(&c, "workspace_deleted").await == DONE).then_some(())
        })
        .await;
    });
    server.kill9();
    let deleting = rt.block_on(async {
        open_meta(&data).await.count_workspaces(berth_control::meta::State::Deleting).await.unwrap()
    });
    eprintln!("killed with {deleting} of {} workspaces still deleting", owners.len());
    assert_eq!(deleting as usize, owners.len() - DONE, "the kill lands with exactly the held deletions unfinished");

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
        let owners = make_workspaces(&c, 60, 10, &data).await;
        for o in &owners {
            c.close(o).await.unwrap();
        }
        owners
    });
    server.kill9();
    eprintln!("{:?}: {} closed workspaces made", t0.elapsed(), owners.len());
    // The substrate lets PAUSE_AFTER removals through and holds every later one: the kill
    // lands inside a sweep after exactly that many, whatever the machine's speed.
    const PAUSE_AFTER: usize = 20;
    let server = start_paused_after(tmp.path(), &data, "b.log", "1s", PAUSE_AFTER);
    let c = server.client(ADMIN);
    rt.block_on(async {
        eventually_async(60, "20 volumes marked removed", || async {
            (count_events(&c, "volume_removed").await == PAUSE_AFTER).then_some(())
        })
        .await;
        // The sweep is stuck on the held removals: attempts beyond PAUSE_AFTER started.
        eventually_async(10, "the held removals started", || async {
            (util::serve::metric(&server.url, "berth_gc_attempts_total").await as usize > PAUSE_AFTER).then_some(())
        })
        .await;
    });
    server.kill9();
    eprintln!("{:?}: killed during a sweep", t0.elapsed());

    let unmarked = rt.block_on(async { open_meta(&data).await.count_unremoved().await.unwrap() as usize });
    eprintln!("killed with {unmarked} of {} closed volumes not yet marked removed", owners.len());
    assert_eq!(unmarked, owners.len() - PAUSE_AFTER, "the kill lands after exactly the removals let through");

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
    let rt = rt();
    let db = rt.block_on(berth_testkit::services::pg_database());
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

/// Runs `berth agent run` under a lease of `owner` on `server` (its workspace is the volume),
/// waits for its first published snapshot (with a store) or its ready marker, writes work that
/// no snapshot has yet, then SIGKILLs the sandbox (the agent and its child). Returns the
/// volume's directory.
fn sigkilled_sandbox(root: &Path, server: &Server, owner: &str, store: bool) -> std::path::PathBuf {
    let rt = rt();
    let admin = server.client(ADMIN);
    rt.block_on(admin.ensure(owner, &EnsureWorkspace::default())).unwrap();
    let session = rt.block_on(admin.attach(owner, &Attach { instance_id: "pod-1".into(), node: None, pool: None }));
    let session = session.unwrap();
    let berth_api::Mount::Local { path, .. } = &session.mount else { panic!("a local mount") };
    let spec = root.join("spec.json");
    fs::write(&spec, serde_json::to_vec(&serde_json::json!({"session": session, "server": server.url})).unwrap())
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&spec, fs::Permissions::from_mode(0o600)).unwrap();
    let child_pid = root.join("child.pid");
    let command = format!(
        "echo $$ > {}; mkdir -p src; echo 'fn main() {{}}' > src/main.rs; echo saved > notes.txt; exec sleep 600",
        child_pid.display()
    );
    let log = root.join("agent.log");
    let mut agent = util::berth_command();
    agent
        .args(["agent", "run", "--spec", spec.to_str().unwrap(), "--base", root.join("jobs").to_str().unwrap()])
        .args(["--first-after", "1", "--interval", "3600", "--debounce", "600000", "--", "sh", "-c", &command])
        .env("BERTH_LOG_FORMAT", "json")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    let mut agent = agent.spawn().unwrap();
    let wanted = if store { "\"published\":true" } else { "\"phase\":\"ready\"" };
    berth_testkit::eventually(60, &format!("{wanted} in {} and notes.txt written", log.display()), || {
        let logged = fs::read_to_string(&log).unwrap_or_default().contains(wanted);
        (logged && Path::new(path).join("notes.txt").exists()).then_some(())
    });
    // Work after the last snapshot: only the volume has it.
    fs::write(Path::new(path).join("unsaved.txt"), b"written after the last snapshot").unwrap();
    agent.kill().unwrap();
    agent.wait().unwrap();
    let pid: i32 = fs::read_to_string(&child_pid).unwrap().trim().parse().unwrap();
    let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::KILL);
    // The lease expires unrenewed: the session ends expired and the workspace is at risk. (The
    // TTL is long enough that a loaded machine's heartbeats keep the lease while the agent runs.)
    let w = rt.block_on(berth_testkit::eventually_async(30, "the workspace at risk after the SIGKILL", || async {
        Some(admin.workspace(owner).await.unwrap()).filter(|w| w.at_risk)
    }));
    assert!(w.at_risk_reason.as_deref().unwrap_or("").contains("expired"), "{w:?}");
    std::path::PathBuf::from(path)
}

fn at_risk_server(root: &Path, store: Option<&str>) -> Server {
    let data = root.join("data");
    let mut args = vec![
        "--data-dir",
        data.to_str().unwrap(),
        "--lease-ttl",
        "8s",
        "--expiry-interval",
        "1s",
        "--gc-cooldown",
        "0s",
    ];
    args.extend(["--gc-interval", "3600s"]);
    if let Some(s) = store {
        args.extend(["--store", s]);
    }
    Server::start(root, &root.join("serve.log"), &args, &[("BERTH_ADMIN_TOKEN", ADMIN)])
}

fn cli_as_admin(root: &Path, server: &Server, args: &[&str]) -> Run {
    let mut c = util::berth_command();
    c.current_dir(root).args(args).env("BERTH_SERVER", &server.url).env("BERTH_TOKEN", ADMIN);
    Run::of(c)
}

#[test]
fn a_sigkilled_sandbox_leaves_its_workspace_at_risk_and_gc_rescues_it_before_removing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let store = format!("file://{}", root.join("store").display());
    let server = at_risk_server(&root, Some(&store));
    let volume = sigkilled_sandbox(&root, &server, "agent:risky", true);
    let out = cli_as_admin(&root, &server, &["workspace", "show", "agent:risky"]).ok();
    assert!(out.stdout.contains("at risk:") && out.stdout.contains("expired"), "{out:?}");
    let out = cli_as_admin(&root, &server, &["workspace", "ls"]).ok();
    assert!(out.stdout.contains("active,at_risk"), "{out:?}");
    assert_eq!(metric(&server.url, "berth_workspaces_at_risk"), 1.0);
    cli_as_admin(&root, &server, &["workspace", "close", "agent:risky"]).ok();
    // What the rescue must save: the volume as the dead sandbox left it (its run dir is never
    // snapshotted).
    let expected = util::read_tree(&volume).without(".berth/run");
    assert!(expected.get("unsaved.txt").is_some(), "{expected:?}");

    let out = cli_as_admin(&root, &server, &["gc", "run", "--json"]).ok();
    let report = out.json();
    assert_eq!(report["volumes"][0]["outcome"], "removed", "{report}");
    assert!(!volume.exists(), "the volume is removed once rescued");
    let w = rt().block_on(server.client(ADMIN).workspace("agent:risky")).unwrap();
    assert!(!w.at_risk, "{w:?}");
    let snapshot = w.latest_snapshot.clone().expect("the rescue's snapshot is the latest");
    let out = cli_as_admin(&root, &server, &["events", "--owner", "agent:risky", "--json"]).ok();
    let events: Vec<serde_json::Value> = out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let position = |k: &str| kinds.iter().position(|x| *x == k).unwrap_or_else(|| panic!("no {k} in {kinds:?}"));
    assert!(position("at_risk") < position("rescue_started"));
    assert!(position("rescue_started") < position("rescue_succeeded"));
    assert!(position("rescue_succeeded") < position("volume_removed"), "rescued before removing: {kinds:?}");
    assert_eq!(events[position("rescue_succeeded")]["detail"]["snapshot"], snapshot.as_str());

    // The rescue's snapshot restores to exactly what the volume held.
    let restored = root.join("restored");
    let mut c = util::berth_command();
    c.args(["snapshot", "restore", "--store", &store, "--workspace", "agent:risky", "--no-cache"]).args([
        "--snapshot",
        &snapshot,
        restored.to_str().unwrap(),
    ]);
    Run::of(c).ok();
    util::assert_same_tree(&expected, &util::read_tree(&restored));
    server.terminate(10);
}

#[test]
fn without_a_store_an_at_risk_volume_is_kept_until_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let server = at_risk_server(&root, None);
    let volume = sigkilled_sandbox(&root, &server, "agent:kept", false);
    // Deleting it is refused, with the way out.
    let out = cli_as_admin(&root, &server, &["workspace", "delete", "agent:kept"]).fails(1);
    assert!(out.stderr.contains("at risk") && out.stderr.contains("--force"), "{out:?}");
    cli_as_admin(&root, &server, &["workspace", "close", "agent:kept"]).ok();
    let report = cli_as_admin(&root, &server, &["gc", "run", "--json"]).ok().json();
    assert_eq!(report["volumes"][0]["outcome"], "at_risk", "{report}");
    assert!(report["volumes"][0]["error"].as_str().unwrap().contains("--store"), "{report}");
    assert!(volume.join("unsaved.txt").exists(), "an at-risk volume is never removed unrescued");
    assert_eq!(metric(&server.url, "berth_workspaces_at_risk"), 1.0);
    let report = cli_as_admin(&root, &server, &["gc", "run", "--force", "--json"]).ok().json();
    // The failed attempt backs off durably; the forced sweep waits for it like any other.
    assert!(report["volumes"].as_array().unwrap().is_empty(), "{report}");
    cli_as_admin(&root, &server, &["workspace", "rm", "agent:kept", "--force", "--wait"]).ok();
    assert!(!volume.exists());
    let out = cli_as_admin(&root, &server, &["events", "--owner", "agent:kept", "--kind", "at_risk_removed", "--json"]);
    let removed: serde_json::Value = serde_json::from_str(out.ok().stdout.trim()).unwrap();
    assert_eq!(removed["detail"]["reason"], "forced", "{removed}");
    assert_eq!(metric(&server.url, "berth_workspaces_at_risk"), 0.0);
    server.terminate(10);
}

/// Made-up HTTP methods and a 1 MB label neither grow `/metrics` nor come back whole in an error.
#[test]
fn made_up_methods_and_huge_inputs_stay_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = start(tmp.path(), &data, "serve.log", &[]);
    rt().block_on(async {
        let http = reqwest::Client::new();
        for i in 0..300 {
            let method = reqwest::Method::from_bytes(format!("FROB{i}").as_bytes()).unwrap();
            let resp = http.request(method, format!("{}/v1/workspaces", server.url)).send().await.unwrap();
            assert!(resp.status().is_client_error(), "a made-up method got {}", resp.status());
        }
        let body = http.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
        assert!(!body.contains("FROB"), "a made-up method became a metric label");
        assert!(body.contains("method=\"other\""), "made-up methods are counted as other:\n{body}");

        let huge = "x".repeat(1 << 20);
        let resp = http
            .put(format!("{}/v1/workspaces/agent:huge", server.url))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({ "labels": { "k": huge } }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_client_error(), "a 1 MB label got {}", resp.status());
        let text = resp.text().await.unwrap();
        assert!(text.len() < 4 * 1024, "the error echoed {} bytes of input", text.len());
    });
}

/// A `--admin-token-file` open to others is refused; and with its descriptors limited as in
/// `ulimit -n 256`, 300 connections that stall mid-header neither stop the API nor the reconcilers:
/// at most `--max-connections` are served at once, each stalled one is cut after
/// `--http-header-timeout`, and a fresh request is answered.
#[test]
fn stalled_clients_past_the_fd_limit_stop_neither_the_api_nor_the_reconcilers() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let token_file = tmp.path().join("admin-token");
    fs::write(&token_file, format!("{ADMIN}\n")).unwrap();
    fs::set_permissions(&token_file, fs::Permissions::from_mode(0o644)).unwrap();
    let refused = Run::of({
        let mut c = util::berth_command();
        c.current_dir(tmp.path()).args(["serve", "--listen", "127.0.0.1:0", "--admin-token-file"]).arg(&token_file);
        c.arg("--data-dir").arg(&data).env_remove("BERTH_ADMIN_TOKEN");
        c
    })
    .fails(1);
    assert!(refused.stderr.contains(&format!("chmod 600 {}", token_file.display())), "{refused:?}");
    fs::set_permissions(&token_file, fs::Permissions::from_mode(0o600)).unwrap();

    let token_arg = token_file.to_str().unwrap();
    let args = ["--data-dir", data.to_str().unwrap(), "--admin-token-file", token_arg, "--lease-ttl", "1s"];
    let limits = ["--expiry-interval", "1s", "--http-header-timeout", "1s", "--max-connections", "100"];
    let server = Server::start(tmp.path(), &tmp.path().join("serve.log"), &[&args[..], &limits[..]].concat(), &[]);
    let pid = rustix::process::Pid::from_raw(server.pid() as i32).unwrap();
    let was = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let fds = rustix::process::Rlimit { current: Some(256), maximum: was.maximum };
    rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, fds).unwrap();
    let admin = server.client(ADMIN);
    rt().block_on(admin.ensure("agent:fd", &EnsureWorkspace::default())).unwrap();
    let session =
        rt().block_on(admin.attach("agent:fd", &Attach { instance_id: "pod".into(), node: None, pool: None }));
    let session = session.unwrap();
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut stalled: Vec<_> = (0..300)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
            c
        })
        .collect();
    let w: berth_api::Workspace = rt().block_on(async {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let answered = http.get(format!("{}/v1/workspaces/agent:fd", server.url)).bearer_auth(ADMIN).send().await;
        answered.expect("the API answers past the stalled clients").json().await.unwrap()
    });
    // The unrenewed lease expired meanwhile: the reconcilers kept running.
    assert!(w.lease.is_none(), "the lease of {} was not expired: {w:?}", session.session_id);
    let events = rt().block_on(admin.events(&EventQuery { kind: Some("lease_expired".into()), ..Default::default() }));
    assert_eq!(events.unwrap().items.len(), 1);
    for c in &mut stalled {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(c, &mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a stalled head got an answer instead of a close");
    }
    let log = fs::read_to_string(&server.log).unwrap();
    assert!(!log.contains("accept_failed"), "the server ran out of descriptors:\n{log}");
    assert!(metric(&server.url, "berth_http_connections") <= 100.0);
    server.terminate(10);
}

/// A data dir open to others that berth cannot tighten (another user's) is refused with the
/// `chmod` to run, not used as it is: `berth serve` runs as `nobody` on a root-owned 0755 dir.
#[test]
fn a_data_dir_berth_cannot_make_private_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // A copy, so that nobody needs no access to the build directory.
    let exe = tmp.path().join("berth");
    fs::copy(env!("CARGO_BIN_EXE_berth"), &exe).unwrap();
    let data = tmp.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&exe);
    c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&data).env("BERTH_ADMIN_TOKEN", ADMIN);
    let refused = Run::of(c).fails(1);
    let want = format!("run `chmod 700 {}` as its owner", data.display());
    assert!(refused.stderr.contains(&want), "{refused:?}");
    assert_eq!(fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o755, "berth changed it anyway");
    assert_eq!(fs::read_dir(&data).unwrap().count(), 0, "berth wrote into it");
}
