//! The operator console over real HTTP: logins and their cookie, the CSP, escaping, CSRF and
//! viewer refusals (console and JSON API), the typed delete, the GC history, and the event
//! stream with `Last-Event-ID` resume; each on SQLite and PostgreSQL. (The browser test is in
//! the `berth` crate.)

mod common;

use std::time::Duration;

use berth_api::{GcRun, PublishSnapshot, SnapshotStats, StartDrain};
use common::{eventually, Db, TestServer, ADMIN};
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;

both!(
    login_sets_a_strict_cookie_and_pages_carry_the_csp,
    user_strings_render_as_text,
    actions_need_the_csrf_token_and_the_admin,
    delete_needs_the_owner_typed_and_removes_the_volume,
    gc_sweeps_that_act_are_recorded_and_shown,
    the_event_stream_resumes_after_the_last_event_id,
    the_list_filters_searches_and_pages,
    an_event_stream_outlives_the_idle_timeout,
);

const VIEWER: &str = "test-viewer-token-0123456789";
const HOSTILE: &str = "<img src=x onerror=alert(1)>";

fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn start(db: Db) -> TestServer {
    TestServer::start(db, |c| c.viewer_tokens = vec![VIEWER.into()]).await
}

/// Logs in with `token`; returns the cookie pair to send.
async fn login(s: &TestServer, token: &str) -> String {
    let resp = http().post(format!("{}/ui/login", s.url)).form(&[("token", token)]).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp.headers()[SET_COOKIE].to_str().unwrap().to_string();
    cookie.split(';').next().unwrap().to_string()
}

