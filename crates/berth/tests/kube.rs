//! `berth serve --substrate kubernetes` as a real process against the fake Kubernetes API
//! server (in this test's process, reached through a kubeconfig): killed with SIGKILL in the
//! middle of a GC sweep and restarted (nothing is deleted twice), and two replicas on one
//! PostgreSQL sharing the work (every claim deleted exactly once), an ensure over a claim that
//! is terminating (waits, then a new claim), orphans found by label selector, node cordons
//! driving drains, and an API server that does not answer. With a kubelet of the test's own
//! (`util/kubelet.rs`: a pod's command as a local process) and an S3 store: a warm pool whose
//! pods never hold a ReadWriteOnce claim that is not their lease's, and a pod that ended
//! uncleanly rescued by a pod mounting the claim.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_api::{Client, EnsureWorkspace, GcRun, WorkspaceState};
use berth_core::volume::VolumeName;
use berth_core::workspace::{Generation, WorkspaceId};
use berth_kube::fake::harness::NAMESPACE;
use berth_kube::fake::store::{claims_of, finished};
use berth_kube::fake::FakeApi;
use berth_kube::ANNOTATION_NAME;
use serde_json::Value;

use util::kubelet::RunningPod;
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
    let mut env = env.to_vec();
    env.push(("KUBECONFIG", kubeconfig.to_str().unwrap()));
    let substrate = ["--substrate", "kubernetes", "--namespace", NAMESPACE];
    Server::start_admin(tmp, &tmp.join("data"), log, &[&substrate, extra].concat(), &env)
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
    // At debug level, for the secret scan.
    let server =
        start(tmp.path(), &config, "s.log", &["--sandbox-berth-image", "berth:test"], &[("BERTH_LOG", "debug")]);
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
        let spec = util::decode_base64(secret["data"]["spec.json"].as_str().expect("the spec in the secret"));
        let spec: serde_json::Value = serde_json::from_slice(&spec).unwrap();
        let token = spec["session"]["token"].as_str().expect("a sandbox token in the spec").to_string();

        // The pod runs, then dies without a final snapshot (OOM-killed).
        fake.store().set_pod_phase(NAMESPACE, &sb.id, "Running").unwrap();
        let mut dead = fake.store().get("pods", NAMESPACE, &sb.id).unwrap();
        dead["status"] = serde_json::json!({"phase": "Failed", "containerStatuses": [{"name": "sandbox", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]});
        fake.store().put("pods", NAMESPACE, dead);
        wait_until("the workspace at risk", 30, || async { c.workspace("agent:sb").await.unwrap().at_risk }).await;
        wait_until("the dead pod removed", 30, || async { fake.store().get("pods", NAMESPACE, &sb.id).is_err() }).await;
        assert!(fake.store().get("secrets", NAMESPACE, &format!("{}-files", sb.id)).is_err(), "the secret outlived its pod");
        // The sandbox token was in the secret and is nowhere else: not in the pod (its command,
        // environment, annotations), the claims, the server's log at debug level, or the API.
        let claims = fake.store().list(PVC, Some(NAMESPACE), &Default::default(), &Default::default());
        let q = berth_api::client::EventQuery { owner: Some("agent:sb".into()), ..Default::default() };
        util::secrets::Scan::new()
            .secret("the sandbox token", &token)
            .secret("the admin token", ADMIN)
            .json("the pod", &pod)
            .json("the claims", &claims)
            .json("the sandbox as started", &sb)
            .json("the workspace", &c.workspace("agent:sb").await.unwrap())
            .json("the events", &c.events(&q).await.unwrap().items)
            .debug_log(&server.log)
            .assert_clean();
    });
    server.terminate(10);
}

/// The S3 store of a test (`./dev services`), and its endpoint for `serve`'s environment.
fn s3_store(hint: &str) -> (String, String) {
    let store = format!("s3://{}/ws", berth_testkit::services::s3_bucket(hint));
    (store, berth_testkit::services::s3_endpoint())
}

