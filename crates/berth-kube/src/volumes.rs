//! `KubeVolumes`: each workspace volume is a PersistentVolumeClaim, named as the volume, in the
//! server's namespace.
//!
//! - The claim asks for the workspace's size (`resources.requests.storage`), access mode
//!   (`accessModes`) and storage class (`storageClassName`; none means the cluster's default
//!   class), with `volumeMode: Filesystem` ("Persistent Volumes", *PersistentVolumeClaims*).
//! - berth's labels go on the claim as label values Kubernetes accepts, and in full in the
//!   `berth.dev/labels` annotation (the owner also in `berth.dev/owner`); the annotation is what
//!   berth compares.
//! - Ensure creates the claim. `409 AlreadyExists` ("API Concepts", *Create*) reads the claim:
//!   this installation's for the same owner and generation is success, anything else is never
//!   adopted. A claim being deleted (`deletionTimestamp` set, held by the
//!   `kubernetes.io/pvc-protection` finalizer) is never reused: ensure watches it until it is
//!   gone and creates a new one, or reports it as terminating.
//! - Delete is `Referenced` while a pod that has not finished (phase neither `Succeeded` nor
//!   `Failed`) mounts the claim ("Persistent Volumes", *Storage Object in Use Protection*),
//!   naming those pods. Otherwise it deletes with `preconditions` on the claim's `uid` and
//!   `resourceVersion` read just before ("API Concepts", *Delete*; API conventions,
//!   *Concurrency Control and Consistency*): a claim changed in between is `409 Conflict`,
//!   re-read and decided again. It then waits until the claim is gone.
//!
//! # Caveats
//! - A pod created after delete listed the pods and before the claim is deleted keeps the claim
//!   (terminating) until it finishes; delete then answers `Referenced` naming the finalizer, and
//!   the claim goes when that pod does. Kubernetes refuses to start a pod on a terminating claim.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use berth_core::volume::{MountSpec, VolumeName};
use berth_substrate::{check_ours, is_install, Removal, VolumeError, VolumeInfo, VolumeSpec, Volumes};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, VolumeResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions, WatchEvent, WatchParams};

use crate::client::{Failure, Kube};
use crate::names::{annotations, berth_labels, kube_labels, selector};

/// How long ensure and delete wait for a terminating claim to go, by default.
pub const DEFAULT_TERMINATING_WAIT: Duration = Duration::from_secs(60);
/// Pods named in a `Referenced` reason, at most.
const NAMED_PODS: usize = 10;
/// Times delete re-reads a claim that changed under it.
const CONFLICT_RETRIES: u32 = 5;

/// Workspace volumes as PersistentVolumeClaims.
#[derive(Debug, Clone)]
pub struct KubeVolumes {
    kube: Kube,
    /// The installation whose claims this adapter creates and removes.
    install: String,
    /// How long to wait for a terminating claim to go.
    terminating_wait: Duration,
}

/// A claim as read: its berth labels, identity and state.
struct Found {
    labels: BTreeMap<String, String>,
    uid: Option<String>,
    version: Option<String>,
    terminating: Option<String>,
}

impl Found {
    fn of(claim: &PersistentVolumeClaim) -> Found {
        let m = &claim.metadata;
        Found {
            labels: berth_labels(m.labels.as_ref(), m.annotations.as_ref()),
            uid: m.uid.clone(),
            version: m.resource_version.clone(),
            terminating: m.deletion_timestamp.as_ref().map(|t| t.0.to_string()),
        }
    }
}

/// What waiting for a claim to go came to.
enum Gone {
    Yes,
    /// Still there when the wait ran out.
    Still,
}

impl KubeVolumes {
    /// Claims of installation `install` through `kube`.
    pub fn new(kube: Kube, install: impl Into<String>) -> KubeVolumes {
        KubeVolumes { kube, install: install.into(), terminating_wait: DEFAULT_TERMINATING_WAIT }
    }

    /// The same, waiting at most `wait` for a terminating claim to go.
    pub fn with_terminating_wait(mut self, wait: Duration) -> KubeVolumes {
        self.terminating_wait = wait;
        self
    }

