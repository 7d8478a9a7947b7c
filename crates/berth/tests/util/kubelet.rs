//! The end-to-end tests' kubelet: runs a pod of the fake Kubernetes API server as a local
//! process, so what berth put into the pod (its command, environment, Secret files and volumes)
//! is what runs.
//!
//! Each mount of the main container is a directory under the pod's root: an `emptyDir` is its
//! own, a claim's is shared by every pod mounting that claim (it stands for the volume), a
//! Secret's files are written there with the mode the pod asks for. The command's absolute
//! paths under a mount are mapped to those directories, berth's binary is the one under test,
//! and `BERTH_DIR` names the mapped `/workspace`. Nothing else of the pod is honoured (image,
//! user, limits, read-only mounts): the test checks those fields itself.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use berth_kube::fake::harness::NAMESPACE;
use berth_kube::fake::FakeApi;
use k8s_openapi::api::core::v1::{Pod, Secret};

/// A pod running as a local process.
pub struct RunningPod {
    /// The process.
    pub child: Child,
    /// Where the pod's paths are: `root.join("workspace")` is its `/workspace`.
    pub root: PathBuf,
    /// Its output (stdout and stderr).
    pub log: PathBuf,
}

impl RunningPod {
    /// The local path of the pod's `path`.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The directory standing for claim `claim` under `base`.
pub fn claim_dir(base: &Path, claim: &str) -> PathBuf {
    base.join("claims").join(claim)
}

/// Starts pod `name` of `fake` under `base` (each pod in `base/pods/NAME`, each claim in
/// `base/claims/CLAIM`), with `BERTH_*` of the test's environment left out.
pub fn run_pod(fake: &FakeApi, name: &str, base: &Path) -> RunningPod {
    let (pod, secret) = {
        let store = fake.store();
        let pod: Pod = serde_json::from_value(store.get("pods", NAMESPACE, name).expect("the pod")).unwrap();
        let secret = store.get("secrets", NAMESPACE, &format!("{name}-files")).ok();
        (pod, secret.map(|s| serde_json::from_value::<Secret>(s).unwrap()))
    };
    let root = base.join("pods").join(name);
    std::fs::create_dir_all(&root).unwrap();
    let spec = pod.spec.expect("a pod spec");
    let main = &spec.containers[0];
    let mut mapped: Vec<(String, PathBuf)> = Vec::new();
    for mount in main.volume_mounts.iter().flatten() {
        let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name).expect("the mount's volume");
        let local = if let Some(claim) = &volume.persistent_volume_claim {
            claim_dir(base, &claim.claim_name)
        } else {
            root.join(mount.mount_path.trim_start_matches('/'))
        };
        if let Some(files) = &volume.secret {
            let key = mount.sub_path.as_deref().expect("a Secret file is mounted by subPath");
            let data =
                secret.as_ref().and_then(|s| s.data.as_ref()).and_then(|d| d.get(key)).expect("the Secret's key");
            let mode = files.items.iter().flatten().find(|i| i.key == key).and_then(|i| i.mode).or(files.default_mode);
            std::fs::create_dir_all(local.parent().unwrap()).unwrap();
            std::fs::write(&local, &data.0).unwrap();
            std::fs::set_permissions(&local, std::fs::Permissions::from_mode(mode.unwrap_or(0o644) as u32)).unwrap();
        } else {
            std::fs::create_dir_all(&local).unwrap();
        }
        mapped.push((mount.mount_path.clone(), local));
    }
    let map = |arg: &String| -> String {
        if arg == "/berth/bin/berth" {
            return env!("CARGO_BIN_EXE_berth").to_string();
        }
        for (inside, local) in &mapped {
            if let Some(rest) = arg.strip_prefix(inside.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return format!("{}{rest}", local.display());
                }
            }
        }
        arg.clone()
    };
    let command: Vec<String> = main.command.iter().flatten().map(map).collect();
    let workspace = mapped.iter().find(|(inside, _)| inside == "/workspace").map(|(_, l)| l.clone()).unwrap();
    let log = root.join("output.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut c = super::berth(&root);
    c.args(&command[1..]).env("BERTH_DIR", &workspace).env("BERTH_LOG", "info");
    for var in main.env.iter().flatten() {
        c.env(&var.name, var.value.as_deref().unwrap_or(""));
    }
    let child = c.stdout(out.try_clone().unwrap()).stderr(out).stdin(Stdio::null()).spawn().expect("start the pod");
    RunningPod { child, root, log }
}

/// Reports pod `name` ended with `exit_code` (a `Succeeded` or `Failed` phase), as the kubelet would.
pub fn end_pod(fake: &FakeApi, name: &str, exit_code: i32, reason: &str) {
    let mut store = fake.store();
    let Ok(mut pod) = store.get("pods", NAMESPACE, name) else { return };
    let phase = if exit_code == 0 { "Succeeded" } else { "Failed" };
    pod["status"] = serde_json::json!({"phase": phase, "containerStatuses": [{"name": "sandbox", "state": {"terminated": {"exitCode": exit_code, "reason": reason}}}]});
    store.put("pods", NAMESPACE, pod);
}
