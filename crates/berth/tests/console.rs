//! The operator console in a real browser (Debian's headless Chromium through chromedriver)
//! against the real `berth serve` with a real agent publishing snapshots: log in and see the
//! workspaces; the seconds since the last snapshot update without a reload while the agent
//! works, and the at-risk flag appears once it is SIGKILLed; the typed delete removes the
//! volume; hostile text renders as text; a POST without the CSRF token and a viewer's forged
//! POST get 403, and a viewer is offered no button; GC runs after its dry-run preview, and the
//! store's scheduled retention and prune runs show up; the keyboard reaches the skip link and
//! the search; dark mode follows the system. Screenshots of every page are saved under
//! `target/console-screenshots/` (the README's come from there).

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use berth_api::{Attach, EnsureWorkspace, StartDrain};
use serde_json::{json, Value};
use util::serve::{rt, Server, ADMIN};
use util::webdriver::Browser;

const VIEWER: &str = "console-viewer-token-0123456789";
const HOSTILE: &str = "<img src=x onerror=alert(1)>";

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots")
}

/// `berth agent run` for `owner`, changing a file every 300 ms, so snapshots keep coming.
fn start_agent(root: &Path, server: &Server, owner: &str) -> (Child, PathBuf) {
    let admin = server.client(ADMIN);
    let body = Attach { instance_id: "pod-live".into(), node: Some("node-a".into()), pool: None };
    let session = rt().block_on(admin.attach(owner, &body)).expect("attach");
    let spec = root.join("spec.json");
    fs::write(&spec, serde_json::to_vec(&json!({"session": session, "server": server.url})).unwrap()).unwrap();
    fs::set_permissions(&spec, fs::Permissions::from_mode(0o600)).unwrap();
    let (dir, jobs, child_pid) = (root.join("ws"), root.join("jobs"), root.join("child.pid"));
    fs::write(root.join("sandbox-token"), &session.token).unwrap();
    let script = format!(
        "echo $$ > {}; n=0; while true; do n=$((n+1)); echo \"step $n\" > work.txt; sleep 0.3; done",
        child_pid.display()
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    for v in ["BERTH_TOKEN", "BERTH_SERVER", "BERTH_STORE", "BERTH_DIR", "BERTH_WORKSPACE", "BERTH_AGENT_SPEC"] {
        c.env_remove(v);
    }
    c.env("BERTH_LOG_FORMAT", "json")
        .env("BERTH_LOG", "debug")
        .args(["agent", "run", "--spec"])
        .arg(&spec)
        .arg("--dir")
        .arg(&dir);
    c.args(["--instance", "pod-live", "--base"]).arg(&jobs);
    c.args(["--first-after", "1", "--interval", "1", "--debounce", "100", "--grace", "5", "--", "sh", "-c", &script]);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(fs::File::create(root.join("agent.log")).unwrap());
    (c.spawn().expect("spawn berth agent run"), child_pid)
}

fn kill_pid_file(path: &Path) {
    if let Some(pid) = fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Logs in through the form.
fn login(b: &Browser, url: &str, token: &str) {
    b.goto(&format!("{url}/ui/login"));
    b.type_into(&b.get("#token"), token);
    b.click(&b.get("form button[type=submit]"));
    b.wait_until(10, "the workspace list after login", |b| b.url().ends_with("/ui/workspaces").then_some(()));
}

/// The status of a POST of `form` (URL-encoded) sent by the page itself, with its cookie.
fn page_post(b: &Browser, path: &str, form: Value) -> u64 {
    let script = "const done = arguments[arguments.length - 1];
        fetch(arguments[0], {method: 'POST', credentials: 'same-origin', body: new URLSearchParams(arguments[1])})
          .then(r => done(r.status), e => done(String(e)));";
    b.run_async(script, json!([path, form])).as_u64().expect("a status")
}

fn since_of(b: &Browser, owner: &str) -> Option<(i64, i64)> {
    let v = b.run(
        "const el = document.querySelector(`tr[data-owner='${arguments[0]}'] [data-since]`);
         return el ? [Number(el.dataset.since), parseInt(el.textContent)] : null;",
        json!([owner]),
    );
    Some((v.get(0)?.as_i64()?, v.get(1)?.as_i64()?))
}

#[test]
fn the_console_in_a_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let data = root.join("data");
    let store = format!("file://{}", root.join("store").display());
    fs::write(root.join("viewers"), format!("# read-only\n{VIEWER}\n")).unwrap();
    let viewers = root.join("viewers");
    fs::set_permissions(&viewers, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--store",
        &store,
        "--lease-ttl",
        "3s",
        "--expiry-interval",
        "1s",
        "--viewer-token-file",
        viewers.to_str().unwrap(),
        "--gc-interval",
        "1h",
        "--gc-cooldown",
        "0s",
        "--retention-interval",
        "2s",
        "--prune-interval",
        "4s",
    ];
    let env = [("BERTH_ADMIN_TOKEN", ADMIN), ("BERTH_LOG", "debug")];
    let server = Server::start(&root, &root.join("serve.log"), &args, &env);
    let admin = server.client(ADMIN);
    let labelled = EnsureWorkspace { labels: [("team".to_string(), "infra".to_string())].into(), ..Default::default() };
    for owner in ["agent:live", "agent:doomed", "agent:idle", "agent:done"] {
        rt().block_on(admin.ensure(owner, &labelled)).unwrap();
    }
    rt().block_on(admin.close("agent:done")).unwrap();
    rt().block_on(admin.start_drain(&StartDrain {
        scope: "node:node-b".into(),
        instance_id: None,
        reason: Some(format!("kernel upgrade {HOSTILE}")),
    }))
    .unwrap();
    let (mut agent, child_pid) = start_agent(&root, &server, "agent:live");
    let b = Browser::start(1280, 860);
    let url = server.url.clone();
    let shots = screenshots();
    // Every page shot is also kept as HTML, with the browser's cookies, for the secret scan.
    let mut pages = Vec::new();
    let mut shot = |b: &Browser, name: &str| {
        b.screenshot(&shots.join(name));
        pages.push((format!("the page of {name}"), b.html()));
        pages.push((format!("the cookies at {name}"), b.cookies().to_string()));
    };

    // Log in and see the workspaces, the agent's among them with its lease holder.
    login(&b, &url, ADMIN);
    let row = b.get("tr[data-owner='agent:live']");
    assert!(b.text(&row).contains("pod-live"), "the lease holder is shown: {}", b.text(&row));
    assert_eq!(b.count("tr[data-owner]"), 4);
    // The keyboard: the first Tab reaches the skip link, and "/" focuses the owner search.
    let focused = "const a = document.activeElement; return a.className || a.type || a.tagName;";
    b.press("\u{E004}");
    assert_eq!(b.run(focused, json!([])), json!("skip"));
    b.run("document.activeElement.blur();", json!([]));
    b.press("/");
    assert_eq!(b.run(focused, json!([])), json!("search"));
    b.run("document.activeElement.blur();", json!([]));

    // While the agent works, the row follows its snapshots without a reload.
    b.run("window.notReloaded = true;", json!([]));
    let (first, _) = b.wait_until(30, "a first snapshot", |b| since_of(b, "agent:live"));
    let (newer, shown) =
        b.wait_until(30, "a newer snapshot on the page", |b| since_of(b, "agent:live").filter(|(t, _)| *t > first));
    assert!(shown < 15, "a fresh snapshot reads as a few seconds old, not {shown}");
    assert_eq!(b.run("return window.notReloaded === true;", json!([])), json!(true), "the page was not reloaded");
    assert!(newer > first);
    shot(&b, "workspaces.png");

    // SIGKILL: the lease lapses, the session ends expired, and the flag appears by itself.
    agent.kill().unwrap();
    agent.wait().unwrap();
    kill_pid_file(&child_pid);
    b.wait_until(30, "the at-risk flag", |b| b.find("tr[data-owner='agent:live'] .badge.risk"));
    assert_eq!(b.run("return window.notReloaded === true;", json!([])), json!(true), "the page was not reloaded");
    shot(&b, "workspaces-at-risk.png");

    // The detail page: sessions with their outcome, the timeline, the restore command.
    b.goto(&format!("{url}/ui/workspaces/agent:live"));
    let sessions = b.text(&b.get("#sessions"));
    assert!(sessions.contains("expired"), "the killed session ended expired: {sessions}");
    assert!(b.count("figure.chart svg rect") > 0, "the timeline has bars");
    let restore = b.text(&b.get("#restore-cmd"));
    assert!(restore.starts_with("berth snapshot restore --store") && restore.contains("agent:live"), "{restore}");
    shot(&b, "workspace.png");

    // Hostile text is text: no element is made of it, and no alert opened.
    b.goto(&format!("{url}/ui/drains"));
    assert!(b.text(&b.get("#pending")).contains(HOSTILE), "the reason shows as written");
    assert_eq!(b.count("main img"), 0, "the reason made no element");
    shot(&b, "drains.png");

    // GC: a dry-run preview names the closed workspace's volume, then the run removes it and
    // the sweep shows in the history.
    let done = rt().block_on(admin.workspace("agent:done")).unwrap();
    b.goto(&format!("{url}/ui/gc"));
    b.click(&b.get("main a.button"));
    let preview = b.text(&b.get("section.confirm"));
    assert!(preview.contains(&done.volume.name), "the preview names the volume: {preview}");
    assert!(data.join("volumes").join(&done.volume.name).is_dir(), "the preview removed nothing");
    shot(&b, "gc-preview.png");
    b.click(&b.get("section.confirm form button"));
    b.wait_until(30, "the GC result", |b| b.text_of("main h1").filter(|h| h == "GC ran"));
    assert!(!data.join("volumes").join(&done.volume.name).exists(), "the run removed the volume");
    b.goto(&format!("{url}/ui/gc"));
    assert!(b.text(&b.get("#sweeps")).contains("ago"), "the sweep is in the history");
    shot(&b, "gc.png");

    // Store: the scheduled retention and prune runs appear as they are recorded.
    b.goto(&format!("{url}/ui/store"));
    b.wait_until(30, "a retention and a prune run", |b| {
        let runs = b.text_of("#runs").unwrap_or_default();
        (runs.contains("retention") && runs.contains("prune")).then_some(())
    });
    shot(&b, "store.png");

    // A POST without the CSRF token is refused, even with the admin's cookie.
    b.goto(&format!("{url}/ui/workspaces"));
    assert_eq!(page_post(&b, "/ui/workspaces/agent:idle/close", json!({})), 403);
    let ws = rt().block_on(admin.workspace("agent:idle")).unwrap();
    assert_eq!(ws.state, berth_api::WorkspaceState::Active);

    // Delete with typed confirmation: the volume is gone.
    let doomed = rt().block_on(admin.workspace("agent:doomed")).unwrap();
    let volume = data.join("volumes").join(&doomed.volume.name);
    assert!(volume.is_dir());
    b.goto(&format!("{url}/ui/workspaces/agent:doomed"));
    b.click(&b.get("a.button.danger"));
    b.type_into(&b.get("#confirm-owner"), "agent:doomed");
    shot(&b, "delete-confirm.png");
    b.click(&b.get("form button.danger"));
    b.wait_until(30, "the volume removed", |_| (!volume.exists()).then_some(()));
    b.wait_until(30, "the page showing it deleted", |b| {
        b.find("dd .state.deleted").or_else(|| {
            b.goto(&format!("{url}/ui/workspaces/agent:doomed"));
            None
        })
    });

    // A viewer: everything visible, no button, and even a POST with its own CSRF token is 403.
    b.click(&b.get("form[action='/ui/logout'] button"));
    login(&b, &url, VIEWER);
    b.goto(&format!("{url}/ui/workspaces/agent:idle"));
    assert_eq!(b.count("main a.button, main form button"), 0, "a viewer is offered no action");
    let csrf = b.run("return document.querySelector('input[name=csrf]').value;", json!([]));
    let forged = json!({"csrf": csrf, "confirm": "agent:idle"});
    assert_eq!(page_post(&b, "/ui/workspaces/agent:idle/delete", forged), 403);
    shot(&b, "viewer.png");
    // Dark mode follows the system.
    let background = "return getComputedStyle(document.body).backgroundColor;";
    assert_eq!(b.run(background, json!([])), json!("rgb(255, 255, 255)"));
    b.prefer_dark(true);
    assert_eq!(b.run(background, json!([])), json!("rgb(15, 20, 25)"), "a dark system gets the dark theme");
    b.goto(&format!("{url}/ui/workspaces"));
    shot(&b, "workspaces-dark.png");
    let ws = rt().block_on(admin.workspace("agent:idle")).unwrap();
    assert_eq!(ws.state, berth_api::WorkspaceState::Active, "the viewer changed nothing");
    drop(b);
    // Neither the admin, the viewer nor the sandbox token is in a page or a cookie, the logs
    // (at debug level), the workspace, the store, or the events.
    let events = rt().block_on(admin.events(&Default::default())).unwrap().items;
    let mut scan = util::secrets::Scan::new();
    scan.secret("the admin token", ADMIN)
        .secret("the viewer token", VIEWER)
        .secret("the sandbox token", fs::read_to_string(root.join("sandbox-token")).unwrap().trim());
    for (place, html) in &pages {
        scan.text(place, html);
    }
    scan.debug_log(&root.join("serve.log"))
        .debug_log(&root.join("agent.log"))
        .tree(&root.join("ws"))
        .tree(&root.join("store"))
        .json("the events", &events)
        .assert_clean();
    server.terminate(30);
}
