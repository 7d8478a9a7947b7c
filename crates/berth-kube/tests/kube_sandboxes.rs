//! `KubeSandboxes` against the fake API server: the pod berth makes (init container, the
//! private file as a 0400 Secret, grace, fsGroup, limits, labels), deaths from the watch, stop,
//! wait, the clean-up of a start that failed, a warm pod (no claim; renamed by an annotation)
//! and the fake's merge patch. Nothing runs containers here: the tests move
//! pods through their phases, so this shows what berth asks of the API and how it reads the
//! answers, not that a kubelet runs the pod.

use std::collections::BTreeMap;

use berth_core::volume::VolumeName;
use berth_kube::fake::harness::{KubeHarness, NAMESPACE};
use berth_kube::fake::Fault;
use berth_kube::{KubeSandboxes, PodSettings};
use berth_substrate::{HandOver, PrivateFile, SandboxSpec, Sandboxes, LABEL_OWNER};
use serde_json::{json, Value};

fn sandboxes(h: &KubeHarness) -> KubeSandboxes {
    let settings = PodSettings {
        berth_image: "berth:test".into(),
        berth_in_image: "/usr/local/bin/berth".into(),
        fs_group: Some(2000),
    };
    KubeSandboxes::new(h.fake.kube(NAMESPACE), settings)
}

fn spec(name: &str) -> SandboxSpec {
    SandboxSpec {
        name: name.into(),
        image: "agent:1".into(),
        command: vec![
            "/berth/bin/berth".into(),
            "agent".into(),
            "run".into(),
            "--spec".into(),
            "/berth/spec.json".into(),
            "--".into(),
            "sh".into(),
        ],
        env: vec!["A=1".into(), "B=x=y".into()],
        volume: Some(VolumeName::new("ws-agent-42-abc").unwrap()),
        binds: vec![("/usr/bin/berth".into(), "/berth/bin/berth".into(), true)],
        private_file: Some(PrivateFile {
            path: "/berth/spec.json".into(),
            content: b"{\"token\":\"secret-token\"}".to_vec(),
        }),
        user: (1000, 1000),
        memory_bytes: Some(512 << 20),
        cpus: Some(1.5),
        stop_timeout_secs: 40,
        network: None,
        labels: [("berth.managed".to_string(), "true".to_string()), (LABEL_OWNER.to_string(), "agent:42".to_string())]
            .into(),
    }
}

fn pod(h: &KubeHarness, name: &str) -> Value {
    h.fake.store().get("pods", NAMESPACE, name).expect("the pod")
}

fn end_pod(h: &KubeHarness, name: &str, phase: &str, exit: i32, reason: &str) {
    let mut p = pod(h, name);
    p["status"] = json!({"phase": phase, "containerStatuses": [{"name": "sandbox", "state": {"terminated": {"exitCode": exit, "reason": reason}}}]});
    h.fake.store().put("pods", NAMESPACE, p);
}

#[tokio::test]
async fn the_pod_carries_the_sandbox_spec() {
    let h = KubeHarness::start().await;
    let sb = sandboxes(&h);
    let info = sb.start(&spec("sb-one")).await.expect("start");
    assert_eq!((info.id.as_str(), info.state.as_str()), ("sb-one", "created"));
    assert_eq!(info.labels[LABEL_OWNER], "agent:42");
    let p = pod(&h, "sb-one");
    let s = &p["spec"];
    assert_eq!(s["restartPolicy"], "Never");
    assert_eq!(s["terminationGracePeriodSeconds"], 40);
    assert_eq!(s["securityContext"]["fsGroup"], 2000);
    assert_eq!(
        (s["securityContext"]["runAsUser"].clone(), s["securityContext"]["runAsGroup"].clone()),
        (json!(1000), json!(1000))
    );
    let init = &s["initContainers"][0];
    assert_eq!(init["image"], "berth:test");
    assert_eq!(init["command"], json!(["cp", "/usr/local/bin/berth", "/berth/bin/berth"]));
    let main = &s["containers"][0];
    assert_eq!(main["image"], "agent:1");
    assert_eq!(main["command"][0], "/berth/bin/berth");
    assert_eq!(main["env"], json!([{"name": "A", "value": "1"}, {"name": "B", "value": "x=y"}]));
    assert_eq!(main["resources"]["limits"], json!({"memory": (512u64 << 20).to_string(), "cpu": "1500m"}));
    assert_eq!(main["resources"]["requests"], main["resources"]["limits"]);
    let mounts = main["volumeMounts"].as_array().unwrap();
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("no mount at {path}: {mounts:?}"))
    };
    assert_eq!(mount("/berth/bin")["readOnly"], true);
    assert_eq!(mount("/workspace")["name"], "workspace");
    assert_eq!(mount("/berth/spec.json")["subPath"], "spec.json");
    let volumes = s["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).cloned().unwrap();
    assert_eq!(volume("workspace")["persistentVolumeClaim"]["claimName"], "ws-agent-42-abc");
    assert!(volume("berth-bin")["emptyDir"].is_object());
    assert_eq!(volume("files")["secret"]["secretName"], "sb-one-files");
    assert_eq!(volume("files")["secret"]["defaultMode"], 0o400);
    // The token is in the Secret only: never in the pod (env, command, annotations).
    assert!(!p.to_string().contains("secret-token"), "the token leaked into the pod: {p}");
    let secret = h.fake.store().get("secrets", NAMESPACE, "sb-one-files").expect("the secret");
    assert!(secret["data"]["spec.json"].is_string());
    assert_eq!(sb.list(&BTreeMap::new()).await.expect("list").len(), 1);
}

