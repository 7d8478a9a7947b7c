//! berth's substrates: the `Volumes` port that every place workspace volumes can live
//! implements (`local` here; Docker and Kubernetes in their own crates), the `Sandboxes` port
//! where sandboxes run (Docker), the `Rescuer` port that saves an at-risk volume into the
//! store, `LocalVolumes`, and the contract suite every adapter runs (feature `contract`).
//!
//! **Invariant:** this crate depends on `berth-core` only among berth's crates: substrate
//! adapters build on it without pulling in the control plane, the engine or the HTTP API.

#[cfg(feature = "contract")]
pub mod contract;
mod local;
mod pause;
mod rescue;
mod sandboxes;
mod volumes;

pub use local::LocalVolumes;
pub use pause::PauseDeletes;
pub use rescue::{RescueError, RescueOutcome, RescueRequest, Rescuer};
pub use sandboxes::*;
pub use volumes::*;
