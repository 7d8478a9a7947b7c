//! The sandbox's side of the control plane: heartbeats under the lease epoch, snapshot
//! publishes, the eviction notice, the ready-ack of a handover and the detach; or, with no
//! control plane, a local-only lease (an exclusive lock on the workspace directory).
//!
//! # Guarantees
//! - The sandbox writes (snapshots, pushes) only while it holds its lease by its own monotonic
//!   clock: until the last successful renewal's send time plus the TTL, less a margin
//!   (`berth_core::renewal`). Past that it pauses (`event=lease_lapsed`), keeps heartbeating,
//!   and resumes only when a renewal succeeds (`event=lease_resumed`).
//! - A refused epoch, or a session the control plane no longer knows, fences it for good
//!   (`event=fenced`).

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::client::WRONG_INSTANCE;
use berth_api::{Client, ClientError, Handover, Heartbeat, PublishSnapshot, Ready, SnapshotStats, StartDrain};
use berth_core::id::SnapshotId;
use berth_core::lease::{Epoch, Fenced};
use berth_core::renewal::LeaseClock;
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
    /// The lease could not be renewed in time: writing is paused until a renewal succeeds.
    pub lapsed: bool,
}

/// A session with the control plane.
#[derive(Debug)]
pub struct Control {
    client: Client,
    cfg: ControlConfig,
    owner: String,
    instance: String,
    view: watch::Sender<LeaseView>,
    clock: Mutex<LeaseClock>,
    origin: Instant,
}

impl Control {
    /// Connects to the control plane of `cfg`.
    pub fn new(agent: &AgentConfig, cfg: &ControlConfig) -> Result<Arc<Control>, ClientError> {
        let client = Client::new(&cfg.server, cfg.token.clone())?.with_timeout(Duration::from_secs(10));
        let (view, _) = watch::channel(LeaseView::default());
        let clock = LeaseClock::new(cfg.lease_ttl_secs * 1000, cfg.lease_margin_secs * 1000);
        Ok(Arc::new(Control {
            client,
            cfg: cfg.clone(),
            owner: agent.workspace.to_string(),
            instance: agent.instance.to_string(),
            view,
            clock: Mutex::new(clock),
            origin: Instant::now(),
        }))
    }

