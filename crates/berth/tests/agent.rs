//! `berth agent` end to end, with real processes, signals, git (a `file://` remote and a
//! loopback smart-HTTP remote that requires a token), a real S3 server (moto), and the real
//! control plane: drain on SIGTERM and restore elsewhere, SIGKILL at random moments, a stubborn
//! agent and the drain budget, the crash sweep, secrets, and a reused owner name.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use berth_api::client::EventQuery;
use berth_api::{Attach, Client, EnsureWorkspace, RepoSpec, Session};
use berth_testkit::{eventually, eventually_async};
use util::git::{bare_repo, git, GitHttp};
use util::secrets::{GitRecorder, Scan};
use util::serve::{rt, terminate, Server, ADMIN};
use util::Run;

const GIT_TOKEN: &str = "ghs_e2eGitToken0123456789abcdef";

/// The S3 keys of the agent tests: made up (the S3 test server takes any), and long enough
/// for the secret scan to look for.
const S3_KEYS: &[(&str, &str)] =
    &[("AWS_ACCESS_KEY_ID", "AKIABERTHE2ESCAN0001"), ("AWS_SECRET_ACCESS_KEY", "berth-e2e-s3-secret-0123456789abcdef")];

fn berth() -> Command {
    let mut c = util::berth_command();
    c.env("BERTH_LOG", "info").env("BERTH_LOG_FORMAT", "json");
    if let Ok(endpoint) = std::env::var("BERTH_TEST_S3_ENDPOINT") {
        c.env("AWS_ENDPOINT_URL", endpoint).envs(S3_KEYS.iter().copied());
    }
    c
}

/// Runs `berth agent ARGS` to completion.
fn agent_cmd(args: &[&str]) -> Run {
    let mut c = berth();
    c.arg("agent").args(args);
    Run::of(c)
}

/// Runs `berth agent init --json` of `workspace` from `store` into `dir`, which must succeed.
fn init_from_store(dir: &Path, store: &str, workspace: &str, jobs: &Path) -> Run {
    let (dir, jobs) = (dir.to_str().unwrap(), jobs.to_str().unwrap());
    agent_cmd(&["init", "--json", "--dir", dir, "--store", store, "--workspace", workspace, "--base", jobs]).ok()
}

