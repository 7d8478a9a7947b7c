//! berth's Kubernetes substrate: workspace volumes as PersistentVolumeClaims
//! ([`KubeVolumes`]), sandboxes as pods ([`KubeSandboxes`]) and node cordons ([`NodeWatch`]),
//! reached through the Kubernetes API with kube-rs in one namespace ([`Kube`]), and a fake API
//! server to test them on (feature `fake`).
//!
//! **Invariant:** only this crate talks to a Kubernetes API server; the control plane reaches it
//! through the ports of `berth-substrate`. Every call the adapter makes is listed in
//! [`API_CALLS`], so a deployment's Role can grant exactly those.

mod client;
#[cfg(feature = "fake")]
pub mod fake;
mod names;
mod nodes;
mod sandboxes;
mod volumes;

pub use client::{ConnectError, Failure, Kube, RetryPolicy};
pub use names::{label_value, ApiCall, ANNOTATION_LABELS, ANNOTATION_OWNER, API_CALLS};
pub use nodes::{NodeState, NodeWatch};
pub use sandboxes::{KubeSandboxes, PodSettings, ANNOTATION_NAME, BERTH_DIR, DEFAULT_BERTH_IN_IMAGE};
pub use volumes::{KubeVolumes, DEFAULT_TERMINATING_WAIT};
