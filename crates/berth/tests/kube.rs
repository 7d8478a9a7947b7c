//! `berth serve --substrate kubernetes` as a real process against the fake Kubernetes API
//! server (in this test's process, reached through a kubeconfig): killed with SIGKILL in the
//! middle of a GC sweep and restarted (nothing is deleted twice), and two replicas on one
//! PostgreSQL sharing the work (every claim deleted exactly once), an ensure over a claim that
//! is terminating (waits, then a new claim), orphans found by label selector, node cordons
//! driving drains, and an API server that does not answer.

mod util;

use std::path::{Path, PathBuf};

use berth_api::{EnsureWorkspace, GcRun, WorkspaceState};
use berth_core::volume::VolumeName;
use berth_core::workspace::{Generation, WorkspaceId};
use berth_kube::fake::harness::NAMESPACE;
use berth_kube::fake::FakeApi;

use util::serve::{events, marks, metric, rt, wait_until, Server, ADMIN};

const PVC: &str = "persistentvolumeclaims";

/// A kubeconfig pointing at `fake`, in `dir`.
fn kubeconfig(dir: &Path, fake: &FakeApi) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  \
         context:\n    cluster: fake\n    user: fake\n    namespace: other\ncurrent-context: fake\nusers:\n- name: fake\n  \
         user: {{}}\n",
        fake.url()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `berth serve --substrate kubernetes --namespace berth-test` with fast GC settings.
