//! `PauseDeletes`: a test hook around any adapter that lets the first N deletes through and
//! holds every later one forever, so a test can kill a server in the middle of a GC sweep at
//! a known point (after exactly N removals) instead of racing the clock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use berth_core::volume::{MountSpec, VolumeName};

use crate::volumes::{Removal, VolumeError, VolumeInfo, VolumeSpec, Volumes};

/// An adapter whose deletes stop after the first `after`.
#[derive(Debug)]
pub struct PauseDeletes {
    inner: Arc<dyn Volumes>,
    after: u64,
    started: AtomicU64,
}

impl PauseDeletes {
    /// Wraps `inner`; deletes beyond the first `after` never return.
    pub fn new(inner: Arc<dyn Volumes>, after: u64) -> PauseDeletes {
        PauseDeletes { inner, after, started: AtomicU64::new(0) }
    }
}

#[async_trait]
impl Volumes for PauseDeletes {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn ensure(&self, spec: &VolumeSpec) -> Result<(), VolumeError> {
        self.inner.ensure(spec).await
    }

    async fn delete(&self, name: &VolumeName) -> Result<Removal, VolumeError> {
        if self.started.fetch_add(1, Ordering::SeqCst) >= self.after {
            tracing::warn!(event = "test_hook_paused_delete", volume = %name);
            std::future::pending::<()>().await;
        }
        self.inner.delete(name).await
    }

    async fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<VolumeInfo>, VolumeError> {
        self.inner.list(selector).await
    }

    async fn health(&self) -> Result<(), VolumeError> {
        self.inner.health().await
    }

    fn mount(&self, name: &VolumeName) -> MountSpec {
        self.inner.mount(name)
    }
}
