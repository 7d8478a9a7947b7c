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
/// Longest label value repeated in an error.
const LABEL_VALUE_MAX: usize = 80;
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

/// What kind of failure a [`VolumeError`] is: it decides whether a retry makes sense and how
/// the control plane answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeErrorKind {
    /// The substrate did not answer or failed for now (unreachable engine, timeout, 5xx): a
    /// retry may succeed.
    Temporary,
    /// The request cannot succeed as made (an unknown driver, a bad driver option, no
    /// permission): a retry will not help until the configuration changes.
    Permanent,
    /// The name is taken by a volume berth did not create, or one of another installation,
    /// owner or generation. berth never adopts such a volume: whoever owns it must remove or
    /// rename it.
    Foreign,
}

/// A substrate failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct VolumeError {
    /// What kind of failure.
    pub kind: VolumeErrorKind,
    /// What failed, naming the volume or path.
    pub message: String,
}

impl VolumeError {
    /// A failure worth retrying.
    pub fn temporary(message: impl fmt::Display) -> VolumeError {
        VolumeError { kind: VolumeErrorKind::Temporary, message: message.to_string() }
    }

    /// A failure a retry will not fix.
    pub fn permanent(message: impl fmt::Display) -> VolumeError {
        VolumeError { kind: VolumeErrorKind::Permanent, message: message.to_string() }
    }

    /// A name held by a volume that is not this installation's (never adopted).
    pub fn foreign(message: impl fmt::Display) -> VolumeError {
        VolumeError { kind: VolumeErrorKind::Foreign, message: message.to_string() }
    }

    /// Returns whether a retry may succeed without a change by anyone.
    pub fn is_temporary(&self) -> bool {
        self.kind == VolumeErrorKind::Temporary
    }
}

/// Checks that `existing` (the labels of a volume found under a name) are berth's labels for
/// the same installation, owner and generation as `wanted` (the labels of the spec being
/// ensured); otherwise says whose volume it is, as a [`VolumeErrorKind::Foreign`] error.
pub fn check_ours(
    name: &VolumeName,
    existing: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
) -> Result<(), VolumeError> {
    let get = |labels: &BTreeMap<String, String>, k: &str| labels.get(k).cloned().unwrap_or_default();
    if existing.get(LABEL_MANAGED).map(String::as_str) != Some("true") {
        return Err(VolumeError::foreign(format!(
            "volume {name} exists but berth did not create it (no {LABEL_MANAGED} label); berth never adopts \
             a volume it did not create: remove or rename that volume, or delete this workspace"
        )));
    }
    for key in [LABEL_INSTALL, LABEL_OWNER, LABEL_GENERATION] {
        let (have, want) = (get(existing, key), get(wanted, key));
        if have != want {
            return Err(VolumeError::foreign(format!(
                "volume {name} belongs to another berth workspace ({key}={}, expected {}); berth never \
                 adopts it: remove it with the installation that created it",
                bounded(&have, LABEL_VALUE_MAX),
                bounded(&want, LABEL_VALUE_MAX)
            )));
        }
    }
    Ok(())
}

/// Returns whether `labels` mark a volume of installation `install`.
pub fn is_install(labels: &BTreeMap<String, String>, install: &str) -> bool {
    labels.get(LABEL_MANAGED).map(String::as_str) == Some("true")
        && labels.get(LABEL_INSTALL).map(String::as_str) == Some(install)
}

/// Cuts text read from a substrate (a label, an engine's message) before an error repeats it.
pub use berth_core::bounded;

/// Where workspace volumes live.
///
/// Every adapter acts for one installation (the metadata store that records its volumes) and
/// runs the same contract suite (`contract`, behind the `contract` feature).
///
/// # Guarantees (of every adapter)
/// - `ensure` is idempotent: "already exists" with this installation's labels for the same
///   owner and generation is success, and two concurrent calls for one name leave one volume.
///   A volume under that name without those labels is never adopted: [`VolumeErrorKind::Foreign`].
/// - `delete` never removes a volume in use (`Referenced`, naming who uses it), and removes only
///   a volume carrying this installation's labels: under a name held by anything else, berth's
///   volume is `NotFound` and the other volume is left alone.
/// - "not found" is an answer, not an error; an unreachable substrate is an error, never
///   "not found".
/// - `list` returns only volumes carrying every label of the selector.
#[async_trait]
pub trait Volumes: Send + Sync + fmt::Debug {
    /// The substrate's name (`local`, `docker`, `kubernetes`).
    fn kind(&self) -> &'static str;
    /// Creates the volume unless it exists.
    async fn ensure(&self, spec: &VolumeSpec) -> Result<(), VolumeError>;
    /// Deletes this installation's volume unless it is in use.
    async fn delete(&self, name: &VolumeName) -> Result<Removal, VolumeError>;
    /// Lists volumes carrying every label of `selector`.
    async fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<VolumeInfo>, VolumeError>;
    /// Checks that the substrate answers.
    async fn health(&self) -> Result<(), VolumeError>;
    /// Says how a sandbox mounts the volume.
    fn mount(&self, name: &VolumeName) -> MountSpec;
}
