//! `berth agent run [-- AGENT COMMAND...]`: init (idempotent), then supervise the agent and keep
//! the workspace persisted until the agent exits, SIGTERM drains it, SIGINT stops it at once, or
//! the control plane fences this sandbox out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::init::RestoreOutcome;
use berth_core::lease::Fenced;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::control::{self, Control, LeaseView};
use crate::creds::Creds;
use crate::drain;
use crate::error::AgentError;
use crate::git::Git;
use crate::init::{self, InitReport, Phase};
use crate::job::Job;
use crate::persist::{self, GitMode, Persister};
use crate::supervise::Child;

/// Exit codes of the agent.
pub mod exit {
    /// Success; also after a drain.
    pub const OK: i32 = 0;
    /// A failure; the message says what to do.
    pub const FAILED: i32 = 1;
    /// The control plane rejected this session's epoch: another sandbox owns the workspace.
    pub const FENCED: i32 = 3;
    /// SIGINT.
    pub const INTERRUPTED: i32 = 130;
    /// SIGTERM during init: the workspace is not ready.
    pub const TERMINATED: i32 = 143;
}

/// How long a fenced sandbox's agent process has to exit after SIGTERM before it is killed.
const FENCED_STOP_GRACE: Duration = Duration::from_secs(5);

/// The signals the command line wires in.
#[derive(Clone, Debug, Default)]
pub struct Signals {
    /// SIGTERM: drain.
    pub term: CancellationToken,
    /// SIGINT: stop now.
    pub int: CancellationToken,
}

/// What a run ended with.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code.
    pub code: i32,
    /// What went wrong, on failure.
    pub error: Option<AgentError>,
    /// The init report, when init ran.
    pub init: Option<InitReport>,
}

impl Outcome {
    fn failed(code: i32, error: AgentError, init: Option<InitReport>) -> Outcome {
        Outcome { code, error: Some(error), init }
    }
}

/// Prepared state shared by `init` and `run`.
pub struct Prepared {
    /// The job's paths.
    pub job: Job,
    /// The control-plane session.
    pub control: Option<Arc<Control>>,
    /// The store (`None`: ephemeral), or why it cannot be opened.
    pub store: Result<Option<berth_engine::snapshot_store::SnapshotStore>, berth_engine::error::EngineError>,
    /// The workspace locks.
    pub locks: control::Locks,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("job", &self.job.id).finish_non_exhaustive()
    }
}

/// Creates the job's paths, connects to the control plane, opens the store and locks the
/// workspace.
pub async fn prepare(cfg: &AgentConfig) -> Result<Prepared, AgentError> {
    for w in &cfg.warnings {
        tracing::warn!(event = "config_warning", warning = %w);
    }
    std::fs::create_dir_all(&cfg.dir).map_err(|e| AgentError::io("create the workspace directory", &cfg.dir, e))?;
    check_private(&cfg.base, "--base")?;
    if let Some(cache) = &cfg.cache_dir {
        check_private(cache, "--cache-dir")?;
    }
    let job = Job::create(&cfg.base).map_err(|e| AgentError::io("create the job's paths under", &cfg.base, e))?;
    let control = match &cfg.control {
        Some(cc) => Some(Control::new(cfg, cc)?),
        None => None,
    };
    let mount_lock = cfg.control.as_ref().and_then(|c| c.mount_lock.clone());
    let locks = control::lock_workspace(&cfg.dir, mount_lock.as_deref())?;
    let store = persist::open_store(cfg).await;
    Ok(Prepared { job, control, store, locks })
}

/// Refuses a directory that exists and is writable by every user (berth creates its own 0700).
fn check_private(path: &std::path::Path, flag: &'static str) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o002 != 0 => {
            Err(AgentError::WorldWritable { path: path.to_path_buf(), mode: m.permissions().mode() & 0o7777, flag })
        }
        _ => Ok(()),
    }
}