    /// The client this adapter uses.
    pub fn kube(&self) -> &Kube {
        &self.kube
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.kube.client().clone(), self.kube.namespace())
    }

    fn claim(spec: &VolumeSpec) -> PersistentVolumeClaim {
        let requests: BTreeMap<String, Quantity> =
            [("storage".to_string(), Quantity(spec.size_bytes.to_string()))].into();
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(spec.name.to_string()),
                labels: Some(kube_labels(&spec.labels)),
                annotations: Some(annotations(&spec.labels)),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec![spec.access_mode.as_str().to_string()]),
                storage_class_name: spec.storage_class.clone(),
                volume_mode: Some("Filesystem".to_string()),
                resources: Some(VolumeResourceRequirements { requests: Some(requests), limits: None }),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The claim named `name`, or `None`.
    async fn read(&self, name: &VolumeName) -> Result<Option<PersistentVolumeClaim>, VolumeError> {
        let api = self.claims();
        let what = format!("reading claim {name}");
        self.kube.retry(&what, || api.get_opt(name.as_str())).await.map_err(|f| self.kube.error(&what, f))
    }

    /// The unfinished pods that mount claim `name`, as "pod NAME (PHASE)".
    async fn users(&self, name: &VolumeName) -> Result<Vec<String>, VolumeError> {
        let pods: Api<Pod> = Api::namespaced(self.kube.client().clone(), self.kube.namespace());
        let what = format!("listing the pods that mount claim {name}");
        let lp = ListParams::default();
        let list = self.kube.retry(&what, || pods.list(&lp)).await.map_err(|f| self.kube.error(&what, f))?;
        Ok(list
            .items
            .iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
                let mounts = p
                    .spec
                    .iter()
                    .flat_map(|s| s.volumes.iter().flatten())
                    .any(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == name.as_str()));
                mounts && !matches!(phase, "Succeeded" | "Failed")
            })
            .map(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into());
                let ending = if p.metadata.deletion_timestamp.is_some() { ", terminating" } else { "" };
                format!("pod {} ({phase}{ending})", p.metadata.name.clone().unwrap_or_default())
            })
            .collect())
    }

    /// Waits until claim `name` (with `uid`) is gone: lists it (by field selector) and watches
    /// from the list's version ("API Concepts", *Efficient detection of changes*). Bookmarks
    /// move the version on; `410 Gone` (an `ERROR` event or the answer to the watch) and an
    /// ended watch list again.
    async fn wait_gone(&self, name: &VolumeName, uid: Option<String>) -> Result<Gone, VolumeError> {
        let deadline = tokio::time::Instant::now() + self.terminating_wait;
        let api = self.claims();
        let fields = format!("metadata.name={name}");
        let mut version: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Gone::Still);
            }
            let Some(rv) = version.take() else {
                let lp = ListParams::default().fields(&fields);
                let what = format!("listing claim {name}");
                let list = self.kube.retry(&what, || api.list(&lp)).await.map_err(|f| self.kube.error(&what, f))?;
                if !list.items.iter().any(|c| c.metadata.uid == uid) {
                    return Ok(Gone::Yes);
                }
                version = list.metadata.resource_version;
                continue;
            };
            let secs = left.as_secs().clamp(1, 290) as u32;
            let wp = WatchParams::default().fields(&fields).timeout(secs);
            let what = format!("watching claim {name}");
            let stream = match self.kube.retry(&what, || api.watch(&wp, &rv)).await {
                Ok(s) => s,
                Err(f) if f.code() == Some(410) => continue,
                Err(f) => return Err(self.kube.error(&what, f)),
            };
            let mut stream = stream.boxed();
            let ended = tokio::time::timeout(left, async {
                while let Some(event) = stream.try_next().await.map_err(Failure::from_kube)? {
                    match event {
                        WatchEvent::Deleted(c) if c.metadata.uid == uid => return Ok::<_, Failure>(true),
                        WatchEvent::Bookmark(b) => version = Some(b.metadata.resource_version),
                        WatchEvent::Added(c) | WatchEvent::Modified(c) | WatchEvent::Deleted(c) => {
                            version = c.metadata.resource_version
                        }
                        // 410 Gone (or any error event): list again.
                        WatchEvent::Error(_) => {
                            version = None;
                            return Ok(false);
                        }
                    }
                }
                Ok(false)
            })
            .await;
            match ended {
                Ok(Ok(true)) => return Ok(Gone::Yes),
                Ok(Ok(false)) => {}
                Ok(Err(f)) => {
                    tracing::debug!(event = "kube_watch_failed", claim = %name, error = %f);
                    version = None;
                }
                Err(_) => return Ok(Gone::Still),
            }
        }
    }

    fn terminating_error(&self, name: &VolumeName, since: &str, by: &[String]) -> VolumeError {
        let who = if by.is_empty() { "the kubernetes.io/pvc-protection finalizer".to_string() } else { by.join(", ") };
        VolumeError::temporary(format!(
            "claim {name} in namespace {} is terminating (deletionTimestamp {since}, held by {who}); waited {:?}: it goes \
             when no pod mounts it, and berth never reuses a terminating claim",
            self.kube.namespace(),
            self.terminating_wait
        ))
    }

    /// Deletes a claim read as `found`; `None` when it changed in between (re-read and decide again).
    async fn delete_found(&self, name: &VolumeName, found: Found) -> Result<Option<Removal>, VolumeError> {
        let api = self.claims();
        let what = format!("deleting claim {name}");
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: found.uid.clone(), resource_version: found.version.clone() }),
            ..Default::default()
        };
        match self.kube.retry(&what, || api.delete(name.as_str(), &dp)).await {
            Ok(_) => {}
            Err(f) if f.code() == Some(404) => return Ok(Some(Removal::NotFound)),
            Err(f) if f.code() == Some(409) => return Ok(None),
            Err(f) => return Err(self.kube.error(&what, f)),
        }
        match self.wait_gone(name, found.uid).await? {
            Gone::Yes => Ok(Some(Removal::Removed)),
            Gone::Still => {
                let users = self.users(name).await?;
                let by = if users.is_empty() {
                    "the kubernetes.io/pvc-protection finalizer".to_string()
                } else {
                    users.join(", ")
                };
                Ok(Some(Removal::Referenced { by: format!("{by} (the claim is terminating)") }))
            }
        }
    }
}

