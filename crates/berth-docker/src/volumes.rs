//! `DockerVolumes`: each workspace volume is a Docker named volume with berth's labels.
//!
//! - The storage class is the volume driver (`local` when the workspace names none); the
//!   server's driver options go to every volume, with `{size}` in a value replaced by the
//!   workspace's size in bytes.
//! - Ensure creates the volume; the engine answers an existing one with its own labels, and a
//!   volume whose labels are not this installation's for the same owner and generation is
//!   never adopted.
//! - Delete removes only a volume with this installation's labels; the engine refuses a volume
//!   any container (running or stopped) mounts, and berth answers `Referenced` naming those
//!   containers.
//!
//! # Guarantees
//! - A volume in use is never removed, even when a container starts using it between delete's
//!   inspect and its removal: the removal is never forced, so the engine checks for users
//!   atomically with the removal and refuses (409), which berth answers `Referenced`.
//!
//! # Caveats
//! - Delete inspects the volume, then removes it by name: a volume removed and re-created
//!   under the same name by another tool between the two calls would be removed. The names
//!   are berth's own (`ws-...`), and berth creates a name again only for the same workspace.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use berth_core::volume::{MountSpec, VolumeName};
use berth_substrate::{check_ours, is_install, Removal, VolumeError, VolumeInfo, VolumeSpec, Volumes};
use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::{ListContainersOptionsBuilder, ListVolumesOptionsBuilder, RemoveVolumeOptions};

use crate::engine::{bounded, status_error, Engine, Failure};

/// The driver of a workspace that names no storage class.
pub const DEFAULT_DRIVER: &str = "local";
/// The placeholder in a driver option's value that stands for the workspace's size in bytes.
pub const SIZE_PLACEHOLDER: &str = "{size}";
/// Containers named in a `Referenced` reason, at most.
const NAMED_CONTAINERS: usize = 10;

/// Workspace volumes as Docker named volumes.
#[derive(Debug, Clone)]
pub struct DockerVolumes {
    engine: Engine,
    /// The installation whose volumes this adapter creates and removes.
    install: String,
    /// Options of every new volume's driver.
    driver_opts: BTreeMap<String, String>,
}

impl DockerVolumes {
    /// Volumes of installation `install` on `engine`, created with `driver_opts`.
    pub fn new(
        engine: Engine,
        install: impl Into<String>,
        driver_opts: BTreeMap<String, String>,
    ) -> Result<DockerVolumes, VolumeError> {
        for (k, v) in &driver_opts {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(VolumeError::permanent(format!(
                    "driver option '{}' is not valid: use --volume-opt KEY=VALUE with a non-empty key",
                    bounded(k)
                )));
            }
        }
        Ok(DockerVolumes { engine, install: install.into(), driver_opts })
    }

    /// The engine this adapter talks to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn driver_opts(&self, size_bytes: u64) -> HashMap<String, String> {
        let size = size_bytes.to_string();
        self.driver_opts.iter().map(|(k, v)| (k.clone(), v.replace(SIZE_PLACEHOLDER, &size))).collect()
    }

    /// The volume's labels, or `None` when there is no such volume.
    async fn labels_of(&self, name: &VolumeName) -> Result<Option<BTreeMap<String, String>>, VolumeError> {
        let docker = self.engine.client().await?;
        let what = format!("inspecting volume {name}");
        match docker.inspect_volume(name.as_str()).await {
            Ok(v) => Ok(Some(v.labels.into_iter().collect())),
            Err(e) => match self.engine.failure(&what, e) {
                Failure::Status(404, _) => Ok(None),
                other => Err(status_error(&what, other)),
            },
        }
    }

    /// Names the containers that mount `name`, for a `Referenced` reason.
    async fn users(&self, name: &VolumeName) -> String {
        let filters: HashMap<&str, Vec<&str>> = [("volume", vec![name.as_str()])].into();
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let listed = match self.engine.client().await {
            Ok(docker) => docker.list_containers(Some(options)).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match listed {
            Ok(containers) if !containers.is_empty() => {
                let n = containers.len();
                let mut named: Vec<String> = containers
                    .into_iter()
                    .take(NAMED_CONTAINERS)
                    .map(|c| {
                        let id: String = c.id.unwrap_or_default().chars().take(12).collect();
                        let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                        let name = c.names.and_then(|n| n.into_iter().next()).unwrap_or_default();
                        format!("{id} {} ({state})", name.trim_start_matches('/'))
                    })
                    .collect();
                if n > NAMED_CONTAINERS {
                    named.push(format!("and {} more", n - NAMED_CONTAINERS));
                }
                format!("containers {}", named.join(", "))
            }
            Ok(_) => "a container the engine did not list".to_string(),
            Err(e) => format!("containers the engine did not list ({})", bounded(&e)),
        }
    }
}