/// Who hears about init as it goes (the command line: a person, or nobody when the logs say
/// it all).
pub trait Observer: Sync {
    /// After each phase of init.
    fn phase(&self, phase: &Phase);
    /// Once init has ended, ready or not, before any agent command starts.
    fn init_done(&self, report: &InitReport);
}

/// Runs init with heartbeats going (the lease must stay live while init works: a restore can
/// outlast it) until `heartbeats` is cancelled; tells `observer`.
async fn init_observed(
    cfg: &AgentConfig,
    prepared: &Prepared,
    cancel: &CancellationToken,
    heartbeats: &CancellationToken,
    observer: &dyn Observer,
) -> Result<(InitReport, Option<Creds>), init::InitError> {
    if let Some(c) = &prepared.control {
        tokio::spawn(c.clone().heartbeat_loop(heartbeats.clone()));
    }
    let store = prepared.store.as_ref().map(Option::as_ref);
    let result = init::init(cfg, &prepared.job, store, prepared.control.as_ref(), cancel, &|p| observer.phase(p)).await;
    match &result {
        Ok((report, _)) => observer.init_done(report),
        Err(e) => observer.init_done(&e.report),
    }
    result
}

/// Runs init alone (`berth agent init`).
pub async fn init_only(cfg: AgentConfig, signals: Signals, observer: &dyn Observer) -> Outcome {
    let prepared = match prepare(&cfg).await {
        Ok(p) => p,
        Err(e) => return Outcome::failed(exit::FAILED, e, None),
    };
    let heartbeats = CancellationToken::new();
    let result = init_observed(&cfg, &prepared, &any_of(&signals), &heartbeats, observer).await;
    heartbeats.cancel();
    drop(prepared);
    match result {
        Ok((report, _)) => Outcome { code: exit::OK, error: None, init: Some(report) },
        Err(e) => Outcome::failed(failure_code(&signals), e.error, Some(*e.report)),
    }
}

/// The exit code of a failed init: interrupted by a signal, or failed.
fn failure_code(signals: &Signals) -> i32 {
    if signals.term.is_cancelled() {
        exit::TERMINATED
    } else if signals.int.is_cancelled() {
        exit::INTERRUPTED
    } else {
        exit::FAILED
    }
}

fn any_of(signals: &Signals) -> CancellationToken {
    let token = CancellationToken::new();
    let (t, i, out) = (signals.term.clone(), signals.int.clone(), token.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = t.cancelled() => {}
            _ = i.cancelled() => {}
        }
        out.cancel();
    });
    token
}

fn serve_metrics(addr: SocketAddr, persister: Arc<Persister>, stop: CancellationToken) {
    let handle: PrometheusHandle = {
        let recorder = PrometheusBuilder::new().build_recorder();
        let h = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        h
    };
    tokio::spawn(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(event = "metrics_unavailable", listen = %addr, error = %e);
                return;
            }
        };
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let (h, p) = (handle.clone(), persister.clone());
                    async move {
                        if let Some(s) = p.seconds_since_durable() {
                            metrics::gauge!("berth_agent_seconds_since_snapshot").set(s);
                        }
                        h.render()
                    }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok\n" }));
        let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
    });
}

