//! `KubeSandboxes`: each sandbox is a pod in the server's namespace ("Pods"; "Pod Lifecycle").
//!
//! - berth reaches the pod through an init container of the berth image that copies its binary
//!   into an `emptyDir` ("Init Containers"), mounted read-only where the supervisor is expected
//!   (`/berth/bin`); the main container's command is the supervisor with the agent after it.
//! - The private file (the supervisor's spec, holding the sandbox token) is a Secret mounted
//!   with mode 0400 at its path ("Secrets", *Using Secrets as files from a Pod*), never an
//!   environment variable; the Secret is removed with the pod.
//! - `terminationGracePeriodSeconds` is the stop timeout (the drain budget plus its margin), so
//!   the kubelet's SIGTERM leaves the supervisor its whole budget before SIGKILL; no `preStop`
//!   hook eats into it ("Pod Lifecycle", *Termination of Pods*).
//! - `fsGroup` (the volume owner's group) makes the claim writable by the sandbox user
//!   ("Configure a Security Context", *fsGroup*); memory and CPU are both request and limit.
//! - A pod ends when its phase is `Succeeded` or `Failed` (`restartPolicy: Never`); deaths come
//!   from a watch of the installation's pods (listed first, so a pod that ended while nobody
//!   watched is reported too).
//!
//! - A bind of a claim at `/workspace` (the rescue job's) mounts that claim, read-only when the
//!   bind is; logs are the main container's (`pods/log`).
//! - Every pod has an in-memory `emptyDir` at `/berth/run` ([`RUN_DIR`]) for the files its
//!   supervisor writes (a claimed warm pod's spec): never in the workspace, never on disk.
//! - Warm pods: nothing can be put into a running pod (its volumes are fixed at creation, and a
//!   Secret created later reaches a mounted volume only at the kubelet's next sync, up to a
//!   minute), so a claimed warm pod fetches its claim from the control plane
//!   ([`HandOver::Fetch`]). A pod's name is fixed too: renaming one sets the annotation
//!   [`ANNOTATION_NAME`] (a merge patch), which is the sandbox's name from then on.
//!
//! Not supported: host binds other than berth's binary (a `file://` store).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use berth_core::volume::VolumeName;
use berth_substrate::{
    Death, Ended, HandOver, PrivateFile, SandboxInfo, SandboxSpec, Sandboxes, VolumeError, RUN_DIR, WORKSPACE_PATH,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use crate::client::{Failure, Kube};
use crate::names::{annotations, berth_labels, kube_labels, selector};

/// Where the init container puts berth's binary, and where the main container finds it.
pub const BERTH_DIR: &str = "/berth/bin";
/// Annotation holding a sandbox's name once renamed (a claimed warm pod): pods cannot be renamed.
pub const ANNOTATION_NAME: &str = "berth.dev/name";
/// The path of berth's binary inside the berth image, by default.
pub const DEFAULT_BERTH_IN_IMAGE: &str = "/usr/local/bin/berth";
/// How often a stop or wait looks at the pod.
const POLL: Duration = Duration::from_millis(200);
/// Pause between two attempts to watch the pods.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// How sandbox pods are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSettings {
    /// The image holding berth's binary (the init container's).
    pub berth_image: String,
    /// The binary's path in that image.
    pub berth_in_image: String,
    /// `fsGroup` of every pod; `None`: the sandbox user's group.
    pub fs_group: Option<u32>,
}

/// Sandboxes as pods.
#[derive(Debug, Clone)]
pub struct KubeSandboxes {
    kube: Kube,
    settings: PodSettings,
}

fn secret_name(pod: &str) -> String {
    format!("{pod}-files")
}

fn key_of(file: &PrivateFile) -> String {
    file.path.rsplit('/').next().unwrap_or("file").to_string()
}

/// The pod's state as berth's listings name it.
fn state_of(pod: &Pod) -> String {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Running") => "running",
        Some("Succeeded" | "Failed") => "exited",
        _ => "created",
    }
    .to_string()
}

fn ended_of(pod: &Pod) -> Option<Ended> {
    let status = pod.status.as_ref()?;
    if !matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let terminated = status.container_statuses.iter().flatten().find_map(|c| c.state.as_ref()?.terminated.clone());
    Some(Ended {
        exit_code: terminated.as_ref().map(|t| i64::from(t.exit_code)),
        oom_killed: terminated.and_then(|t| t.reason).is_some_and(|r| r == "OOMKilled"),
    })
}

