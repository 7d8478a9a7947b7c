//! Git credentials: fetched at run time from a token endpoint (workload token exchange) with a
//! static-token fallback, kept in the job's 0700 credential directory (files 0600) outside the
//! workspace, and handed to git through a helper script named in the environment, so the token
//! is never in argv, logs, snapshots or persisted git config.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

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
    redactor: Redactor,
    /// Where to renew the token (the endpoint and the identity that exchanges it).
    cfg: Arc<CredentialConfig>,
    /// When the endpoint's token expires and how long it was valid for, if it said (shared by
    /// clones: a refresh is seen by every holder).
    expires: Arc<Mutex<Option<Validity>>>,
}

/// When a token expires, and how long it was valid for when it came.
#[derive(Clone, Copy, Debug)]
struct Validity {
    until: Instant,
    ttl: Duration,
}

/// A token is renewed when this much of its life is left, or half of it for a short-lived one.
pub const RENEW_AHEAD: Duration = Duration::from_secs(300);

/// The least validity a token must have left before git talks to a remote with it.
pub const REMOTE_MIN: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds").field("helper", &self.helper).field("source", &self.source).finish_non_exhaustive()
    }
}

impl Creds {
    /// Returns a redactor that knows this token, and every token a refresh brings.
    pub fn redactor(&self) -> Redactor {
        self.redactor.clone()
    }

    /// How long the token is still valid, if its endpoint said when it expires.
    pub fn valid_for(&self) -> Option<Duration> {
        let expires = *self.expires.lock().unwrap_or_else(PoisonError::into_inner);
        expires.map(|e| e.until.saturating_duration_since(Instant::now()))
    }

    /// How long until the token is due for renewal: when [`RENEW_AHEAD`] of its life is left,
    /// or half of it for a token valid for less than twice that. `None`: it never is (a static
    /// token, or an endpoint that did not say when its token expires).
    pub fn renewal_due_in(&self) -> Option<Duration> {
        let v = (*self.expires.lock().unwrap_or_else(PoisonError::into_inner))?;
        let ahead = RENEW_AHEAD.min(v.ttl / 2);
        Some(v.until.checked_sub(ahead)?.saturating_duration_since(Instant::now()))
    }

    /// Exchanges a new token at the endpoint when this one expires within `within` (a token from
    /// the endpoint with a known expiry only), and installs it in the token file the helper reads
    /// (replaced in one rename, so a git reading it meanwhile gets the old token or the new one).
    /// Returns whether it did.
    pub async fn refresh_if_expiring(&self, within: Duration) -> Result<bool, CredError> {
        let (Some(endpoint), Some(left)) = (&self.cfg.endpoint, self.valid_for()) else { return Ok(false) };
        if self.source != "endpoint" || left > within {
            return Ok(false);
        }
        let identity = match &self.cfg.identity_token_file {
            Some(p) => Some(read_token("identity token", p)?),
            None => None,
        };
        let (token, ttl) = exchange(endpoint, identity.as_deref()).await?;
        let fetched_at = Instant::now();
        let dir = self.token_file.parent().map(Path::to_path_buf).unwrap_or_default();
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staged = dir.join(format!(".token.new.{n}"));
        write_private(&staged, token.as_bytes(), 0o600)
            .and_then(|()| fs::rename(&staged, &self.token_file))
            .map_err(|source| CredError::Write { what: "token", dir, source })?;
        self.redactor.learn(&token);
        *self.expires.lock().unwrap_or_else(PoisonError::into_inner) =
            ttl.map(|ttl| Validity { until: fetched_at + ttl, ttl });
        tracing::info!(
            event = "credentials_refreshed",
            left_ms = left.as_millis() as u64,
            valid_secs = ttl.map(|t| t.as_secs())
        );
        Ok(true)
    }

    /// Keeps the token valid for as long as the run lasts: renews it when it is due (see
    /// [`Creds::renewal_due_in`]), so the agent's own git commands and berth's find a valid
    /// token in the file the helper reads, however long the run. A failed renewal is logged and
    /// tried again (after 5 s, doubling up to 60 s) until one succeeds. Returns at
    /// once for a token that never expires, and when `stop` is cancelled.
    pub async fn keep_fresh(self, stop: CancellationToken) {
        let mut retry = Duration::from_secs(5);
        loop {
            let Some(due) = self.renewal_due_in() else { return };
            tokio::select! {
                _ = tokio::time::sleep(due) => {}
                _ = stop.cancelled() => return,
            }
            let within = self.valid_for().unwrap_or_default() + Duration::from_secs(1);
            match self.refresh_if_expiring(within).await {
                Ok(true) => retry = Duration::from_secs(5),
                // Nothing to renew from (no endpoint): nothing more to do.
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(
                        event = "credentials_refresh_failed",
                        error = %self.redactor.redact(&e.to_string()),
                        left_ms = self.valid_for().unwrap_or_default().as_millis() as u64,
                        retry_ms = retry.as_millis() as u64
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stop.cancelled() => return,
                    }
                    retry = (retry * 2).min(Duration::from_secs(60));
                }
            }
        }
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

/// Replaces secrets in text with `***` and strips `user:password@` from URLs. Clones share what
/// they know, so a refreshed token is redacted everywhere.
#[derive(Clone, Debug, Default)]
pub struct Redactor(Arc<Mutex<Vec<String>>>);

impl Redactor {
    /// A redactor of `secrets`.
    pub fn of(secrets: Vec<String>) -> Redactor {
        Redactor(Arc::new(Mutex::new(secrets)))
    }

