//! The Volumes contract suite's harness on the fake API server: a pod mounting a claim holds
//! it, and foreign claims are written straight into the fake's store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_core::volume::VolumeName;
use berth_substrate::contract::{Harness, Hold};
use berth_substrate::Volumes;
use serde_json::json;

use super::FakeApi;
use crate::names::{annotations, kube_labels};
use crate::volumes::KubeVolumes;

/// The namespace the harness works in.
pub const NAMESPACE: &str = "berth-test";

/// A fake API server and the run's id.
#[derive(Debug, Clone)]
pub struct KubeHarness {
    /// The fake.
    pub fake: Arc<FakeApi>,
    run: String,
}

static RUNS: AtomicU64 = AtomicU64::new(0);

impl KubeHarness {
    /// A harness on a fresh fake.
    pub async fn start() -> KubeHarness {
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        KubeHarness { fake: Arc::new(FakeApi::start().await), run: format!("r{}x{n}", std::process::id()) }
    }

    /// The adapter for `install`, waiting briefly for terminating claims.
    pub fn adapter(&self, install: &str) -> KubeVolumes {
        KubeVolumes::new(self.fake.kube(NAMESPACE), install).with_terminating_wait(Duration::from_secs(5))
    }

    /// Creates a running pod named `pod` that mounts claim `claim`.
    pub fn run_pod(&self, pod: &str, claim: &str) {
        let mut store = self.fake.store();
        let object = json!({
            "metadata": {"name": pod, "labels": {"berth-test-run": self.run}},
            "spec": {
                "containers": [{"name": "main", "image": "busybox"}],
                "volumes": [{"name": "ws", "persistentVolumeClaim": {"claimName": claim}}],
            },
        });
        store.create("pods", NAMESPACE, object).expect("create a pod in the fake");
        store.set_pod_phase(NAMESPACE, pod, "Running").expect("pod running");
    }
}

/// A running pod that mounts a claim.
struct PodHold {
    fake: Arc<FakeApi>,
    pod: String,
}

#[async_trait]
impl Hold for PodHold {
    fn who(&self) -> String {
        format!("pod {}", self.pod)
    }

    async fn release(self: Box<Self>) {
        self.fake.store().delete("pods", NAMESPACE, &self.pod, &json!({})).expect("delete the holding pod");
    }
}

#[async_trait]
impl Harness for KubeHarness {
    fn run(&self) -> &str {
        &self.run
    }

    async fn volumes(&self, install: &str) -> Arc<dyn Volumes> {
        Arc::new(self.adapter(install))
    }

    async fn unreachable(&self, install: &str) -> Arc<dyn Volumes> {
        Arc::new(KubeVolumes::new(FakeApi::unreachable(NAMESPACE), install))
    }

    async fn hold(&self, name: &VolumeName) -> Box<dyn Hold> {
        let pod = format!("hold-{name}");
        self.run_pod(&pod, name.as_str());
        Box::new(PodHold { fake: self.fake.clone(), pod })
    }

    async fn create_foreign(&self, name: &VolumeName, labels: &BTreeMap<String, String>) {
        let object = json!({
            "metadata": {"name": name.as_str(), "labels": kube_labels(labels), "annotations": annotations(labels)},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        });
        self.fake.store().create("persistentvolumeclaims", NAMESPACE, object).expect("create a foreign claim");
    }

    async fn exists(&self, name: &VolumeName) -> bool {
        self.fake.store().get("persistentvolumeclaims", NAMESPACE, name.as_str()).is_ok()
    }
}
