//! `berth agent init | run | sweep`: builds the agent's configuration from flags, environment
//! and the spec file (in that order of precedence), wires SIGTERM and SIGINT, and prints the
//! result as a summary or, with `--json`, as JSON.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use berth_agent::config::{default_base, AgentConfig, ControlConfig, Nudge, Spec};
use berth_agent::init::{InitReport, Phase};
use berth_agent::run::{self, Outcome, Signals};
use berth_api::{Mount, RepoSpec};
use berth_core::session::{InstanceId, SessionId};
use berth_core::workspace::{Generation, WorkspaceId};
use clap::{Args, Subcommand};

use crate::units;

/// Settings every agent command shares.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// JSON spec file (the attach response as `session`, and any setting below); flags and
    /// environment override it.
    #[arg(long, env = "BERTH_AGENT_SPEC", value_name = "FILE")]
    spec: Option<PathBuf>,
    /// The workspace directory [default: the session's local mount, else the current directory].
    #[arg(long, env = "BERTH_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Object store for snapshots (file:///PATH, s3://BUCKET/PREFIX); none: the workspace is ephemeral.
    #[arg(long, env = "BERTH_STORE", value_name = "URL")]
    store: Option<String>,
    /// Workspace id (owner key) [default: the session's].
    #[arg(long, env = "BERTH_WORKSPACE", value_name = "ID")]
    workspace: Option<String>,
    /// Workspace generation [default: the session's, else 1].
    #[arg(long, env = "BERTH_GENERATION")]
    generation: Option<u64>,
    /// Control-plane URL.
    #[arg(long, env = "BERTH_SERVER", value_name = "URL")]
    server: Option<String>,
    /// Sandbox token [prefer BERTH_TOKEN or the spec file: arguments are visible to other users].
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Session id (without a spec file).
    #[arg(long, env = "BERTH_SESSION")]
    session: Option<String>,
    /// Lease epoch of the session (without a spec file).
    #[arg(long, env = "BERTH_EPOCH")]
    epoch: Option<u64>,
    /// This sandbox's instance id [default: the host name].
    #[arg(long, env = "BERTH_INSTANCE", value_name = "ID")]
    instance: Option<String>,
    /// Repositories to clone: a JSON list of {url, branch?, depth?, path?}, a single URL, or @FILE.
    #[arg(long, env = "BERTH_REPOS", value_name = "JSON|URL|@FILE")]
    repos: Option<String>,
    /// Leave out paths matching this .gitignore-style pattern (repeatable).
    #[arg(long = "exclude", value_name = "PATTERN")]
    excludes: Vec<String>,
    /// Do not apply the default excludes.
    #[arg(long)]
    no_default_excludes: bool,
    /// Size budget per snapshot [default: 1GiB].
    #[arg(long, value_name = "SIZE|unlimited", value_parser = units::parse_budget)]
    budget: Option<units::Budget>,
    /// Engine cache directory [default: BASE/cache].
    #[arg(long, env = "BERTH_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Seconds between snapshots [default: 60].
    #[arg(long)]
    interval: Option<u64>,
    /// Seconds before the first interval snapshot [default: 30].
    #[arg(long)]
    first_after: Option<u64>,
    /// Milliseconds from a change to the snapshot that saves it [default: 500].
    #[arg(long)]
    debounce: Option<u64>,
    /// Seconds between git state captures [default: 60].
    #[arg(long)]
    git_interval: Option<u64>,
    /// Drain budget in seconds [default: the platform grace period minus a margin].
    #[arg(long, env = "BERTH_GRACE")]
    grace: Option<u64>,
    /// The platform's grace period between SIGTERM and SIGKILL, in seconds [default: 30].
    #[arg(long, env = "BERTH_PLATFORM_GRACE")]
    platform_grace: Option<u64>,
    /// Command (sh -c) that asks the agent to commit and push on drain [default: SIGTERM to it].
    #[arg(long, value_name = "CMD")]
    nudge_cmd: Option<String>,
    /// URL POSTed to ask the agent to commit and push on drain.
    #[arg(long, value_name = "URL")]
    nudge_url: Option<String>,
    /// Author of work-in-progress commits, "Name <email>" [default: berth <berth@localhost>].
    #[arg(long)]
    author: Option<String>,
    /// Token endpoint for git credentials (workload token exchange).
    #[arg(long, env = "BERTH_CREDENTIAL_ENDPOINT", value_name = "URL")]
    credential_endpoint: Option<String>,
    /// Workload identity token presented to the credential endpoint.
    #[arg(long, value_name = "FILE")]
    identity_token_file: Option<PathBuf>,
    /// Static git token file (fallback; or BERTH_GIT_TOKEN).
    #[arg(long, value_name = "FILE")]
    git_token_file: Option<PathBuf>,
    /// Username presented with the git token [default: x-access-token].
    #[arg(long)]
    git_username: Option<String>,
    /// Base directory of per-job paths (credentials, scratch, reports), outside the workspace.
    #[arg(long, env = "BERTH_JOB_BASE", value_name = "DIR")]
    base: Option<PathBuf>,
    /// Per-job leftovers older than this are swept [default: 1h].
    #[arg(long, value_parser = units::parse_duration)]
    ttl: Option<i64>,
    /// Time clone retries may take [default: 5m].
    #[arg(long, value_parser = units::parse_duration)]
    clone_timeout: Option<i64>,
    /// Serve Prometheus metrics here (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `berth agent ...`
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Initialise the workspace: sweep, credentials, clone, restore, git state, ready marker.
    Init(AgentArgs),
    /// Initialise, then keep the workspace persisted and drain it on SIGTERM; with a command,
    /// supervise it as the agent process.
    Run {
        #[command(flatten)]
        args: AgentArgs,
        /// The agent command, after `--`.
        #[arg(last = true, value_name = "AGENT COMMAND")]
        command: Vec<String>,
    },
    /// Remove per-job leftovers older than the TTL; a live job's files are never touched.
    Sweep {
        /// Base directory of per-job paths.
        #[arg(long, env = "BERTH_JOB_BASE", value_name = "DIR")]
        base: Option<PathBuf>,
        /// Leftovers older than this go.
        #[arg(long, default_value = "1h", value_parser = units::parse_duration)]
        ttl: i64,
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h: String =
        h.trim().chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    if h.is_empty() || !h.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        format!("sandbox-{}", std::process::id())
    } else {
        h
    }
}

