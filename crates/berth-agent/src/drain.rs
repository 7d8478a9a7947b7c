//! The drain on SIGTERM, in order of value, each step bounded by what is
//! left of the budget: tell the control plane, renew a git token that would expire before the
//! drain ends, nudge the agent to commit and push, wait for it, stop what is left, commit work in
//! progress, push it, take the final snapshot, hand over.
//!
//! # Guarantees
//! - It never fails past its caller: every step's failure is logged and the next step runs.
//! - It finishes within the budget: a step that would overrun is cut off or skipped.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{AgentConfig, Nudge};
use crate::control::Control;
use crate::git::{find_repos, Git, Pushed};
use crate::layout;
use crate::persist::{GitMode, Persister};
use crate::supervise::{self, Child};

/// One step of a drain.
#[derive(Clone, Debug, Serialize)]
struct Step {
    /// notify, credentials, nudge, wait, freeze, commit, push, snapshot, handover, detach.
    pub name: &'static str,
    /// What happened.
    pub detail: String,
    /// How long it took.
    pub ms: u64,
}

/// What a drain did, logged as one `drain_done` line.
#[derive(Clone, Debug, Serialize)]
struct DrainReport {
    /// The budget it had.
    pub budget_secs: u64,
    /// Its steps.
    pub steps: Vec<Step>,
    /// Total wall time.
    pub ms: u64,
}

/// A drain under way: what it works with, its deadline, and the steps so far.
struct Drain<'a> {
    cfg: &'a AgentConfig,
    control: Option<&'a Arc<Control>>,
    git: &'a Git,
    started: Instant,
    deadline: Instant,
    /// Held back for commit, push and the final snapshot.
    reserve: Duration,
    steps: Vec<Step>,
}

impl Drain<'_> {
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn step(&mut self, name: &'static str, detail: String, since: Instant) {
        let s = Step { name, detail, ms: since.elapsed().as_millis() as u64 };
        tracing::info!(event = "drain_step", step = name, detail = %s.detail, ms = s.ms, left_ms = self.left().as_millis() as u64);
        self.steps.push(s);
    }

    /// Tells the control plane (10 s at most); returns the drain's nonce for the replacement.
    async fn notify(&mut self) -> Option<String> {
        let ctl = self.control?;
        let t = Instant::now();
        let nonce = ctl.evict("SIGTERM", self.left().min(Duration::from_secs(10))).await;
        let detail =
            if nonce.is_some() { "control plane recorded the drain" } else { "control plane not told (see log)" };
        self.step("notify", detail.into(), t);
        nonce
    }

    /// Renews the git token when it would expire before the drain ends (and a little after, for
    /// the push under way then), so the agent's pushes and the WIP push are not refused.
    async fn refresh_credentials(&mut self) {
        let t = Instant::now();
        let within = self.left() + Duration::from_secs(30);
        let bound = self.left().min(Duration::from_secs(10));
        let detail = match tokio::time::timeout(bound, self.git.refresh_credentials(within)).await {
            Ok(Ok(false)) => return,
            Ok(Ok(true)) => "renewed the git token, which would have expired during the drain".to_string(),
            Ok(Err(e)) => format!("could not renew the git token: {e}"),
            Err(_) => "renewing the git token timed out".to_string(),
        };
        self.step("credentials", detail, t);
    }

    /// Nudges the agent to commit and push, waits for it, and stops what is left of it.
    async fn stop_agent(&mut self, child: Option<&mut Child>) {
        let Some(ch) = child else {
            if self.cfg.nudge != Nudge::Signal {
                let t = Instant::now();
                supervise::nudge(&self.cfg.nudge, None, &self.cfg.dir, self.left().saturating_sub(self.reserve)).await;
                self.step("nudge", format!("{:?}", self.cfg.nudge), t);
            }
            return;
        };
        let t = Instant::now();
        supervise::nudge(&self.cfg.nudge, Some(ch), &self.cfg.dir, self.left().saturating_sub(self.reserve)).await;
        self.step("nudge", format!("{:?}", self.cfg.nudge), t);
        let t = Instant::now();
        let wait = self.left().saturating_sub(self.reserve);
        let exited = ch.wait_for(wait).await;
        let detail = match exited {
            Some(s) => format!("the agent exited ({s})"),
            None => format!("the agent did not exit within {} ms", wait.as_millis()),
        };
        self.step("wait", detail, t);
        if exited.is_none() || ch.group_alive() {
            let t = Instant::now();
            // Freeze first so nothing changes, then stop the tree, which also releases any
            // git lock a straggler held.
            ch.freeze();
            ch.kill();
            let _ = ch.wait_for(Duration::from_secs(1).min(self.left())).await;
            self.step("freeze", "stopped the agent's process tree".into(), t);
        }
    }

    /// Commits work in progress in every repo and pushes it, while the budget lasts.
    async fn commit_and_push(&mut self, scratch: &Path) {
        let message = format!("berth: work in progress of {} (drain of {})", self.cfg.workspace, self.cfg.instance);
        for repo in find_repos(&self.cfg.dir, 3) {
            if self.left() < Duration::from_millis(500) {
                break;
            }
            if repo == self.cfg.dir {
                // berth's own directory is never part of the work.
                crate::git::ignore_berth_dir(&repo);
            }
            self.commit_and_push_repo(&repo, scratch, &message).await;
        }
    }

    async fn commit_and_push_repo(&mut self, repo: &Path, scratch: &Path, message: &str) {
        let t = Instant::now();
        let shown = repo.strip_prefix(&self.cfg.dir).map(|p| p.display().to_string()).unwrap_or_default();
        let committed =
            tokio::time::timeout(self.left(), self.git.wip_commit(repo, scratch, &self.cfg.author, message)).await;
        let commit = match committed {
            Ok(Ok(Some(commit))) => commit,
            Ok(Ok(None)) => return self.step("commit", format!("{shown}: nothing to commit"), t),
            Ok(Err(e)) => return self.step("commit", format!("{shown}: failed: {e}"), t),
            Err(_) => return self.step("commit", format!("{shown}: timed out"), t),
        };
        self.step("commit", format!("{shown}: {commit}"), t);
        if let Some(c) = self.control.filter(|c| !c.holds()) {
            let why = if c.fenced() { "fenced" } else { "the lease is not held (renewals failed)" };
            return self.step("push", format!("{shown}: not pushed: {why}"), Instant::now());
        }
        // Leave time for the final snapshot.
        let push_time = self.left().saturating_sub(self.reserve / 2);
        let t = Instant::now();
        let detail = match tokio::time::timeout(push_time, self.git.push(repo, &commit)).await {
            Ok(Ok(Pushed::To(r))) => format!("{shown}: pushed to origin {r}"),
            Ok(Ok(Pushed::Local(r))) => format!("{shown}: no origin, kept as local branch {r}"),
            Ok(Err(e)) => format!("{shown}: failed: {e}"),
            Err(_) => format!("{shown}: timed out"),
        };
        self.step("push", detail, t);
    }

    /// Takes the final snapshot with what is left of the budget.
    async fn final_snapshot(&mut self, persister: &Persister) {
        let t = Instant::now();
        if persister.ephemeral() {
            return self.step("snapshot", "ephemeral workspace: nothing to save".into(), t);
        }
        let deadline = self.deadline;
        let detail = match tokio::time::timeout(
            self.left(),
            persister.snapshot("drain", GitMode::Final, Some(deadline)),
        )
        .await
        {
            Ok(Ok(Some(s))) => {
                format!(
                    "snapshot {} (seq {}){}",
                    s.snapshot,
                    s.seq,
                    if s.published { ", published as final" } else { "" }
                )
            }
            Ok(Ok(None)) => "not written: this sandbox no longer owns the workspace".into(),
            Ok(Err(e)) => format!("failed: {e}"),
            Err(_) => "cut off by the budget; the previous snapshot stays the latest".into(),
        };
        self.step("snapshot", detail, t);
    }
}