/// A running `berth agent run`.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(args: &[&str], command: &[&str], log: &Path) -> Agent {
        Agent::start_with(args, command, log, &[])
    }

    /// [`Agent::start`] with extra environment variables.
    fn start_with(args: &[&str], command: &[&str], log: &Path, env: &[(&str, &str)]) -> Agent {
        let mut c = berth();
        c.arg("agent").arg("run").args(args).arg("--").args(command);
        c.envs(env.iter().copied());
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(fs::File::create(log).unwrap());
        Agent { child: c.spawn().expect("spawn berth agent run"), log: log.to_path_buf() }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line with all of `parts`.
    #[track_caller]
    fn wait_for(&self, parts: &[&str], secs: u64) {
        let found = || self.log().lines().any(|l| parts.iter().all(|p| l.contains(p)));
        if !found() {
            eventually(secs, &format!("a log line with {parts:?} in {}", self.log.display()), || found().then_some(()));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3_store(hint: &str) -> String {
    format!("s3://{}/ws", berth_testkit::services::s3_bucket(&format!("agent-{hint}")))
}

/// The scripted agent: commits, then leaves staged, unstaged and untracked changes (text and
/// binary) in every repo, keeps a SQLite database open with uncheckpointed WAL, writes a marker
/// and waits. With `stubborn`, it ignores SIGTERM.
fn script(dir: &Path, repos: &[&str], stubborn: bool) -> PathBuf {
    let mut s = String::from("#!/bin/sh\nset -e\n");
    for r in repos {
        s.push_str(&format!(
            "cd \"$BERTH_DIR/{r}\"\n\
             echo 'committed work' > work.txt && git add work.txt\n\
             git -c user.name=agent -c user.email=agent@example.test commit -q -m 'agent commit'\n\
             echo staged > staged.txt && git add staged.txt\n\
             echo 'unstaged change' >> work.txt\n\
             echo untracked > untracked.txt\n\
             printf '\\000\\001\\002\\377binary' > blob.bin\n"
        ));
    }
    s.push_str(concat!(
        "python3 - <<'PY' &\n",
        "import os, sqlite3, time\n",
        "c = sqlite3.connect(os.environ['BERTH_DIR'] + '/memory.db')\n",
        "c.execute('pragma journal_mode=wal')\n",
        "c.execute('create table notes (v text)')\n",
        "for i in range(50):\n",
        "    c.execute('insert into notes values (?)', ('note %d' % i,))\n",
        "c.commit()\n",
        "open(os.environ['BERTH_DIR'] + '/../agent-ready', 'w').write('ok')\n",
        "time.sleep(3600)\n",
        "PY\n",
    ));
    if stubborn {
        s.push_str("trap '' TERM\nwhile true; do sleep 0.1; done\n");
    } else {
        s.push_str("trap 'exit 0' TERM\nwhile true; do sleep 0.1; done\n");
    }
    let path = dir.join(if stubborn { "stubborn.sh" } else { "agent.sh" });
    fs::write(&path, s).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[track_caller]
fn wait_file(path: &Path, secs: u64) {
    eventually(secs, &format!("{} to appear", path.display()), || path.exists().then_some(()));
}

/// Git state of a checkout as comparable text: branch, HEAD, staged and unstaged diffs,
/// untracked files.
fn git_picture(repo: &Path) -> BTreeMap<&'static str, String> {
    [
        ("branch", git(repo, &["symbolic-ref", "--short", "HEAD"])),
        ("head", git(repo, &["rev-parse", "HEAD"])),
        ("staged", git(repo, &["diff", "--cached", "--binary"])),
        ("unstaged", git(repo, &["diff", "--binary"])),
        ("untracked", git(repo, &["ls-files", "--others", "--exclude-standard"])),
        ("status", git(repo, &["status", "--porcelain"])),
    ]
    .into()
}

/// The real control plane on `root`, recording snapshots of `store`, logging at debug level
/// (for the secret scans), and its admin client.
fn control_plane(root: &Path, store: &str) -> (Server, Client) {
    let data = root.join("data");
    let args = ["--data-dir", data.to_str().unwrap(), "--store", store];
    let mut env = vec![("BERTH_ADMIN_TOKEN", ADMIN), ("BERTH_LOG", "debug")];
    env.extend(S3_KEYS.iter().copied());
    let server = Server::start(root, &root.join("serve.log"), &args, &env);
    let admin = server.client(ADMIN);
    (server, admin)
}

/// Attaches `instance` to `owner` and writes the agent's spec file (0600) at `path`.
fn attach(server: &Server, admin: &Client, owner: &str, instance: &str, path: &Path) -> Session {
    let body = Attach { instance_id: instance.into(), node: None, pool: None };
    let session = rt().block_on(admin.attach(owner, &body)).expect("attach");
    let spec = serde_json::json!({"session": session, "server": server.url});
    fs::write(path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    session
}

#[test]
fn sigterm_drains_to_both_remotes_and_a_fresh_init_restores_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let jobs = root.join("jobs");
    let store = s3_store("e2e");
    let remotes = root.join("remotes");
    fs::create_dir_all(&remotes).unwrap();
    let app = bare_repo(&remotes, "app");
    let http_root = root.join("http");
    fs::create_dir_all(&http_root).unwrap();
    bare_repo(&http_root, "lib");
    let gh = GitHttp::start(&http_root, &root.join("githttp"), GIT_TOKEN);

    let (server, admin) = control_plane(&root, &store);
    let repos = vec![
        RepoSpec { url: format!("file://{}", app.display()), branch: None, depth: None, path: None },
        RepoSpec {
            url: format!("{}/lib.git", gh.url),
            branch: Some("main".into()),
            depth: None,
            path: Some("libs/lib".into()),
        },
    ];
    rt().block_on(admin.ensure("agent:e2e", &EnsureWorkspace { repos, ..Default::default() })).unwrap();
    let spec = root.join("spec-a.json");
    let session = attach(&server, &admin, "agent:e2e", "pod-a", &spec);
    let ws = match &session.mount {
        berth_api::Mount::Local { path, .. } => PathBuf::from(path),
        other => panic!("local mount expected, got {other:?}"),
    };
    let agent_script = script(&root, &["app", "libs/lib"], false);
    // A pre-push hook in the checkout the drain pushes from: skipped (--no-verify).
    let hook = format!("#!/bin/sh\ntouch '{}'\nexit 1\n", root.join("pre-push-ran").display());
    let args = [
        "--spec",
        spec.to_str().unwrap(),
        "--base",
        jobs.to_str().unwrap(),
        "--first-after",
        "1",
        "--interval",
        "3",
        "--debounce",
        "300",
        "--grace",
        "20",
        "--credential-endpoint",
        &format!("{}/token", gh.url),
        "--identity-token-file",
        gh.identity_file.to_str().unwrap(),
    ];
    // Every git command berth runs is recorded (argv and environment), and the log is at debug
    // level: both are scanned for the secrets below.
    let recorder = GitRecorder::install(&root);
    let env = [("PATH", recorder.path()), ("BERTH_LOG", "debug")];
    let mut agent = Agent::start_with(&args, &[agent_script.to_str().unwrap()], &root.join("agent-a.log"), &env);
    agent.wait_for(&["init_phase", "ready"], 60);
    wait_file(&ws.join("../agent-ready"), 60);
    let hook_path = ws.join("app/.git/hooks/pre-push");
    fs::write(&hook_path, &hook).unwrap();
    fs::set_permissions(&hook_path, fs::Permissions::from_mode(0o755)).unwrap();
    // A snapshot after the agent's work, published to the control plane.
    let before = rt().block_on(admin.workspace("agent:e2e")).unwrap().latest_snapshot;
    eventually(30, "a snapshot published after the agent's work", || {
        let now = rt().block_on(admin.workspace("agent:e2e")).unwrap().latest_snapshot;
        (now.is_some() && now != before).then_some(())
    });
    let pictures: Vec<_> = ["app", "libs/lib"].iter().map(|r| git_picture(&ws.join(r))).collect();

    let took = terminate(&mut agent.child, 25, "berth agent run");
    eprintln!("drain took {took:?}");

    // The work in progress reached both remotes on berth/wip/main, on top of the agent's own
    // commit, hooks skipped; their main did not move.
    let heads_before: Vec<String> =
        ["app", "libs/lib"].iter().map(|r| git(&ws.join(r), &["rev-parse", "HEAD"])).collect();
    for (i, bare) in [app.clone(), http_root.join("lib.git")].iter().enumerate() {
        let subject = git(bare, &["log", "-1", "--format=%s", "berth/wip/main"]);
        assert!(subject.starts_with("berth: work in progress of agent:e2e"), "{}: {subject}", bare.display());
        assert_eq!(git(bare, &["rev-parse", "berth/wip/main^"]), heads_before[i], "the WIP commit sits on HEAD");
        let files = git(bare, &["ls-tree", "-r", "--name-only", "berth/wip/main"]);
        for f in ["work.txt", "staged.txt", "untracked.txt", "blob.bin"] {
            assert!(files.lines().any(|l| l == f), "{f} not in the WIP commit of {}: {files}", bare.display());
        }
        assert_eq!(git(bare, &["log", "-1", "--format=%s", "main"]), "first", "{}: main moved", bare.display());
    }
    assert!(!root.join("pre-push-ran").exists(), "the drain's push ran a pre-push hook");
    // The drain was recorded; the final snapshot was published; the session let go.
    let w = rt().block_on(admin.workspace("agent:e2e")).unwrap();
    assert!(w.draining, "the drain stays until the replacement acknowledges");
    assert!(w.lease.is_none(), "the drained sandbox detached");
    let final_snapshot = w.latest_snapshot.clone().unwrap();
    assert!(agent.log().contains(&final_snapshot[..16]), "the final snapshot is the drain's");
    // The session ended clean (drained: its final snapshot is the latest), so nothing is at risk.
    assert!(!w.at_risk, "a drained workspace is at risk: {w:?}");
    let q = EventQuery { owner: Some("agent:e2e".into()), kind: Some("session_ended".into()), ..Default::default() };
    let ended = rt().block_on(admin.events(&q)).unwrap().items;
    let outcomes: Vec<_> = ended.iter().map(|e| e.detail["outcome"].as_str().unwrap_or("?").to_string()).collect();
    assert_eq!(outcomes, ["drained"], "how the session ended");

    // The replacement attaches (the handover nonce comes with it) and initialises a fresh dir.
    let spec_b = root.join("spec-b.json");
    let replacement = attach(&server, &admin, "agent:e2e", "pod-b", &spec_b);
    assert!(replacement.handover.is_some(), "the attach carries the handover");
    let fresh = root.join("fresh");
    let mut init = berth();
    init.envs(env)
        .args(["agent", "init", "--json", "--spec", spec_b.to_str().unwrap(), "--dir", fresh.to_str().unwrap()])
        .args(["--base", root.join("jobs").to_str().unwrap()])
        .args([
            "--credential-endpoint",
            &format!("{}/token", gh.url),
            "--identity-token-file",
            gh.identity_file.to_str().unwrap(),
        ]);
    let out = Run::of(init).ok();
    let report = out.json();
    assert_eq!(report["restore"], "restored", "{out:?}");
    assert_eq!(report["snapshot"], final_snapshot.as_str());
    for (i, r) in ["app", "libs/lib"].iter().enumerate() {
        assert_eq!(git_picture(&fresh.join(r)), pictures[i], "git state of {r} after restore");
        assert_eq!(fs::read(fresh.join(r).join("blob.bin")).unwrap(), b"\x00\x01\x02\xffbinary");
    }
    // The replacement's branch is not behind origin's: a fetch brings only berth's WIP ref.
    git(&fresh.join("app"), &["fetch", "-q", "origin"]);
    assert_eq!(git(&fresh.join("app"), &["rev-list", "--count", "main..origin/main"]), "0", "main is behind origin");
    assert_eq!(git(&fresh.join("app"), &["rev-parse", "origin/berth/wip/main^"]), heads_before[0]);
    let notes = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import sqlite3; print(sqlite3.connect('{}').execute('select count(*) from notes').fetchone()[0])",
                fresh.join("memory.db").display()
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&notes.stdout).trim(), "50", "the SQLite database came back whole");
    assert!(fresh.join(".berth/run/ready").exists());
    // The replacement cleared the drain: its first heartbeat (from a new instance, pod-b) or its
    // ready-ack, whichever came first.
    let d = rt().block_on(admin.drain("workspace:agent:e2e")).unwrap();
    assert!(!d.draining && matches!(d.cleared_by.as_deref(), Some("ack" | "new_instance")), "{d:?}");

    // No secret anywhere: the logs (the agent's at debug level), the argv and environment of
    // every git command berth ran (clones at init, the drain's push: recorded, so a clean log
    // means something), the restored tree (the snapshot, git metadata included), the original
    // workspace, the events and the workspace as the API shows them, init's output.
    recorder.assert_ran(&["clone", "push"]);
    let events = rt().block_on(admin.events(&EventQuery { owner: Some("agent:e2e".into()), ..Default::default() }));
    let mut scan = Scan::new();
    scan.secret("the git token", GIT_TOKEN)
        .secret("the sandbox token of pod-a", &session.token)
        .secret("the sandbox token of pod-b", &replacement.token)
        .secret("the admin token", ADMIN)
        .s3_keys(S3_KEYS)
        .debug_log(&root.join("agent-a.log"))
        .debug_log(&root.join("serve.log"))
        .git_invocations(&recorder)
        .tree(&fresh)
        .tree(&ws)
        .json("the events", &events.unwrap().items)
        .json("the workspace", &rt().block_on(admin.workspace("agent:e2e")).unwrap())
        .text("init's stdout and stderr", format!("{}{}", out.stdout, out.stderr))
        .assert_clean();
    // Credential files went with the job.
    let leftovers: Vec<_> = fs::read_dir(root.join("jobs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("creds-"))
        .collect();
    assert!(leftovers.is_empty(), "credential dirs left behind: {leftovers:?}");
}

#[test]
fn a_stubborn_agent_still_gets_a_pushed_wip_commit_within_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let jobs = root.join("jobs");
    let remote = bare_repo(&root, "app");
    let ws = root.join("ws");
    let stubborn = script(&root, &["app"], true);
    let store = format!("file://{}", root.join("store").display());
    let args = [
        "--dir",
        ws.to_str().unwrap(),
        "--store",
        &store,
        "--workspace",
        "agent:stubborn",
        "--repos",
        &format!("file://{}", remote.display()),
        "--base",
        jobs.to_str().unwrap(),
        "--grace",
        "10",
        "--first-after",
        "60",
    ];
    let mut agent = Agent::start(&args, &[stubborn.to_str().unwrap()], &root.join("agent.log"));
    wait_file(&root.join("agent-ready"), 60);
    // The process exits well within the platform's patience even on a loaded machine (a
    // margin no load can eat; bench/agent.py times drains).
    terminate(&mut agent.child, 30, "berth agent run with a stubborn child");
    let log = agent.log();
    // The drain's own report says how it spent its budget: the wait for the agent was cut at
    // the budget minus what is held back for commit, push and snapshot (40%: 6 of 10 s), then
    // the agent was stopped, and the work committed, pushed and snapshotted in what was left.
    let done = log_events(&log, "drain_done");
    assert_eq!(done.len(), 1, "one drain_done line: {log}");
    assert_eq!(done[0]["budget_secs"], 10, "{log}");
    let steps: Vec<serde_json::Value> = serde_json::from_str(done[0]["steps"].as_str().unwrap()).unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["nudge", "wait", "freeze", "commit", "push", "snapshot"], "{log}");
    let detail = |name: &str| steps.iter().find(|s| s["name"] == name).unwrap()["detail"].as_str().unwrap().to_string();
    let waited: u64 = detail("wait")
        .strip_prefix("the agent did not exit within ")
        .and_then(|d| d.strip_suffix(" ms"))
        .unwrap_or_else(|| panic!("the child ignored its nudge, yet: {}", detail("wait")))
        .parse()
        .unwrap();
    assert!(waited > 0 && waited <= 6_000, "the wait was not cut at the budget minus its reserve: {waited} ms");
    assert_eq!(detail("freeze"), "stopped the agent's process tree");
    assert!(detail("push").contains("pushed to origin berth/wip/main"), "{}", detail("push"));
    assert!(detail("snapshot").starts_with("snapshot "), "the final snapshot: {}", detail("snapshot"));
    assert!(git(&remote, &["log", "-1", "--format=%s", "berth/wip/main"]).starts_with("berth: work in progress"));
    assert_eq!(git(&remote, &["log", "-1", "--format=%s", "main"]), "first", "the drain moved origin's main");
    // The final snapshot holds the state the stubborn agent left.
    let restored = root.join("restored");
    let out = init_from_store(&restored, &store, "agent:stubborn", &root.join("jobs"));
    assert_eq!(out.json()["restore"], "restored");
    assert_eq!(fs::read_to_string(restored.join("app/untracked.txt")).unwrap(), "untracked\n");
}

/// The writer behind the crash rounds: every 50 ms it appends line n to `log.txt`, then rewrites
/// `counter` with n, and records the wall time of each write in `times`. It continues from the
/// lines `log.txt` holds (a snapshot reads files one after another, so `counter` may lag or lead
/// `log.txt` by a write; each file on its own is consistent).
fn writer(dir: &Path) -> PathBuf {
    let path = dir.join("writer.sh");
    fs::write(
        &path,
        "#!/bin/sh\nn=$(cat \"$BERTH_DIR/log.txt\" 2>/dev/null | wc -l)\nwhile true; do\n  n=$((n+1))\n  \
         echo \"line $n\" >> \"$BERTH_DIR/log.txt\"\n  echo $n > \"$BERTH_DIR/counter.tmp\" && mv \"$BERTH_DIR/counter.tmp\" \"$BERTH_DIR/counter\"\n  \
         echo \"$n $(date +%s.%N)\" >> \"$BERTH_DIR/../times\"\n  sleep 0.05\ndone\n",
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// What a loaded 2-core machine may add to a snapshot's latency in the crash rounds.
const LOADED_MARGIN_SECS: f64 = 2.5;

#[test]
fn sigkill_at_random_moments_never_restores_a_torn_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let jobs = root.join("jobs");
    let store = format!("file://{}", root.join("store").display());
    let writer = writer(&root);
    let (interval, debounce_ms) = (3u64, 300u64);
    let mut seed = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    if let Ok(s) = std::env::var("SIGKILL_SEED") {
        seed = s.parse().unwrap();
    }
    eprintln!("SIGKILL_SEED={seed}");
    let mut rng = util::Rng::new(seed);
    let mut worst_lost = 0f64;
    let mut dir = root.join("round-0");
    fs::create_dir_all(&dir).unwrap();
    for round in 0..20 {
        let _ = fs::remove_file(root.join("times"));
        let args = [
            "--dir",
            dir.to_str().unwrap(),
            "--store",
            &store,
            "--workspace",
            "agent:crash",
            "--base",
            jobs.to_str().unwrap(),
            "--interval",
            &interval.to_string(),
            "--first-after",
            "1",
            "--debounce",
            &debounce_ms.to_string(),
        ];
        let mut agent = Agent::start(&args, &[writer.to_str().unwrap()], &root.join(format!("agent-{round}.log")));
        agent.wait_for(&["init_phase", "ready"], 60);
        // Every round has work to lose: the kill comes after the round's first durable
        // snapshot, at a random moment within an interval of it.
        agent.wait_for(&["snapshot_durable"], 60);
        std::thread::sleep(Duration::from_millis(rng.below(interval * 1000)));
        agent.child.kill().unwrap();
        let killed = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        agent.child.wait().unwrap();
        // The writer dies with the sandbox (its process group), as it would with the pod.
        let _ = Command::new("pkill").args(["-KILL", "-f", writer.to_str().unwrap()]).status();
        // The next sandbox starts in a fresh directory (the volume is gone) and restores.
        let next = root.join(format!("round-{}", round + 1));
        let out = init_from_store(&next, &store, "agent:crash", &root.join("jobs"));
        let report = out.json();
        assert!(report["ready"].as_bool().unwrap(), "round {round}: {out:?}");
        assert_eq!(report["restore"], "restored", "round {round}: a snapshot was durable before the kill");
        // Never torn: the restored tree is consistent within each file (the log has every line up
        // to its last), and the counter is one the writer wrote.
        let log = fs::read_to_string(next.join("log.txt")).unwrap();
        for (i, line) in log.lines().enumerate() {
            assert_eq!(line, format!("line {}", i + 1), "round {round}: log.txt is torn");
        }
        let restored: u64 = fs::read_to_string(next.join("counter")).unwrap().trim().parse().unwrap();
        let times = fs::read_to_string(root.join("times")).unwrap_or_default();
        let written: BTreeMap<u64, f64> = times
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(n, t)| Some((n.parse().ok()?, t.parse().ok()?)))
            .collect();
        // The restored counter was written in this round (a snapshot of this round existed, so
        // there was work to lose and the lost-work check below always runs).
        let t_restored = *written.get(&restored).unwrap_or_else(|| {
            panic!("round {round}: restored counter {restored} was not written in this round; log:\n{}", agent.log())
        });
        // Lost work: how long before the kill the restored state was current. The bound has a
        // margin for a loaded machine (bench/agent.py measures the real RPO).
        let next_write = written.range(restored + 1..).next().map_or(killed, |(_, t)| *t);
        let lost = killed - next_write;
        worst_lost = worst_lost.max(lost);
        eprintln!("round {round}: restored counter {restored}, lost {lost:.2} s");
        let bound = interval as f64 + debounce_ms as f64 / 1000.0 + LOADED_MARGIN_SECS;
        assert!(
            lost <= bound,
            "round {round}: lost {lost:.2} s of work, over {bound} s (restored {restored} written at {t_restored}); log:\n{}",
            agent.log()
        );
        dir = next;
    }
    eprintln!("worst lost work over 20 rounds: {worst_lost:.2} s");
    // Every snapshot in the store is complete.
    Run::of({
        let mut c = berth();
        c.args(["snapshot", "verify", "--store", &store, "--workspace", "agent:crash", "--read-data"]);
        c
    })
    .ok();
}

#[test]
fn a_reused_owner_name_restores_nothing_of_the_old_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let jobs = root.join("jobs");
    let store = format!("file://{}", root.join("store").display());
    let (server, admin) = control_plane(&root, &store);
    rt().block_on(admin.ensure("thread:reused", &EnsureWorkspace::default())).unwrap();
    let spec = root.join("spec1.json");
    let s1 = attach(&server, &admin, "thread:reused", "pod-1", &spec);
    let ws1 = root.join("ws1");
    let mut agent = Agent::start(
        &[
            "--spec",
            spec.to_str().unwrap(),
            "--dir",
            ws1.to_str().unwrap(),
            "--base",
            jobs.to_str().unwrap(),
            "--first-after",
            "1",
        ],
        &["sh", "-c", "echo secret-of-the-old-owner > notes.txt; trap 'exit 0' TERM; while true; do sleep 0.1; done"],
        &root.join("agent1.log"),
    );
    agent.wait_for(&["snapshot_durable", "\"published\":true"], 30);
    terminate(&mut agent.child, 30, "berth agent run");
    let records = |store: &str| {
        let ls = Run::of({
            let mut c = berth();
            c.args(["snapshot", "ls", "--store", store, "--workspace", "thread:reused", "--generation", "1", "--json"]);
            c
        })
        .ok();
        ls.json().as_array().map_or(0, Vec::len)
    };
    assert!(records(&store) > 0, "generation 1 has snapshots before the deletion");
    rt().block_on(async {
        admin.delete("thread:reused").await.unwrap();
        eventually_async(30, "the deletion to complete", || async {
            let w = admin.workspace("thread:reused").await.unwrap();
            (w.state == berth_api::WorkspaceState::Deleted).then_some(())
        })
        .await;
        admin.ensure("thread:reused", &EnsureWorkspace::default()).await.unwrap();
    });
    assert_eq!(records(&store), 0, "the deletion forgot the old generation's snapshots in the store");
    let spec2 = root.join("spec2.json");
    let s2 = attach(&server, &admin, "thread:reused", "pod-2", &spec2);
    assert_eq!(s2.generation, 2);
    let ws2 = root.join("ws2");
    let jobs = root.join("jobs");
    let (spec2_s, jobs_s) = (spec2.to_str().unwrap(), jobs.to_str().unwrap());
    let out = agent_cmd(&["init", "--json", "--spec", spec2_s, "--dir", ws2.to_str().unwrap(), "--base", jobs_s]).ok();
    assert_eq!(out.json()["restore"], "never_backed_up", "{out:?}");
    assert!(!ws2.join("notes.txt").exists(), "the old owner's file came back");
    // And the old generation's directory is refused for the new one.
    let out = agent_cmd(&["init", "--spec", spec2_s, "--dir", ws1.to_str().unwrap(), "--base", jobs_s]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("error: ") && out.stderr.contains("generation 1"), "{out:?}");
    assert!(ws1.join("notes.txt").exists(), "the refused directory is left as it was");
    // Neither generation's sandbox token nor the admin token is in the logs, the workspaces or
    // the store.
    Scan::new()
        .secret("the sandbox token of generation 1", &s1.token)
        .secret("the sandbox token of generation 2", &s2.token)
        .secret("the admin token", ADMIN)
        .debug_log(&root.join("serve.log"))
        .file(&root.join("agent1.log"))
        .text("init's output", format!("{}{}", out.stdout, out.stderr))
        .tree(&ws1)
        .tree(&ws2)
        .tree(&root.join("store"))
        .assert_clean();
}