fn pod(fake: &FakeApi, name: &str) -> Value {
    fake.store().get("pods", NAMESPACE, name).unwrap()
}

fn pods(fake: &FakeApi) -> Vec<Value> {
    fake.store().list("pods", Some(NAMESPACE), &Default::default(), &Default::default())
}

/// A pod's sandbox name: a claimed warm pod's is its annotation.
fn sandbox_name(pod: &Value) -> String {
    let renamed = pod["metadata"]["annotations"][ANNOTATION_NAME].as_str();
    renamed.or(pod["metadata"]["name"].as_str()).unwrap_or_default().to_string()
}

/// Pods running (neither finished nor terminating) that mount a claim of `owners`' workspaces
/// without being the pod of the session holding that workspace's lease. The pods are read
/// before the lease: a sandbox's session is attached before its pod is made.
async fn double_mounts(fake: &FakeApi, c: &Client, owners: &[&str]) -> Vec<String> {
    let pods = pods(fake);
    let mut bad = Vec::new();
    for owner in owners {
        let Ok(ws) = c.workspace(owner).await else { continue };
        let holder = ws.lease.map(|l| l.instance_id);
        for pod in &pods {
            let running = !finished(pod) && pod["metadata"]["deletionTimestamp"].is_null();
            if running && claims_of(pod).contains(&ws.volume.name) && holder.as_deref() != Some(&sandbox_name(pod)) {
                bad.push(format!(
                    "pod {} mounts claim {} of {owner}, whose lease {holder:?} holds",
                    sandbox_name(pod),
                    ws.volume.name
                ));
            }
        }
    }
    bad
}

/// The idle warm pods (their phase set `Running`, as a kubelet would, once seen).
fn idle_warm_pods(fake: &FakeApi) -> Vec<String> {
    let mut out = Vec::new();
    for p in pods(fake) {
        let name = p["metadata"]["name"].as_str().unwrap().to_string();
        if sandbox_name(&p).starts_with("warm-") && !finished(&p) {
            if p["status"]["phase"] == "Pending" {
                fake.store().set_pod_phase(NAMESPACE, &name, "Running").unwrap();
            }
            out.push(name);
        }
    }
    out
}

/// The warm token in pod `name`'s Secret.
fn warm_token(fake: &FakeApi, name: &str) -> String {
    let secret = fake.store().get("secrets", NAMESPACE, &format!("{name}-files")).unwrap();
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(secret).unwrap();
    let warm: Value = serde_json::from_slice(&secret.data.unwrap()["warm.json"].0).unwrap();
    warm["token"].as_str().unwrap().to_string()
}

/// Stops `owner`'s sandbox whose pod runs as `running`: the deletion leaves the pod
/// terminating, the kubelet (this test) sends SIGTERM, the supervisor drains and exits, and the
/// pod goes.
fn stop_running(
    rt: &tokio::runtime::Runtime,
    fake: &FakeApi,
    c: &Client,
    owner: &str,
    pod_id: &str,
    mut running: RunningPod,
) {
    fake.store().hold_pod_deletions = true;
    let stop = {
        let (c, owner) = (c.clone(), owner.to_string());
        rt.spawn(async move { c.stop_sandbox(&owner).await })
    };
    rt.block_on(wait_until("the pod terminating", 30, || async {
        !pod(fake, pod_id)["metadata"]["deletionTimestamp"].is_null()
    }));
    let what = format!("pod {pod_id} (its output: {})", running.log.display());
    util::serve::terminate(&mut running.child, 60, &what);
    fake.store().finish_pod(NAMESPACE, pod_id).unwrap();
    fake.store().hold_pod_deletions = false;
    let stopped = rt.block_on(stop).unwrap().unwrap();
    assert_eq!(stopped.stopped.len(), 1, "{stopped:?}");
}

