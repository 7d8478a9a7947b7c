//! berth's substrates: the `Volumes` port that every place workspace volumes can live
//! implements (`local` here; Docker and Kubernetes in their own crates), and `LocalVolumes`.
//!
//! **Invariant:** this crate depends on `berth-core` only among berth's crates: substrate
//! adapters build on it without pulling in the control plane, the engine or the HTTP API.

mod local;
mod volumes;

pub use local::LocalVolumes;
pub use volumes::*;
