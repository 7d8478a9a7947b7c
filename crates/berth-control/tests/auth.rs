//! Every endpoint answers 401 without a valid token, 403 for another owner's resources or an
//! admin-only action, 400 for a malformed body, 404 for an unknown resource.

mod common;

use berth_api::{EnsureWorkspace, Heartbeat, WorkspaceState};
use common::{eventually, Db, TestServer, ADMIN};
use reqwest::Method;

both!(every_endpoint_checks_who_asks, sandbox_tokens_die_with_their_session);

/// One call: method, path, body.
struct Call(Method, String, &'static str);

async fn status(s: &TestServer, token: Option<&str>, call: &Call) -> u16 {
    let mut req = reqwest::Client::new().request(call.0.clone(), format!("{}{}", s.url, call.1)).body(call.2);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn every_endpoint_checks_who_asks(db: Db) {
    let s = TestServer::start(db, |_| {}).await;
    s.ensure("agent:a").await;
    s.ensure("agent:b").await;
    let a = s.attach("agent:a", "pod-a").await;
    let b = s.attach("agent:b", "pod-b").await;
    let (sa, sb) = (a.session_id.clone(), b.session_id.clone());
    let hb = r#"{"epoch": 1, "instance_id": "pod-a"}"#;
    let snap = r#"{"epoch": 1, "snapshot_id": "0000000000000000000000000000000000000000000000000000000000000000"}"#;
    let drain = r#"{"scope": "workspace:agent:a"}"#;
    let ready = r#"{"nonce": "x"}"#;
    // (call, a's sandbox token may do it, a malformed body for it)
    let calls: Vec<(Call, bool, Option<&str>)> = vec![
        (Call(Method::PUT, "/v1/workspaces/agent:a".into(), "{}"), false, Some(r#"{"size_bytes": "big"}"#)),
        (Call(Method::GET, "/v1/workspaces".into(), ""), false, None),
        (Call(Method::GET, "/v1/workspaces/agent:a".into(), ""), true, None),
        (Call(Method::POST, "/v1/workspaces/agent:a/sessions".into(), r#"{"instance_id": "p"}"#), false, Some("{")),
        (Call(Method::GET, "/v1/workspaces/agent:a/snapshots".into(), ""), true, None),
        (Call(Method::POST, "/v1/workspaces/agent:a/snapshots".into(), snap), true, Some(r#"{"epoch": 1}"#)),
        (
            Call(Method::POST, format!("/v1/sessions/{sa}/heartbeat"), hb),
            true,
            Some(r#"{"epoch": -1, "instance_id": "p"}"#),
        ),
        (Call(Method::POST, "/v1/drains".into(), drain), true, Some(r#"{"scope": 5}"#)),
        (Call(Method::GET, "/v1/drains".into(), ""), false, None),
        (Call(Method::GET, "/v1/drains/workspace:agent:a".into(), ""), true, None),
        (Call(Method::POST, "/v1/drains/workspace:agent:a/ready".into(), ready), true, Some(r#"{"nonce": null}"#)),
        (Call(Method::GET, "/v1/events".into(), ""), false, None),
        (Call(Method::POST, "/v1/gc/run".into(), r#"{"dry_run": true}"#), false, Some(r#"{"dry_run": "yes"}"#)),
        (Call(Method::POST, "/v1/workspaces/agent:a/close".into(), ""), false, None),
        (Call(Method::DELETE, format!("/v1/sessions/{sa}"), ""), true, None),
        (Call(Method::DELETE, "/v1/workspaces/agent:a".into(), ""), false, None),
    ];
    for (call, sandbox_may, malformed) in &calls {
        let what = format!("{} {}", call.0, call.1);
        assert_eq!(status(&s, None, call).await, 401, "{what} without a token");
        assert_eq!(status(&s, Some("not-a-token-at-all"), call).await, 401, "{what} with an unknown token");
        // b's sandbox token never acts on a's resources, nor on admin-only endpoints.
        assert_eq!(status(&s, Some(&b.token), call).await, 403, "{what} with another workspace's sandbox token");
        if !sandbox_may {
            assert_eq!(status(&s, Some(&a.token), call).await, 403, "{what} is admin-only");
        }
        if let Some(bad) = malformed {
            let bad_call = Call(call.0.clone(), call.1.clone(), bad);
            let token = if *sandbox_may { &a.token } else { ADMIN };
            assert_eq!(status(&s, Some(token), &bad_call).await, 400, "{what} with a malformed body");
        }
    }
    // What a's sandbox may do, it can (before the deletions above ran: these use b).
    let own = [
        Call(Method::GET, "/v1/workspaces/agent:b".into(), ""),
        Call(Method::POST, format!("/v1/sessions/{sb}/heartbeat"), r#"{"epoch": 1, "instance_id": "pod-b"}"#),
        Call(Method::GET, "/v1/drains/workspace:agent:b".into(), ""),
    ];
    for call in &own {
        assert_eq!(status(&s, Some(&b.token), call).await, 200, "{} {} with its own token", call.0, call.1);
    }
    // Unknown resources: 404 for the admin; a sandbox asking about another owner gets 403 first.
    let unknown = [
        Call(Method::GET, "/v1/workspaces/agent:zz".into(), ""),
        Call(Method::POST, "/v1/workspaces/agent:zz/sessions".into(), r#"{"instance_id": "p"}"#),
        Call(Method::POST, "/v1/sessions/ses_00000000000000000000000000000000/heartbeat".into(), hb),
        Call(Method::POST, "/v1/workspaces/agent:zz/close".into(), ""),
        Call(Method::DELETE, "/v1/workspaces/agent:zz".into(), ""),
    ];
    for call in &unknown {
        assert_eq!(status(&s, Some(ADMIN), call).await, 404, "{} {}", call.0, call.1);
    }
    assert_eq!(status(&s, Some(&b.token), &unknown[0]).await, 403);
    // The heartbeat checks a sandbox token in its own statement; a refusal still says why, and
    // says it before anything about the body.
    assert_eq!(status(&s, Some(&b.token), &unknown[2]).await, 403, "another session's token, an unknown session");
    let bad_beat = Call(Method::POST, format!("/v1/sessions/{sb}/heartbeat"), "{");
    assert_eq!(status(&s, Some("not-a-token-at-all"), &bad_beat).await, 401, "an unknown token, a bad body");
    assert_eq!(status(&s, Some(&b.token), &bad_beat).await, 400, "its own token, a bad body");
    let bad_wait = Call(Method::GET, "/v1/sandboxes/claim?wait_secs=soon".into(), "");
    assert_eq!(status(&s, Some("not-a-token-at-all"), &bad_wait).await, 401, "an unknown token, a bad query");
    assert_eq!(status(&s, Some(&b.token), &bad_wait).await, 400, "a live token, a bad query");
    // Malformed path parameters are 400.
    assert_eq!(status(&s, Some(ADMIN), &Call(Method::GET, "/v1/drains/galaxy:far".into(), "")).await, 400);
    assert_eq!(status(&s, Some(ADMIN), &Call(Method::GET, "/v1/workspaces?limit=0".into(), "")).await, 400);
    // Health, readiness, metrics and the API description need no token.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(status(&s, None, &Call(Method::GET, path.into(), "")).await, 200, "{path}");
    }
}

/// What a sandbox token of `owner`'s session `session` may still do: read the workspace, start a
/// drain of it (`drain` is the body), heartbeat. Returns the three statuses.
async fn token_statuses(s: &TestServer, token: &str, owner: &str, session: &str, drain: &'static str) -> [u16; 3] {
    let hb = r#"{"epoch": 1, "instance_id": "pod"}"#;
    let calls = [
        Call(Method::GET, format!("/v1/workspaces/{owner}"), ""),
        Call(Method::POST, "/v1/drains".into(), drain),
        Call(Method::POST, format!("/v1/sessions/{session}/heartbeat"), hb),
    ];
    let mut out = [0; 3];
    for (i, call) in calls.iter().enumerate() {
        out[i] = status(s, Some(token), call).await;
    }
    out
}

async fn sandbox_tokens_die_with_their_session(db: Db) {
    let s = TestServer::start(db, |c| {
        c.lease_ttl_secs = 2;
        c.expiry_interval_secs = 1;
    })
    .await;
    // Detach: the token is dead at once (on every replica: nothing is cached).
    s.ensure("agent:d").await;
    let a = s.attach("agent:d", "pod").await;
    let c = s.client(&a.token);
    c.heartbeat(&a.session_id, &Heartbeat { epoch: a.epoch, instance_id: "pod".into(), init_done: None })
        .await
        .unwrap();
    c.workspace("agent:d").await.unwrap();
    c.detach(&a.session_id).await.unwrap();
    assert_eq!(
        token_statuses(&s, &a.token, "agent:d", &a.session_id, r#"{"scope": "workspace:agent:d"}"#).await,
        [401; 3],
        "after detach"
    );
    assert!(!s.admin.drain("workspace:agent:d").await.unwrap().draining, "a dead token started no drain");

    // Lease expiry: once the reconciler ends the session, its token is dead.
    s.ensure("agent:e").await;
    let e = s.attach("agent:e", "pod").await;
    s.client(&e.token).workspace("agent:e").await.unwrap();
    eventually(15, "the expired session's token to die", || async {
        (status(&s, Some(&e.token), &Call(Method::GET, "/v1/workspaces/agent:e".into(), "")).await == 401).then_some(())
    })
    .await;
    assert_eq!(
        token_statuses(&s, &e.token, "agent:e", &e.session_id, r#"{"scope": "workspace:agent:e"}"#).await,
        [401; 3],
        "after expiry"
    );

    // The owner's deletion, and a new workspace of the same name: the old token acts on neither.
    s.ensure("agent:x").await;
    let x = s.attach("agent:x", "pod").await;
    s.admin.delete("agent:x").await.unwrap();
    eventually(20, "the deletion to complete", || async {
        (s.admin.workspace("agent:x").await.unwrap().state == WorkspaceState::Deleted).then_some(())
    })
    .await;
    s.admin.ensure("agent:x", &EnsureWorkspace::default()).await.unwrap();
    assert_eq!(
        token_statuses(&s, &x.token, "agent:x", &x.session_id, r#"{"scope": "workspace:agent:x"}"#).await,
        [401; 3],
        "after delete + recreate"
    );
    // A live session's token still works.
    let y = s.attach("agent:x", "pod-2").await;
    assert_eq!(status(&s, Some(&y.token), &Call(Method::GET, "/v1/workspaces/agent:x".into(), "")).await, 200);
}
