//! Where the control plane keeps workspace volumes: the `Volumes` port and adapters of
//! `berth-substrate` re-exported, and [`open`], which picks the adapter the configuration
//! names (each container substrate behind its own cargo feature, so the core and the engine
//! never depend on a container client).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub use berth_substrate::*;

use crate::error::{Error, Result};
use crate::Config;

/// The substrate holding workspace volumes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Substrate {
    /// Directories under the data dir.
    #[default]
    Local,
    /// Docker named volumes on the engine `DOCKER_HOST` names.
    Docker,
    /// PersistentVolumeClaims in one namespace of the cluster kube-rs finds (`KUBECONFIG`,
    /// `~/.kube/config`, or the pod's service account).
    Kubernetes,
}

impl Substrate {
    /// Every substrate.
    pub const ALL: [Substrate; 3] = [Substrate::Local, Substrate::Docker, Substrate::Kubernetes];

    /// Returns its name, as `--substrate` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Substrate::Local => "local",
            Substrate::Docker => "docker",
            Substrate::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for Substrate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Substrate {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Substrate, String> {
        Substrate::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = Substrate::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown substrate '{s}': use one of {}", names.join(", "))
        })
    }
}

/// Test hook: with `BERTH_TEST_PAUSE_DELETES_AFTER=N`, the substrate stops every volume delete
/// after the N-th (it never returns), so a test can kill the server in the middle of a sweep
/// at a known point instead of racing the clock.
pub const PAUSE_DELETES_ENV: &str = "BERTH_TEST_PAUSE_DELETES_AFTER";

/// Opens the substrate `config` names, acting for installation `install`. Nothing is contacted
/// yet: an engine or API server that is down makes `health` (and so `/readyz`) fail, not the
/// start; a missing configuration (no kubeconfig) fails the start.
pub async fn open(config: &Config, install: &str) -> Result<Arc<dyn Volumes>> {
    let volumes: Arc<dyn Volumes> = match config.substrate {
        Substrate::Local => {
            if !config.volume_opts.is_empty() {
                return Err(Error::Config(
                    "--volume-opt applies to the docker substrate; the local substrate takes none".into(),
                ));
            }
            Arc::new(LocalVolumes::new(config.data_dir.join("volumes"), install, config.volume_owner)?)
        }
        Substrate::Docker => docker(config, install)?,
        Substrate::Kubernetes => kubernetes(config, install).await?,
    };
    match std::env::var(PAUSE_DELETES_ENV).ok().map(|v| v.parse::<u64>()) {
        None => Ok(volumes),
        Some(Ok(after)) => {
            tracing::warn!(event = "test_hook_enabled", hook = PAUSE_DELETES_ENV, after);
            Ok(Arc::new(PauseDeletes::new(volumes, after)))
        }
        Some(Err(_)) => Err(Error::Config(format!("{PAUSE_DELETES_ENV} must be a number of deletes"))),
    }
}

#[cfg(feature = "docker")]
fn docker(config: &Config, install: &str) -> Result<Arc<dyn Volumes>> {
    let engine = berth_docker::Engine::from_env().map_err(|e| Error::Config(e.to_string()))?;
    let volumes = berth_docker::DockerVolumes::new(engine, install, config.volume_opts.clone())
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(Arc::new(volumes))
}

#[cfg(not(feature = "docker"))]
fn docker(_: &Config, _: &str) -> Result<Arc<dyn Volumes>> {
    Err(Error::Config("this berth was built without the docker substrate (cargo feature `docker`)".into()))
}

#[cfg(feature = "kubernetes")]
async fn kubernetes(config: &Config, install: &str) -> Result<Arc<dyn Volumes>> {
    if !config.volume_opts.is_empty() {
        return Err(Error::Config(
            "--volume-opt applies to the docker substrate; on kubernetes the storage class says how volumes are made"
                .into(),
        ));
    }
    let kube = berth_kube::Kube::infer(config.namespace.clone(), Default::default())
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    tracing::info!(event = "kubernetes_substrate", namespace = kube.namespace());
    Ok(Arc::new(berth_kube::KubeVolumes::new(kube, install)))
}

#[cfg(not(feature = "kubernetes"))]
async fn kubernetes(_: &Config, _: &str) -> Result<Arc<dyn Volumes>> {
    Err(Error::Config("this berth was built without the kubernetes substrate (cargo feature `kubernetes`)".into()))
}