#[async_trait]
impl Volumes for DockerVolumes {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn ensure(&self, spec: &VolumeSpec) -> Result<(), VolumeError> {
        let docker = self.engine.client().await?;
        let name = &spec.name;
        let driver = spec.storage_class.as_deref().unwrap_or(DEFAULT_DRIVER);
        let request = VolumeCreateRequest {
            name: Some(name.to_string()),
            driver: Some(driver.to_string()),
            driver_opts: Some(self.driver_opts(spec.size_bytes)),
            labels: Some(spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            ..Default::default()
        };
        let what = format!("creating volume {name} (driver {driver})");
        // The engine answers an existing volume of that name as if it had created it, with the
        // existing labels: those decide whether it is ours.
        let existing: BTreeMap<String, String> = match docker.create_volume(request).await {
            Ok(v) => v.labels.into_iter().collect(),
            Err(e) => match self.engine.failure(&what, e) {
                Failure::Status(409, message) => match self.labels_of(name).await? {
                    Some(labels) => labels,
                    None => return Err(VolumeError::temporary(format!("{what}: {message}"))),
                },
                Failure::Status(404, message) => {
                    return Err(VolumeError::permanent(format!(
                        "{what}: the engine has no volume driver '{driver}' ({message}): install the plugin, \
                         or use another storage class"
                    )))
                }
                other => return Err(status_error(&what, other)),
            },
        };
        check_ours(name, &existing, &spec.labels)
    }

    async fn delete(&self, name: &VolumeName) -> Result<Removal, VolumeError> {
        match self.labels_of(name).await? {
            None => return Ok(Removal::NotFound),
            Some(labels) if !is_install(&labels, &self.install) => {
                tracing::warn!(event = "volume_delete_foreign_skipped", volume = %name);
                return Ok(Removal::NotFound);
            }
            Some(_) => {}
        }
        let docker = self.engine.client().await?;
        let what = format!("removing volume {name}");
        match docker.remove_volume(name.as_str(), None::<RemoveVolumeOptions>).await {
            Ok(()) => Ok(Removal::Removed),
            Err(e) => match self.engine.failure(&what, e) {
                Failure::Status(404, _) => Ok(Removal::NotFound),
                Failure::Status(409, _) => Ok(Removal::Referenced { by: self.users(name).await }),
                other => Err(status_error(&what, other)),
            },
        }
    }

    async fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<VolumeInfo>, VolumeError> {
        let docker = self.engine.client().await?;
        let pairs: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let filters: HashMap<&str, Vec<String>> = [("label", pairs)].into();
        let options = ListVolumesOptionsBuilder::default().filters(&filters).build();
        let listed = docker.list_volumes(Some(options)).await.map_err(|e| self.engine.error("listing volumes", e))?;
        let mut out: Vec<VolumeInfo> = listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| {
                let labels: BTreeMap<String, String> = v.labels.into_iter().collect();
                // The engine filters already; checked again so the port's promise never rests
                // on an engine's filter semantics.
                let matches = selector.iter().all(|(k, want)| labels.get(k) == Some(want));
                let name = VolumeName::new(v.name).ok()?;
                matches.then_some(VolumeInfo { name, labels })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn health(&self) -> Result<(), VolumeError> {
        self.engine.ping().await
    }

    fn mount(&self, name: &VolumeName) -> MountSpec {
        MountSpec::Docker { volume: name.clone() }
    }
}
