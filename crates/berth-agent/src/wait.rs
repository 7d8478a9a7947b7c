//! `berth agent wait`: the first process of a warm sandbox (one a pool keeps idle, with no
//! workspace). It waits until the control plane claims the sandbox, then becomes `berth agent
//! run --spec SPEC -- COMMAND` (an exec: the same process, so the stop signal reaches the
//! supervisor), which restores the workspace from the store and runs the command.
//!
//! The claim arrives one of two ways, as the substrate allows:
//! - `--claim FILE` (Docker): the control plane puts the spec, then the claim, into the sandbox.
//! - `--fetch FILE --spec-out SPEC` (Kubernetes): FILE, in the sandbox from its start, holds
//!   the control plane's URL and a token of the sandbox's own. The claim makes that token the
//!   session's; until then it is nobody's (401). The answer holds the spec without a token:
//!   the sandbox adds its own and writes it to SPEC (mode 0400).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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

/// What a warm sandbox that fetches its claim holds from its start.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warm {
    /// The control plane's URL.
    pub server: String,
    /// The sandbox's token (its session's once claimed).
    pub token: String,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm").field("server", &self.server).finish_non_exhaustive()
    }
}

/// Reads the warm file at `path`.
pub fn read_warm(path: &Path) -> Result<Warm, AgentError> {
    let fail = |reason: String| AgentError::Spec { path: path.to_path_buf(), reason };
    let body = std::fs::read(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
    serde_json::from_slice(&body).map_err(|e| fail(format!("is not a valid warm file: {e}")))
}

/// Asks the control plane for this sandbox's claim once, waiting up to `wait_secs` on the
/// server for it: `None` while it is not claimed (its token is nobody's: 401).
pub async fn fetch_claim(client: &berth_api::Client, wait_secs: u64) -> Result<Option<serde_json::Value>, AgentError> {
    match client.sandbox_claim_within(wait_secs).await {
        Ok(claim) => Ok(Some(claim)),
        Err(e) if e.status() == Some(401) => Ok(None),
        Err(e) => Err(AgentError::Control(e)),
    }
}

/// Writes the fetched claim's spec, with the sandbox's own `token`, to `spec_out` (mode 0400,
/// replacing none) and returns the claim to run.
pub fn write_fetched(fetched: &serde_json::Value, token: &str, spec_out: &Path) -> Result<Claim, AgentError> {
    let bad = |reason: &str| AgentError::Config(format!("the control plane's claim {reason}"));
    let mut spec = fetched.get("spec").cloned().ok_or_else(|| bad("holds no spec"))?;
    let session = spec.get_mut("session").and_then(|s| s.as_object_mut()).ok_or_else(|| bad("holds no session"))?;
    session.insert("token".into(), token.into());
    let command: Vec<String> = serde_json::from_value(fetched.get("command").cloned().unwrap_or_default())
        .map_err(|e| bad(&format!("has no valid command: {e}")))?;
    let env: BTreeMap<String, String> = match fetched.get("env") {
        None | Some(serde_json::Value::Null) => BTreeMap::new(),
        Some(env) => serde_json::from_value(env.clone()).map_err(|e| bad(&format!("has no valid env: {e}")))?,
    };
    let body = serde_json::to_vec(&spec).map_err(|e| bad(&format!("cannot be written: {e}")))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(spec_out)
        .map_err(|e| AgentError::io("create the fetched spec", spec_out, e))?;
    file.write_all(&body).and_then(|()| file.sync_all()).map_err(|e| AgentError::io("write", spec_out, e))?;
    Ok(Claim { spec: spec_out.to_path_buf(), command, env })
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

    #[test]
    fn a_fetched_claim_gets_the_sandboxes_own_token_in_a_0400_spec() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("spec.json");
        let fetched = serde_json::json!({
            "spec": {"session": {"session_id": "s1", "token": ""}, "dir": "/workspace"},
            "command": ["sh", "-c", "true"], "env": {"A": "1"},
        });
        let claim = write_fetched(&fetched, "bst_own", &out).unwrap();
        assert_eq!(claim.spec, out);
        assert_eq!(claim.command, ["sh", "-c", "true"]);
        assert_eq!(claim.env["A"], "1");
        let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(spec["session"]["token"], "bst_own");
        assert_eq!(spec["dir"], "/workspace");
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o400);
        // A spec already there is never replaced.
        let e = write_fetched(&fetched, "bst_other", &out).unwrap_err();
        assert!(e.to_string().contains("create the fetched spec"), "{e}");
        let e = write_fetched(&serde_json::json!({"command": []}), "t", &tmp.path().join("x")).unwrap_err();
        assert!(e.to_string().contains("holds no spec"), "{e}");
    }
}