#[test]
fn sigterm_during_init_never_leaves_a_ready_marker_and_no_store_is_ephemeral() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    // A "git host" that accepts connections and never answers: the clone hangs.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/stuck.git", hole.local_addr().unwrap());
    let ws = root.join("ws");
    let mut c = berth();
    c.args(["agent", "init", "--dir", ws.to_str().unwrap(), "--workspace", "agent:term", "--repos", &url])
        .args(["--base", root.join("jobs").to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // The sync point: the clone has connected to the host that never answers, so init is in
    // its clone phase when SIGTERM comes.
    hole.set_nonblocking(true).unwrap();
    let _stuck = eventually(60, "the clone to connect to the stuck git host", || hole.accept().ok());
    util::serve::signal(&child, rustix::process::Signal::TERM);
    exit_code(&mut child, 60, "init after SIGTERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not marked ready"));
    assert!(!ws.join(".berth/run/ready").exists());
    drop(hole);

    // Without a store the agent runs, says the workspace is ephemeral, and exits with its child.
    let mut agent = Agent::start(
        &[
            "--dir",
            root.join("eph").to_str().unwrap(),
            "--workspace",
            "agent:eph",
            "--base",
            root.join("jobs").to_str().unwrap(),
        ],
        &["sh", "-c", "sleep 1; exit 0"],
        &root.join("eph.log"),
    );
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{}", agent.log());
    assert!(agent.log().contains("workspace_ephemeral"), "{}", agent.log());
}