#[async_trait]
impl Volumes for KubeVolumes {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    async fn ensure(&self, spec: &VolumeSpec) -> Result<(), VolumeError> {
        let name = &spec.name;
        let api = self.claims();
        let claim = KubeVolumes::claim(spec);
        let what = format!("creating claim {name}");
        let deadline = tokio::time::Instant::now() + self.terminating_wait;
        loop {
            let pp = PostParams::default();
            let failure = match self.kube.retry(&what, || api.create(&pp, &claim)).await {
                Ok(_) => return Ok(()),
                Err(f) if f.code() == Some(409) => f,
                Err(f) => return Err(self.kube.error(&what, f)),
            };
            let Some(existing) = self.read(name).await? else {
                tracing::debug!(event = "claim_gone_after_conflict", claim = %name, error = %failure);
                continue;
            };
            let found = Found::of(&existing);
            check_ours(name, &found.labels, &spec.labels)?;
            let Some(since) = found.terminating else { return Ok(()) };
            tracing::info!(event = "claim_terminating_wait", claim = %name, since = %since);
            if tokio::time::Instant::now() >= deadline {
                return Err(self.terminating_error(name, &since, &self.users(name).await?));
            }
            if let Gone::Still = self.wait_gone(name, found.uid).await? {
                return Err(self.terminating_error(name, &since, &self.users(name).await?));
            }
        }
    }

    async fn delete(&self, name: &VolumeName) -> Result<Removal, VolumeError> {
        for _ in 0..CONFLICT_RETRIES {
            let Some(claim) = self.read(name).await? else { return Ok(Removal::NotFound) };
            let found = Found::of(&claim);
            if !is_install(&found.labels, &self.install) {
                tracing::warn!(event = "volume_delete_foreign_skipped", volume = %name);
                return Ok(Removal::NotFound);
            }
            let mut users = self.users(name).await?;
            if !users.is_empty() {
                let n = users.len();
                users.truncate(NAMED_PODS);
                if n > NAMED_PODS {
                    users.push(format!("and {} more", n - NAMED_PODS));
                }
                return Ok(Removal::Referenced { by: users.join(", ") });
            }
            if found.terminating.is_some() {
                // Deleted already: nothing mounts it, so the finalizer goes soon.
                return Ok(match self.wait_gone(name, found.uid).await? {
                    Gone::Yes => Removal::Removed,
                    Gone::Still => Removal::Referenced {
                        by: "the kubernetes.io/pvc-protection finalizer (the claim is terminating)".into(),
                    },
                });
            }
            if let Some(removal) = self.delete_found(name, found).await? {
                return Ok(removal);
            }
            tracing::debug!(event = "claim_changed_before_delete", claim = %name);
        }
        Err(VolumeError::temporary(format!(
            "deleting claim {name}: it changed {CONFLICT_RETRIES} times between read and delete (409 Conflict); try again"
        )))
    }

    async fn list(&self, wanted: &BTreeMap<String, String>) -> Result<Vec<VolumeInfo>, VolumeError> {
        let api = self.claims();
        let lp = ListParams::default().labels(&selector(wanted));
        let what = "listing claims";
        let listed = self.kube.retry(what, || api.list(&lp)).await.map_err(|f| self.kube.error(what, f))?;
        let mut out: Vec<VolumeInfo> = listed
            .items
            .iter()
            .filter_map(|c| {
                let found = Found::of(c);
                // The server selects on encoded values; berth's labels in full decide.
                let matches = wanted.iter().all(|(k, v)| found.labels.get(k) == Some(v));
                let name = VolumeName::new(c.metadata.name.clone()?).ok()?;
                matches.then_some(VolumeInfo { name, labels: found.labels })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn health(&self) -> Result<(), VolumeError> {
        let api = self.claims();
        let lp = ListParams::default().limit(1);
        let what = "listing claims (health check)";
        self.kube.retry(what, || api.list(&lp)).await.map(|_| ()).map_err(|f| self.kube.error(what, f))
    }

    fn mount(&self, name: &VolumeName) -> MountSpec {
        MountSpec::Kubernetes { claim_name: name.clone() }
    }
}
