//! Rescues of at-risk volumes: the local substrate's `Rescuer` (in process, with berth-engine),
//! and `open`, which picks the rescuer of the configured substrate.
//!
//! The control plane drives a rescue (`reconcile`): it takes the lease with a new epoch, calls
//! the rescuer, records the snapshot as the session's final one and releases the lease.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use berth_core::excludes::Excludes;
use berth_core::volume::MountSpec;
use berth_engine::create::{self, CreateOptions};
use berth_engine::progress::Progress;
use berth_engine::snapshot_store::SnapshotStore;
use rustix::fs::FlockOperation;

use crate::app::Config;
use crate::volumes::{RescueError, RescueOutcome, RescueRequest, Rescuer, Substrate};

/// Rescues local volumes (directories) in process: holds the volume's lock exclusively (so no
/// sandbox uses it meanwhile), snapshots the directory into the store, lets go.
#[derive(Debug, Default)]
pub struct LocalRescuer;

#[async_trait]
impl Rescuer for LocalRescuer {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn rescue(&self, req: RescueRequest) -> Result<RescueOutcome, RescueError> {
        let MountSpec::Local { path, lock } = &req.mount else {
            return Err(RescueError::permanent(format!("volume {} is not a local directory", req.volume)));
        };
        // A sandbox holds the lock shared while it uses the directory; a held lock means a
        // process (a zombie of the last sandbox) may still write: never snapshot under it.
        let held = fs::OpenOptions::new().read(true).open(lock).map_err(|e| {
            RescueError::temporary(format!("cannot open the lock {lock} of volume {}: {e}", req.volume))
        })?;
        match rustix::fs::flock(&held, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(RescueError::temporary(format!(
                    "a process still holds {lock}: volume {} is in use, so it is not rescued now",
                    req.volume
                )))
            }
            Err(e) => return Err(RescueError::temporary(format!("cannot lock {lock}: {e}"))),
        }
        let store = berth_engine::store::open(&req.store).map_err(|e| RescueError::permanent(e.to_string()))?;
        let snapshots = SnapshotStore::open_or_init(store)
            .await
            .map_err(|e| RescueError::temporary(format!("cannot open the store {}: {e}", req.store)))?;
        let opts = CreateOptions {
            workspace: req.owner.clone(),
            generation: req.generation,
            dir: PathBuf::from(path),
            excludes: Excludes::new(&[], true).map_err(|e| RescueError::permanent(e.to_string()))?,
            budget: None,
            cache_dir: None,
            host: "berth-rescue".into(),
            epoch: req.epoch,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        };
        let summary = create::create(&snapshots, &opts, &Arc::new(Progress::default()))
            .await
            .map_err(|e| RescueError::temporary(format!("snapshot of volume {} failed: {e}", req.volume)))?;
        drop(held);
        Ok(RescueOutcome { snapshot: summary.snapshot, files: summary.files_scanned, bytes: summary.bytes_scanned })
    }
}

/// Returns the rescuer of the configured substrate, or why there is none (GC then keeps
/// at-risk volumes and says so).
pub fn open(config: &Config) -> Result<Arc<dyn Rescuer>, String> {
    if config.store.is_none() {
        return Err("the control plane has no object store to rescue into: start berth serve with --store URL \
                    (the store sandboxes snapshot to)"
            .into());
    }
    match config.substrate {
        Substrate::Local => Ok(Arc::new(LocalRescuer)),
        other => Err(format!("the {other} substrate has no rescuer yet")),
    }
}
