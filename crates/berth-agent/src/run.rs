//! `berth agent run [-- AGENT COMMAND...]`: init (idempotent), then supervise the agent and keep
//! the workspace persisted until the agent exits, SIGTERM drains it, SIGINT stops it at once, or
//! the control plane fences this sandbox out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use berth_core::init::RestoreOutcome;
use berth_core::lease::{Epoch, Fenced};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::control::{self, Control};
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
    pub repo: Result<Option<berth_engine::snapshot_store::SnapshotStore>, berth_engine::error::EngineError>,
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
    std::fs::create_dir_all(&cfg.dir).map_err(|e| AgentError::io("create the workspace directory", &cfg.dir, e))?;
    let job = Job::create(&cfg.base).map_err(|e| AgentError::io("create the job's paths under", &cfg.base, e))?;
    let control = match &cfg.control {
        Some(cc) => Some(Control::new(cfg, cc)?),
        None => None,
    };
    let mount_lock = cfg.control.as_ref().and_then(|c| c.mount_lock.clone());
    let locks = control::lock_workspace(&cfg.dir, mount_lock.as_deref())?;
    let repo = persist::open_repo(cfg).await;
    Ok(Prepared { job, control, repo, locks })
}

/// Runs init alone (`berth agent init`).
pub async fn init_only(cfg: AgentConfig, signals: Signals, progress: &(dyn Fn(&Phase) + Sync)) -> Outcome {
    let prepared = match prepare(&cfg).await {
        Ok(p) => p,
        Err(e) => return Outcome::failed(exit::FAILED, e, None),
    };
    let cancel = any_of(&signals);
    // The lease must stay live while init works (a restore can outlast it).
    let heartbeats = CancellationToken::new();
    if let Some(c) = &prepared.control {
        tokio::spawn(c.clone().heartbeat_loop(heartbeats.clone()));
    }
    let result = init::init(
        &cfg,
        &prepared.job,
        prepared.repo.as_ref().map(Option::as_ref),
        prepared.control.as_ref(),
        &cancel,
        progress,
    )
    .await;
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
pub async fn run(cfg: AgentConfig, argv: Vec<String>, signals: Signals, progress: &(dyn Fn(&Phase) + Sync)) -> Outcome {
    let cfg = Arc::new(cfg);
    let prepared = match prepare(&cfg).await {
        Ok(p) => p,
        Err(e) => return Outcome::failed(exit::FAILED, e, None),
    };
    let cancel = any_of(&signals);
    let stop = CancellationToken::new();
    // Heartbeats start before init: the lease must stay live while init works.
    if let Some(c) = &prepared.control {
        tokio::spawn(c.clone().heartbeat_loop(stop.clone()));
    }
    let store = prepared.repo.as_ref().map(Option::as_ref);
    let (report, creds) =
        match init::init(&cfg, &prepared.job, store, prepared.control.as_ref(), &cancel, progress).await {
            Ok(x) => x,
            Err(e) => {
                stop.cancel();
                return Outcome::failed(failure_code(&signals), e.error, Some(*e.report));
            }
        };
    let git = Git::new(creds.as_ref());
    let repo = prepared.repo.as_ref().ok().cloned().flatten();
    let persister = match Persister::new(cfg.clone(), repo, prepared.control.clone(), git.clone()) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            stop.cancel();
            return Outcome::failed(exit::FAILED, e, Some(report));
        }
    };
    if matches!(report.restore, Some(RestoreOutcome::Restored | RestoreOutcome::KeptLocal)) {
        persister.durable_now();
    }
    if let Some(addr) = cfg.metrics_listen {
        serve_metrics(addr, persister.clone(), stop.clone());
    }
    let persist_stop = stop.child_token();
    let persist_task = {
        let (p, s) = (persister.clone(), persist_stop.clone());
        tokio::spawn(async move { p.run(s).await })
    };
    let mut child = None;
    if !argv.is_empty() {
        let env = creds.as_ref().map(|c| c.git_env()).unwrap_or_default();
        match Child::spawn(&argv, &cfg.dir, &env) {
            Ok(c) => child = Some(c),
            Err(e) => {
                stop.cancel();
                let program = argv[0].clone();
                return Outcome::failed(exit::FAILED, AgentError::Spawn { program, source: e }, Some(report));
            }
        }
    }
    let mut view = prepared.control.as_ref().map(|c| c.view());
    {
        // How much work is at risk, in the log once a minute.
        let (p, s) = (persister.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
                }
                match p.seconds_since_durable() {
                    Some(secs) => tracing::info!(event = "status", seconds_since_snapshot = secs),
                    None => tracing::info!(event = "status", seconds_since_snapshot = "never"),
                }
            }
        });
    }
    let code = loop {
        let changed = async {
            match view.as_mut() {
                Some(v) => v.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let child_exit = async {
            match child.as_mut() {
                Some(c) => c.wait().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signals.int.cancelled() => {
                tracing::warn!(event = "interrupted", hint = "SIGINT: stopping at once, no drain");
                if let Some(c) = &child {
                    c.kill();
                }
                break exit::INTERRUPTED;
            }
            _ = signals.term.cancelled() => {
                let started = Instant::now();
                tracing::info!(event = "drain_started", budget_secs = cfg.drain_budget_secs);
                // Stop taking new work at once: no more scheduled snapshots.
                persist_stop.cancel();
                let _ = persist_task.await;
                drain::drain(&cfg, &prepared.job.work, &persister, prepared.control.as_ref(), &git, child.as_mut(), started).await;
                break exit::OK;
            }
            status = child_exit => {
                let code = status.and_then(|s| s.code()).unwrap_or(exit::FAILED);
                tracing::info!(event = "agent_exited", code);
                persist_stop.cancel();
                let _ = persist_task.await;
                if let Err(e) = persister.snapshot("exit", GitMode::Now, None).await {
                    tracing::warn!(event = "final_snapshot_failed", error = %e);
                }
                if let Some(c) = &prepared.control {
                    c.detach(std::time::Duration::from_secs(5)).await;
                }
                break code;
            }
            ok = changed => {
                if !ok {
                    continue;
                }
                let v = view.as_ref().map(|v| v.borrow().clone()).unwrap_or_default();
                if v.fenced {
                    persister.stop_writing();
                    if let Some(c) = &child {
                        c.signal(rustix::process::Signal::TERM);
                    }
                    break exit::FENCED;
                }
                if v.draining {
                    // The control plane drains this scope: save now, keep working until told to stop.
                    let p = persister.clone();
                    tokio::spawn(async move {
                        if let Err(e) = p.snapshot("scope_draining", GitMode::Now, None).await {
                            tracing::warn!(event = "snapshot_failed", reason = "scope_draining", error = %e);
                        }
                    });
                }
            }
        }
    };
    stop.cancel();
    let epoch = cfg.control.as_ref().map_or(Epoch::ZERO, |c| c.epoch);
    let error = (code == exit::FENCED).then_some(AgentError::Fenced(Fenced { presented: epoch, current: None }));
    drop(prepared);
    Outcome { code, error, init: Some(report) }
}