fn parse_repos(s: &str) -> Result<Vec<RepoSpec>> {
    let text = match s.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read the repos file {path}"))?,
        None => s.to_string(),
    };
    let t = text.trim();
    if t.starts_with('[') || t.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(t).context("--repos is not valid JSON")?;
        let list = if v.is_array() { v } else { serde_json::Value::Array(vec![v]) };
        Ok(serde_json::from_value(list).context("--repos: each repo is {url, branch?, depth?, path?}")?)
    } else if t.is_empty() {
        Ok(Vec::new())
    } else {
        Ok(vec![RepoSpec { url: t.to_string(), branch: None, depth: None, path: None }])
    }
}

fn parse_author(s: &str) -> Result<(String, String)> {
    match s.rsplit_once('<') {
        Some((name, email)) if email.ends_with('>') => {
            Ok((name.trim().to_string(), email.trim_end_matches('>').trim().to_string()))
        }
        _ => bail!("--author '{s}' is not \"Name <email>\""),
    }
}

impl AgentArgs {
    fn config(self) -> Result<AgentConfig> {
        let spec = match &self.spec {
            Some(p) => Spec::load(p).map_err(anyhow::Error::msg)?,
            None => Spec::default(),
        };
        let session = spec.session.clone();
        let workspace = self
            .workspace
            .or(spec.workspace.clone())
            .or(session.as_ref().map(|s| s.owner.clone()))
            .context("no workspace: pass --workspace ID (or BERTH_WORKSPACE), or a spec file with the session")?;
        let workspace = WorkspaceId::new(workspace)?;
        let instance = InstanceId::new(self.instance.or(spec.instance_id.clone()).unwrap_or_else(hostname))?;
        let mount_path = match session.as_ref().map(|s| &s.mount) {
            Some(Mount::Local { path, .. }) => Some(PathBuf::from(path)),
            _ => None,
        };
        let dir = self.dir.or(spec.dir.clone()).or(mount_path).unwrap_or_else(|| PathBuf::from("."));
        let dir = std::path::absolute(&dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
        let mut cfg = AgentConfig::new(dir, workspace, instance);
        cfg.generation =
            Generation(self.generation.or(spec.generation).or(session.as_ref().map(|s| s.generation)).unwrap_or(1));
        cfg.store = self.store.or(spec.store.clone()).or(session.as_ref().and_then(|s| s.init.store.clone()));
        let server = self.server.or(spec.server.clone());
        cfg.control = match (&session, self.session, self.token) {
            (Some(s), _, token) => Some(ControlConfig {
                server: server.clone().context("the spec has a session but no server: pass --server URL (or BERTH_SERVER, or \"server\" in the spec)")?,
                token: token.unwrap_or_else(|| s.token.clone()),
                session: SessionId::new(s.session_id.clone())?,
                epoch: self.epoch.unwrap_or(s.epoch),
                lease_ttl_secs: s.lease_ttl_secs,
                handover: s.handover.clone(),
                mount_lock: match &s.mount {
                    Mount::Local { lock, .. } => Some(PathBuf::from(lock)),
                    _ => None,
                },
            }),
            (None, Some(id), Some(token)) => Some(ControlConfig {
                server: server.clone().context("--session needs --server URL")?,
                token,
                session: SessionId::new(id)?,
                epoch: self.epoch.context("--session needs --epoch N (the lease epoch of the attach)")?,
                lease_ttl_secs: 60,
                handover: None,
                mount_lock: None,
            }),
            (None, Some(_), None) => bail!("--session needs the sandbox token: set BERTH_TOKEN (or --token)"),
            (None, None, _) => None,
        };
        cfg.repos = match self.repos {
            Some(r) => parse_repos(&r)?,
            None => spec.repos.clone().or(session.as_ref().map(|s| s.init.repos.clone())).unwrap_or_default(),
        };
        for r in &cfg.repos {
            berth_core::repo::target(&r.url, r.branch.as_deref(), r.depth, r.path.as_deref())?;
        }
        cfg.excludes = spec.excludes.clone().unwrap_or_default();
        cfg.excludes.extend(self.excludes);
        cfg.default_excludes = !(self.no_default_excludes || spec.no_default_excludes.unwrap_or(false));
        cfg.budget = match (self.budget, &spec.budget) {
            (Some(b), _) => b.0,
            (None, Some(s)) => units::parse_size(s).map_err(anyhow::Error::msg)?,
            (None, None) => Some(1 << 30),
        };
        cfg.base = self.base.or(spec.base.clone()).unwrap_or_else(default_base);
        cfg.cache_dir = Some(self.cache_dir.or(spec.cache_dir.clone()).unwrap_or_else(|| cfg.base.join("cache")));
        cfg.interval_secs = self.interval.or(spec.interval_secs).unwrap_or(60).max(1);
        cfg.first_after_secs = self.first_after.or(spec.first_after_secs).unwrap_or(30);
        cfg.debounce_ms = self.debounce.or(spec.debounce_ms).unwrap_or(500);
        cfg.git_interval_secs = self.git_interval.or(spec.git_interval_secs).unwrap_or(60);
        let platform = self.platform_grace.or(spec.platform_grace_secs).unwrap_or(30);
        cfg.drain_budget_secs =
            berth_core::drain::budget_secs(self.grace.or(spec.grace_secs), platform.max(self.grace.unwrap_or(0)));
        cfg.nudge = match (self.nudge_cmd.or(spec.nudge_command.clone()), self.nudge_url.or(spec.nudge_url.clone())) {
            (Some(c), _) => Nudge::Command(c),
            (None, Some(u)) => Nudge::Url(u),
            (None, None) => Nudge::Signal,
        };
        if let Some(a) = self.author {
            cfg.author = parse_author(&a)?;
        } else if let (Some(n), Some(e)) = (&spec.author_name, &spec.author_email) {
            cfg.author = (n.clone(), e.clone());
        }
        cfg.credentials.endpoint = self.credential_endpoint.or(spec.credential_endpoint.clone());
        cfg.credentials.identity_token_file = self.identity_token_file.or(spec.identity_token_file.clone());
        cfg.credentials.static_token_file = self.git_token_file.or(spec.git_token_file.clone());
        cfg.credentials.static_token = std::env::var("BERTH_GIT_TOKEN").ok();
        if let Some(u) = self.git_username.or(spec.git_username.clone()) {
            cfg.credentials.username = u;
        }
        cfg.ttl_secs = match (self.ttl, &spec.ttl) {
            (Some(t), _) => t,
            (None, Some(s)) => units::parse_duration(s).map_err(anyhow::Error::msg)?,
            (None, None) => 3600,
        };
        cfg.clone_retry_secs = self.clone_timeout.unwrap_or(300).max(0) as u64;
        cfg.metrics_listen = self.metrics_listen;
        Ok(cfg)
    }
}

fn signals() -> Signals {
    let s = Signals::default();
    let (term, int) = (s.term.clone(), s.int.clone());
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        Some(()) = t.recv() => term.cancel(),
                        Some(()) = i.recv() => int.cancel(),
                        else => break,
                    }
                }
            });
        }
        _ => eprintln!("warning: cannot install signal handlers; SIGTERM will not drain"),
    }
    s
}