/// Drains: runs every step within `cfg.drain_budget_secs` from `started` (the SIGTERM).
pub async fn drain(
    cfg: &AgentConfig,
    scratch: &Path,
    persister: &Arc<Persister>,
    control: Option<&Arc<Control>>,
    git: &Git,
    child: Option<&mut Child>,
    started: Instant,
) {
    let budget = Duration::from_secs(cfg.drain_budget_secs);
    // Held back for commit, push and the final snapshot: 40% of the budget, 2 s at least.
    let reserve = (budget * 2 / 5).max(Duration::from_secs(2)).min(budget);
    let mut d = Drain { cfg, control, git, started, deadline: started + budget, reserve, steps: Vec::new() };
    let nonce = d.notify().await;
    d.refresh_credentials().await;
    d.stop_agent(child).await;
    d.commit_and_push(scratch).await;
    if let (Some(n), Some(_)) = (&nonce, control) {
        let h = berth_api::Handover { scope: format!("workspace:{}", cfg.workspace), nonce: n.clone() };
        let _ = layout::write_atomic(&layout::handover(&cfg.dir), &serde_json::to_vec(&h).unwrap_or_default());
    }
    d.final_snapshot(persister).await;
    if let Some(ctl) = control {
        let t = Instant::now();
        ctl.detach(d.left().min(Duration::from_secs(5))).await;
        d.step("detach", "released the lease for the replacement".into(), t);
    }
    let report =
        DrainReport { budget_secs: cfg.drain_budget_secs, steps: d.steps, ms: d.started.elapsed().as_millis() as u64 };
    // One line says the whole drain, every step with what it did and how long it took.
    let steps = serde_json::to_string(&report.steps).unwrap_or_default();
    tracing::info!(event = "drain_done", ms = report.ms, budget_secs = report.budget_secs, steps = %steps);
}