#[tokio::test]
async fn deaths_are_reported_once_with_how_the_pod_ended() {
    let h = KubeHarness::start().await;
    let sb = sandboxes(&h);
    let mut early = spec("sb-early");
    early.volume = None;
    sb.start(&early).await.expect("start");
    end_pod(&h, "sb-early", "Succeeded", 0, "Completed");
    let selector: BTreeMap<String, String> = [("berth.managed".to_string(), "true".to_string())].into();
    let mut deaths = sb.deaths(selector);
    let d = deaths.recv().await.expect("the pod that ended before the watch");
    assert_eq!((d.id.as_str(), d.ended.exit_code, d.ended.oom_killed), ("sb-early", Some(0), false));
    let mut late = spec("sb-late");
    late.volume = None;
    sb.start(&late).await.expect("start");
    h.fake.store().set_pod_phase(NAMESPACE, "sb-late", "Running").unwrap();
    end_pod(&h, "sb-late", "Failed", 137, "OOMKilled");
    let d = deaths.recv().await.expect("the pod that ended while watched");
    assert_eq!((d.id.as_str(), d.ended.exit_code, d.ended.oom_killed), ("sb-late", Some(137), true));
    assert_eq!(d.labels[LABEL_OWNER], "agent:42");
    // Ended pods seen again (a later modification) are not reported twice.
    end_pod(&h, "sb-late", "Failed", 137, "OOMKilled");
    let again = tokio::time::timeout(std::time::Duration::from_millis(300), deaths.recv()).await;
    assert!(again.is_err(), "a death was reported twice: {again:?}");
}

#[tokio::test]
async fn stop_wait_and_remove() {
    let h = KubeHarness::start().await;
    let sb = sandboxes(&h);
    sb.start(&spec("sb-stop")).await.expect("start");
    h.fake.store().set_pod_phase(NAMESPACE, "sb-stop", "Running").unwrap();
    let ended = sb.stop("sb-stop", 5).await.expect("stop").expect("it existed");
    assert_eq!(ended.exit_code, None);
    assert!(h.fake.store().get("pods", NAMESPACE, "sb-stop").is_err());
    assert!(h.fake.store().get("secrets", NAMESPACE, "sb-stop-files").is_err(), "the secret outlived its pod");
    assert_eq!(sb.stop("sb-stop", 5).await.expect("stop again"), None);

    sb.start(&spec("sb-wait")).await.expect("start");
    let waiting = tokio::spawn({
        let sb = sb.clone();
        async move { sb.wait("sb-wait", 30).await }
    });
    end_pod(&h, "sb-wait", "Succeeded", 0, "Completed");
    assert_eq!(waiting.await.unwrap().expect("wait").expect("ended").exit_code, Some(0));
    sb.remove("sb-wait").await.expect("remove");
    sb.remove("sb-wait").await.expect("remove again");
    assert!(sb.list(&BTreeMap::new()).await.expect("list").is_empty());
}

#[tokio::test]
async fn a_start_that_fails_leaves_nothing() {
    let h = KubeHarness::start().await;
    let sb = sandboxes(&h);
    h.fake.inject(Fault::new("create", "pods", 422, 1));
    sb.start(&spec("sb-bad")).await.expect_err("start against a refusing server");
    assert!(h.fake.store().get("secrets", NAMESPACE, "sb-bad-files").is_err(), "the secret stayed");
    let mut bind = spec("sb-bind");
    bind.binds.push(("/srv/store".into(), "/srv/store".into(), false));
    let e = sb.start(&bind).await.expect_err("a host bind");
    assert!(e.message.contains("/srv/store") && e.message.contains("s3://"), "{e}");
    assert!(h.fake.store().get("secrets", NAMESPACE, "sb-bind-files").is_err());
}