fn print_phase(p: &Phase) {
    eprintln!("init: {:<12} {:<8} {:>6} ms  {}", p.name, p.outcome, p.ms, p.detail);
}

fn print_summary(r: &InitReport) {
    println!(
        "workspace {} (generation {}): {}{}",
        r.workspace,
        r.generation,
        if r.ready { "ready" } else { "NOT ready" },
        r.snapshot
            .as_deref()
            .map(|s| format!(", {} {s}", r.restore.replace('_', " ")))
            .unwrap_or_else(|| format!(", {}", r.restore.replace('_', " ")))
    );
    for repo in &r.repos {
        let why = repo
            .error
            .as_deref()
            .map(|e| format!(" ({}: {e})", repo.failure.map(|f| format!("{f:?}").to_lowercase()).unwrap_or_default()))
            .unwrap_or_default();
        println!("  repo {:<24} {:<14} {}{why}", repo.path, repo.outcome, repo.url);
    }
    for g in &r.git {
        match (&g.restore, &g.error) {
            (Some(x), _) if !x.head_matches => {
                println!("  git  {:<24} HEAD mismatch: expected {:?}, found {:?}", g.path, x.expected_head, x.head)
            }
            (Some(x), _) => println!(
                "  git  {:<24} restored (HEAD {}, {} index entries refreshed)",
                g.path,
                x.head.as_deref().unwrap_or("-"),
                x.index_refreshed
            ),
            (None, Some(e)) => println!("  git  {:<24} failed: {e}", g.path),
            _ => {}
        }
    }
    println!("  took {} ms", r.ms);
}

