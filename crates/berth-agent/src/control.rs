//! The sandbox's side of the control plane: heartbeats under the lease epoch, snapshot
//! publishes, the eviction notice, the ready-ack of a handover and the detach; or, with no
//! control plane, a local-only lease (an exclusive lock on the workspace directory).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_api::{Client, ClientError, Handover, Heartbeat, PublishSnapshot, Ready, SnapshotStats, StartDrain};
use berth_core::id::SnapshotId;
use berth_core::lease::Fenced;
use rustix::fs::FlockOperation;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, ControlConfig};
use crate::error::AgentError;
use crate::layout;

/// What the heartbeats have learned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    /// The epoch was rejected: another sandbox owns the workspace; stop writing.
    pub fenced: Option<Fenced>,
    /// A scope of this session is draining.
    pub draining: bool,
}

/// A session with the control plane.
#[derive(Debug)]
pub struct Control {
    client: Client,
    cfg: ControlConfig,
    owner: String,
    instance: String,
    view: watch::Sender<LeaseView>,
}

impl Control {
    /// Connects to the control plane of `cfg`.
    pub fn new(agent: &AgentConfig, cfg: &ControlConfig) -> Result<Arc<Control>, ClientError> {
        let client = Client::new(&cfg.server, cfg.token.clone())?.with_timeout(Duration::from_secs(10));
        let (view, _) = watch::channel(LeaseView::default());
        Ok(Arc::new(Control {
            client,
            cfg: cfg.clone(),
            owner: agent.workspace.to_string(),
            instance: agent.instance.to_string(),
            view,
        }))
    }

    /// Watches what the heartbeats learn.
    pub fn view(&self) -> watch::Receiver<LeaseView> {
        self.view.subscribe()
    }

    /// Returns whether the epoch was rejected.
    pub fn fenced(&self) -> bool {
        self.view.borrow().fenced.is_some()
    }

    fn fence(&self, fenced: Fenced, why: &str) {
        if !self.fenced() {
            tracing::error!(event = "fenced", session = %self.cfg.session, epoch = %self.cfg.epoch, reason = why);
            self.view.send_modify(|v| v.fenced = Some(fenced));
        }
    }

    /// Sends one heartbeat. A stale epoch, or a session the server no longer knows, fences
    /// this sandbox.
    pub async fn heartbeat(&self) -> Result<(), AgentError> {
        let body = Heartbeat { epoch: self.cfg.epoch, instance_id: self.instance.clone() };
        match self.client.heartbeat(self.cfg.session.as_str(), &body).await {
            Ok(reply) => {
                if reply.draining && !self.view.borrow().draining {
                    let scopes: Vec<_> = reply.drains.iter().map(|d| d.scope.clone()).collect();
                    tracing::warn!(event = "scope_draining", scopes = ?scopes);
                }
                self.view.send_modify(|v| v.draining = reply.draining);
                Ok(())
            }
            Err(e) if e.status() == Some(404) => {
                let fenced = Fenced { presented: self.cfg.epoch, current: None };
                self.fence(fenced, &e.to_string());
                Err(fenced.into())
            }
            Err(e) => Err(self.refused(e)),
        }
    }

    /// Maps a control-plane error, fencing this sandbox when it is a stale epoch.
    fn refused(&self, e: ClientError) -> AgentError {
        let why = e.to_string();
        let e = AgentError::from_control(e);
        if let Some(fenced) = e.fenced() {
            self.fence(fenced, &why);
        }
        e
    }

