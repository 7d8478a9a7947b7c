//! The `Volumes` port: where workspace volumes live, and the labels that mark a volume as
//! berth's.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use berth_core::volume::{AccessMode, MountSpec, VolumeName};
use berth_core::workspace::{Generation, WorkspaceId};

/// Label on every volume berth creates.
pub const LABEL_MANAGED: &str = "berth.managed";
/// Label naming the installation (metadata store) that created the volume; the orphan sweep
/// only ever considers its own installation's volumes.
pub const LABEL_INSTALL: &str = "berth.install";
/// Label naming the owner key.
pub const LABEL_OWNER: &str = "berth.owner";
/// Label naming the generation.
pub const LABEL_GENERATION: &str = "berth.generation";

/// Everything a substrate needs to create a workspace volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The volume name.
    pub name: VolumeName,
    /// Labels: berth's own plus the workspace's.
    pub labels: BTreeMap<String, String>,
    /// Requested size in bytes.
    pub size_bytes: u64,
    /// Storage class; `None` means the substrate's default.
    pub storage_class: Option<String>,
    /// Access mode.
    pub access_mode: AccessMode,
}

/// Returns the labels of `owner`'s volume in `generation`: the workspace's labels with berth's
/// own over them.
pub fn volume_labels(
    install: &str,
    owner: &WorkspaceId,
    generation: Generation,
    workspace_labels: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = workspace_labels.clone();
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_INSTALL.into(), install.into());
    labels.insert(LABEL_OWNER.into(), owner.to_string());
    labels.insert(LABEL_GENERATION.into(), generation.to_string());
    labels
}

/// The selector of every volume this installation created.
pub fn install_selector(install: &str) -> BTreeMap<String, String> {
    [(LABEL_MANAGED.to_string(), "true".to_string()), (LABEL_INSTALL.to_string(), install.to_string())].into()
}

/// A volume as the substrate lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Its name.
    pub name: VolumeName,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// What a delete did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The volume was removed.
    Removed,
    /// There was no such volume.
    NotFound,
    /// A live container, pod or process still uses it; nothing was removed.
    Referenced {
        /// Who, as far as the substrate can tell.
        by: String,
    },
}

/// A substrate failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct VolumeError {
    /// What failed, naming the volume or path.
    pub message: String,
    /// Whether a retry may succeed.
    pub temporary: bool,
}

impl VolumeError {
    /// A failure worth retrying.
    pub fn temporary(message: impl fmt::Display) -> VolumeError {
        VolumeError { message: message.to_string(), temporary: true }
    }

    /// A failure a retry will not fix.
    pub fn permanent(message: impl fmt::Display) -> VolumeError {
        VolumeError { message: message.to_string(), temporary: false }
    }
}

/// Where workspace volumes live.
///
/// # Guarantees (of every adapter)
/// - `ensure` is idempotent: "already exists" is success, and two concurrent calls for one
///   name leave one volume.
/// - `delete` never removes a volume in use; "not found" is an answer, not an error.
/// - `list` returns only volumes carrying every label of the selector.
#[async_trait]
pub trait Volumes: Send + Sync + fmt::Debug {
    /// The substrate's name (`local`, `docker`, `kubernetes`).
    fn kind(&self) -> &'static str;
    /// Creates the volume unless it exists.
    async fn ensure(&self, spec: &VolumeSpec) -> Result<(), VolumeError>;
    /// Deletes the volume unless it is in use.
    async fn delete(&self, name: &VolumeName) -> Result<Removal, VolumeError>;
    /// Lists volumes carrying every label of `selector`.
    async fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<VolumeInfo>, VolumeError>;
    /// Checks that the substrate answers.
    async fn health(&self) -> Result<(), VolumeError>;
    /// Says how a sandbox mounts the volume.
    fn mount(&self, name: &VolumeName) -> MountSpec;
}
