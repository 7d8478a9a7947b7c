//! `KubeVolumes` against the fake API server: what a claim carries, terminating claims
//! (ensure waits and never reuses; delete waits for the pods), retries of transient errors and
//! conflicts, watch expiry, and the API_CALLS check.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_core::volume::{AccessMode, VolumeName};
use berth_core::workspace::{Generation, WorkspaceId};
use berth_kube::fake::harness::{KubeHarness, NAMESPACE};
use berth_kube::fake::{FakeApi, Fault};
use berth_kube::{KubeVolumes, ANNOTATION_OWNER, API_CALLS};
use berth_substrate::{volume_labels, Removal, VolumeErrorKind, VolumeSpec, Volumes, LABEL_OWNER};
use serde_json::{json, Value};

const PVC: &str = "persistentvolumeclaims";

fn spec(owner: &str, install: &str) -> VolumeSpec {
    let owner = WorkspaceId::new(owner).expect("owner");
    VolumeSpec {
        name: VolumeName::derive(install, &owner, Generation(1)),
        labels: volume_labels(install, &owner, Generation(1), &BTreeMap::new()),
        size_bytes: 5 << 30,
        storage_class: Some("fast-ssd".into()),
        access_mode: AccessMode::ReadWriteOncePod,
    }
}

fn claim(h: &KubeHarness, name: &VolumeName) -> Value {
    h.fake.store().get(PVC, NAMESPACE, name.as_str()).expect("the claim")
}

