//! The agent process as berth's child: in its own process group (so the whole tree can be
//! nudged, frozen and stopped), with berth's secrets and the object store's credentials
//! removed from its environment.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::process::Command;

use crate::config::Nudge;

/// Environment variables berth reads that the agent process must never see.
const SECRET_ENV: [&str; 4] = ["BERTH_TOKEN", "BERTH_GIT_TOKEN", "BERTH_ADMIN_TOKEN", "BERTH_AGENT_SPEC"];
/// Names, comma-separated, of more variables the agent process must not see (the control
/// plane puts a sandbox's S3 settings in its environment for berth alone).
pub const SUPERVISOR_ONLY_ENV: &str = "BERTH_SUPERVISOR_ONLY_ENV";
/// Prefixes of the object stores' credential and setting variables (S3, Azure, Google Cloud):
/// berth's store access is berth's, never the agent's.
const STORE_ENV_PREFIXES: [&str; 3] = ["AWS_", "AZURE_", "GOOGLE_"];

/// Removes from `c`'s environment everything the agent process must not see: berth's secrets,
/// the object store's credentials, and what `BERTH_SUPERVISOR_ONLY_ENV` names. Every git berth
/// runs gets the same: the hooks git runs are the workspace's, which the agent can write.
pub(crate) fn scrub(c: &mut Command) {
    for k in SECRET_ENV {
        c.env_remove(k);
    }
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if STORE_ENV_PREFIXES.iter().any(|p| name.starts_with(p)) {
            c.env_remove(&k);
        }
    }
    // Settings meant for berth alone (a sandbox's S3 credentials), named by whoever started it.
    if let Ok(list) = std::env::var(SUPERVISOR_ONLY_ENV) {
        for k in list.split(',').filter(|k| !k.is_empty()) {
            c.env_remove(k);
        }
    }
    c.env_remove(SUPERVISOR_ONLY_ENV);
}

/// The supervised agent process.
#[derive(Debug)]
pub struct Child {
    child: tokio::process::Child,
    pgid: Pid,
}

impl Child {
    /// Starts `argv` in `dir` in a new process group, with `env` added.
    pub fn spawn(argv: &[String], dir: &Path, env: &[(String, String)]) -> std::io::Result<Child> {
        let (prog, args) = argv.split_first().ok_or_else(|| std::io::Error::other("no agent command given"))?;
        let mut c = Command::new(prog);
        c.args(args).current_dir(dir).process_group(0).stdin(Stdio::inherit()).kill_on_drop(false);
        scrub(&mut c);
        c.env("BERTH_DIR", dir).env("GIT_TERMINAL_PROMPT", "0");
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn()?;
        let pid = child
            .id()
            .and_then(|p| Pid::from_raw(p as i32))
            .ok_or_else(|| std::io::Error::other("child has no pid"))?;
        Ok(Child { child, pgid: pid })
    }

    /// Sends `sig` to the whole process group.
    pub fn signal(&self, sig: Signal) {
        if let Err(e) = rustix::process::kill_process_group(self.pgid, sig) {
            if e != rustix::io::Errno::SRCH {
                tracing::warn!(event = "signal_failed", signal = ?sig, error = %e);
            }
        }
    }

    /// Stops the whole tree where it stands (SIGSTOP), so files stop changing.
    pub fn freeze(&self) {
        self.signal(Signal::STOP);
    }

    /// Kills the whole tree.
    pub fn kill(&self) {
        self.signal(Signal::KILL);
    }

    /// Waits for the child to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Waits up to `timeout`; returns the exit status if it exited.
    pub async fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait()).await.ok().and_then(Result::ok)
    }

    /// Returns whether the process group still has members (a straggler outlives its parent).
    pub fn group_alive(&self) -> bool {
        rustix::process::test_kill_process_group(self.pgid).is_ok()
    }
}

/// Asks the agent to commit and push: runs the nudge command, POSTs the nudge URL, or sends
/// SIGTERM to the child's group. Bounded by `timeout`; a failure is logged.
pub async fn nudge(how: &Nudge, child: Option<&Child>, dir: &Path, timeout: Duration) {
    match how {
        Nudge::Signal => {
            if let Some(c) = child {
                c.signal(Signal::TERM);
            }
        }
        Nudge::Command(cmd) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(cmd).current_dir(dir).env("BERTH_DRAIN", "1").env("BERTH_DIR", dir).kill_on_drop(true);
            scrub(&mut c);
            match tokio::time::timeout(timeout, c.status()).await {
                Ok(Ok(s)) if s.success() => {}
                Ok(Ok(s)) => tracing::warn!(event = "nudge_failed", error = %format!("nudge command exited with {s}")),
                Ok(Err(e)) => tracing::warn!(event = "nudge_failed", error = %e),
                Err(_) => tracing::warn!(event = "nudge_failed", error = "nudge command timed out"),
            }
        }
        Nudge::Url(url) => {
            let sent = reqwest::Client::builder().timeout(timeout).build().map(|h| h.post(url).send());
            match sent {
                Ok(fut) => match fut.await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(event = "nudge_failed", error = %format!("nudge URL answered {}", r.status()))
                    }
                    Err(e) => {
                        tracing::warn!(event = "nudge_failed", error = %crate::creds::redact_urls(&e.to_string()))
                    }
                },
                Err(e) => tracing::warn!(event = "nudge_failed", error = %e),
            }
        }
    }
}