fn start(tmp: &Path, kubeconfig: &Path, log: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let data = tmp.join("data");
    let mut args = vec![
        "--substrate",
        "kubernetes",
        "--namespace",
        NAMESPACE,
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
    env.push(("KUBECONFIG", kubeconfig.to_str().unwrap()));
    Server::start(tmp, &tmp.join(log), &args, &env)
}

fn claims(fake: &FakeApi) -> usize {
    let store = fake.store();
    store.list(PVC, Some(NAMESPACE), &Default::default(), &Default::default()).len()
}

fn deletes(fake: &FakeApi) -> usize {
    fake.calls().iter().filter(|(v, r)| v == "delete" && r == PVC).count()
}

#[test]
fn sigkill_during_a_kubernetes_gc_sweep_then_restart_deletes_nothing_twice() {
    const TOTAL: usize = 12;
    const PAUSE_AFTER: usize = 5;
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let fake = rt.block_on(FakeApi::start());
    let config = kubeconfig(tmp.path(), &fake);

    let server = start(tmp.path(), &config, "a.log", &["--gc-interval", "3600s"], &[]);
    let c = server.client(ADMIN);
    let owners: Vec<String> = rt.block_on(async {
        let mut owners = Vec::new();
        for i in 0..TOTAL {
            let owner = format!("thread:{i:03}");
            let (w, _) = c.ensure(&owner, &EnsureWorkspace::default()).await.unwrap();
            assert!(fake.store().get(PVC, NAMESPACE, &w.volume.name).is_ok(), "no claim {}", w.volume.name);
            c.close(&owner).await.unwrap();
            owners.push(owner);
        }
        owners
    });
    assert_eq!(claims(&fake), TOTAL, "the claims are in --namespace, not the kubeconfig's namespace");
    server.kill9();

    // The substrate lets 5 deletes through and holds every later one, so the kill lands inside
    // a sweep after exactly 5 removals.
    let pause = PAUSE_AFTER.to_string();
    let server =
        start(tmp.path(), &config, "b.log", &["--gc-interval", "1s"], &[("BERTH_TEST_PAUSE_DELETES_AFTER", &pause)]);
    let c = server.client(ADMIN);
    rt.block_on(async {
        wait_until("5 volumes marked", 60, || async { marks(&c).await.len() == PAUSE_AFTER }).await;
        wait_until("the held removals started", 10, || async {
            metric(&server.url, "berth_gc_attempts_total").await as usize > PAUSE_AFTER
        })
        .await;
    });
    assert_eq!(claims(&fake), TOTAL - PAUSE_AFTER, "exactly the marked claims are gone");
    assert_eq!(deletes(&fake), PAUSE_AFTER);
    server.kill9();

    let server = start(tmp.path(), &config, "c.log", &["--gc-interval", "1s"], &[]);
    let c = server.client(ADMIN);
    rt.block_on(async {
        wait_until("every volume marked after the restart", 60, || async { marks(&c).await.len() == TOTAL }).await;
        let marks = marks(&c).await;
        assert_eq!(marks.keys().cloned().collect::<Vec<_>>(), owners);
        assert!(marks.values().all(|n| *n == 1), "a volume was marked twice: {marks:?}");
        assert_eq!(metric(&server.url, "berth_gc_attempts_total").await as usize, TOTAL - PAUSE_AFTER);
        for o in &owners {
            assert_eq!(c.workspace(o).await.unwrap().state, WorkspaceState::Closed);
        }
    });
    assert_eq!(claims(&fake), 0, "claims left behind");
    assert_eq!(deletes(&fake), TOTAL, "a claim was deleted twice: {:?}", fake.calls());
    server.terminate(10);
}

#[test]
fn two_replicas_on_postgres_share_the_claims_and_delete_each_once() {
    const TOTAL: usize = 20;
    let Ok(base) = std::env::var("BERTH_TEST_PG_URL") else {
        panic!("BERTH_TEST_PG_URL is not set: this test needs the PostgreSQL test cluster; run it with `./dev test`");
    };
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let fake = rt.block_on(FakeApi::start());
    let config = kubeconfig(tmp.path(), &fake);
    let db = rt.block_on(create_db(&base));
    let extra = ["--database-url", db.as_str(), "--gc-interval", "1s"];
    let r1 = start(tmp.path(), &config, "r1.log", &extra, &[]);
    let r2 = start(tmp.path(), &config, "r2.log", &extra, &[]);
    let (c1, c2) = (r1.client(ADMIN), r2.client(ADMIN));
    rt.block_on(async {
        // Both replicas ensure every workspace at once: one claim each.
        let mut owners = Vec::new();
        for i in 0..TOTAL {
            let owner = format!("agent:{i:03}");
            let e = EnsureWorkspace::default();
            let (a, b) = tokio::join!(c1.ensure(&owner, &e), c2.ensure(&owner, &e));
            assert_eq!(a.unwrap().0.volume.name, b.unwrap().0.volume.name);
            owners.push(owner);
        }
        assert_eq!(claims(&fake), TOTAL);
        for (i, o) in owners.iter().enumerate() {
            let c = if i % 2 == 0 { &c1 } else { &c2 };
            if i % 4 == 0 {
                c.delete(o).await.unwrap();
            } else {
                c.close(o).await.unwrap();
            }
        }
        wait_until("every claim gone", 90, || async { claims(&fake) == 0 }).await;
        wait_until("every volume marked", 30, || async { marks(&c1).await.len() == TOTAL }).await;
        let removed = events(&c1, "volume_removed").await;
        assert_eq!(removed.len(), TOTAL, "every volume removed once");
        assert!(events(&c2, "volume_not_found").await.is_empty(), "a replica acted on a volume already removed");
    });
    assert_eq!(deletes(&fake), TOTAL, "a claim was deleted twice: {:?}", fake.calls());
    let creates = fake.calls().iter().filter(|(v, r)| v == "create" && r == PVC).count();
    assert!(creates >= TOTAL, "{creates} creates");
    r1.terminate(10);
    r2.terminate(10);
}

async fn create_db(base: &str) -> String {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(base).await.expect("connect to the PostgreSQL test cluster");
    let mut buf = [0u8; 6];
    rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty()).unwrap();
    let name = format!("berth_kube_{}", buf.iter().map(|b| format!("{b:02x}")).collect::<String>());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&pool).await.unwrap();
    pool.close().await;
    format!("{}/{name}", &base[..base.rfind('/').unwrap()])
}

fn node(name: &str, unschedulable: bool) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"unschedulable": unschedulable}})
}

#[test]
fn a_cordoned_node_drains_and_uncordoning_clears_it() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let fake = rt.block_on(FakeApi::start());
    fake.store().put("nodes", "", node("node-a", false));
    fake.store().put("nodes", "", node("node-b", true));
    let config = kubeconfig(tmp.path(), &fake);
    let server = start(tmp.path(), &config, "n.log", &["--watch-nodes"], &[]);
    let c = server.client(ADMIN);
    rt.block_on(async {
        let draining = |n: &'static str| {
            let c = c.clone();
            async move { c.drain(&format!("node:{n}")).await.unwrap().draining }
        };
        // Cordoned before the server started: found by the first list.
        wait_until("node-b draining", 30, || draining("node-b")).await;
        assert!(!draining("node-a").await);
        // Cordoned while watched.
        fake.store().put("nodes", "", node("node-a", true));
        wait_until("node-a draining", 30, || draining("node-a")).await;
        let info = c.drain("node:node-a").await.unwrap();
        assert!(info.reason.as_deref().unwrap_or("").contains("cordoned"), "{info:?}");
        // Uncordoned: the drain clears; the other node stays drained.
        fake.store().put("nodes", "", node("node-a", false));
        wait_until("node-a cleared", 30, || async { !draining("node-a").await }).await;
        assert!(draining("node-b").await);
        // A watch that expires lists again and still sees changes.
        fake.store().expire_watches = 1;
        fake.store().compact();
        fake.store().put("nodes", "", node("node-b", false));
        wait_until("node-b cleared", 30, || async { !draining("node-b").await }).await;
    });
    let calls = fake.calls();
    assert!(calls.iter().any(|(v, r)| v == "watch" && r == "nodes"), "{calls:?}");
    server.terminate(10);
}