fn age(path: &Path, secs: u64) {
    let when = SystemTime::now() - Duration::from_secs(secs);
    let f = fs::File::options().read(true).open(path).unwrap();
    f.set_modified(when).unwrap();
}

#[test]
fn the_sweep_judges_each_leftover_on_its_own_and_spares_live_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let base = root.join("jobs");
    fs::create_dir_all(&base).unwrap();
    // An entry as berth makes them: a lock file holding the job's marker, or a directory with
    // the marker file; `marked: false` leaves the marker out.
    let mk_entry = |name: &str, old: bool, marked: bool| {
        let p = base.join(name);
        let marker = match berth_core::sweep::parse(name) {
            Some((_, job)) if marked => berth_core::sweep::marker(job),
            _ => String::new(),
        };
        if name.ends_with(".lock") {
            fs::write(&p, marker).unwrap();
        } else {
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("f"), b"x").unwrap();
            if marked {
                fs::write(p.join(".berth-job"), marker).unwrap();
            }
        }
        if old {
            age(&p, 7200);
        }
        p
    };
    let mk = |name: &str, old: bool| mk_entry(name, old, true);
    // A dead job's full triple and lock, all old: all go.
    let dead =
        ["j1-000000aa.lock", "creds-j1-000000aa", "work-j1-000000aa", "artifacts-j1-000000aa"].map(|n| mk(n, true));
    // A partial orphan: an old credential dir beside a fresh clone: the old one goes alone.
    let old_creds = mk("creds-j2-000000bb", true);
    let fresh_work = mk("work-j2-000000bb", false);
    // A live job (its lock held by another process), with old files: untouched.
    let live_lock = mk("j3-000000cc.lock", true);
    let live = [mk("creds-j3-000000cc", true), mk("work-j3-000000cc", true)];
    let locked = root.join("locked");
    let holder = Command::new("flock")
        .arg(&live_lock)
        .args(["sh", "-c", &format!("touch '{}'; sleep 30", locked.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flock (util-linux)");
    wait_file(&locked, 30);
    // Things that are not berth's, all old: never touched. Names like berth's that a loose
    // pattern once took, and berth's own name format without berth's marker.
    let foreign = ["notes", "jenkins.lock", "java.lock", "work-jdk", "creds-jx", "artifacts-j-old"]
        .map(|n| mk_entry(n, true, false));
    let unmarked = [mk_entry("j4-000000dd.lock", true, false), mk_entry("work-j4-000000dd", true, false)];

    let sweep = |base: &Path| agent_cmd(&["sweep", "--json", "--ttl", "1h", "--base", base.to_str().unwrap()]);
    let out = sweep(&base).ok();
    let report = out.json();
    let mut swept: Vec<String> =
        report["swept"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    swept.sort();
    let expected =
        ["artifacts-j1-000000aa", "creds-j1-000000aa", "creds-j2-000000bb", "j1-000000aa.lock", "work-j1-000000aa"];
    assert_eq!(swept, expected);
    assert_eq!(report["skipped_live"], 3);
    assert!(dead.iter().chain([&old_creds]).all(|p| !p.exists()));
    assert!(fresh_work.exists() && live.iter().all(|p| p.exists()) && live_lock.exists());
    for p in foreign.iter().chain(&unmarked) {
        assert!(p.exists(), "the sweep removed {}, which berth did not make", p.display());
    }
    assert!(out.stderr.contains("\"sweep\"") && out.stderr.contains("skipped_live"), "one log line per sweep: {out:?}");
    let mut holder = holder;
    let _ = holder.kill();
    let _ = holder.wait();

    // A missing base is fine; an unreadable one is logged.
    assert_eq!(sweep(&base.join("missing")).ok().json()["swept"].as_array().unwrap().len(), 0);
    let not_a_dir = base.join("file-not-dir");
    fs::write(&not_a_dir, b"").unwrap();
    let out = sweep(&not_a_dir).ok();
    assert!(out.json()["unreadable"].is_string(), "{out:?}");
    assert!(out.stderr.contains("sweep_base_unreadable"), "{out:?}");
}

#[test]
fn people_and_log_collectors_each_read_every_phase_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let (store, jobs) = (format!("file://{}", root.join("store").display()), root.join("jobs"));
    let init = |dir: &str| {
        let mut c = berth();
        c.env_remove("BERTH_LOG").env_remove("BERTH_LOG_FORMAT");
        c.args(["agent", "init", "--store", &store, "--workspace", "agent:out"]).args([
            "--dir",
            root.join(dir).to_str().unwrap(),
            "--base",
            jobs.to_str().unwrap(),
        ]);
        c
    };
    // A log collector (stderr is not a terminal): init's events in the log, no phase lines; the
    // summary once on stdout.
    let out = Run::of(init("piped")).ok();
    assert_eq!(out.stderr.matches("init_phase").count(), 6, "{out:?}");
    assert!(!out.stderr.lines().any(|l| l.starts_with("init: ")) && !out.stderr.contains('\x1b'), "{out:?}");
    assert_eq!(out.stdout.matches("workspace agent:out (generation 1): ready").count(), 1, "{out:?}");
    // A person at a terminal (script(1) gives the command one): each phase line, the summary,
    // and none of init's log events.
    let cmd = init("tty");
    let line =
        std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy()).collect::<Vec<_>>();
    let mut script = Command::new("script");
    script.args(["-qec", &line.join(" "), "/dev/null"]).env_remove("BERTH_LOG").env_remove("BERTH_LOG_FORMAT");
    let out = Run::of(script).ok();
    for phase in ["sweep", "credentials", "clone", "restore", "git", "ready"] {
        assert_eq!(out.stdout.matches(&format!("init: {phase} ")).count(), 1, "{phase}: {out:?}");
    }
    assert_eq!(out.stdout.matches("(generation 1): ready").count(), 1, "{out:?}");
    assert!(!out.stdout.contains("init_phase"), "{out:?}");
}

/// The snapshot records of `workspace` in `store`, by seq: (seq, host, epoch).
fn records(store: &str, workspace: &str) -> Vec<(u64, String, u64)> {
    let ls = Run::of({
        let mut c = berth();
        c.args(["snapshot", "ls", "--store", store, "--workspace", workspace, "--json"]);
        c
    })
    .ok();
    let mut out: Vec<(u64, String, u64)> = ls
        .json()
        .as_array()
        .unwrap_or_else(|| panic!("snapshot ls --json is a list: {ls:?}"))
        .iter()
        .map(|r| {
            let r = &r["record"];
            (r["seq"].as_u64().unwrap(), r["host"].as_str().unwrap().to_string(), r["epoch"].as_u64().unwrap())
        })
        .collect();
    out.sort();
    out
}

/// The records `host` wrote.
fn written_by(records: &[(u64, String, u64)], host: &str) -> Vec<u64> {
    records.iter().filter(|(_, h, _)| h == host).map(|(seq, _, _)| *seq).collect()
}

/// The epochs `host`'s records carry.
fn epochs_of(records: &[(u64, String, u64)], host: &str) -> BTreeSet<u64> {
    records.iter().filter(|(_, h, _)| h == host).map(|(_, _, epoch)| *epoch).collect()
}

/// Attaches `instance` to `owner` as soon as the lease is free (the holder's lease must expire
/// first), and writes the agent's spec file pointing at `server_url`.
fn attach_when_free(admin: &Client, server_url: &str, owner: &str, instance: &str, path: &Path) -> Session {
    let body = Attach { instance_id: instance.into(), node: None, pool: None };
    let session = eventually(60, "the lease to become free", || match rt().block_on(admin.attach(owner, &body)) {
        Ok(s) => Some(s),
        Err(e) if e.status() == Some(409) => None,
        Err(e) => panic!("attach {instance}: {e}"),
    });
    let spec = serde_json::json!({"session": session, "server": server_url});
    fs::write(path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    session
}

/// Waits for `child` to exit within `secs`; returns its exit code.
fn exit_code(child: &mut Child, secs: u64, what: &str) -> Option<i32> {
    eventually(secs, &format!("{what} to exit"), || child.try_wait().unwrap()).code()
}

/// Whether process `pid` (from a pid file) is gone.
fn process_gone(pid_file: &Path) -> bool {
    let pid: i32 = fs::read_to_string(pid_file).unwrap().trim().parse().unwrap();
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::test_kill_process(pid).is_err()
}

/// A lease of this many seconds in the fencing tests: short, with room for a loaded machine.
const FENCING_TTL: &str = "6s";

/// The snapshot-happy settings of a sandbox in the fencing tests.
fn fencing_args<'a>(spec: &'a Path, dir: &'a Path, instance: &'a str, jobs: &'a Path) -> Vec<&'a str> {
    vec![
        "--spec",
        spec.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
        "--instance",
        instance,
        "--base",
        jobs.to_str().unwrap(),
        "--first-after",
        "60",
        "--interval",
        "60",
        "--debounce",
        "200",
        "--grace",
        "5",
    ]
}

#[test]
fn a_fenced_agent_stops_its_agent_and_adds_no_record() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let (jobs, store) = (root.join("jobs"), format!("file://{}", root.join("store").display()));
    let data = root.join("data");
    let args = ["--data-dir", data.to_str().unwrap(), "--store", &store, "--lease-ttl", FENCING_TTL];
    let env = [("BERTH_ADMIN_TOKEN", ADMIN), ("BERTH_LOG", "debug")];
    let server = Server::start(&root, &root.join("serve.log"), &args, &env);
    let admin = server.client(ADMIN);
    rt().block_on(admin.ensure("agent:fenced", &EnsureWorkspace::default())).unwrap();
    let spec = root.join("spec-a.json");
    let session_a = attach(&server, &admin, "agent:fenced", "pod-a", &spec);
    // The agent writes once, then (once the test says go) keeps changing the workspace.
    let child = "echo $$ > ../child.pid; env > ../child-env; echo first > work.txt; \
                 while [ ! -f ../go ]; do sleep 0.05; done; \
                 n=0; while true; do n=$((n+1)); echo \"a $n\" > work.txt; sleep 0.1; done";
    let ws = root.join("ws-a");
    let mut a = Agent::start_with(
        &fencing_args(&spec, &ws, "pod-a", &jobs),
        &["sh", "-c", child],
        &root.join("agent-a.log"),
        &[("BERTH_LOG", "debug")],
    );
    a.wait_for(&["snapshot_durable", "\"published\":true"], 60);
    // Frozen between two snapshots (as a paused VM would be): no heartbeats, so the lease
    // expires and another sandbox takes the workspace over. The agent process keeps working.
    util::serve::signal(&a.child, rustix::process::Signal::STOP);
    fs::write(root.join("go"), b"").unwrap();
    let spec_b = root.join("spec-b.json");
    let b = attach_when_free(&admin, &server.url, "agent:fenced", "pod-b", &spec_b);
    let before = records(&store, "agent:fenced");
    assert!(!written_by(&before, "pod-a").is_empty(), "the first agent saved its work before");
    // Thawed: its changes want saving, its epoch is stale.
    util::serve::signal(&a.child, rustix::process::Signal::CONT);
    let code = exit_code(&mut a.child, 30, "the fenced agent");
    let log = a.log();
    assert_eq!(code, Some(3), "a fenced agent exits 3:\n{log}");
    assert!(log.contains("\"event\":\"fenced\""), "it says it was fenced:\n{log}");
    assert!(log.contains("\"event\":\"agent_stopped\""), "it stopped its agent:\n{log}");
    assert!(process_gone(&root.join("child.pid")), "the agent process was stopped");
    assert_eq!(records(&store, "agent:fenced"), before, "the fenced agent added a record:\n{log}");
    let w = rt().block_on(admin.workspace("agent:fenced")).unwrap();
    assert_eq!(w.lease.clone().map(|l| l.epoch), Some(b.epoch), "the new holder keeps the lease");
    // Neither sandbox token nor the admin token is in the logs (at debug level), the agent
    // process's environment, the workspace, the store, or what the API shows.
    let events = rt().block_on(admin.events(&EventQuery { owner: Some("agent:fenced".into()), ..Default::default() }));
    Scan::new()
        .secret("the sandbox token of pod-a", &session_a.token)
        .secret("the sandbox token of pod-b", &b.token)
        .secret("the admin token", ADMIN)
        .debug_log(&root.join("agent-a.log"))
        .debug_log(&root.join("serve.log"))
        .file(&root.join("child-env"))
        .tree(&ws)
        .tree(&root.join("store"))
        .json("the events", &events.unwrap().items)
        .json("the workspace", &w)
        .assert_clean();
}

/// Two sandboxes and a partition: A runs behind a proxy to the control plane; the test cuts
/// it and B takes the workspace over once A's lease expired.
struct Partition {
    root: PathBuf,
    store: String,
    server: Server,
    admin: Client,
    proxy: util::proxy::Proxy,
    a: Agent,
    b: Option<Agent>,
    /// The sandbox tokens handed out, by instance.
    tokens: Vec<(&'static str, String)>,
}

const PARTITIONED: &str = "agent:partition";

impl Partition {
    /// A runs and saves its work; the link is cut; A pauses at its deadline; B takes over,
    /// restores, adds its own work and saves it.
    fn start() -> Partition {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.keep();
        let root = fs::canonicalize(root).unwrap();
        let store = format!("file://{}", root.join("store").display());
        let data = root.join("data");
        let args = ["--data-dir", data.to_str().unwrap(), "--store", &store, "--lease-ttl", FENCING_TTL];
        let env = [("BERTH_ADMIN_TOKEN", ADMIN), ("BERTH_LOG", "debug")];
        let server = Server::start(&root, &root.join("serve.log"), &args, &env);
        let admin = server.client(ADMIN);
        rt().block_on(admin.ensure(PARTITIONED, &EnsureWorkspace::default())).unwrap();
        let proxy = util::proxy::Proxy::start(&server.url);
        let spec_a = root.join("spec-a.json");
        let session_a = attach_when_free(&admin, &proxy.url, PARTITIONED, "pod-a", &spec_a);
        // A keeps changing its workspace, so it always has something to save.
        let writer = "echo $$ > ../a-child.pid; n=0; \
                      while true; do n=$((n+1)); echo \"a $n\" > work.txt; sleep 0.1; done";
        let (jobs, ws_a) = (root.join("jobs"), root.join("ws-a"));
        let a = Agent::start_with(
            &fencing_args(&spec_a, &ws_a, "pod-a", &jobs),
            &["sh", "-c", writer],
            &root.join("agent-a.log"),
            &[("BERTH_LOG", "debug")],
        );
        a.wait_for(&["snapshot_durable", "\"published\":true"], 60);
        assert!(proxy.connections() > 0, "A talks to the control plane through the proxy");
        proxy.cut();
        a.wait_for(&["\"event\":\"lease_lapsed\""], 60);
        let spec_b = root.join("spec-b.json");
        let session_b = attach_when_free(&admin, &server.url, PARTITIONED, "pod-b", &spec_b);
        let tokens = vec![("pod-a", session_a.token), ("pod-b", session_b.token)];
        let mut p = Partition { root, store, server, admin, proxy, a, b: None, tokens };
        let at_takeover = p.records();
        let ws_b = p.root.join("ws-b");
        let b = Agent::start_with(
            &fencing_args(&spec_b, &ws_b, "pod-b", &jobs),
            &["sh", "-c", "echo 'work of the lease holder' > b.txt; while true; do sleep 0.1; done"],
            &p.root.join("agent-b.log"),
            &[("BERTH_LOG", "debug")],
        );
        // Until B saved its work, A (which would save every 200 ms if it ignored its lease)
        // adds nothing.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !b.log().lines().any(|l| l.contains("snapshot_durable") && l.contains("\"published\":true")) {
            let now = p.records();
            assert_eq!(written_by(&now, "pod-a"), written_by(&at_takeover, "pod-a"), "A wrote after its deadline");
            assert!(Instant::now() < deadline, "B never saved its work:\n{}", b.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        p.b = Some(b);
        p
    }

    fn records(&self) -> Vec<(u64, String, u64)> {
        records(&self.store, PARTITIONED)
    }

    /// The lease holder's work won: every record of A is older than every record of B, and
    /// a fresh restore (from the store alone, and through the control plane's pointer) has
    /// B's work.
    fn assert_the_holder_won(&mut self) {
        let b = self.b.as_mut().unwrap();
        terminate(&mut b.child, 30, "B's drain");
        let all = self.records();
        let (of_a, of_b) = (written_by(&all, "pod-a"), written_by(&all, "pod-b"));
        assert!(!of_b.is_empty(), "B saved its work: {all:?}");
        assert!(of_a.iter().max() < of_b.iter().min(), "a record of A came after B's: {all:?}");
        assert_eq!(all.last().map(|r| r.1.as_str()), Some("pod-b"), "{all:?}");
        // Each record carries its writer's session epoch; B's took the workspace over.
        let (epoch_a, epoch_b) = (epochs_of(&all, "pod-a"), epochs_of(&all, "pod-b"));
        assert_eq!((epoch_a.len(), epoch_b.len()), (1, 1), "{all:?}");
        assert!(epoch_a.first() < epoch_b.first() && epoch_a.first() > Some(&0), "{all:?}");
        let jobs = self.root.join("jobs");
        let fresh = self.root.join("restored");
        let out = init_from_store(&fresh, &self.store, PARTITIONED, &jobs);
        assert_eq!(out.json()["restore"], "restored", "{out:?}");
        assert_eq!(fs::read_to_string(fresh.join("b.txt")).unwrap(), "work of the lease holder\n");
        let ws_b = self.root.join("ws-b");
        assert_eq!(fs::read(fresh.join("work.txt")).unwrap(), fs::read(ws_b.join("work.txt")).unwrap());
        let spec_c = self.root.join("spec-c.json");
        let session_c = attach_when_free(&self.admin, &self.server.url, PARTITIONED, "pod-c", &spec_c);
        self.tokens.push(("pod-c", session_c.token));
        let via_pointer = self.root.join("via-pointer");
        let (spec_c, jobs) = (spec_c.to_str().unwrap(), jobs.to_str().unwrap());
        let out =
            agent_cmd(&["init", "--json", "--spec", spec_c, "--dir", via_pointer.to_str().unwrap(), "--base", jobs])
                .ok();
        assert_eq!(out.json()["restore"], "restored", "{out:?}");
        assert_eq!(fs::read_to_string(via_pointer.join("b.txt")).unwrap(), "work of the lease holder\n");
        self.assert_no_secret_leaked();
    }

    /// No sandbox token and not the admin token in the logs (at debug level), the workspaces,
    /// the store, or the events.
    fn assert_no_secret_leaked(&self) {
        let q = EventQuery { owner: Some(PARTITIONED.into()), ..Default::default() };
        let events = rt().block_on(self.admin.events(&q)).unwrap().items;
        let mut scan = Scan::new();
        for (instance, token) in &self.tokens {
            scan.secret(&format!("the sandbox token of {instance}"), token);
        }
        scan.secret("the admin token", ADMIN);
        for log in ["agent-a.log", "agent-b.log", "serve.log"] {
            scan.debug_log(&self.root.join(log));
        }
        for dir in ["ws-a", "ws-b", "restored", "via-pointer", "store"] {
            scan.tree(&self.root.join(dir));
        }
        scan.json("the events", &events).assert_clean();
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.root);
        } else {
            eprintln!("partition test files kept in {}", self.root.display());
        }
    }
}

#[test]
fn partition_heals_and_the_old_holder_finds_itself_fenced() {
    let mut p = Partition::start();
    let before = written_by(&p.records(), "pod-a");
    p.proxy.heal();
    let code = exit_code(&mut p.a.child, 60, "A after the partition healed");
    let log = p.a.log();
    assert_eq!(code, Some(3), "A exits 3 once it learns it was fenced:\n{log}");
    assert!(log.contains("\"event\":\"fenced\""), "{log}");
    assert!(!log.contains("\"event\":\"lease_resumed\""), "A never resumed writing:\n{log}");
    assert!(process_gone(&p.root.join("a-child.pid")), "A's agent process was stopped");
    assert_eq!(written_by(&p.records(), "pod-a"), before, "A wrote after it healed");
    p.assert_the_holder_won();
}

#[test]
fn partition_never_heals_and_the_old_holder_stops_writing_at_its_deadline() {
    let mut p = Partition::start();
    let before = written_by(&p.records(), "pod-a");
    // B drains while A is still cut off and still wants to save its changes.
    p.assert_the_holder_won();
    assert_eq!(written_by(&p.records(), "pod-a"), before, "A wrote while partitioned");
    // A's own drain, still partitioned: no push, no snapshot, within its budget.
    terminate(&mut p.a.child, 20, "A's drain while partitioned");
    assert_eq!(written_by(&p.records(), "pod-a"), before, "A's drain wrote while partitioned");
    let log = p.a.log();
    assert!(!log.contains("\"event\":\"lease_resumed\""), "A never resumed writing:\n{log}");
}

#[test]
fn the_agent_process_sees_no_store_or_berth_credentials_and_shared_dirs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let ws = root.join("ws");
    let mut c = berth();
    c.args(["agent", "run", "--dir", ws.to_str().unwrap(), "--workspace", "agent:env"])
        .args(["--base", root.join("jobs").to_str().unwrap(), "--", "sh", "-c", "env > ../child-env"])
        .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
        .env("AWS_SECRET_ACCESS_KEY", "store-secret-key")
        .env("AWS_SESSION_TOKEN", "store-session-token")
        .env("AZURE_STORAGE_ACCOUNT_KEY", "azure-key")
        .env("GOOGLE_APPLICATION_CREDENTIALS", "/secrets/gcp.json")
        .env("BERTH_GIT_TOKEN", "git-token-value")
        .env("AGENT_SETTING", "kept");
    let out = Run::of(c).ok();
    let env = fs::read_to_string(root.join("child-env")).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert!(env.contains("AGENT_SETTING=kept"), "the child's environment was captured: {env}");
    for secret in ["AWS_", "AZURE_", "GOOGLE_", "BERTH_GIT_TOKEN", "store-secret-key", "git-token-value"] {
        assert!(!env.contains(secret), "the agent process sees {secret}: {env}");
    }

    // A base directory every user can write is refused, before anything is written in it.
    let shared = root.join("shared");
    fs::create_dir_all(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let out = agent_cmd(&[
        "init",
        "--dir",
        ws.to_str().unwrap(),
        "--workspace",
        "agent:env",
        "--base",
        shared.to_str().unwrap(),
    ]);
    let out = out.fails(1).stderr_has(&["writable by every user", "--base"]);
    assert_eq!(fs::read_dir(&shared).unwrap().count(), 0, "{out:?}");
}

/// The `fields` of every JSON log line of `event` in `log`.
fn log_events(log: &str, event: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["fields"].clone())
        .filter(|f| f["event"] == event)
        .collect()
}

