//! berth's Docker substrate: workspace volumes as Docker named volumes ([`DockerVolumes`]) on
//! the engine `DOCKER_HOST` names ([`Engine`], shared by every Docker adapter).
//!
//! **Invariant:** only this crate talks to the Docker Engine; the control plane reaches it
//! through the `Volumes` port of `berth-substrate`.

mod engine;
#[cfg(feature = "testing")]
pub mod testing;
mod volumes;

pub use engine::{Engine, DEFAULT_HOST};
pub use volumes::{DockerVolumes, DEFAULT_DRIVER, SIZE_PLACEHOLDER};