/// Runs the agent: init, then persistence (and the agent command, if given) until it ends.
pub async fn run(cfg: AgentConfig, argv: Vec<String>, signals: Signals, observer: &dyn Observer) -> Outcome {
    let cfg = Arc::new(cfg);
    let prepared = match prepare(&cfg).await {
        Ok(p) => p,
        Err(e) => return Outcome::failed(exit::FAILED, e, None),
    };
    // Everything this run starts stops with `stop`; heartbeats start before init.
    let stop = CancellationToken::new();
    let (report, creds) = match init_observed(&cfg, &prepared, &any_of(&signals), &stop, observer).await {
        Ok(x) => x,
        Err(e) => {
            stop.cancel();
            return Outcome::failed(failure_code(&signals), e.error, Some(*e.report));
        }
    };
    let restored = matches!(report.restore, Some(RestoreOutcome::Restored | RestoreOutcome::KeptLocal));
    let control = prepared.control.clone();
    let ended = match Running::start(cfg.clone(), prepared, creds, &argv, restored, &stop) {
        Ok(mut running) => {
            // The agent command runs: a warm pool waiting for this sandbox's init may refill.
            if let Some(c) = control {
                tokio::spawn(async move { c.init_done().await });
            }
            let ended = running.supervise(&signals).await;
            // Background work stops before the job's paths and the locks go with `running`.
            stop.cancel();
            drop(running);
            ended
        }
        Err(e) => Err(e),
    };
    stop.cancel();
    match ended {
        Ok(code) => Outcome { code, error: None, init: Some(report) },
        Err(e @ AgentError::Fenced(_)) => Outcome::failed(exit::FENCED, e, Some(report)),
        Err(e) => Outcome::failed(exit::FAILED, e, Some(report)),
    }
}

/// A workspace being kept persisted, with the agent command under supervision.
struct Running {
    cfg: Arc<AgentConfig>,
    prepared: Prepared,
    git: Git,
    persister: Arc<Persister>,
    persist_stop: CancellationToken,
    persist_task: Option<tokio::task::JoinHandle<()>>,
    child: Option<Child>,
}

impl Running {
    /// Starts persistence (and `/metrics`, the status line and the agent command).
    fn start(
        cfg: Arc<AgentConfig>,
        prepared: Prepared,
        creds: Option<Creds>,
        argv: &[String],
        restored: bool,
        stop: &CancellationToken,
    ) -> Result<Running, AgentError> {
        let git = Git::new(creds.as_ref());
        let store = prepared.store.as_ref().ok().cloned().flatten();
        let persister = Arc::new(Persister::new(cfg.clone(), store.clone(), prepared.control.clone(), git.clone())?);
        if restored {
            persister.durable_now();
        }
        if let Some(addr) = cfg.metrics_listen {
            serve_metrics(addr, persister.clone(), stop.clone());
        }
        tokio::spawn(status_lines(persister.clone(), stop.clone()));
        // A token that expires is renewed before it does, for the whole run (the drain too).
        if let Some(c) = &creds {
            tokio::spawn(c.clone().keep_fresh(stop.clone()));
        }
        let persist_stop = stop.child_token();
        let watch = persister.watch();
        let persist_task = Some(tokio::spawn({
            let (p, s) = (persister.clone(), persist_stop.clone());
            async move { p.run(watch, s).await }
        }));
        // Without a control plane, the agent keeps its own store in check.
        if let (None, Some(store)) = (&prepared.control, &store) {
            tokio::spawn(crate::upkeep::run(cfg.clone(), store.clone(), persist_stop.clone()));
        }
        let child = match argv.first() {
            None => None,
            Some(program) => {
                let env = creds.as_ref().map(|c| c.git_env()).unwrap_or_default();
                let spawned = Child::spawn(argv, &cfg.dir, &env);
                Some(spawned.map_err(|source| AgentError::Spawn { program: program.clone(), source })?)
            }
        };
        Ok(Running { cfg, prepared, git, persister, persist_stop, persist_task, child })
    }

    /// Stops scheduled snapshots and waits for one under way to be abandoned.
    async fn stop_persisting(&mut self) {
        self.persist_stop.cancel();
        if let Some(task) = self.persist_task.take() {
            let _ = task.await;
        }
    }