#[test]
fn without_a_control_plane_the_agent_forgets_and_prunes_on_its_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let (dir, jobs) = (root.join("ws"), root.join("jobs"));
    fs::create_dir_all(&dir).unwrap();
    let store = format!("file://{}", root.join("store").display());
    let writer = writer(&root);
    #[rustfmt::skip]
    let args = [
        "--dir", dir.to_str().unwrap(), "--store", &store, "--workspace", "agent:keep",
        "--base", jobs.to_str().unwrap(), "--interval", "1", "--first-after", "0", "--debounce", "100",
        "--retention", "keep-last=2,hourly=0,daily=0,weekly=0", "--retention-interval", "2s",
        "--prune-interval", "3s", "--prune-grace", "0s",
    ];
    let mut agent = Agent::start(&args, &[writer.to_str().unwrap()], &root.join("agent.log"));
    // Sync points: a retention run that forgot something, then a prune that deleted packs
    // (the first prune after it marks them, the next deletes them: the grace is 0).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let log = agent.log();
        let forgot = log_events(&log, "retention_applied").iter().any(|f| f["forgotten"].as_u64() > Some(0));
        let deleted = log_events(&log, "prune_done").iter().any(|f| f["packs_deleted"].as_u64() > Some(0));
        if forgot && deleted {
            break;
        }
        assert!(Instant::now() < deadline, "no retention and prune within 90 s:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    util::serve::terminate(&mut agent.child, 30, "the drained agent");
    let _ = Command::new("pkill").args(["-KILL", "-f", writer.to_str().unwrap()]).status();
    // Everything kept is whole (prune ran beside snapshot runs), and the latest restores.
    Run::of({
        let mut c = berth();
        c.args(["snapshot", "verify", "--store", &store, "--workspace", "agent:keep", "--read-data"]);
        c
    })
    .ok();
    let next = root.join("next");
    let report = init_from_store(&next, &store, "agent:keep", &jobs).json();
    assert_eq!(report["restore"], "restored");
    let log = fs::read_to_string(next.join("log.txt")).unwrap();
    assert!(log.lines().count() > 10, "the restored log holds the writer's lines");
}