fn info_of(pod: &Pod) -> SandboxInfo {
    let m = &pod.metadata;
    let image = pod.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone());
    let renamed = m.annotations.as_ref().and_then(|a| a.get(ANNOTATION_NAME)).cloned();
    SandboxInfo {
        id: m.name.clone().unwrap_or_default(),
        name: renamed.or_else(|| m.name.clone()).unwrap_or_default(),
        image: image.unwrap_or_default(),
        state: state_of(pod),
        status: pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into()),
        created_secs: m.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or_default(),
        labels: berth_labels(m.labels.as_ref(), m.annotations.as_ref()),
    }
}

impl KubeSandboxes {
    /// Sandboxes through `kube`, made with `settings`.
    pub fn new(kube: Kube, settings: PodSettings) -> KubeSandboxes {
        KubeSandboxes { kube, settings }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.kube.client().clone(), self.kube.namespace())
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.kube.client().clone(), self.kube.namespace())
    }

    /// The pod of `spec`.
    pub fn pod(&self, spec: &SandboxSpec) -> Result<Pod, VolumeError> {
        // A bind of a claim at the workspace path (the rescue job's, read-only) mounts the claim.
        let claim_bind = spec.binds.iter().find_map(|(host, inside, ro)| {
            (inside == WORKSPACE_PATH).then(|| VolumeName::new(host.as_str()).ok().map(|v| (v, *ro))).flatten()
        });
        let other = |inside: &String| !inside.starts_with(BERTH_DIR) && inside != WORKSPACE_PATH;
        if let Some((host, _, _)) = spec.binds.iter().find(|(_, inside, _)| other(inside)) {
            return Err(VolumeError::permanent(format!(
                "sandbox {}: host path {host} cannot be mounted into a pod: use an s3:// store on the kubernetes substrate",
                spec.name
            )));
        }
        let env: Vec<_> = spec
            .env
            .iter()
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        let mut mounts = vec![
            json!({"name": "berth-bin", "mountPath": BERTH_DIR, "readOnly": true}),
            json!({"name": "berth-run", "mountPath": RUN_DIR}),
        ];
        let mut volumes = vec![
            json!({"name": "berth-bin", "emptyDir": {}}),
            json!({"name": "berth-run", "emptyDir": {"medium": "Memory"}}),
        ];
        let claim = spec.volume.clone().map(|v| (v, false)).or(claim_bind);
        let read_only = claim.as_ref().is_some_and(|(_, ro)| *ro);
        match &claim {
            Some((c, ro)) => volumes
                .push(json!({"name": "workspace", "persistentVolumeClaim": {"claimName": c.as_str(), "readOnly": ro}})),
            None => volumes.push(json!({"name": "workspace", "emptyDir": {}})),
        }
        mounts.push(json!({"name": "workspace", "mountPath": WORKSPACE_PATH, "readOnly": read_only}));
        if let Some(file) = &spec.private_file {
            let key = key_of(file);
            volumes.push(json!({"name": "files", "secret": {
                "secretName": secret_name(&spec.name), "defaultMode": 0o400, "items": [{"key": key, "path": key, "mode": 0o400}],
            }}));
            mounts.push(json!({"name": "files", "mountPath": file.path, "subPath": key, "readOnly": true}));
        }
        let mut resources = serde_json::Map::new();
        if let Some(m) = spec.memory_bytes {
            resources.insert("memory".into(), json!(m.to_string()));
        }
        if let Some(c) = spec.cpus {
            resources.insert("cpu".into(), json!(format!("{}m", (c * 1000.0).round() as u64)));
        }
        let (uid, gid) = spec.user;
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": spec.name, "labels": kube_labels(&spec.labels), "annotations": annotations(&spec.labels)},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": spec.stop_timeout_secs,
                "securityContext": {"fsGroup": self.settings.fs_group.unwrap_or(gid), "runAsUser": uid, "runAsGroup": gid},
                "initContainers": [{
                    "name": "berth", "image": self.settings.berth_image,
                    "command": ["cp", self.settings.berth_in_image, format!("{BERTH_DIR}/berth")],
                    "volumeMounts": [{"name": "berth-bin", "mountPath": BERTH_DIR}],
                }],
                "containers": [{
                    "name": "sandbox", "image": spec.image, "command": spec.command, "env": env,
                    "volumeMounts": mounts,
                    "resources": {"limits": resources, "requests": resources},
                }],
                "volumes": volumes,
            },
        });
        serde_json::from_value(pod).map_err(|e| VolumeError::permanent(format!("sandbox {}: pod spec: {e}", spec.name)))
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Pod, VolumeError> {
        if let Some(file) = &spec.private_file {
            let secret = Secret {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(secret_name(&spec.name)),
                    labels: Some(kube_labels(&spec.labels)),
                    ..Default::default()
                },
                data: Some([(key_of(file), ByteString(file.content.clone()))].into()),
                ..Default::default()
            };
            let (api, pp) = (self.secrets(), PostParams::default());
            let what = format!("creating secret {}", secret_name(&spec.name));
            self.kube.retry(&what, || api.create(&pp, &secret)).await.map_err(|f| self.kube.error(&what, f))?;
        }
        let pod = self.pod(spec)?;
        let (api, pp) = (self.pods(), PostParams::default());
        let what = format!("creating pod {} (image {})", spec.name, spec.image);
        self.kube.retry(&what, || api.create(&pp, &pod)).await.map_err(|f| self.kube.error(&what, f))
    }

    async fn get(&self, id: &str) -> Result<Option<Pod>, VolumeError> {
        let api = self.pods();
        let what = format!("reading pod {id}");
        self.kube.retry(&what, || api.get_opt(id)).await.map_err(|f| self.kube.error(&what, f))
    }

    async fn delete(&self, id: &str, grace_secs: u32) -> Result<(), VolumeError> {
        let (pods, secrets, secret) = (self.pods(), self.secrets(), secret_name(id));
        let dp = DeleteParams { grace_period_seconds: Some(grace_secs), ..Default::default() };
        for (what, result) in [
            (
                format!("deleting pod {id}"),
                self.kube.retry("deleting a pod", || pods.delete(id, &dp)).await.map(|_| ()),
            ),
            (
                format!("deleting secret {}", secret_name(id)),
                self.kube.retry("deleting a secret", || secrets.delete(&secret, &dp)).await.map(|_| ()),
            ),
        ] {
            match result {
                Ok(()) => {}
                Err(f) if f.code() == Some(404) => {}
                Err(f) => return Err(self.kube.error(&what, f)),
            }
        }
        Ok(())
    }

    /// Polls pod `id` until `done` says so or `timeout` passes; the last pod seen, `None` once gone.
    async fn until(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Pod) -> bool,
    ) -> Result<Result<Option<Pod>, Pod>, VolumeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some(pod) = self.get(id).await? else { return Ok(Ok(None)) };
            if done(&pod) {
                return Ok(Ok(Some(pod)));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Err(pod));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends the ends of pods matching `wanted` to `tx` until it closes: those already ended,
    /// then each that ends while watched; each pod once.
    async fn watch(self, wanted: BTreeMap<String, String>, tx: tokio::sync::mpsc::Sender<Death>) {
        let mut told: BTreeSet<String> = BTreeSet::new();
        while !tx.is_closed() {
            let round = tokio::select! {
                r = self.watch_once(&wanted, &tx, &mut told) => r,
                _ = tx.closed() => return,
            };
            if let Err(e) = round {
                tracing::warn!(event = "sandbox_watch_failed", error = %e, hint = "listing again");
            }
            tokio::time::sleep(WATCH_RETRY).await;
        }
    }

    async fn watch_once(
        &self,
        wanted: &BTreeMap<String, String>,
        tx: &tokio::sync::mpsc::Sender<Death>,
        told: &mut BTreeSet<String>,
    ) -> Result<(), Failure> {
        let api = self.pods();
        let lp = ListParams::default().labels(&selector(wanted));
        let list = self.kube.retry("listing pods", || api.list(&lp)).await?;
        let death = |pod: &Pod| -> Option<Death> {
            let ended = ended_of(pod)?;
            let info = info_of(pod);
            wanted.iter().all(|(k, v)| info.labels.get(k) == Some(v)).then_some(Death {
                id: info.id,
                name: info.name,
                labels: info.labels,
                ended,
            })
        };
        for pod in &list.items {
            if let Some(d) = death(pod) {
                if told.insert(d.id.clone()) && tx.send(d).await.is_err() {
                    return Ok(());
                }
            }
        }
        let mut version = list.metadata.resource_version.unwrap_or_default();
        loop {
            let wp = WatchParams::default().labels(&selector(wanted)).timeout(290);
            let mut stream = self.kube.retry("watching pods", || api.watch(&wp, &version)).await?.boxed();
            while let Some(event) = stream.try_next().await.map_err(Failure::from_kube)? {
                let pod = match event {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => p,
                    // A pod deleted before it ended (not through berth) ended too.
                    WatchEvent::Deleted(mut p) => {
                        if ended_of(&p).is_none() {
                            p.status.get_or_insert_with(Default::default).phase = Some("Failed".into());
                        }
                        p
                    }
                    WatchEvent::Bookmark(b) => {
                        version = b.metadata.resource_version;
                        continue;
                    }
                    WatchEvent::Error(e) => {
                        return Err(Failure::Status {
                            code: e.code,
                            reason: e.reason,
                            message: e.message,
                            retry_after: None,
                        })
                    }
                };
                version = pod.metadata.resource_version.clone().unwrap_or(version);
                if let Some(d) = death(&pod) {
                    if told.insert(d.id.clone()) && tx.send(d).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Sandboxes for KubeSandboxes {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<SandboxInfo, VolumeError> {
        match self.create(spec).await {
            Ok(pod) => Ok(info_of(&pod)),
            Err(e) => {
                // Nothing half-made stays behind (a pod holds its claim, a secret its token).
                let _ = self.delete(&spec.name, 0).await;
                Err(e)
            }
        }
    }

    async fn stop(&self, id: &str, timeout_secs: u64) -> Result<Option<Ended>, VolumeError> {
        let Some(before) = self.get(id).await? else { return Ok(None) };
        self.delete(id, timeout_secs.min(u64::from(u32::MAX)) as u32).await?;
        let bound = Duration::from_secs(timeout_secs + 30);
        let last = match self.until(id, bound, |_| false).await? {
            Ok(_) => before,
            Err(still) => {
                return Err(VolumeError::temporary(format!(
                    "stopping pod {id}: still there {} s after its deletion ({})",
                    bound.as_secs(),
                    state_of(&still)
                )))
            }
        };
        Ok(Some(ended_of(&last).unwrap_or(Ended { exit_code: None, oom_killed: false })))
    }

    async fn wait(&self, id: &str, timeout_secs: u64) -> Result<Option<Ended>, VolumeError> {
        match self.until(id, Duration::from_secs(timeout_secs), |p| ended_of(p).is_some()).await? {
            Ok(None) => Ok(None),
            Ok(Some(pod)) => Ok(ended_of(&pod)),
            Err(_) => {
                Err(VolumeError::temporary(format!("waiting for pod {id}: still running after {timeout_secs} s")))
            }
        }
    }

    async fn remove(&self, id: &str) -> Result<(), VolumeError> {
        self.delete(id, 0).await
    }

    async fn list(&self, wanted: &BTreeMap<String, String>) -> Result<Vec<SandboxInfo>, VolumeError> {
        let api = self.pods();
        let lp = ListParams::default().labels(&selector(wanted));
        let what = "listing pods";
        let list = self.kube.retry(what, || api.list(&lp)).await.map_err(|f| self.kube.error(what, f))?;
        let mut out: Vec<SandboxInfo> =
            list.items.iter().map(info_of).filter(|i| wanted.iter().all(|(k, v)| i.labels.get(k) == Some(v))).collect();
        out.sort_by(|a, b| (a.created_secs, &a.name).cmp(&(b.created_secs, &b.name)));
        Ok(out)
    }

    async fn logs(&self, id: &str, tail: usize) -> Result<String, VolumeError> {
        let api = self.pods();
        let lp = LogParams { container: Some("sandbox".into()), tail_lines: Some(tail as i64), ..Default::default() };
        let what = format!("reading the logs of pod {id}");
        self.kube.retry(&what, || api.logs(id, &lp)).await.map_err(|f| self.kube.error(&what, f))
    }

    fn hand_over(&self) -> HandOver {
        HandOver::Fetch
    }

    async fn put_file(&self, id: &str, file: &PrivateFile, _user: (u32, u32)) -> Result<(), VolumeError> {
        Err(VolumeError::permanent(format!(
            "pod {id}: {} cannot be put into a running pod (a claimed warm pod fetches its claim)",
            file.path
        )))
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), VolumeError> {
        let api = self.pods();
        let patch = Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION_NAME: name}}}));
        let pp = PatchParams::default();
        let what = format!("naming pod {id} {name}");
        self.kube.retry(&what, || api.patch(id, &pp, &patch)).await.map(|_| ()).map_err(|f| self.kube.error(&what, f))
    }

    fn deaths(&self, wanted: BTreeMap<String, String>) -> tokio::sync::mpsc::Receiver<Death> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(self.clone().watch(wanted, tx));
        rx
    }
}