    /// Monotonic milliseconds since this session started.
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn clock(&self) -> LeaseClock {
        // A poisoned lock only means a panic elsewhere; the clock itself is plain data.
        *self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns whether this sandbox may write now: not fenced, and its lease renewed recently
    /// enough that it cannot have expired.
    pub fn holds(&self) -> bool {
        !self.fenced() && self.clock().holds(self.now_ms())
    }

    /// Resolves once this sandbox may no longer write (its write deadline passed, or it was
    /// fenced); at once if it may not now.
    pub async fn lapsed(&self) {
        let mut view = self.view.subscribe();
        loop {
            if !self.holds() {
                return;
            }
            let left = self.clock().deadline().unwrap_or(0).saturating_sub(self.now_ms());
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(left)) => {}
                _ = view.changed() => {}
            }
        }
    }

    /// Resolves once this sandbox holds its lease again, or is fenced (then it never will).
    pub async fn held(&self) {
        let mut view = self.view.subscribe();
        while !self.holds() && !self.fenced() {
            if view.changed().await.is_err() {
                return;
            }
        }
    }

    /// Says when the write deadline passes, and marks the view lapsed, until `stop`.
    async fn watch_lapses(self: Arc<Control>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.held() => {}
            }
            if self.fenced() {
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.lapsed() => {}
            }
            if self.fenced() {
                return;
            }
            let clock = self.clock();
            let since = clock.deadline().map_or(0, |d| self.now_ms().saturating_sub(d));
            tracing::warn!(
                event = "lease_lapsed",
                session = %self.cfg.session,
                epoch = %self.cfg.epoch,
                margin_ms = clock.margin_ms(),
                late_ms = since,
                hint = "no renewal within the lease's TTL less the margin: no snapshot or push until one succeeds"
            );
            self.view.send_modify(|v| v.lapsed = true);
        }
    }

    /// The session's fencing epoch, which every snapshot record and publish carries.
    pub fn epoch(&self) -> Epoch {
        self.cfg.epoch
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

    /// Sends one heartbeat. A success renews the write deadline from the moment it was sent.
    /// A stale epoch, a session the server no longer knows (404, or 401: its token died with
    /// it), or one attached by another instance id fences this sandbox.
    pub async fn heartbeat(&self) -> Result<(), AgentError> {
        self.beat(None).await
    }

    /// Sends the heartbeat that says init has ended (the warm pool this sandbox was claimed
    /// from waits for it to refill). A failure is logged, never fatal: a control plane that
    /// does not know the field refuses it, and the next regular heartbeat renews the lease.
    pub async fn init_done(&self) {
        if let Err(e) = self.beat(Some(true)).await {
            tracing::debug!(event = "init_done_heartbeat_failed", error = %e);
        }
    }

    async fn beat(&self, init_done: Option<bool>) -> Result<(), AgentError> {
        let body = Heartbeat { epoch: self.cfg.epoch, instance_id: self.instance.clone(), init_done };
        let sent = self.now_ms();
        match self.client.heartbeat(self.cfg.session.as_str(), &body).await {
            Ok(reply) => {
                if self.fenced() {
                    return Ok(());
                }
                let was_holding = self.holds();
                self.clock.lock().unwrap_or_else(|p| p.into_inner()).renewed(sent);
                if reply.draining && !self.view.borrow().draining {
                    let scopes: Vec<_> = reply.drains.iter().map(|d| d.scope.clone()).collect();
                    tracing::warn!(event = "scope_draining", scopes = ?scopes);
                }
                if self.view.borrow().lapsed && self.holds() {
                    tracing::info!(event = "lease_resumed", session = %self.cfg.session, epoch = %self.cfg.epoch);
                }
                let holds = self.holds();
                // Watchers hear of a change, and of the lease held again.
                self.view.send_if_modified(|v| {
                    let changed = (v.draining, v.lapsed) != (reply.draining, !holds) || (holds && !was_holding);
                    (v.draining, v.lapsed) = (reply.draining, !holds);
                    changed
                });
                Ok(())
            }
            // A session the server no longer knows, or one attached by another instance id:
            // this sandbox can never renew it.
            Err(e) if matches!(e.status(), Some(404 | 401)) || e.code() == Some(WRONG_INSTANCE) => {
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

    /// Heartbeats every third of the lease (a failed one is retried after a quarter of that),
    /// each bounded by the period, until `stop`, or until fenced; says when the write deadline
    /// passes.
    pub async fn heartbeat_loop(self: Arc<Control>, stop: CancellationToken) {
        let period = Duration::from_millis((self.cfg.lease_ttl_secs * 1000 / 3).max(250));
        let watcher = tokio::spawn(self.clone().watch_lapses(stop.clone()));
        loop {
            let sent = tokio::select! {
                _ = stop.cancelled() => break,
                r = tokio::time::timeout(period.min(Duration::from_secs(10)), self.heartbeat()) => r,
            };
            let wait = match sent {
                Ok(Ok(())) => period,
                Ok(Err(e)) => {
                    if self.fenced() {
                        break;
                    }
                    tracing::warn!(event = "heartbeat_failed", error = %e);
                    period / 4
                }
                Err(_) => {
                    tracing::warn!(event = "heartbeat_failed", error = "timed out");
                    period / 4
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        watcher.abort();
    }

    /// Records a durable snapshot as the workspace's latest, under this session's epoch;
    /// `final_snapshot`: taken after the agent process stopped, so a detach after it ends the
    /// session clean. A stale epoch fences this sandbox; any other failure leaves the snapshot
    /// durable in the store regardless.
    pub async fn publish(
        &self,
        snapshot: &SnapshotId,
        stats: SnapshotStats,
        final_snapshot: bool,
    ) -> Result<(), AgentError> {
        let body = PublishSnapshot { epoch: self.cfg.epoch, snapshot_id: snapshot.to_string(), stats, final_snapshot };
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

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::session::{InstanceId, SessionId};
    use berth_core::workspace::WorkspaceId;

    /// A control plane that refuses every call as a write under an old epoch (409 `stale_epoch`),
    /// as it does for a session whose lease lapsed and was taken over but is not yet ended.
    async fn refusing_server() -> String {
        let body = serde_json::json!({"error": {"code": "stale_epoch", "message": "epoch 1 is stale; the lease is at 2",
            "presented_epoch": 1, "current_epoch": 2}});
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move { (axum::http::StatusCode::CONFLICT, axum::Json(body)) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("refusing server runs") });
        format!("http://{addr}")
    }

    fn control(server: String) -> Arc<Control> {
        let instance = InstanceId::new("sandbox-a").expect("valid instance");
        let agent =
            AgentConfig::new("/nonexistent".into(), WorkspaceId::new("agent:1").expect("valid owner"), instance);
        let cfg = ControlConfig {
            server,
            token: "t".into(),
            session: SessionId::new("ses_1").expect("valid session"),
            epoch: Epoch(1),
            lease_ttl_secs: 60,
            lease_margin_secs: 15,
            pointer: None,
            handover: None,
            mount_lock: None,
        };
        Control::new(&agent, &cfg).expect("client")
    }

    #[tokio::test]
    async fn a_stale_epoch_answer_fences_the_sandbox_for_good() {
        let expected = Fenced { presented: Epoch(1), current: Some(Epoch(2)) };
        let hb = control(refusing_server().await);
        let e = hb.heartbeat().await.expect_err("a refused heartbeat is an error");
        assert_eq!(e.fenced(), Some(expected), "the heartbeat's error is the fencing: {e}");
        assert_eq!(hb.view.borrow().fenced, Some(expected), "the heartbeat fenced the sandbox");
        assert!(hb.fenced() && !hb.holds(), "a fenced sandbox writes nothing more");

        let publisher = control(refusing_server().await);
        let snapshot = SnapshotId::from_hex(&"ab".repeat(32)).expect("valid snapshot id");
        let e = publisher.publish(&snapshot, SnapshotStats::default(), false).await.expect_err("refused publish");
        assert_eq!(e.fenced(), Some(expected), "the publish's error is the fencing: {e}");
        assert!(publisher.fenced() && !publisher.holds(), "a refused publish fences the sandbox");
    }
}