fn finish(outcome: Outcome, json: bool) -> Result<i32> {
    if json {
        if let Some(r) = &outcome.init {
            println!("{}", serde_json::to_string_pretty(r)?);
        }
    } else if let Some(r) = &outcome.init {
        print_summary(r);
    }
    if let Some(m) = &outcome.message {
        eprintln!("error: {m}");
    }
    Ok(outcome.code)
}

/// Runs an agent subcommand; returns the exit code.
pub async fn run(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Init(args) => {
            let json = args.json;
            let cfg = args.config()?;
            let outcome = run::init_only(cfg, signals(), &print_phase).await;
            finish(outcome, json)
        }
        Command::Run { args, command } => {
            let json = args.json;
            let cfg = args.config()?;
            let outcome = run::run(cfg, command, signals(), &print_phase).await;
            // The init summary was printed phase by phase already; print only failures.
            if let Some(m) = &outcome.message {
                eprintln!("error: {m}");
            }
            if json {
                if let Some(r) = &outcome.init {
                    println!("{}", serde_json::to_string_pretty(r)?);
                }
            }
            Ok(outcome.code)
        }
        Command::Sweep { base, ttl, dry_run, json } => {
            let base = base.unwrap_or_else(default_base);
            let report = berth_agent::sweep::sweep(&base, ttl, dry_run);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let verb = if dry_run { "would remove" } else { "removed" };
                for s in &report.swept {
                    println!("{verb} {}", base.join(s).display());
                }
                if let Some(e) = &report.unreadable {
                    eprintln!("warning: cannot read {}: {e}", base.display());
                }
                println!(
                    "swept {} leftover(s); kept {} younger than the TTL and {} of live jobs ({} ms)",
                    report.swept.len(),
                    report.retained,
                    report.skipped_live,
                    report.duration_ms
                );
            }
            Ok(if report.failed > 0 { 1 } else { 0 })
        }
    }
}