    /// Adds `secret` to what it removes.
    pub fn learn(&self, secret: &str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(secret.to_string());
    }

    /// Returns `s` with every known secret and URL credential removed.
    pub fn redact(&self, s: &str) -> String {
        let mut out = s.to_string();
        for secret in self.0.lock().unwrap_or_else(PoisonError::into_inner).iter().filter(|t| t.len() >= 4) {
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
pub enum CredError {
    /// A token file cannot be read.
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        /// Which file ("git token file", "identity token").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The token endpoint refused the exchange (a 4xx answer): permanent.
    #[error("token endpoint refused the exchange ({status})")]
    Refused {
        /// The HTTP status.
        status: String,
    },
    /// The token endpoint failed or could not be reached: worth retrying.
    #[error("{reason}")]
    Unavailable {
        /// What failed.
        reason: String,
    },
    /// The token endpoint answered something that is not a token.
    #[error("{reason}")]
    BadReply {
        /// What was wrong with the answer.
        reason: String,
    },
    /// The token or the helper cannot be written into the job's credential directory.
    #[error("cannot write the {what} into {}: {source}", dir.display())]
    Write {
        /// What ("token", "credential helper").
        what: &'static str,
        /// The job's credential directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl CredError {
    /// Returns whether trying again later may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, CredError::Unavailable { .. })
    }
}

#[derive(Deserialize)]
struct TokenReply {
    #[serde(alias = "access_token")]
    token: String,
    /// Seconds the token is valid for, if the endpoint says.
    #[serde(default)]
    expires_in: Option<f64>,
}

/// Exchanges the workload identity for a token; returns it and how long it is valid, if said.
async fn exchange(endpoint: &str, identity: Option<&str>) -> Result<(String, Option<Duration>), CredError> {
    let unavailable = |reason: String| CredError::Unavailable { reason };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| unavailable(redact_urls(&e.to_string())))?;
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
                let bad = |reason: String| CredError::BadReply { reason };
                let reply: TokenReply =
                    resp.json().await.map_err(|e| bad(format!("token endpoint answered oddly: {e}")))?;
                if reply.token.trim().is_empty() {
                    return Err(bad("token endpoint returned an empty token".into()));
                }
                let ttl = reply.expires_in.filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64);
                return Ok((reply.token.trim().to_string(), ttl));
            }
            Ok(resp) if resp.status().is_client_error() => {
                return Err(CredError::Refused { status: resp.status().to_string() });
            }
            Ok(resp) => last = format!("token endpoint failed ({})", resp.status()),
            Err(e) => last = format!("token endpoint unreachable: {}", redact_urls(&e.to_string())),
        }
    }
    Err(unavailable(last))
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
    let fetched_at = Instant::now();
    let Some((token, source, ttl)) = token(cfg).await? else { return Ok(None) };
    let token_file = job.creds.join("token");
    let helper = job.creds.join("git-credential");
    let write = |what, source| CredError::Write { what, dir: job.creds.clone(), source };
    write_private(&token_file, token.as_bytes(), 0o600).map_err(|e| write("token", e))?;
    // The helper prints the token for `get`, only for the configured repos' hosts, and ignores
    // `store`/`erase`; it names the token file, never the token.
    let username = cfg.username.replace(['\n', '\'', '\\'], "");
    // Hosts are checked to be host characters only (berth_core::repo::credential_host).
    let hosts: Vec<String> = cfg.hosts.iter().map(|h| format!("'{h}'")).collect();
    let allowed = if hosts.is_empty() {
        "exit 0".to_string()
    } else {
        format!("case \"$host\" in {}) ;; *) exit 0 ;; esac", hosts.join("|"))
    };
    let script = format!(
        "#!/bin/sh\n# berth git credential helper: answers 'get' from the job's token file, for the\n\
         # configured repos' hosts only.\n\
         [ \"$1\" = get ] || exit 0\nhost=\n\
         while IFS= read -r line; do case \"$line\" in host=*) host=\"${{line#host=}}\" ;; esac; done\n\
         {allowed}\n\
         printf 'username=%s\\npassword=' '{username}'\ncat '{}'\nprintf '\\n'\n",
        token_file.display()
    );
    write_private(&helper, script.as_bytes(), 0o700).map_err(|e| write("credential helper", e))?;
    let expires = Arc::new(Mutex::new(ttl.map(|ttl| Validity { until: fetched_at + ttl, ttl })));
    let cfg = Arc::new(cfg.clone());
    Ok(Some(Creds { helper, token_file, source, redactor: Redactor::of(vec![token]), cfg, expires }))
}

