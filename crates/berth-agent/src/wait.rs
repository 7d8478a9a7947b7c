//! `berth agent wait --claim FILE`: the first process of a warm sandbox (one a pool keeps
//! idle, with no workspace). It waits until the control plane claims the sandbox and puts the
//! claim in place, then becomes `berth agent run --spec SPEC -- COMMAND` (an exec: the same
//! process, so the stop signal reaches the supervisor), which restores the workspace from the
//! store and runs the command.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::AgentError;

/// What the control plane hands a claimed warm sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// The spec file (the session, with its token) the control plane put in place first.
    pub spec: PathBuf,
    /// The agent command.
    pub command: Vec<String>,
    /// Environment of the agent command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Reads the claim at `path`: `None` while there is none.
pub fn read_claim(path: &Path) -> Result<Option<Claim>, AgentError> {
    let fail = |reason: String| AgentError::Spec { path: path.to_path_buf(), reason };
    match std::fs::read(path) {
        Ok(body) => serde_json::from_slice(&body).map(Some).map_err(|e| fail(format!("is not a valid claim: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fail(format!("cannot be read: {e}"))),
    }
}

/// Becomes `berth agent run --spec SPEC -- COMMAND` with the claim's environment added;
/// returns only when that cannot start.
pub fn exec_run(claim: &Claim) -> AgentError {
    // The path it was started by (a bind mount, whose host file an upgrade may have replaced:
    // /proc/self/exe would then name a deleted file), else the executable.
    let argv0 = std::env::args_os().next().map(PathBuf::from).filter(|p| p.is_absolute());
    let me = match argv0.map(Ok).unwrap_or_else(std::env::current_exe) {
        Ok(p) => p,
        Err(e) => return AgentError::io("find berth's own executable", Path::new("/proc/self/exe"), e),
    };
    if claim.command.is_empty() {
        return AgentError::Config("the claim names no agent command".into());
    }
    let err = std::process::Command::new(&me)
        .args(["agent", "run", "--spec"])
        .arg(&claim.spec)
        .arg("--")
        .args(&claim.command)
        .envs(&claim.env)
        .exec();
    AgentError::io("exec berth agent run", &me, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_read_once_it_is_there() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("claim.json");
        assert_eq!(read_claim(&path).unwrap(), None);
        std::fs::write(&path, br#"{"spec": "/berth/spec.json", "command": ["sh", "-c", "true"], "env": {"A": "1"}}"#)
            .unwrap();
        let claim = read_claim(&path).unwrap().unwrap();
        assert_eq!(claim.command, ["sh", "-c", "true"]);
        assert_eq!(claim.env["A"], "1");
        std::fs::write(&path, br#"{"spec": "/x", "bogus": 1}"#).unwrap();
        assert!(read_claim(&path).unwrap_err().to_string().contains("not a valid claim"));
    }
}
