//! Git credentials: fetched at run time from a token endpoint (workload token exchange) with a
//! static-token fallback, kept in the job's 0700 credential directory (files 0600) outside the
//! workspace, and handed to git through a helper script named in the environment, so the token
//! is never in argv, logs, snapshots or persisted git config.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::CredentialConfig;
use crate::job::Job;

/// Credentials ready for git.
#[derive(Clone)]
pub struct Creds {
    /// The helper script git runs (`<creds>/git-credential`).
    pub helper: PathBuf,
    /// Where the token lives (`<creds>/token`, 0600).
    pub token_file: PathBuf,
    /// Where the token came from: endpoint or static.
    pub source: &'static str,
    secret: String,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds").field("helper", &self.helper).field("source", &self.source).finish_non_exhaustive()
    }
}

impl Creds {
    /// Returns a redactor that knows this token.
    pub fn redactor(&self) -> Redactor {
        Redactor(vec![self.secret.clone()])
    }

    /// Git configuration, as `GIT_CONFIG_*` environment entries: reset any inherited credential
    /// helpers (a `store` helper would write the token to disk), then use ours.
    pub fn git_env(&self) -> Vec<(String, String)> {
        let pairs = [("credential.helper", String::new()), ("credential.helper", self.helper.display().to_string())];
        let mut env = vec![("GIT_CONFIG_COUNT".to_string(), pairs.len().to_string())];
        for (i, (k, v)) in pairs.iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}"), k.to_string()));
            env.push((format!("GIT_CONFIG_VALUE_{i}"), v.clone()));
        }
        env
    }
}

/// Replaces secrets in text with `***` and strips `user:password@` from URLs.
#[derive(Clone, Debug, Default)]
pub struct Redactor(Vec<String>);

impl Redactor {
    /// Returns `s` with every known secret and URL credential removed.
    pub fn redact(&self, s: &str) -> String {
        let mut out = s.to_string();
        for secret in self.0.iter().filter(|t| t.len() >= 4) {
            out = out.replace(secret.as_str(), "***");
        }
        redact_urls(&out)
    }
}

/// Strips the userinfo of every `scheme://user:pass@host` in `s`.
pub fn redact_urls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c.is_whitespace() || c == '/' || c == '\'' || c == '"').unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str(&tail[at + 1..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Why credentials could not be had.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CredError(pub String);

#[derive(Deserialize)]
struct TokenReply {
    #[serde(alias = "access_token")]
    token: String,
}

async fn exchange(endpoint: &str, identity: Option<&str>) -> Result<String, String> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        let mut req = http.post(endpoint).json(&serde_json::json!({"grant_type": "token_exchange"}));
        if let Some(id) = identity {
            req = req.bearer_auth(id);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                let reply: TokenReply = resp.json().await.map_err(|e| format!("token endpoint answered oddly: {e}"))?;
                if reply.token.trim().is_empty() {
                    return Err("token endpoint returned an empty token".into());
                }
                return Ok(reply.token.trim().to_string());
            }
            Ok(resp) if resp.status().is_client_error() => {
                return Err(format!("token endpoint refused the exchange ({})", resp.status()));
            }
            Ok(resp) => last = format!("token endpoint failed ({})", resp.status()),
            Err(e) => last = format!("token endpoint unreachable: {}", redact_urls(&e.to_string())),
        }
    }
    Err(last)
}

fn write_private(path: &PathBuf, body: &[u8], mode: u32) -> std::io::Result<()> {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    f.write_all(body)?;
    f.sync_all()
}

/// Fetches credentials as configured and installs them in the job's credential directory.
/// `Ok(None)`: none configured (public repositories only).
pub async fn fetch(cfg: &CredentialConfig, job: &Job) -> Result<Option<Creds>, CredError> {
    let static_token = || -> Result<Option<String>, CredError> {
        if let Some(path) = &cfg.static_token_file {
            let t = fs::read_to_string(path)
                .map_err(|e| CredError(format!("cannot read the git token file {}: {e}", path.display())))?;
            return Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()));
        }
        Ok(cfg.static_token.clone().filter(|t| !t.trim().is_empty()))
    };
    let (token, source) = match &cfg.endpoint {
        Some(endpoint) => {
            let identity = match &cfg.identity_token_file {
                Some(p) => Some(
                    fs::read_to_string(p)
                        .map_err(|e| CredError(format!("cannot read the identity token {}: {e}", p.display())))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            match exchange(endpoint, identity.as_deref()).await {
                Ok(t) => (t, "endpoint"),
                Err(e) => match static_token()? {
                    Some(t) => {
                        tracing::warn!(event = "credentials_fallback", reason = %e);
                        (t, "static")
                    }
                    None => return Err(CredError(e)),
                },
            }
        }
        None => match static_token()? {
            Some(t) => (t, "static"),
            None => return Ok(None),
        },
    };
    let token_file = job.creds.join("token");
    let helper = job.creds.join("git-credential");
    let io =
        |what: &str, e: std::io::Error| CredError(format!("cannot write the {what} into {}: {e}", job.creds.display()));
    write_private(&token_file, token.as_bytes(), 0o600).map_err(|e| io("token", e))?;
    // The helper prints the token for `get` and ignores `store`/`erase`; it names the token
    // file, never the token.
    let username = cfg.username.replace(['\n', '\'', '\\'], "");
    let script = format!(
        "#!/bin/sh\n# berth git credential helper: answers 'get' from the job's token file.\n\
         [ \"$1\" = get ] || exit 0\nprintf 'username=%s\\npassword=' '{username}'\ncat '{}'\nprintf '\\n'\n",
        token_file.display()
    );
    write_private(&helper, script.as_bytes(), 0o700).map_err(|e| io("credential helper", e))?;
    Ok(Some(Creds { helper, token_file, source, secret: token }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts() {
        let r = Redactor(vec!["s3cr3t-token".into()]);
        assert_eq!(
            r.redact("push to https://x:s3cr3t-token@h/r.git failed: s3cr3t-token"),
            "push to https://h/r.git failed: ***"
        );
        assert_eq!(
            redact_urls("fatal: 'https://user@h/x' and http://a:b@c:8/d"),
            "fatal: 'https://h/x' and http://c:8/d"
        );
    }
}
