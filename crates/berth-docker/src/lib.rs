//! berth's Docker substrate: workspace volumes as Docker named volumes ([`DockerVolumes`]) and
//! sandboxes as containers ([`DockerSandboxes`]) on the engine `DOCKER_HOST` names
//! ([`Engine`], shared by every Docker adapter).
//!
//! **Invariant:** only this crate talks to the Docker Engine; the control plane reaches it
//! through the `Volumes` and `Sandboxes` ports of `berth-substrate`.

mod engine;
mod sandboxes;
mod tar;
#[cfg(feature = "testing")]
pub mod testing;
mod volumes;

pub use engine::{Engine, DEFAULT_HOST};
pub use sandboxes::DockerSandboxes;
pub use volumes::{DockerVolumes, DEFAULT_DRIVER, SIZE_PLACEHOLDER};