/// Waits until the fake has served `n` calls of `verb` on `resource` (the adapter reached that
/// point); the sync point of tests that act while the adapter waits.
async fn served(fake: &FakeApi, verb: &str, resource: &str, n: usize) {
    for _ in 0..500 {
        if fake.calls().iter().filter(|(v, r)| v == verb && r == resource).count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the adapter never made {n} {verb} {resource} calls: {:?}", fake.calls());
}

#[tokio::test]
async fn a_claim_carries_the_workspace_settings() {
    let h = KubeHarness::start().await;
    let vols = h.adapter("inst");
    let s = spec("agent:42", "inst");
    vols.ensure(&s).await.expect("ensure");
    let c = claim(&h, &s.name);
    assert_eq!(c["spec"]["storageClassName"], "fast-ssd");
    assert_eq!(c["spec"]["resources"]["requests"]["storage"], (5u64 << 30).to_string());
    assert_eq!(c["spec"]["accessModes"], json!(["ReadWriteOncePod"]));
    assert_eq!(c["spec"]["volumeMode"], "Filesystem");
    // `agent:42` is no label value: the label is an encoding, the annotation holds it in full.
    let owner_label = c["metadata"]["labels"][LABEL_OWNER].as_str().expect("owner label");
    assert!(owner_label.starts_with("agent-42-"), "{owner_label}");
    assert_eq!(c["metadata"]["annotations"][ANNOTATION_OWNER], "agent:42");
    // A workspace without a storage class leaves the choice to the cluster's default class.
    let mut plain = spec("agent:43", "inst");
    plain.storage_class = None;
    vols.ensure(&plain).await.expect("ensure");
    assert!(claim(&h, &plain.name)["spec"].get("storageClassName").is_none());
}

#[tokio::test]
async fn ensure_waits_for_a_terminating_claim_and_never_reuses_it() {
    let h = KubeHarness::start().await;
    let vols = h.adapter("inst");
    let s = spec("agent:term", "inst");
    vols.ensure(&s).await.expect("ensure");
    let old_uid = claim(&h, &s.name)["metadata"]["uid"].clone();
    h.run_pod("user", s.name.as_str());
    // Someone deletes the claim while the pod uses it: the finalizer keeps it, terminating.
    h.fake.store().delete(PVC, NAMESPACE, s.name.as_str(), &json!({})).expect("delete");
    assert!(!claim(&h, &s.name)["metadata"]["deletionTimestamp"].is_null());

    let waiting = tokio::spawn({
        let (vols, s) = (vols.clone(), s.clone());
        async move { vols.ensure(&s).await }
    });
    served(&h.fake, "watch", PVC, 1).await;
    assert!(!waiting.is_finished(), "ensure returned while the claim was terminating");
    h.fake.store().set_pod_phase(NAMESPACE, "user", "Succeeded").expect("pod done");
    waiting.await.expect("task").expect("ensure after the claim went");
    let new = claim(&h, &s.name);
    assert_ne!(new["metadata"]["uid"], old_uid, "the terminating claim was reused");
    assert!(new["metadata"]["deletionTimestamp"].is_null());
}

#[tokio::test]
async fn ensure_reports_a_claim_that_stays_terminating() {
    let h = KubeHarness::start().await;
    let vols = h.adapter("inst").with_terminating_wait(Duration::from_millis(300));
    let s = spec("agent:stuck", "inst");
    vols.ensure(&s).await.expect("ensure");
    h.run_pod("stuck-user", s.name.as_str());
    h.fake.store().delete(PVC, NAMESPACE, s.name.as_str(), &json!({})).expect("delete");
    let e = vols.ensure(&s).await.expect_err("ensure over a claim that stays terminating");
    assert_eq!(e.kind, VolumeErrorKind::Temporary, "{e}");
    assert!(e.message.contains("terminating") && e.message.contains("pod stuck-user"), "{e}");
}

#[tokio::test]
async fn delete_while_the_pod_is_terminating_waits_then_completes() {
    let h = KubeHarness::start().await;
    let vols = h.adapter("inst");
    let s = spec("agent:drain", "inst");
    vols.ensure(&s).await.expect("ensure");
    h.fake.store().hold_pod_deletions = true;
    h.run_pod("ending", s.name.as_str());
    h.fake.store().delete("pods", NAMESPACE, "ending", &json!({})).expect("delete the pod");
    match vols.delete(&s.name).await.expect("delete while the pod terminates") {
        Removal::Referenced { by } => assert!(by.contains("pod ending") && by.contains("terminating"), "{by}"),
        other => panic!("delete of a claim a terminating pod mounts answered {other:?}"),
    }
    let c = claim(&h, &s.name);
    assert!(c["metadata"]["deletionTimestamp"].is_null(), "a referenced claim was marked for deletion");
    h.fake.store().finish_pod(NAMESPACE, "ending").expect("the pod ends");
    assert_eq!(vols.delete(&s.name).await.expect("delete after the pod ended"), Removal::Removed);
    assert!(h.fake.store().get(PVC, NAMESPACE, s.name.as_str()).is_err());
}

#[tokio::test]
async fn transient_errors_are_retried_and_then_reported() {
    let h = KubeHarness::start().await;
    let vols = h.adapter("inst");
    let s = spec("agent:flaky", "inst");
    h.fake.inject(Fault { retry_after: Some(0), ..Fault::new("create", PVC, 429, 1) });
    h.fake.inject(Fault::new("create", PVC, 503, 1));
    h.fake.inject(Fault::new("list", PVC, 500, 2));
    vols.ensure(&s).await.expect("ensure through a 429 and a 503");
    assert_eq!(vols.list(&BTreeMap::new()).await.expect("list through two 500s").len(), 1);
    let calls = h.fake.calls();
    assert_eq!(calls.iter().filter(|(v, r)| v == "create" && r == PVC).count(), 3, "{calls:?}");
    // More failures than attempts: a temporary error naming the status.
    h.fake.inject(Fault::new("get", PVC, 503, 100));
    let e = vols.delete(&s.name).await.expect_err("delete through endless 503s");
    assert_eq!(e.kind, VolumeErrorKind::Temporary);
    assert!(e.message.contains("503"), "{e}");
}

#[tokio::test]
async fn a_conflicting_delete_is_read_again() {
    let h = KubeHarness::start().await;
    let vols = h.adapter("inst");
    let s = spec("agent:conflict", "inst");
    vols.ensure(&s).await.expect("ensure");
    // The claim changes between the adapter's read and its delete: the precondition on its
    // resourceVersion fails with 409, and the adapter reads it again.
    h.fake.inject(Fault::new("delete", PVC, 409, 1));
    assert_eq!(vols.delete(&s.name).await.expect("delete"), Removal::Removed);
    let gets = h.fake.calls().iter().filter(|(v, r)| v == "get" && r == PVC).count();
    assert!(gets >= 2, "the claim was not read again after the conflict ({gets} reads)");
    // A genuine stale precondition, in the fake itself.
    vols.ensure(&s).await.expect("ensure again");
    let stale = json!({"preconditions": {"resourceVersion": "1"}});
    let e = h.fake.store().delete(PVC, NAMESPACE, s.name.as_str(), &stale).expect_err("stale precondition");
    assert_eq!((e.code, e.reason), (409, "Conflict"));
}

#[tokio::test]
async fn a_watch_that_expires_lists_again() {
    let h = KubeHarness::start().await;
    let vols = h.adapter("inst");
    let s = spec("agent:expire", "inst");
    vols.ensure(&s).await.expect("ensure");
    h.run_pod("holder", s.name.as_str());
    h.fake.store().delete(PVC, NAMESPACE, s.name.as_str(), &json!({})).expect("delete");
    h.fake.store().expire_watches = 2;
    let waiting = tokio::spawn({
        let (vols, s) = (vols.clone(), s.clone());
        async move { vols.ensure(&s).await }
    });
    // Two watches end with 410 Gone; the third stays open.
    served(&h.fake, "watch", PVC, 3).await;
    h.fake.store().bookmark(PVC);
    h.fake.store().set_pod_phase(NAMESPACE, "holder", "Failed").expect("pod failed");
    waiting.await.expect("task").expect("ensure after two expired watches");
    let lists = h.fake.calls().iter().filter(|(v, r)| v == "list" && r == PVC).count();
    assert!(lists >= 3, "each 410 Gone should list again ({lists} lists)");
}

#[tokio::test]
async fn a_call_outside_api_calls_is_refused_and_recorded() {
    let only_list = [API_CALLS.iter().copied().find(|c| c.verb == "list" && c.resource == PVC).expect("list pvc")];
    let fake = FakeApi::start_allowing(&only_list).await;
    let vols = KubeVolumes::new(fake.kube(NAMESPACE), "inst");
    let e = vols.ensure(&spec("agent:rbac", "inst")).await.expect_err("create without the permission");
    assert_eq!(e.kind, VolumeErrorKind::Permanent);
    assert!(e.message.contains("403") && e.message.contains("Role"), "{e}");
    assert_eq!(fake.take_violations(), ["create persistentvolumeclaims"]);
}

#[tokio::test]
#[should_panic(expected = "outside API_CALLS")]
async fn the_fake_fails_a_test_that_calls_outside_api_calls() {
    let fake = FakeApi::start_allowing(&[]).await;
    let vols = KubeVolumes::new(fake.kube(NAMESPACE), "inst");
    let _ = vols.health().await;
}

#[tokio::test]
async fn watches_send_bookmarks_and_gone() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use kube::api::{Api, WatchEvent, WatchParams};
    let h = KubeHarness::start().await;
    h.adapter("inst").ensure(&spec("agent:watch", "inst")).await.expect("ensure");
    let api: Api<PersistentVolumeClaim> = Api::namespaced(h.fake.kube(NAMESPACE).client().clone(), NAMESPACE);
    let version = h.fake.store().version().to_string();
    let mut stream = api.watch(&WatchParams::default().timeout(5), &version).await.expect("watch").boxed();
    h.fake.store().bookmark(PVC);
    match stream.next().await.expect("an event").expect("readable") {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, version),
        other => panic!("expected a bookmark, got {other:?}"),
    }
    h.fake.store().compact();
    let mut old = api.watch(&WatchParams::default(), "1").await.expect("watch from an old version").boxed();
    match old.next().await.expect("an event").expect("readable") {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

/// API_CALLS is exact: the adapter's operations and the node watch, run once each against one
/// fake, make every listed call and no other, so a Role built from the list grants nothing unused.
#[tokio::test]
async fn api_calls_is_exactly_what_the_adapters_call() {
    let h = KubeHarness::start().await;
    let vols = h.adapter("inst");
    let s = spec("agent:calls", "inst");
    vols.health().await.expect("health");
    vols.ensure(&s).await.expect("ensure");
    vols.ensure(&s).await.expect("ensure again (AlreadyExists: get)");
    assert_eq!(vols.list(&BTreeMap::new()).await.expect("list").len(), 1);
    // A claim in use: delete lists the pods; once terminating, ensure watches it until it goes.
    h.run_pod("keeps", s.name.as_str());
    assert!(matches!(vols.delete(&s.name).await.expect("delete in use"), Removal::Referenced { .. }));
    h.fake.store().delete(PVC, NAMESPACE, s.name.as_str(), &json!({})).expect("mark terminating");
    let ensuring = tokio::spawn({
        let (vols, s) = (vols.clone(), s.clone());
        async move { vols.ensure(&s).await }
    });
    served(&h.fake, "watch", PVC, 1).await;
    h.fake.store().set_pod_phase(NAMESPACE, "keeps", "Succeeded").expect("pod done");
    ensuring.await.expect("task").expect("ensure over the terminating claim");
    assert_eq!(vols.delete(&s.name).await.expect("delete"), Removal::Removed);
    h.fake.store().put("nodes", "", json!({"metadata": {"name": "n1"}, "spec": {}}));
    let mut nodes = berth_kube::NodeWatch::new(h.fake.kube(NAMESPACE)).spawn();
    assert_eq!(nodes.recv().await.expect("a node").name, "n1");
    h.fake.store().put("nodes", "", json!({"metadata": {"name": "n1"}, "spec": {"unschedulable": true}}));
    assert!(nodes.recv().await.expect("a change").cordoned);
    // Sandboxes: start (secret, pod), rename (patch), deaths (list, watch), wait (get), stop
    // (delete both).
    use berth_substrate::Sandboxes;
    let settings = berth_kube::PodSettings { berth_image: "b".into(), berth_in_image: "/b".into(), fs_group: None };
    let sb = berth_kube::KubeSandboxes::new(h.fake.kube(NAMESPACE), settings);
    let sandbox = berth_substrate::SandboxSpec {
        name: "sb-calls".into(),
        image: "i".into(),
        command: vec!["sh".into()],
        env: vec![],
        volume: None,
        binds: vec![],
        private_file: Some(berth_substrate::PrivateFile { path: "/berth/spec.json".into(), content: b"{}".to_vec() }),
        user: (1000, 1000),
        memory_bytes: None,
        cpus: None,
        stop_timeout_secs: 5,
        network: None,
        labels: [("berth.sandbox".to_string(), "calls".to_string())].into(),
    };
    sb.start(&sandbox).await.expect("start");
    sb.rename("sb-calls", "sb-renamed").await.expect("rename");
    let mut deaths = sb.deaths(sandbox.labels.clone());
    served(&h.fake, "watch", "pods", 1).await;
    h.fake.store().set_pod_phase(NAMESPACE, "sb-calls", "Succeeded").expect("ended");
    assert_eq!(deaths.recv().await.expect("a death").id, "sb-calls");
    assert!(sb.wait("sb-calls", 5).await.expect("wait").is_some());
    sb.logs("sb-calls", 10).await.expect("logs");
    assert!(sb.stop("sb-calls", 1).await.expect("stop").is_some());
    let mut made: Vec<(String, String)> = h.fake.calls();
    made.sort();
    made.dedup();
    let mut listed: Vec<(String, String)> =
        API_CALLS.iter().map(|c| (c.verb.to_string(), c.resource.to_string())).collect();
    listed.sort();
    assert_eq!(made, listed, "API_CALLS differs from the calls the adapters make");
}