    /// Waits for what ends the run: SIGINT, SIGTERM (drain), the agent's exit, or fencing.
    /// Returns the exit code, or the fencing error.
    async fn supervise(&mut self, signals: &Signals) -> Result<i32, AgentError> {
        let mut view = self.prepared.control.as_ref().map(|c| c.view());
        // Fenced while init ran: the view may not change again.
        if let Some(fenced) = view.as_ref().and_then(|v| v.borrow().fenced) {
            return Err(self.fenced(fenced).await);
        }
        loop {
            let changed = async {
                match view.as_mut() {
                    Some(v) => v.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let child = self.child.as_mut();
            let child_exit = async {
                match child {
                    Some(c) => c.wait().await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = signals.int.cancelled() => return Ok(self.interrupted()),
                _ = signals.term.cancelled() => return Ok(self.drain().await),
                status = child_exit => return Ok(self.agent_exited(status).await),
                true = changed => {
                    let v = view.as_ref().map(|v| v.borrow().clone()).unwrap_or_default();
                    if let Some(fenced) = v.fenced {
                        return Err(self.fenced(fenced).await);
                    }
                    self.lease_changed(&v);
                }
            }
        }
    }

    fn interrupted(&self) -> i32 {
        tracing::warn!(event = "interrupted", hint = "SIGINT: stopping at once, no drain");
        if let Some(c) = &self.child {
            c.kill();
        }
        exit::INTERRUPTED
    }

    /// SIGTERM: stop taking new work at once (no more scheduled snapshots), then drain.
    async fn drain(&mut self) -> i32 {
        let started = Instant::now();
        tracing::info!(event = "drain_started", budget_secs = self.cfg.drain_budget_secs);
        self.stop_persisting().await;
        let control = self.prepared.control.as_ref();
        let scratch = &self.prepared.job.work;
        drain::drain(&self.cfg, scratch, &self.persister, control, &self.git, self.child.as_mut(), started).await;
        exit::OK
    }

    /// The agent command ended: a final snapshot, then detach; its exit code is the run's.
    async fn agent_exited(&mut self, status: Option<std::process::ExitStatus>) -> i32 {
        // Killed by a signal (an OOM kill is SIGKILL): 128 + its number, as a shell says it.
        let code = status
            .and_then(|s| s.code().or(std::os::unix::process::ExitStatusExt::signal(&s).map(|sig| 128 + sig)))
            .unwrap_or(exit::FAILED);
        tracing::info!(event = "agent_exited", code);
        self.stop_persisting().await;
        if let Err(e) = self.persister.snapshot("exit", GitMode::Final, None).await {
            tracing::warn!(event = "final_snapshot_failed", error = %e);
        }
        if let Some(c) = &self.prepared.control {
            c.detach(std::time::Duration::from_secs(5)).await;
        }
        code
    }

    /// Fenced: another sandbox owns the workspace. Nothing more is written (no snapshot, no
    /// push, no detach: the session is not this sandbox's any more), and the agent process is
    /// stopped: SIGTERM to its group, SIGKILL after [`FENCED_STOP_GRACE`].
    async fn fenced(&mut self, fenced: Fenced) -> AgentError {
        self.persister.stop_writing();
        self.stop_persisting().await;
        if let Some(c) = self.child.as_mut() {
            c.signal(rustix::process::Signal::TERM);
            let exited = c.wait_for(FENCED_STOP_GRACE).await;
            if exited.is_none() || c.group_alive() {
                c.kill();
                let _ = c.wait_for(Duration::from_secs(1)).await;
            }
            tracing::warn!(event = "agent_stopped", reason = "fenced", exited = ?exited.map(|s| s.to_string()));
        }
        fenced.into()
    }

    /// What the heartbeats learned: a draining scope saves now and works on until told to stop.
    fn lease_changed(&self, view: &LeaseView) {
        if view.draining {
            let p = self.persister.clone();
            tokio::spawn(async move {
                if let Err(e) = p.snapshot("scope_draining", GitMode::Now, None).await {
                    tracing::warn!(event = "snapshot_failed", reason = "scope_draining", error = %e);
                }
            });
        }
    }
}

/// How much work is at risk, in the log once a minute until `stop`.
async fn status_lines(persister: Arc<Persister>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
        match persister.seconds_since_durable() {
            Some(secs) => tracing::info!(event = "status", seconds_since_snapshot = secs),
            None => tracing::info!(event = "status", seconds_since_snapshot = "never"),
        }
    }
}
