//! The container substrates' `Rescuer`, over the `Sandboxes` port: a short container (docker)
//! or pod (kubernetes: the claim mounted read-only) of the rescue image mounts the at-risk
//! volume read-only at `/workspace` and runs one `berth snapshot create` into the store under
//! the rescue session's epoch (berth's binary bind-mounted, or copied in by the init container,
//! as in every sandbox), then is removed. The control plane records the snapshot as the
//! session's final one.
//!
//! The container carries the configured sandbox labels and `berth.rescue`, not the labels of
//! sandboxes, so the death watcher leaves it to the rescuer.

use std::sync::Arc;

use async_trait::async_trait;
use berth_core::id::SnapshotId;

use crate::app::Config;
use crate::meta::random_hex;
use crate::sandboxes::{self as sb, BERTH_PATH, SANDBOX_PREFIX};
use crate::volumes::{
    RescueError, RescueOutcome, RescueRequest, Rescuer, SandboxSpec, Sandboxes, VolumeError, WORKSPACE_PATH,
};

/// Label on rescue containers, naming the installation.
pub const LABEL_RESCUE: &str = "berth.rescue";
/// Seconds a rescue container may run.
const RESCUE_TIMEOUT_SECS: u64 = 600;
/// Log lines read back for the snapshot's summary.
const LOG_LINES: usize = 2000;

/// Rescues volumes with a short container or pod of the rescue image.
#[derive(Debug)]
pub struct ContainerRescuer {
    sandboxes: Arc<dyn Sandboxes>,
    image: String,
    install: String,
    config: Config,
}

impl ContainerRescuer {
    /// A rescuer running `image` through `sandboxes`, for installation `install`.
    pub fn new(sandboxes: Arc<dyn Sandboxes>, image: String, install: String, config: Config) -> ContainerRescuer {
        ContainerRescuer { sandboxes, image, install, config }
    }

    fn spec(&self, req: &RescueRequest) -> Result<SandboxSpec, RescueError> {
        let permanent = |e: crate::error::Error| RescueError::permanent(e.to_string());
        let mut binds = sb::binds_of(&self.config).map_err(permanent)?;
        binds.push((req.volume.to_string(), WORKSPACE_PATH.to_string(), true));
        let mut labels = self.config.sandbox.labels.clone();
        labels.insert(LABEL_RESCUE.into(), self.install.clone());
        let command = [
            BERTH_PATH,
            "snapshot",
            "create",
            "--store",
            &req.store,
            "--workspace",
            req.owner.as_str(),
            "--generation",
            &req.generation.to_string(),
            "--epoch",
            &req.epoch.0.to_string(),
            "--budget",
            "unlimited",
            "--no-cache",
            "--json",
            WORKSPACE_PATH,
        ];
        Ok(SandboxSpec {
            name: format!("rescue-{}-{}", req.volume.as_str().trim_start_matches("ws-"), random_hex(3)),
            image: self.image.clone(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: sb::store_env_of(&self.config),
            volume: None,
            binds,
            private_file: None,
            user: self.config.sandbox.user(),
            memory_bytes: None,
            cpus: None,
            stop_timeout_secs: 10,
            network: self.config.sandbox.network.clone(),
            labels,
        })
    }

    /// Refuses while a sandbox of the volume's workspace runs (a zombie could still write).
    async fn check_unused(&self, req: &RescueRequest) -> Result<(), RescueError> {
        let prefix = format!("{SANDBOX_PREFIX}{}-", req.volume.as_str().trim_start_matches("ws-"));
        let selector = [(crate::volumes::LABEL_INSTALL.to_string(), self.install.clone())].into();
        let running = self.sandboxes.list(&selector).await.map_err(temporary)?;
        match running.iter().find(|s| s.name.starts_with(&prefix) && s.state == "running") {
            Some(s) => Err(RescueError::temporary(format!(
                "sandbox {} still runs on volume {}: it is not rescued while in use",
                s.name, req.volume
            ))),
            None => Ok(()),
        }
    }
}

fn temporary(e: VolumeError) -> RescueError {
    RescueError::temporary(e.message)
}

/// The summary `berth snapshot create --json` printed (pretty JSON among log lines).
fn summary(logs: &str) -> Option<RescueOutcome> {
    let start = logs.find("\n{").map(|i| i + 1).or_else(|| logs.starts_with('{').then_some(0))?;
    let end = logs.rfind("\n}")? + 2;
    let v: serde_json::Value = serde_json::from_str(logs.get(start..end)?).ok()?;
    Some(RescueOutcome {
        snapshot: SnapshotId::from_hex(v["snapshot"].as_str()?).ok()?,
        files: v["files_scanned"].as_u64().unwrap_or(0),
        bytes: v["bytes_scanned"].as_u64().unwrap_or(0),
    })
}

#[async_trait]
impl Rescuer for ContainerRescuer {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn rescue(&self, req: RescueRequest) -> Result<RescueOutcome, RescueError> {
        self.check_unused(&req).await?;
        let spec = self.spec(&req)?;
        let started = self.sandboxes.start(&spec).await.map_err(temporary)?;
        let waited = self.sandboxes.wait(&started.id, RESCUE_TIMEOUT_SECS).await;
        let logs = self.sandboxes.logs(&started.id, LOG_LINES).await.unwrap_or_default();
        if let Err(e) = self.sandboxes.remove(&started.id).await {
            tracing::warn!(event = "rescue_container_left", container = %started.id, error = %e);
        }
        let ended = waited.map_err(temporary)?;
        match (ended.and_then(|e| e.exit_code), summary(&logs)) {
            (Some(0), Some(outcome)) => Ok(outcome),
            (code, _) => Err(RescueError::temporary(format!(
                "the rescue container for volume {} ended with {}: {}",
                req.volume,
                code.map_or("no exit code".to_string(), |c| format!("exit {c}")),
                berth_substrate::bounded(logs.trim(), 600)
            ))),
        }
    }
}

/// The Docker rescuer, or why there is none (GC then keeps at-risk volumes and says so): it
/// needs the store and an image to run in (`--rescue-image`, else the first warm pool's).
pub fn open(config: &Config, sandboxes: Arc<dyn Sandboxes>, install: &str) -> Result<Arc<dyn Rescuer>, String> {
    if config.store.is_none() {
        // Its error says what to do.
        return crate::rescue::open(config);
    }
    let image =
        config.sandbox.rescue_image.clone().or_else(|| config.sandbox.warm_pools.first().map(|(i, _)| i.clone()));
    let image = image.ok_or_else(|| {
        format!(
            "the {} substrate rescues a volume with a short container or pod: start berth serve with --rescue-image \
             IMAGE (an image berth's binary runs in, such as the sandboxes' image)",
            config.substrate
        )
    })?;
    Ok(Arc::new(ContainerRescuer::new(sandboxes, image, install.to_string(), config.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_found_among_log_lines() {
        let id = "ab".repeat(32);
        let logs = format!(
            "warning: skipped x\n{{\n  \"snapshot\": \"{id}\",\n  \"files_scanned\": 3,\n  \"bytes_scanned\": 9\n}}\n"
        );
        let s = summary(&logs).unwrap();
        assert_eq!((s.snapshot.to_hex(), s.files, s.bytes), (id, 3, 9));
        assert!(summary("error: no store").is_none());
    }
}
