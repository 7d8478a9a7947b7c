//! The drain on SIGTERM (REQUIREMENTS 28-33), in order of value, each step bounded by what is
//! left of the budget: tell the control plane, nudge the agent to commit and push, wait for it,
//! stop what is left, commit work in progress, push it, take the final snapshot, hand over.
//!
//! # Guarantees
//! - It never fails past its caller: every step's failure is logged and the next step runs.
//! - It finishes within the budget: a step that would overrun is cut off or skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::AgentConfig;
use crate::control::Control;
use crate::git::{find_repos, Git, Pushed};
use crate::layout;
use crate::persist::{GitMode, Persister};
use crate::supervise::{self, Child};

/// One step of a drain.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// notify, nudge, wait, freeze, commit, push, snapshot, handover, detach.
    pub name: &'static str,
    /// What happened.
    pub detail: String,
    /// How long it took.
    pub ms: u64,
}

/// What a drain did.
#[derive(Clone, Debug, Serialize)]
pub struct DrainReport {
    /// The budget it had.
    pub budget_secs: u64,
    /// Its steps.
    pub steps: Vec<Step>,
    /// Total wall time.
    pub ms: u64,
}

struct Clock {
    started: Instant,
    deadline: Instant,
    steps: Vec<Step>,
}

impl Clock {
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn step(&mut self, name: &'static str, detail: String, since: Instant) {
        let s = Step { name, detail, ms: since.elapsed().as_millis() as u64 };
        tracing::info!(event = "drain_step", step = name, detail = %s.detail, ms = s.ms, left_ms = self.left().as_millis() as u64);
        self.steps.push(s);
    }
}

/// Drains: runs every step within `cfg.drain_budget_secs` from `started` (the SIGTERM).
#[allow(clippy::too_many_arguments)]
pub async fn drain(
    cfg: &AgentConfig,
    scratch: &std::path::Path,
    persister: &Arc<Persister>,
    control: Option<&Arc<Control>>,
    git: &Git,
    child: Option<&mut Child>,
    started: Instant,
) -> DrainReport {
    let budget = Duration::from_secs(cfg.drain_budget_secs);
    let mut c = Clock { started, deadline: started + budget, steps: Vec::new() };
    // Held back for commit, push and the final snapshot: 40% of the budget, 2 s at least.
    let reserve = (budget * 2 / 5).max(Duration::from_secs(2)).min(budget);

    let t = Instant::now();
    let nonce = match control {
        Some(ctl) => {
            let nonce = ctl.evict("SIGTERM", c.left().min(Duration::from_secs(10))).await;
            c.step(
                "notify",
                if nonce.is_some() {
                    "control plane recorded the drain".into()
                } else {
                    "control plane not told (see log)".into()
                },
                t,
            );
            nonce
        }
        None => None,
    };

    if let Some(ch) = child {
        let t = Instant::now();
        let wait = c.left().saturating_sub(reserve);
        supervise::nudge(&cfg.nudge, Some(ch), &cfg.dir, wait).await;
        c.step("nudge", format!("{:?}", cfg.nudge), t);
        let t = Instant::now();
        let wait = c.left().saturating_sub(reserve);
        let exited = ch.wait_for(wait).await;
        c.step(
            "wait",
            match exited {
                Some(s) => format!("the agent exited ({s})"),
                None => format!("the agent did not exit within {} ms", wait.as_millis()),
            },
            t,
        );
        if exited.is_none() || ch.group_alive() {
            let t = Instant::now();
            // Freeze first so nothing changes, then stop the tree, which also releases any
            // git lock a straggler held.
            ch.freeze();
            ch.kill();
            let _ = ch.wait_for(Duration::from_secs(1).min(c.left())).await;
            c.step("freeze", "stopped the agent's process tree".into(), t);
        }
    } else if cfg.nudge != crate::config::Nudge::Signal {
        let t = Instant::now();
        let wait = c.left().saturating_sub(reserve);
        supervise::nudge(&cfg.nudge, None, &cfg.dir, wait).await;
        c.step("nudge", format!("{:?}", cfg.nudge), t);
    }

    {
        let message = format!("berth: work in progress of {} (drain of {})", cfg.workspace, cfg.instance);
        let suffix = format!(
            "{}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
        );
        for repo in find_repos(&cfg.dir, 3) {
            if c.left() < Duration::from_millis(500) {
                break;
            }
            let t = Instant::now();
            let shown = repo.strip_prefix(&cfg.dir).map(|p| p.display().to_string()).unwrap_or_default();
            if repo == cfg.dir {
                // berth's own directory is never part of the work.
                crate::git::ignore_berth_dir(&repo);
            }
            let committed = tokio::time::timeout(c.left(), git.wip_commit(&repo, scratch, &cfg.author, &message)).await;
            match committed {
                Ok(Ok(Some(commit))) => {
                    c.step("commit", format!("{shown}: {commit}"), t);
                    // Leave time for the final snapshot.
                    let push_time = c.left().saturating_sub(reserve / 2);
                    let t = Instant::now();
                    match tokio::time::timeout(push_time, git.push(&repo, &commit, &suffix)).await {
                        Ok(Ok(Pushed::To(r))) => c.step("push", format!("{shown}: pushed to origin {r}"), t),
                        Ok(Ok(Pushed::Local(r))) => {
                            c.step("push", format!("{shown}: no origin, kept as local branch {r}"), t)
                        }
                        Ok(Err(e)) => c.step("push", format!("{shown}: failed: {e}"), t),
                        Err(_) => c.step("push", format!("{shown}: timed out"), t),
                    }
                }
                Ok(Ok(None)) => c.step("commit", format!("{shown}: nothing to commit"), t),
                Ok(Err(e)) => c.step("commit", format!("{shown}: failed: {e}"), t),
                Err(_) => c.step("commit", format!("{shown}: timed out"), t),
            }
        }
    }

    if let (Some(n), Some(_)) = (&nonce, control) {
        let h = berth_api::Handover { scope: format!("workspace:{}", cfg.workspace), nonce: n.clone() };
        let _ = layout::write_atomic(&layout::handover(&cfg.dir), &serde_json::to_vec(&h).unwrap_or_default());
    }

    let t = Instant::now();
    if persister.ephemeral() {
        c.step("snapshot", "ephemeral workspace: nothing to save".into(), t);
    } else {
        let deadline = c.deadline;
        match tokio::time::timeout(c.left(), persister.snapshot("drain", GitMode::Now, Some(deadline))).await {
            Ok(Ok(Some(s))) => c.step(
                "snapshot",
                format!("snapshot {} (seq {}){}", s.snapshot, s.seq, if s.published { ", published" } else { "" }),
                t,
            ),
            Ok(Ok(None)) => c.step("snapshot", "not written: this sandbox no longer owns the workspace".into(), t),
            Ok(Err(e)) => c.step("snapshot", format!("failed: {e}"), t),
            Err(_) => c.step("snapshot", "cut off by the budget; the previous snapshot stays the latest".into(), t),
        }
    }

    if let Some(ctl) = control {
        let t = Instant::now();
        ctl.detach(c.left().min(Duration::from_secs(5))).await;
        c.step("detach", "released the lease for the replacement".into(), t);
    }
    let report =
        DrainReport { budget_secs: cfg.drain_budget_secs, steps: c.steps, ms: c.started.elapsed().as_millis() as u64 };
    tracing::info!(event = "drain_done", ms = report.ms, budget_secs = report.budget_secs);
    report
}