/// Reads a token file, trimmed.
fn read_token(what: &'static str, path: &Path) -> Result<String, CredError> {
    let t = fs::read_to_string(path).map_err(|source| CredError::Read { what, path: path.to_path_buf(), source })?;
    Ok(t.trim().to_string())
}

/// The token, where it came from (the endpoint, else the static fallback) and how long it is
/// valid if the endpoint said; `None` when neither is configured.
async fn token(cfg: &CredentialConfig) -> Result<Option<(String, &'static str, Option<Duration>)>, CredError> {
    let static_token = || -> Result<Option<String>, CredError> {
        if let Some(path) = &cfg.static_token_file {
            return Ok(Some(read_token("git token file", path)?).filter(|t| !t.is_empty()));
        }
        Ok(cfg.static_token.clone().filter(|t| !t.trim().is_empty()))
    };
    let Some(endpoint) = &cfg.endpoint else { return Ok(static_token()?.map(|t| (t, "static", None))) };
    let identity = match &cfg.identity_token_file {
        Some(p) => Some(read_token("identity token", p)?),
        None => None,
    };
    match exchange(endpoint, identity.as_deref()).await {
        Ok((t, ttl)) => Ok(Some((t, "endpoint", ttl))),
        Err(e) => match static_token()? {
            Some(t) => {
                tracing::warn!(event = "credentials_fallback", reason = %e);
                Ok(Some((t, "static", None)))
            }
            None => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asks `helper` for the credential of `host`, as git does; returns its answer.
    fn ask(helper: &Path, host: &str) -> String {
        use std::io::Write as _;
        let mut child = std::process::Command::new(helper)
            .arg("get")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let question = format!("protocol=https\nhost={host}\npath=o/a.git\n\n");
        child.stdin.take().unwrap().write_all(question.as_bytes()).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    }

    #[tokio::test]
    async fn the_helper_answers_only_for_the_configured_repos_hosts() {
        let tmp = tempfile::tempdir().unwrap();
        let job = Job::create(&tmp.path().join("base")).unwrap();
        let cfg = CredentialConfig {
            static_token: Some("tok-123456".into()),
            username: "x-access-token".into(),
            hosts: vec!["git.example.test".into(), "127.0.0.1:8080".into()],
            ..Default::default()
        };
        let creds = fetch(&cfg, &job).await.unwrap().unwrap();
        assert_eq!(ask(&creds.helper, "git.example.test"), "username=x-access-token\npassword=tok-123456\n");
        assert!(ask(&creds.helper, "127.0.0.1:8080").contains("tok-123456"));
        for other in ["evil.example.test", "git.example.test.evil.test", "127.0.0.1:9999", ""] {
            assert_eq!(ask(&creds.helper, other), "", "the helper answered for {other:?}");
        }
        let none = CredentialConfig { hosts: vec![], ..cfg };
        let creds = fetch(&none, &job).await.unwrap().unwrap();
        assert_eq!(ask(&creds.helper, "git.example.test"), "", "no configured repo, no answer");
    }

    /// Credentials whose token is valid for `ttl` from now, or never expires.
    fn valid_for(ttl: Option<Duration>) -> Creds {
        Creds {
            helper: PathBuf::new(),
            token_file: PathBuf::new(),
            source: "endpoint",
            redactor: Redactor::default(),
            cfg: Arc::default(),
            expires: Arc::new(Mutex::new(ttl.map(|ttl| Validity { until: Instant::now() + ttl, ttl }))),
        }
    }

    #[test]
    fn a_token_is_due_for_renewal_five_minutes_or_half_its_life_before_it_expires() {
        let due = |ttl: u64| valid_for(Some(Duration::from_secs(ttl))).renewal_due_in().unwrap().as_secs_f64();
        // An hour's token: renewed with 5 minutes left; a 10 s token with 5 s left.
        assert!((3299.0..=3300.0).contains(&due(3600)), "{}", due(3600));
        assert!((4.0..=5.0).contains(&due(10)), "{}", due(10));
        assert!((299.0..=300.0).contains(&due(600)), "{}", due(600));
        // An expired token is due now; one that never expires never is.
        assert_eq!(valid_for(Some(Duration::ZERO)).renewal_due_in(), Some(Duration::ZERO));
        assert_eq!(valid_for(None).renewal_due_in(), None);
    }

    #[tokio::test]
    async fn a_token_that_never_expires_is_never_renewed() {
        let creds = valid_for(None);
        // keep_fresh returns at once (a hang here is the failure).
        tokio::time::timeout(Duration::from_secs(30), creds.clone().keep_fresh(CancellationToken::new()))
            .await
            .expect("keep_fresh returned");
        assert!(!creds.refresh_if_expiring(Duration::MAX).await.unwrap());
    }

    #[test]
    fn redacts() {
        let r = Redactor::of(vec!["s3cr3t-token".into()]);
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