/// A git token from the credential endpoint that expires (the server refuses each token
/// `TTL` seconds after it issued it) is renewed before it does, for as long as the run lasts:
/// the agent's own push after the first token expired gets through, and so does the drain's
/// WIP push. No token is in the logs, the argv or environment of any git, or the workspace.
#[test]
fn an_expiring_token_is_renewed_before_it_expires_for_the_agent_and_the_drain() {
    const TTL: u64 = 10;
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let http_root = root.join("http");
    fs::create_dir_all(&http_root).unwrap();
    let lib = bare_repo(&http_root, "lib");
    let gh = GitHttp::start_expiring(&http_root, &root.join("githttp"), GIT_TOKEN, TTL);
    let (ws, jobs) = (root.join("ws"), root.join("jobs"));
    let repos = format!(r#"[{{"url": "{}/lib.git", "branch": "main", "path": "lib"}}]"#, gh.url);
    // The agent commits, says it is ready, pushes its own branch when the test says so (with
    // the credential helper berth gave it), then leaves work in progress and waits.
    let agent = concat!(
        "cd \"$BERTH_DIR/lib\" || exit 1\n",
        "git -c user.name=agent -c user.email=agent@example.test commit -q --allow-empty -m 'agent commit'\n",
        "env > ../../child-env; touch ../../agent-ready\n",
        "while [ ! -f ../../push-now ]; do sleep 0.1; done\n",
        "git push -q origin HEAD:refs/heads/agent-own > ../../push-out 2>&1; echo $? > ../../pushed\n",
        "echo wip > wip.txt\n",
        "trap 'exit 0' TERM; while true; do sleep 0.1; done\n",
    );
    let recorder = GitRecorder::install(&root);
    let args = [
        "--dir",
        ws.to_str().unwrap(),
        "--workspace",
        "agent:expiring",
        "--base",
        jobs.to_str().unwrap(),
        "--repos",
        &repos,
        "--grace",
        "20",
        "--credential-endpoint",
        &format!("{}/token", gh.url),
        "--identity-token-file",
        gh.identity_file.to_str().unwrap(),
    ];
    let env = [("PATH", recorder.path()), ("BERTH_LOG", "debug")];
    let mut agent = Agent::start_with(&args, &["sh", "-c", agent], &root.join("agent.log"), &env);
    wait_file(&root.join("agent-ready"), 60);
    // Let the token the run started with expire (by the server's clock: a real wait for time to pass).
    let first = *gh.exchanges().first().expect("init exchanged a token");
    let now = || SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
    while now() < first + TTL as f64 + 0.5 {
        std::thread::sleep(Duration::from_millis(100));
    }
    fs::write(root.join("push-now"), b"").unwrap();
    wait_file(&root.join("pushed"), 60);
    let out = fs::read_to_string(root.join("push-out")).unwrap_or_default();
    let log = agent.log();
    assert_eq!(
        fs::read_to_string(root.join("pushed")).unwrap().trim(),
        "0",
        "the agent's push was refused: {out}\n{log}"
    );
    assert_eq!(git(&lib, &["log", "-1", "--format=%s", "agent-own"]), "agent commit");
    terminate(&mut agent.child, 25, "berth agent run");
    let log = agent.log();
    let subject = git(&lib, &["log", "-1", "--format=%s", "berth/wip/main"]);
    assert!(subject.starts_with("berth: work in progress of agent:expiring"), "{subject}\n{log}");
    // Every renewal came before the token it replaced expired.
    let renewals = log_events(&log, "credentials_refreshed");
    assert!(!renewals.is_empty() && gh.exchanges().len() > renewals.len(), "no renewal:\n{log}");
    for r in &renewals {
        assert!(r["left_ms"].as_u64() > Some(0), "a token was renewed only once it had expired: {r}");
    }
    recorder.assert_ran(&["clone", "push"]);
    Scan::new()
        .secret("the git token", GIT_TOKEN)
        .debug_log(&root.join("agent.log"))
        .git_invocations(&recorder)
        .file(&root.join("child-env"))
        .file(&root.join("push-out"))
        .tree(&ws)
        .assert_clean();
}