    /// Heartbeats every third of the lease until `stop`, or until fenced.
    pub async fn heartbeat_loop(self: Arc<Control>, stop: CancellationToken) {
        let period = Duration::from_secs((self.cfg.lease_ttl_secs / 3).max(1));
        loop {
            if let Err(e) = self.heartbeat().await {
                if self.fenced() {
                    return;
                }
                tracing::warn!(event = "heartbeat_failed", error = %e);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }

    /// Records a durable snapshot as the workspace's latest, under this session's epoch.
    /// A stale epoch fences this sandbox; any other failure leaves the snapshot durable in the
    /// store regardless.
    pub async fn publish(&self, snapshot: &SnapshotId, stats: SnapshotStats) -> Result<(), AgentError> {
        let body =
            PublishSnapshot { epoch: self.cfg.epoch, snapshot_id: snapshot.to_string(), stats, final_snapshot: false };
        match self.client.publish_snapshot(&self.owner, &body).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.refused(e)),
        }
    }

    /// Tells the control plane this sandbox is being evicted, within `timeout`; returns the
    /// drain's nonce. A failure is logged, never fatal.
    pub async fn evict(&self, reason: &str, timeout: Duration) -> Option<String> {
        let body = StartDrain {
            scope: format!("workspace:{}", self.owner),
            instance_id: Some(self.instance.clone()),
            reason: Some(reason.to_string()),
        };
        match tokio::time::timeout(timeout, self.client.with_timeout(timeout).start_drain(&body)).await {
            Ok(Ok(d)) => d.nonce,
            Ok(Err(e)) => {
                tracing::warn!(event = "evict_notify_failed", error = %e);
                None
            }
            Err(_) => {
                tracing::warn!(event = "evict_notify_failed", error = "timed out");
                None
            }
        }
    }

    /// Acknowledges a handover once this sandbox is ready.
    pub async fn ready(&self, handover: &Handover) -> Result<bool, AgentError> {
        let body = Ready { nonce: handover.nonce.clone(), epoch: Some(self.cfg.epoch) };
        match self.client.ready(&handover.scope, &body).await {
            Ok(r) => Ok(r.cleared),
            // A refused ack does not fence: the heartbeats and publishes decide that.
            Err(e) => Err(AgentError::from_control(e)),
        }
    }

    /// Detaches the session, releasing the lease for the replacement.
    pub async fn detach(&self, timeout: Duration) {
        match tokio::time::timeout(timeout, self.client.detach(self.cfg.session.as_str())).await {
            Ok(Ok(())) => tracing::info!(event = "session_detached", session = %self.cfg.session),
            Ok(Err(e)) => tracing::warn!(event = "detach_failed", error = %e),
            Err(_) => tracing::warn!(event = "detach_failed", error = "timed out"),
        }
    }

    /// The handover the attach carried, if any.
    pub fn handover(&self) -> Option<&Handover> {
        self.cfg.handover.as_ref()
    }
}

/// The locks an agent holds on its workspace: the local single-writer lock, and a shared lock
/// on the local volume's lock file (which makes the volume "referenced" to GC).
#[derive(Debug)]
pub struct Locks {
    _agent: File,
    _mount: Option<File>,
}

/// Takes the workspace's locks; refuses when another agent holds it.
pub fn lock_workspace(dir: &Path, mount_lock: Option<&Path>) -> Result<Locks, AgentError> {
    let path = layout::agent_lock(dir);
    let run_dir = layout::run_dir(dir);
    std::fs::create_dir_all(&run_dir).map_err(|e| AgentError::io("create", run_dir, e))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(&path)
        .map_err(|e| AgentError::io("open", &path, e))?;
    match rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default().trim().to_string();
            return Err(AgentError::Locked { dir: dir.to_path_buf(), pid });
        }
        Err(e) => return Err(AgentError::io("lock", path, e.into())),
    }
    let _ = f.set_len(0);
    let _ = std::io::Write::write_all(&mut &f, std::process::id().to_string().as_bytes());
    let mount = match mount_lock {
        Some(p) => match File::open(p) {
            Ok(m) => {
                let _ = rustix::fs::flock(&m, FlockOperation::LockShared);
                Some(m)
            }
            Err(e) => {
                tracing::warn!(event = "mount_lock_unavailable", path = %p.display(), error = %e);
                None
            }
        },
        None => None,
    };
    Ok(Locks { _agent: f, _mount: mount })
}