#[tokio::test]
async fn a_rescue_job_mounts_the_claim_read_only_and_its_logs_are_read() {
    let h = KubeHarness::start().await;
    let sb = sandboxes(&h);
    // The rescue job's spec: no volume, the claim bound read-only at /workspace.
    let mut job = spec("rescue-agent-42");
    job.volume = None;
    job.private_file = None;
    job.binds.push(("ws-agent-42-abc".into(), "/workspace".into(), true));
    sb.start(&job).await.expect("start");
    let p = pod(&h, "rescue-agent-42");
    let volumes = p["spec"]["volumes"].as_array().unwrap();
    let ws = volumes.iter().find(|v| v["name"] == "workspace").unwrap();
    assert_eq!(ws["persistentVolumeClaim"], json!({"claimName": "ws-agent-42-abc", "readOnly": true}));
    let mounts = p["spec"]["containers"][0]["volumeMounts"].as_array().unwrap();
    assert_eq!(mounts.iter().find(|m| m["mountPath"] == "/workspace").unwrap()["readOnly"], true);
    h.fake.store().set_logs(NAMESPACE, "rescue-agent-42", "one\ntwo\n{\n  \"snapshot\": \"x\"\n}\n");
    assert_eq!(sb.logs("rescue-agent-42", 3).await.expect("logs"), "{\n  \"snapshot\": \"x\"\n}\n");
    // A sandbox's own claim is read-write.
    sb.start(&spec("sb-rw")).await.expect("start");
    let p = pod(&h, "sb-rw");
    let ws = p["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "workspace").cloned().unwrap();
    assert_eq!(ws["persistentVolumeClaim"]["readOnly"], false);
}

#[tokio::test]
async fn a_warm_pod_mounts_no_claim_and_a_rename_names_it() {
    let h = KubeHarness::start().await;
    let sb = sandboxes(&h);
    assert_eq!(sb.hand_over(), HandOver::Fetch);
    let mut warm = spec("warm-abc");
    warm.volume = None;
    warm.private_file = Some(PrivateFile { path: "/berth/warm.json".into(), content: b"{\"token\":\"t\"}".to_vec() });
    let info = sb.start(&warm).await.expect("start");
    assert_eq!(info.name, "warm-abc");
    let p = pod(&h, "warm-abc");
    let volumes = p["spec"]["volumes"].as_array().unwrap();
    assert!(volumes.iter().all(|v| v["persistentVolumeClaim"].is_null()), "a warm pod mounts a claim: {p}");
    let by_name = |name: &str| volumes.iter().find(|v| v["name"] == name).cloned().unwrap();
    assert!(by_name("workspace")["emptyDir"].is_object());
    assert_eq!(by_name("berth-run")["emptyDir"]["medium"], "Memory");
    let mounts = p["spec"]["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["mountPath"] == "/berth/run" && m["readOnly"].is_null()), "{mounts:?}");
    assert!(mounts.iter().any(|m| m["mountPath"] == "/berth/warm.json" && m["subPath"] == "warm.json"), "{mounts:?}");

    // Pods cannot be renamed: the name goes into an annotation, by a merge patch.
    sb.rename("warm-abc", "sb-agent-42-abc-1").await.expect("rename");
    let listed = sb.list(&BTreeMap::new()).await.expect("list");
    assert_eq!((listed[0].id.as_str(), listed[0].name.as_str()), ("warm-abc", "sb-agent-42-abc-1"));
    assert_eq!(listed[0].labels[LABEL_OWNER], "agent:42", "the patch kept the other annotations");
    assert!(h.fake.calls().contains(&("patch".to_string(), "pods".to_string())));
    let e = sb.rename("warm-gone", "sb-x").await.expect_err("no such pod");
    assert!(e.message.contains("warm-gone"), "{e}");
    let e = sb.put_file("warm-abc", &PrivateFile { path: "/x".into(), content: vec![] }, (1, 1)).await;
    assert!(e.expect_err("no files into a running pod").message.contains("fetches its claim"));
}

#[test]
fn the_fakes_merge_patch_follows_rfc_7386_and_checks_the_resource_version() {
    let mut store = berth_kube::fake::Store::default();
    let object = json!({"metadata": {"name": "p", "annotations": {"a.dev/x": "1", "a.dev/y": "2"}},
        "spec": {"containers": [{"name": "c", "image": "i"}]}});
    let created = store.create("pods", NAMESPACE, object).unwrap();
    let rv = created["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let patch = json!({"metadata": {"annotations": {"a.dev/x": null, "a.dev/z": "3"}, "uid": "forged"}});
    let patched = store.patch("pods", NAMESPACE, "p", &patch).unwrap();
    assert_eq!(patched["metadata"]["annotations"], json!({"a.dev/y": "2", "a.dev/z": "3"}));
    assert_eq!(patched["metadata"]["uid"], created["metadata"]["uid"], "the server owns the uid");
    assert_ne!(patched["metadata"]["resourceVersion"], rv);
    let stale = json!({"metadata": {"resourceVersion": rv, "annotations": {"a.dev/w": "4"}}});
    assert_eq!(store.patch("pods", NAMESPACE, "p", &stale).unwrap_err().code, 409);
    assert_eq!(store.patch("pods", NAMESPACE, "nope", &json!({})).unwrap_err().code, 404);
    let bad = json!({"metadata": {"labels": {"k": "not a label value"}}});
    assert_eq!(store.patch("pods", NAMESPACE, "p", &bad).unwrap_err().code, 422);
}