fn claim_uid(fake: &FakeApi, name: &str) -> serde_json::Value {
    fake.store().get(PVC, NAMESPACE, name).expect("the claim")["metadata"]["uid"].clone()
}

#[test]
fn an_ensure_over_a_terminating_claim_waits_and_makes_a_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let fake = rt.block_on(FakeApi::start());
    let config = kubeconfig(tmp.path(), &fake);
    let server = start(tmp.path(), &config, "t.log", &[], &[]);
    let c = server.client(ADMIN);
    let first = rt.block_on(c.ensure("agent:first", &EnsureWorkspace::default())).unwrap().0.volume.name;
    let labels = fake.store().get(PVC, NAMESPACE, &first).unwrap()["metadata"]["labels"].clone();
    let install = labels["berth.install"].as_str().unwrap().to_string();
    // The claim this installation's agent:t would get, left from before (a server that died
    // between creating it and recording it), mounted by a pod and being deleted: the finalizer
    // keeps it terminating until the pod ends.
    let owner = WorkspaceId::new("agent:t").unwrap();
    let name = VolumeName::derive(&install, &owner, Generation(1)).to_string();
    let full = serde_json::json!({"berth.managed": "true", "berth.install": install, "berth.owner": "agent:t", "berth.generation": "1"});
    let object = serde_json::json!({
        "metadata": {
            "name": name,
            "labels": {"berth.managed": "true", "berth.install": install, "berth.owner": berth_kube::label_value("agent:t"), "berth.generation": "1"},
            "annotations": {berth_kube::ANNOTATION_LABELS: full.to_string()},
        },
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    });
    fake.store().create(PVC, NAMESPACE, object).unwrap();
    let pod = serde_json::json!({
        "metadata": {"name": "user"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}],
                 "volumes": [{"name": "ws", "persistentVolumeClaim": {"claimName": name}}]},
    });
    fake.store().create("pods", NAMESPACE, pod).unwrap();
    fake.store().set_pod_phase(NAMESPACE, "user", "Running").unwrap();
    fake.store().delete(PVC, NAMESPACE, &name, &serde_json::json!({})).unwrap();
    let old = claim_uid(&fake, &name);
    rt.block_on(async {
        let watches = || fake.calls().iter().filter(|(v, r)| v == "watch" && r == PVC).count();
        let ensure = tokio::spawn({
            let c = c.clone();
            async move { c.ensure("agent:t", &EnsureWorkspace::default()).await }
        });
        wait_until("the server watches the terminating claim", 30, || async { watches() > 0 }).await;
        assert!(!ensure.is_finished(), "ensure answered while the claim was terminating");
        fake.store().set_pod_phase(NAMESPACE, "user", "Succeeded").unwrap();
        let ws = ensure.await.unwrap().unwrap().0;
        assert_eq!(ws.volume.name, name);
    });
    assert_ne!(claim_uid(&fake, &name), old, "the terminating claim was reused");
    assert!(fake.store().get(PVC, NAMESPACE, &name).unwrap()["metadata"]["deletionTimestamp"].is_null());
    server.terminate(10);
}