#[test]
fn a_warm_pool_with_rwo_claims_never_double_mounts() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let fake = Arc::new(rt.block_on(FakeApi::start()));
    let config = kubeconfig(tmp.path(), &fake);
    let (store, endpoint) = s3_store("kube-warm");
    let extra = [
        "--sandbox-berth-image",
        "berth:test",
        "--warm-pool",
        "agent:1=2",
        "--store",
        &store,
        "--gc-interval",
        "3600s",
    ];
    let server =
        start(tmp.path(), &config, "w.log", &extra, &[("AWS_ENDPOINT_URL", &endpoint), ("BERTH_LOG", "debug")]);
    let c = server.client(ADMIN);
    let owners = ["agent:warm", "agent:cold"];
    // Every warm token, and every place it must not be: the pods, the API and the logs.
    let mut scan = util::secrets::Scan::new();
    scan.secret("the admin token", ADMIN);
    let kubelet = tmp.path().join("kubelet");

    // Two warm pods, mounting no claim, each with a token of its own that is nobody's yet.
    let warm = rt.block_on(berth_testkit::eventually_async(60, "two warm pods", || async {
        let w = idle_warm_pods(&fake);
        (w.len() == 2).then_some(w)
    }));
    for name in &warm {
        let p = pod(&fake, name);
        assert!(claims_of(&p).is_empty(), "a warm pod mounts a claim: {p}");
        let token = warm_token(&fake, name);
        scan.secret(&format!("the token of warm pod {name}"), &token);
        assert!(!p.to_string().contains(&token), "the warm token is in the pod: {p}");
        assert_eq!(p["spec"]["containers"][0]["command"][2], "wait", "{p}");
        let e = rt.block_on(Client::new(&server.url, token).unwrap().sandbox_claim()).unwrap_err();
        assert_eq!(e.status(), Some(401), "an unclaimed warm pod's token is nobody's: {e}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(std::sync::Mutex::new(Vec::new()));
    let checker = {
        let (fake, c, stop, bad) = (fake.clone(), c.clone(), stop.clone(), bad.clone());
        rt.spawn(async move {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let found = double_mounts(&fake, &c, &owners).await;
                bad.lock().unwrap().extend(found);
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            rounds
        })
    };

    // A start claims a warm pod: named by an annotation, its token now the session's, the
    // claim (with no credential in it) fetched by the pod's own supervisor.
    let body = |script: &str| berth_api::StartSandbox {
        image: "agent:1".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: [("GREETING".to_string(), "hello".to_string())].into(),
        grace_secs: Some(20),
        ..Default::default()
    };
    let first =
        rt.block_on(c.start_sandbox(owners[0], &body("echo \"$GREETING\" > note.txt; exec sleep 600"))).unwrap();
    assert!(warm.contains(&first.id) && first.name.starts_with("sb-"), "{first:?}");
    let p = pod(&fake, &first.id);
    assert!(claims_of(&p).is_empty(), "a claimed warm pod mounts a claim: {p}");
    let ws = rt.block_on(c.workspace(owners[0])).unwrap();
    let rwo = fake.store().get(PVC, NAMESPACE, ws.volume.name.as_str()).unwrap();
    assert_eq!(rwo["spec"]["accessModes"], serde_json::json!(["ReadWriteOnce"]), "{rwo}");
    assert_eq!(ws.lease.as_ref().map(|l| l.instance_id.as_str()), Some(first.name.as_str()));
    let token = warm_token(&fake, &first.id);
    let claim = rt.block_on(Client::new(&server.url, token.clone()).unwrap().sandbox_claim()).unwrap();
    assert_eq!(claim["spec"]["session"]["token"], "", "the claim carries no credential: {claim}");
    assert_eq!(claim["spec"]["session"]["session_id"], ws.lease.as_ref().unwrap().session_id.as_str());
    assert_eq!(claim["command"][0], "sh");
    scan.json("the claim as fetched", &claim);
    let running = util::kubelet::run_pod(&fake, &first.id, &kubelet);
    let note = running.path("/workspace/note.txt");
    rt.block_on(wait_until("the agent command ran", 60, || async {
        std::fs::read_to_string(&note).is_ok_and(|t| t.trim() == "hello")
    }));
    let spec = running.path("/berth/run/spec.json");
    assert_eq!(std::fs::metadata(&spec).unwrap().permissions().mode() & 0o777, 0o400);
    assert!(std::fs::read_to_string(&spec).unwrap().contains(&token), "the fetched spec holds the pod's own token");
    scan.file(&running.log).tree(&running.path("/workspace"));
    stop_running(&rt, &fake, &c, owners[0], &first.id, running);
    let ws = rt.block_on(c.workspace(owners[0])).unwrap();
    assert!(!ws.at_risk && ws.latest_snapshot.is_some(), "the drain published a final snapshot: {ws:?}");

    // The next warm start restores the work from the store into its own emptyDir.
    let second = rt.block_on(c.start_sandbox(owners[0], &body("cp note.txt seen.txt; exec sleep 600"))).unwrap();
    assert!(second.id.starts_with("warm-") && second.id != first.id, "{second:?}");
    let running = util::kubelet::run_pod(&fake, &second.id, &kubelet);
    let seen = running.path("/workspace/seen.txt");
    rt.block_on(wait_until("the restored work seen", 60, || async {
        std::fs::read_to_string(&seen).is_ok_and(|t| t.trim() == "hello")
    }));
    scan.file(&running.log).tree(&running.path("/workspace"));
    stop_running(&rt, &fake, &c, owners[0], &second.id, running);

    // A sandbox with limits is cold: its pod mounts the claim, and its session holds the lease.
    let cold = berth_api::StartSandbox { memory_bytes: Some(256 << 20), ..body("sleep 600") };
    let sb = rt.block_on(c.start_sandbox(owners[1], &cold)).unwrap();
    let ws = rt.block_on(c.workspace(owners[1])).unwrap();
    assert_eq!(claims_of(&pod(&fake, &sb.id)), [ws.volume.name.as_str()]);
    rt.block_on(wait_until("the pool refilled", 60, || async { idle_warm_pods(&fake).len() == 2 }));
    rt.block_on(c.stop_sandbox(owners[1])).unwrap();

    // The check sees a pod on a claim whose lease nobody holds (the mistake it looks for).
    let ws = rt.block_on(c.workspace(owners[1])).unwrap();
    let intruder = serde_json::json!({"metadata": {"name": "intruder"}, "spec": {
        "containers": [{"name": "main", "image": "busybox"}],
        "volumes": [{"name": "ws", "persistentVolumeClaim": {"claimName": ws.volume.name}}]}});
    fake.store().create("pods", NAMESPACE, intruder).unwrap();
    rt.block_on(wait_until("the intruder seen", 30, || async {
        bad.lock().unwrap().iter().any(|b| b.contains("intruder"))
    }));
    fake.store().delete("pods", NAMESPACE, "intruder", &serde_json::json!({})).unwrap();

    stop.store(true, Ordering::Relaxed);
    let rounds = rt.block_on(checker).unwrap();
    assert!(rounds > 10, "the check ran {rounds} times");
    let bad: Vec<String> = bad.lock().unwrap().iter().filter(|b| !b.contains("intruder")).cloned().collect();
    assert!(bad.is_empty(), "a claim was held by a pod that is not the lease holder's: {bad:?}");
    for p in pods(&fake) {
        if sandbox_name(&p).starts_with("warm-") {
            assert!(claims_of(&p).is_empty(), "{p}");
        }
    }
    rt.block_on(async {
        scan.json("the pods", &pods(&fake))
            .json("the sandboxes", &c.sandboxes().await.unwrap())
            .json("the workspace", &c.workspace(owners[0]).await.unwrap())
            .json(
                "the events",
                &c.events(&berth_api::client::EventQuery { owner: Some(owners[0].into()), ..Default::default() })
                    .await
                    .unwrap()
                    .items,
            )
            .debug_log(&server.log)
            .assert_clean();
    });
    server.terminate(10);
}

#[test]
fn an_unclean_pod_end_is_rescued_by_a_pod_on_the_claim() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let fake = Arc::new(rt.block_on(FakeApi::start()));
    let config = kubeconfig(tmp.path(), &fake);
    let (store, endpoint) = s3_store("kube-rescue");
    let extra = [
        "--sandbox-berth-image",
        "berth:test",
        "--rescue-image",
        "rescue:1",
        "--store",
        &store,
        "--gc-interval",
        "3600s",
    ];
    let server = start(tmp.path(), &config, "r.log", &extra, &[("AWS_ENDPOINT_URL", &endpoint)]);
    let c = server.client(ADMIN);
    let owner = "agent:rescued";
    let kubelet = tmp.path().join("kubelet");
    let body = berth_api::StartSandbox {
        image: "agent:1".into(),
        command: vec!["sh".into(), "-c".into(), "echo saved > saved.txt; exec sleep 600".into()],
        grace_secs: Some(20),
        interval_secs: Some(3600),
        ..Default::default()
    };
    let sb = rt.block_on(c.start_sandbox(owner, &body)).unwrap();
    let ws = rt.block_on(c.workspace(owner)).unwrap();
    let claim = util::kubelet::claim_dir(&kubelet, &ws.volume.name);
    let mut running = util::kubelet::run_pod(&fake, &sb.id, &kubelet);
    fake.store().set_pod_phase(NAMESPACE, &sb.id, "Running").unwrap();
    rt.block_on(wait_until("a snapshot published", 60, || async {
        c.snapshots(owner).await.map(|s| !s.items.is_empty()).unwrap_or(false)
    }));
    // The pod ends uncleanly (SIGKILL): the workspace is at risk, the pod removed.
    util::serve::signal(&running.child, rustix::process::Signal::KILL);
    running.child.wait().unwrap();
    util::kubelet::end_pod(&fake, &sb.id, 137, "Error");
    rt.block_on(wait_until("at risk", 30, || async { c.workspace(owner).await.unwrap().at_risk }));
    rt.block_on(wait_until("the dead pod removed", 30, || async {
        fake.store().get("pods", NAMESPACE, &sb.id).is_err()
    }));
    // Work after the last snapshot: only the claim has it.
    std::fs::write(claim.join("unsaved.txt"), b"written after the last snapshot").unwrap();
    let expected = util::read_tree(&claim).without(".berth");

    rt.block_on(c.close(owner)).unwrap();
    let gc = {
        let c = c.clone();
        rt.spawn(async move { c.gc_run(&GcRun { dry_run: false, orphans: false, force: false }).await })
    };
    // The rescue job: a pod of the rescue image mounting the claim read-only, run to its end.
    let rescue = rt.block_on(berth_testkit::eventually_async(60, "a rescue pod", || async {
        pods(&fake).into_iter().find(|p| p["metadata"]["labels"]["berth.rescue"].is_string())
    }));
    let name = rescue["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(rescue["spec"]["containers"][0]["image"], "rescue:1", "{rescue}");
    assert_eq!(claims_of(&rescue), [ws.volume.name.as_str()]);
    let volume =
        rescue["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["persistentVolumeClaim"].is_object()).unwrap();
    assert_eq!(volume["persistentVolumeClaim"]["readOnly"], true, "{rescue}");
    let mount = rescue["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/workspace")
        .unwrap();
    assert_eq!(mount["readOnly"], true, "{rescue}");
    fake.store().set_pod_phase(NAMESPACE, &name, "Running").unwrap();
    let mut job = util::kubelet::run_pod(&fake, &name, &kubelet);
    let status = job.child.wait().unwrap();
    let output = job.output();
    fake.store().set_logs(NAMESPACE, &name, &output);
    util::kubelet::end_pod(&fake, &name, status.code().unwrap_or(1), "Completed");
    assert!(status.success(), "the rescue job failed: {output}");

    let report = rt.block_on(gc).unwrap().unwrap();
    let mine: Vec<_> = report.volumes.iter().filter(|v| v.owner == owner).collect();
    assert_eq!(mine.len(), 1, "{report:?}");
    assert_eq!(mine[0].outcome, "removed", "{report:?}");
    rt.block_on(async {
        let w = c.workspace(owner).await.unwrap();
        assert!(!w.at_risk, "{w:?}");
        let rescued: Vec<String> = events(&c, "rescue_succeeded").await.into_iter().filter_map(|e| e.owner).collect();
        assert_eq!(rescued, [owner.to_string()]);
    });
    assert!(fake.store().get(PVC, NAMESPACE, &ws.volume.name).is_err(), "the claim is deleted once rescued");
    assert!(fake.store().get("pods", NAMESPACE, &name).is_err(), "the rescue pod was left behind");
    let restored = tmp.path().join("restored");
    let out = util::berth(tmp.path())
        .env("AWS_ENDPOINT_URL", &endpoint)
        .args(["snapshot", "restore", "--store", &store, "--workspace", owner, restored.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    util::assert_same_tree(&expected, &util::read_tree(&restored).without(".berth"));
    server.terminate(10);
}

#[test]
fn agent_wait_fetch_outlasts_an_absent_server_and_leaves_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let (warm, out, log) = (tmp.path().join("warm.json"), tmp.path().join("spec.json"), tmp.path().join("wait.log"));
    let fetch = |warm: &Path| {
        let mut c = util::berth(tmp.path());
        c.args(["agent", "wait", "--fetch", warm.to_str().unwrap(), "--spec-out", out.to_str().unwrap()]);
        c
    };
    util::Run::of(fetch(&warm)).fails(1).stderr_has(&["warm.json", "cannot be read"]);
    std::fs::write(&warm, br#"{"server": "http://127.0.0.1:1", "token": "bst_0123456789abcdef"}"#).unwrap();
    let mut c = fetch(&warm);
    c.env("BERTH_LOG", "info").stderr(std::fs::File::create(&log).unwrap());
    let mut child = c.spawn().unwrap();
    let failures = || std::fs::read_to_string(&log).unwrap_or_default().matches("claim_fetch_failed").count();
    berth_testkit::eventually(30, "the failed fetch said", || (failures() > 0).then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "it gave up waiting");
    util::serve::terminate(&mut child, 10, "berth agent wait --fetch");
    assert_eq!(failures(), 1, "a server away is said once per 100 asks: {}", std::fs::read_to_string(&log).unwrap());
    assert!(!out.exists(), "a spec was written without a claim");
}

#[test]
fn a_claimed_warm_pod_that_never_fetches_is_removed_a_lease_after_its_session_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let fake = rt.block_on(FakeApi::start());
    let config = kubeconfig(tmp.path(), &fake);
    let extra = ["--sandbox-berth-image", "berth:test", "--warm-pool", "agent:1=1", "--lease-ttl", "2s"];
    let server = start(tmp.path(), &config, "a.log", &extra, &[]);
    let c = server.client(ADMIN);
    rt.block_on(async {
        wait_until("a warm pod", 60, || async { idle_warm_pods(&fake).len() == 1 }).await;
        let body = berth_api::StartSandbox {
            image: "agent:1".into(),
            command: vec!["sleep".into(), "600".into()],
            ..Default::default()
        };
        // Claimed, but nothing runs it: it never fetches its claim, and the lease expires.
        let sb = c.start_sandbox("agent:lost", &body).await.unwrap();
        assert!(sb.id.starts_with("warm-"), "{sb:?}");
        wait_until("the lease expired", 30, || async { c.workspace("agent:lost").await.unwrap().lease.is_none() })
            .await;
        wait_until("the abandoned pod removed", 30, || async { fake.store().get("pods", NAMESPACE, &sb.id).is_err() })
            .await;
        assert!(fake.store().get("secrets", NAMESPACE, &format!("{}-files", sb.id)).is_err());
        wait_until("the pool refilled", 30, || async { idle_warm_pods(&fake).len() == 1 }).await;
    });
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("warm_abandoned"), "{log}");
    server.terminate(10);
}