async fn get(s: &TestServer, cookie: &str, path: &str) -> (StatusCode, String) {
    let resp = http().get(format!("{}{path}", s.url)).header(COOKIE, cookie).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn post(s: &TestServer, cookie: &str, path: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
    let resp = http().post(format!("{}{path}", s.url)).header(COOKIE, cookie).form(form).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// The CSRF token of the page's logout form (every page has one).
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    page[at..at + 32].to_string()
}

async fn login_sets_a_strict_cookie_and_pages_carry_the_csp(db: Db) {
    let s = start(db).await;
    s.ensure("agent:1").await;
    // Without a session a page goes to the login form, and an action is refused.
    let resp = http().get(format!("{}/ui/workspaces", s.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/ui/login");
    assert_eq!(post(&s, "", "/ui/workspaces/agent:1/close", &[]).await.0, StatusCode::FORBIDDEN);
    // A wrong token is refused; a sandbox token cannot log in either.
    let session = s.attach("agent:1", "pod-1").await;
    for bad in ["wrong-token-0123456789", session.token.as_str()] {
        let resp = http().post(format!("{}/ui/login", s.url)).form(&[("token", bad)]).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers().get(SET_COOKIE).is_none());
    }
    let resp = http().post(format!("{}/ui/login", s.url)).form(&[("token", ADMIN)]).send().await.unwrap();
    let set = resp.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Max-Age=43200", "Path=/"] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let tls = http()
        .post(format!("{}/ui/login", s.url))
        .header("x-forwarded-proto", "https")
        .form(&[("token", ADMIN)])
        .send()
        .await
        .unwrap();
    assert!(tls.headers()[SET_COOKIE].to_str().unwrap().contains("; Secure"));
    let cookie = set.split(';').next().unwrap();
    let resp = http().get(format!("{}/ui/workspaces", s.url)).header(COOKIE, cookie).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
    let page = resp.text().await.unwrap();
    assert!(page.contains("agent:1") && page.contains("pod-1"), "the list names the owner and the lease holder");
    assert!(!page.contains("<script>") && !page.contains("style=\""), "no inline script or style");
    // A tampered cookie is no session.
    let last = if cookie.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &cookie[..cookie.len() - 1]);
    assert_eq!(get(&s, &tampered, "/ui/workspaces").await.0, StatusCode::SEE_OTHER);
    // Every page renders.
    for path in ["/ui/workspaces/agent:1", "/ui/drains", "/ui/gc", "/ui/store", "/ui/workspaces?state=active&q=agent"] {
        let (status, body) = get(&s, cookie, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    // The detail page names the retention that applies: the server's, then the workspace's own.
    let (_, page) = get(&s, cookie, "/ui/workspaces/agent:1").await;
    assert!(page.contains("Retention") && page.contains(" (the server"), "{page}");
    let own = berth_api::SetRetention { policy: Some("keep-last=3".into()) };
    s.admin.set_retention("agent:1", &own).await.unwrap();
    let (_, page) = get(&s, cookie, "/ui/workspaces/agent:1").await;
    assert!(page.contains("keep-last=3,hourly=0,daily=0,weekly=0") && page.contains("(its own)"), "{page}");
    s.stop().await;
}

async fn user_strings_render_as_text(db: Db) {
    let s = start(db).await;
    s.ensure("agent:1").await;
    let reason = format!("maintenance {HOSTILE}");
    s.admin
        .start_drain(&StartDrain { scope: "workspace:agent:1".into(), instance_id: None, reason: Some(reason) })
        .await
        .unwrap();
    let cookie = login(&s, ADMIN).await;
    for path in [
        "/ui/drains".to_string(),
        "/ui/workspaces/agent:1".to_string(),
        format!("/ui/workspaces?q={}", "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E"),
    ] {
        let (status, page) = get(&s, &cookie, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!page.contains("<img"), "{path} holds a raw <img>: {page}");
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"), "{path} shows the text escaped");
    }
    // A bad label filter names the problem, escaped.
    let (status, page) = get(&s, &cookie, "/ui/workspaces?label=%3Cb%3E").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("&lt;b&gt;") && !page.contains("<b>"), "{page}");
    s.stop().await;
}

async fn actions_need_the_csrf_token_and_the_admin(db: Db) {
    let s = start(db).await;
    s.ensure("agent:1").await;
    s.ensure("agent:2").await;
    let admin = login(&s, ADMIN).await;
    let (_, page) = get(&s, &admin, "/ui/workspaces/agent:1").await;
    assert!(page.contains("Delete…") && page.contains("Close…"), "the admin is offered actions");
    let csrf = csrf_of(&page);
    // No token, a wrong token: 403, nothing changes.
    assert_eq!(post(&s, &admin, "/ui/workspaces/agent:1/close", &[]).await.0, StatusCode::FORBIDDEN);
    let wrong = "0".repeat(32);
    assert_eq!(post(&s, &admin, "/ui/workspaces/agent:1/close", &[("csrf", &wrong)]).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.admin.workspace("agent:1").await.unwrap().state, berth_api::WorkspaceState::Active);
    // The confirmation names what will happen; the right token acts.
    let (status, confirm) = get(&s, &admin, "/ui/workspaces/agent:1/close").await;
    assert_eq!(status, StatusCode::OK);
    assert!(confirm.contains("no sandbox may attach"), "{confirm}");
    assert_eq!(post(&s, &admin, "/ui/workspaces/agent:1/close", &[("csrf", &csrf)]).await.0, StatusCode::SEE_OTHER);
    assert_eq!(s.admin.workspace("agent:1").await.unwrap().state, berth_api::WorkspaceState::Closed);

    // A viewer sees everything, is offered nothing, and is refused even with its own token.
    let viewer = login(&s, VIEWER).await;
    let (status, page) = get(&s, &viewer, "/ui/workspaces/agent:2").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("agent:2") && page.contains("viewer"));
    for action in ["Delete…", "Close…", "Drain…", "<button type=\"submit\">"] {
        assert!(!page.contains(action), "a viewer is offered {action}");
    }
    let (_, gc) = get(&s, &viewer, "/ui/gc").await;
    assert!(!gc.contains("Run GC"), "no GC button for a viewer");
    let vcsrf = csrf_of(&page);
    for path in ["/ui/workspaces/agent:2/close", "/ui/workspaces/agent:2/delete", "/ui/drains/start", "/ui/gc/run"] {
        let form = [("csrf", vcsrf.as_str()), ("confirm", "agent:2"), ("scope", "node:n1")];
        assert_eq!(post(&s, &viewer, path, &form).await.0, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(get(&s, &viewer, path).await.0, StatusCode::FORBIDDEN, "confirmation {path}");
    }
    assert_eq!(s.admin.workspace("agent:2").await.unwrap().state, berth_api::WorkspaceState::Active);
    // The JSON API: a viewer token reads and cannot write.
    let api = s.client(VIEWER);
    assert_eq!(api.workspaces(&Default::default()).await.unwrap().items.len(), 2);
    api.events(&Default::default()).await.expect("a viewer reads the events");
    api.drains().await.expect("a viewer reads the drains");
    for e in [
        api.close("agent:2").await.unwrap_err(),
        api.delete("agent:2").await.unwrap_err(),
        api.gc_run(&GcRun::default()).await.unwrap_err(),
        api.ensure("agent:3", &Default::default()).await.unwrap_err(),
        api.start_drain(&StartDrain { scope: "node:n1".into(), instance_id: None, reason: None }).await.unwrap_err(),
    ] {
        assert_eq!(e.status(), Some(403), "{e}");
    }
    s.stop().await;
}

async fn delete_needs_the_owner_typed_and_removes_the_volume(db: Db) {
    let s = start(db).await;
    let ws = s.ensure("agent:9").await;
    let volume = s.data_dir.join("volumes").join(&ws.volume.name);
    assert!(volume.is_dir());
    let cookie = login(&s, ADMIN).await;
    let (status, page) = get(&s, &cookie, "/ui/workspaces/agent:9/delete").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&ws.volume.name) && page.contains("Type the owner"), "{page}");
    let csrf = csrf_of(&page);
    let path = "/ui/workspaces/agent:9/delete";
    let (status, page) = post(&s, &cookie, path, &[("csrf", &csrf), ("confirm", "agent:8")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("does not match"));
    assert!(volume.is_dir(), "a wrong confirmation deletes nothing");
    let (status, _) = post(&s, &cookie, path, &[("csrf", &csrf), ("confirm", "agent:9")]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    eventually(20, "the volume deleted", || async { (!volume.exists()).then_some(()) }).await;
    eventually(20, "the workspace deleted", || async {
        (s.admin.workspace("agent:9").await.unwrap().state == berth_api::WorkspaceState::Deleted).then_some(())
    })
    .await;
    s.stop().await;
}

async fn gc_sweeps_that_act_are_recorded_and_shown(db: Db) {
    let s = start(db).await;
    s.ensure("agent:1").await;
    s.admin.close("agent:1").await.unwrap();
    let cookie = login(&s, ADMIN).await;
    // The preview is a dry run: nothing is removed.
    let (status, preview) = get(&s, &cookie, "/ui/gc/run").await;
    assert_eq!(status, StatusCode::OK);
    assert!(preview.contains("agent:1"), "{preview}");
    assert_eq!(s.app.meta.count_events("gc_sweep").await.unwrap(), 0);
    let csrf = csrf_of(&preview);
    let (status, ran) = post(&s, &cookie, "/ui/gc/run", &[("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    assert_eq!(s.app.meta.count_events("gc_sweep").await.unwrap(), 1);
    // A sweep with nothing to do leaves no event.
    s.admin.gc_run(&GcRun::default()).await.unwrap();
    assert_eq!(s.app.meta.count_events("gc_sweep").await.unwrap(), 1);
    let (_, page) = get(&s, &cookie, "/ui/gc").await;
    let sweeps = &page[page.find("id=\"sweeps\"").expect("a sweeps table")..];
    assert!(sweeps.contains("<td class=\"num\">1</td>"), "one volume removed: {sweeps}");
    s.stop().await;
}

/// Reads SSE frames from `resp` until `n` events arrived; returns their ids and kinds.
async fn read_events(resp: &mut reqwest::Response, n: usize) -> Vec<(i64, String)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let id = frame.lines().find_map(|l| l.strip_prefix("id:")).map(|v| v.trim().parse().unwrap());
            let data = frame.lines().find_map(|l| l.strip_prefix("data:"));
            if let (Some(id), Some(data)) = (id, data) {
                let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
                out.push((id, v["kind"].as_str().unwrap().to_string()));
            }
        }
    }
    out
}

async fn the_event_stream_resumes_after_the_last_event_id(db: Db) {
    let s = start(db).await;
    let stream = |token: &str, last: Option<&str>| {
        let mut req = http().get(format!("{}/v1/events/stream", s.url)).bearer_auth(token);
        if let Some(id) = last {
            req = req.header("last-event-id", id);
        }
        req.send()
    };
    assert_eq!(
        http().get(format!("{}/v1/events/stream", s.url)).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // Live: only what happens after connecting.
    s.ensure("agent:1").await;
    let mut live = stream(ADMIN, None).await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    assert!(live.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let session = s.attach("agent:1", "pod-1").await;
    let snap = PublishSnapshot {
        epoch: session.epoch,
        snapshot_id: "ab".repeat(32),
        stats: SnapshotStats::default(),
        final_snapshot: false,
    };
    s.client(&session.token).publish_snapshot("agent:1", &snap).await.unwrap();
    let got = read_events(&mut live, 2).await;
    assert_eq!(got.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(), ["session_attached", "snapshot_published"]);
    // Resume after the first of them: the second comes again, nothing before it.
    let mut resumed = stream(VIEWER, Some(&got[0].0.to_string())).await.unwrap();
    assert_eq!(resumed.status(), StatusCode::OK, "a viewer token reads the stream");
    assert_eq!(read_events(&mut resumed, 1).await, vec![got[1].clone()]);
    // A sandbox token cannot read everyone's events.
    assert_eq!(stream(&session.token, None).await.unwrap().status(), StatusCode::FORBIDDEN);
    // A console session can (the browser's EventSource sends its cookie).
    let cookie = login(&s, VIEWER).await;
    let resp = http().get(format!("{}/v1/events/stream?after=0", s.url)).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    // Shutdown ends open streams instead of waiting for them.
    tokio::time::timeout(Duration::from_secs(10), s.stop()).await.expect("the server stops with streams open");
    drop((live, resumed));
}

/// The owners of the rows of a list page, in order, and its next page's link.
fn rows_of(page: &str) -> (Vec<String>, Option<String>) {
    let owners = page.split(" data-owner=\"").skip(1).map(|r| r[..r.find('"').unwrap()].to_string()).collect();
    let next = page.find("rel=\"next\" href=\"").map(|i| {
        let rest = &page[i + "rel=\"next\" href=\"".len()..];
        rest[..rest.find('"').unwrap()].replace("&amp;", "&")
    });
    (owners, next)
}

async fn the_list_filters_searches_and_pages(db: Db) {
    let s = start(db).await;
    for i in 0..60 {
        let team = if i % 3 == 0 { "a" } else { "b" };
        let body = berth_api::EnsureWorkspace { labels: [("team".into(), team.into())].into(), ..Default::default() };
        s.admin.ensure(&format!("agent:{i:03}"), &body).await.unwrap();
    }
    s.admin.close("agent:007").await.unwrap();
    let cookie = login(&s, VIEWER).await;
    // Pages of 50, in owner order, with a link to the next.
    let (status, page) = get(&s, &cookie, "/ui/workspaces").await;
    assert_eq!(status, StatusCode::OK);
    let (first, next) = rows_of(&page);
    assert_eq!(first.len(), 50, "{page}");
    assert_eq!((first[0].as_str(), first[49].as_str()), ("agent:000", "agent:049"));
    let next = next.expect("a next page");
    let (second, last) = rows_of(&get(&s, &cookie, &next).await.1);
    assert_eq!((second.len(), second[0].as_str(), last), (10, "agent:050", None));
    // A label filter over pages (20 of 60 match), the state filter, the owner search.
    let (team_a, next) = rows_of(&get(&s, &cookie, "/ui/workspaces?label=team%3Da").await.1);
    assert_eq!((team_a.len(), next), (20, None));
    assert!(team_a.iter().all(|o| o[6..].parse::<u32>().unwrap() % 3 == 0), "{team_a:?}");
    let (closed, _) = rows_of(&get(&s, &cookie, "/ui/workspaces?state=closed").await.1);
    assert_eq!(closed, ["agent:007"]);
    let (found, _) = rows_of(&get(&s, &cookie, "/ui/workspaces?q=05").await.1);
    let want: Vec<String> = [5].into_iter().chain(50..60).map(|i| format!("agent:{i:03}")).collect();
    assert_eq!(found, want);
    // LIKE's wildcards are searched as text.
    assert_eq!(rows_of(&get(&s, &cookie, "/ui/workspaces?q=%25").await.1).0.len(), 0);
    assert_eq!(rows_of(&get(&s, &cookie, "/ui/workspaces?q=agent_0").await.1).0.len(), 0);
    // Nothing is at risk yet.
    assert_eq!(rows_of(&get(&s, &cookie, "/ui/workspaces?risk=1").await.1).0.len(), 0);
    let (status, page) = get(&s, &cookie, "/ui/workspaces?state=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("not one of active, closed, deleting, deleted"));
    s.stop().await;
}

/// An open event stream is a request under way, not an idle connection: the idle timeout
/// does not cut it.
async fn an_event_stream_outlives_the_idle_timeout(db: Db) {
    let s = TestServer::start(db, |c| {
        c.viewer_tokens = vec![VIEWER.into()];
        c.http.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let mut stream = http().get(format!("{}/v1/events/stream", s.url)).bearer_auth(VIEWER).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    // Quiet for four idle timeouts, then an event: it still arrives on the same stream.
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.ensure("agent:late").await;
    assert_eq!(read_events(&mut stream, 1).await[0].1, "workspace_ensured");
    s.stop().await;
}