#[test]
fn orphan_claims_are_found_by_label_and_nothing_else_is_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let fake = rt.block_on(FakeApi::start());
    let config = kubeconfig(tmp.path(), &fake);
    let server = start(tmp.path(), &config, "o.log", &["--orphan-interval", "3600s", "--orphan-grace", "1s"], &[]);
    let c = server.client(ADMIN);
    let kept = rt.block_on(c.ensure("agent:kept", &EnsureWorkspace::default())).unwrap().0.volume.name;
    let labels = fake.store().get(PVC, NAMESPACE, &kept).unwrap()["metadata"]["labels"].clone();
    let install = labels["berth.install"].as_str().unwrap().to_string();
    let claim = |name: &str, labels: serde_json::Value| {
        let object = serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        });
        fake.store().create(PVC, NAMESPACE, object).unwrap();
    };
    // This installation's labels without a record: an orphan. Unlabelled, and another
    // installation's: never touched.
    claim(
        "ws-ghost-1",
        serde_json::json!({"berth.managed": "true", "berth.install": install, "berth.generation": "1"}),
    );
    claim("ws-unlabelled", serde_json::json!({}));
    claim("ws-other", serde_json::json!({"berth.managed": "true", "berth.install": "another"}));
    let sweep = GcRun { dry_run: false, orphans: true, force: false };
    rt.block_on(async {
        let items = c.gc_run(&sweep).await.unwrap().orphans.unwrap();
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!((items[0].volume.as_str(), items[0].action.as_str()), ("ws-ghost-1", "track"));
        wait_until("the orphan removed after the grace", 30, || async {
            let items = c.gc_run(&sweep).await.unwrap().orphans.unwrap();
            assert!(items.iter().all(|i| i.volume == "ws-ghost-1"), "{items:?}");
            items.iter().any(|i| i.action == "removed")
        })
        .await;
    });
    assert!(fake.store().get(PVC, NAMESPACE, "ws-ghost-1").is_err());
    for name in [kept.as_str(), "ws-unlabelled", "ws-other"] {
        assert!(fake.store().get(PVC, NAMESPACE, name).is_ok(), "{name} was removed");
    }
    server.terminate(10);
}

#[test]
fn an_api_server_that_does_not_answer_fails_readyz_and_ensure() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let fake = rt.block_on(FakeApi::start());
    let config = kubeconfig(tmp.path(), &fake);
    // The same kubeconfig, pointing at a port nobody listens on.
    let text = std::fs::read_to_string(&config).unwrap().replace(&fake.url(), "http://127.0.0.1:1");
    std::fs::write(&config, text).unwrap();
    let server = start(tmp.path(), &config, "u.log", &[], &[]);
    let c = server.client(ADMIN);
    rt.block_on(async {
        assert_eq!(reqwest::get(format!("{}/healthz", server.url)).await.unwrap().status(), 200);
        let ready = reqwest::get(format!("{}/readyz", server.url)).await.unwrap();
        assert_eq!(ready.status(), 503);
        let body = ready.text().await.unwrap();
        assert!(body.contains("127.0.0.1:1") && body.contains(NAMESPACE), "{body}");
        let e = c.ensure("agent:1", &EnsureWorkspace::default()).await.unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(503), Some("substrate")), "{e}");
    });
    assert!(fake.calls().is_empty());
    server.terminate(10);
}

#[test]
fn a_sandbox_is_a_pod_on_the_claim_and_its_death_leaves_the_workspace_at_risk() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let fake = rt.block_on(FakeApi::start());
    let config = kubeconfig(tmp.path(), &fake);
    let server = start(tmp.path(), &config, "s.log", &["--sandbox-berth-image", "berth:test"], &[]);
    let c = server.client(ADMIN);
    rt.block_on(async {
        let body = berth_api::StartSandbox {
            image: "agent:1".into(),
            command: vec!["sh".into(), "-c".into(), "sleep 600".into()],
            grace_secs: Some(20),
            memory_bytes: Some(256 << 20),
            ..Default::default()
        };
        let sb = c.start_sandbox("agent:sb", &body).await.unwrap();
        let ws = c.workspace("agent:sb").await.unwrap();
        let pod = fake.store().get("pods", NAMESPACE, &sb.id).unwrap();
        let claim = pod["spec"]["volumes"].as_array().unwrap().iter().find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str().map(String::from));
        assert_eq!(claim.as_deref(), Some(ws.volume.name.as_str()), "{pod}");
        assert!(pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap() > 20, "{pod}");
        assert_eq!(pod["spec"]["initContainers"][0]["image"], "berth:test");
        assert_eq!(pod["spec"]["containers"][0]["command"][0], "/berth/bin/berth");
        let secret = fake.store().get("secrets", NAMESPACE, &format!("{}-files", sb.id)).unwrap();
        assert!(secret["data"]["spec.json"].is_string());
        // The pod runs, then dies without a final snapshot (OOM-killed).
        fake.store().set_pod_phase(NAMESPACE, &sb.id, "Running").unwrap();
        let mut dead = fake.store().get("pods", NAMESPACE, &sb.id).unwrap();
        dead["status"] = serde_json::json!({"phase": "Failed", "containerStatuses": [{"name": "sandbox", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]});
        fake.store().put("pods", NAMESPACE, dead);
        wait_until("the workspace at risk", 30, || async { c.workspace("agent:sb").await.unwrap().at_risk }).await;
        wait_until("the dead pod removed", 30, || async { fake.store().get("pods", NAMESPACE, &sb.id).is_err() }).await;
        assert!(fake.store().get("secrets", NAMESPACE, &format!("{}-files", sb.id)).is_err(), "the secret outlived its pod");
    });
    server.terminate(10);
}
