//! `berth agent init | run | sweep`: builds the agent's configuration from flags, environment
//! and the spec file (in that order of precedence), wires SIGTERM and SIGINT, and prints the
//! result as a summary or, with `--json`, as JSON.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use berth_agent::config::{default_base, defaults, AgentConfig, Flags};
use berth_agent::init::{InitReport, Phase};
use berth_agent::run::{self, Observer, Outcome, Signals};
use berth_core::units::{format_duration, format_size};
use clap::{Args, Subcommand};

use crate::{units, upkeep};

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
    #[arg(long, env = "BERTH_LEASE_TTL", help = with_default(
        "Lease time to live in seconds of a session given by --session (the spec's session carries its own); \
         it must match the server's --lease-ttl",
        defaults::LEASE_TTL_SECS,
    ))]
    lease_ttl: Option<u64>,
    /// Seconds before the lease could expire at which writing stops when renewals fail: the
    /// time the last successful renewal was sent, plus the TTL, less this margin, by the
    /// sandbox's monotonic clock; it covers the drift between that clock and the control
    /// plane's and the time a started write takes [default: a quarter of the TTL].
    #[arg(long, env = "BERTH_LEASE_MARGIN")]
    lease_margin: Option<u64>,
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
    #[arg(long, value_name = "SIZE|unlimited", value_parser = units::parse_budget,
          help = with_default("Size budget per snapshot", format_size(defaults::BUDGET_BYTES)))]
    budget: Option<units::Budget>,
    /// Engine cache directory [default: BASE/cache].
    #[arg(long, env = "BERTH_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    #[arg(long, help = with_default("Seconds between snapshots", defaults::INTERVAL_SECS))]
    interval: Option<u64>,
    #[arg(long, help = with_default("Seconds before the first interval snapshot", defaults::FIRST_AFTER_SECS))]
    first_after: Option<u64>,
    #[arg(long, help = with_default("Milliseconds from a change to the snapshot that saves it", defaults::DEBOUNCE_MS))]
    debounce: Option<u64>,
    #[arg(long, help = with_default("Seconds between git state captures", defaults::GIT_INTERVAL_SECS))]
    git_interval: Option<u64>,
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, help = with_default(
        "Least time between the starts of two snapshots: a tree that changes all the time is saved at most \
         this often (0: no gap)",
        format_duration(defaults::MIN_GAP_SECS as i64),
    ))]
    min_gap: Option<i64>,
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, help = with_default(
        "Time between full scans that check what the file watcher reported (differences are counted in \
         berth_agent_rescan_differences_total and logged); without watches every snapshot scans everything",
        format_duration(defaults::RESCAN_SECS as i64),
    ))]
    rescan_interval: Option<i64>,
    /// Retention applied to this workspace's snapshots every --retention-interval, only where
    /// there is no control plane (which applies its own) [default: keep-last=10,hourly=24,daily=7,weekly=4; `off`: none].
    #[arg(long, value_name = "POLICY|off", value_parser = upkeep::parse_policy)]
    retention: Option<upkeep::PolicyArg>,
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, help = with_default(
        "Time between retention runs (without a control plane)",
        format_duration(defaults::RETENTION_INTERVAL_SECS as i64),
    ))]
    retention_interval: Option<i64>,
    /// Time between prunes of the store by this agent, without a control plane (`0`: none;
    /// a store several agents share is best pruned from one place) [default: 0].
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    prune_interval: Option<i64>,
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, help = with_default(
        "How long data a prune marked waits before a later prune deletes it; must exceed the longest snapshot run",
        format_duration(defaults::PRUNE_GRACE_SECS),
    ))]
    prune_grace: Option<i64>,
    /// Drain budget in seconds, never more than the platform grace period minus a margin
    /// [default: that much].
    #[arg(long, env = "BERTH_GRACE")]
    grace: Option<u64>,
    #[arg(long, env = "BERTH_PLATFORM_GRACE", help = with_default(
        "The platform's grace period between SIGTERM and SIGKILL, in seconds",
        defaults::PLATFORM_GRACE_SECS,
    ))]
    platform_grace: Option<u64>,
    /// Command (sh -c) that asks the agent to commit and push on drain [default: SIGTERM to it].
    #[arg(long, value_name = "CMD")]
    nudge_cmd: Option<String>,
    /// URL POSTed to ask the agent to commit and push on drain.
    #[arg(long, value_name = "URL")]
    nudge_url: Option<String>,
    #[arg(long, help = with_default(
        "Author of work-in-progress commits, \"Name <email>\"",
        format!("{} <{}>", defaults::AUTHOR_NAME, defaults::AUTHOR_EMAIL),
    ))]
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
    #[arg(long, help = with_default("Username presented with the git token", defaults::GIT_USERNAME))]
    git_username: Option<String>,
    /// Base directory of per-job paths (credentials, scratch, reports), outside the workspace.
    #[arg(long, env = "BERTH_JOB_BASE", value_name = "DIR")]
    base: Option<PathBuf>,
    #[arg(long, value_parser = units::parse_duration,
          help = with_default("Per-job leftovers older than this are swept", format_duration(defaults::TTL_SECS)))]
    ttl: Option<i64>,
    #[arg(long, value_parser = units::parse_duration,
          help = with_default("Time clone retries may take", format_duration(defaults::CLONE_TIMEOUT_SECS)))]
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
    /// A warm sandbox's first process: wait until the control plane claims it (puts the claim
    /// file in place, or answers the fetch), then become `berth agent run` with the claim's spec
    /// and command.
    Wait {
        /// The claim file to wait for (the control plane puts it into the sandbox).
        #[arg(long, value_name = "FILE", required_unless_present = "fetch", conflicts_with = "fetch")]
        claim: Option<PathBuf>,
        /// Ask the control plane for the claim instead, with the URL and token FILE holds.
        #[arg(long, value_name = "FILE", requires = "spec_out")]
        fetch: Option<PathBuf>,
        /// Where the fetched spec goes (mode 0400; outside the workspace).
        #[arg(long, value_name = "FILE")]
        spec_out: Option<PathBuf>,
    },
    /// Remove per-job leftovers older than the TTL; a live job's files are never touched.
    Sweep {
        /// Base directory of per-job paths.
        #[arg(long, env = "BERTH_JOB_BASE", value_name = "DIR")]
        base: Option<PathBuf>,
        #[arg(long, value_parser = units::parse_duration,
              help = with_default("Leftovers older than this go", format_duration(defaults::TTL_SECS)))]
        ttl: Option<i64>,
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl AgentArgs {
    /// The flag values for the library, which merges them with the spec file and the defaults.
    fn flags(self) -> Flags {
        Flags {
            spec: self.spec,
            dir: self.dir,
            store: self.store,
            workspace: self.workspace,
            generation: self.generation,
            server: self.server,
            token: self.token,
            session: self.session,
            epoch: self.epoch,
            lease_ttl: self.lease_ttl,
            lease_margin: self.lease_margin,
            instance: self.instance,
            repos: self.repos,
            excludes: self.excludes,
            no_default_excludes: self.no_default_excludes,
            budget: self.budget.map(|b| b.0),
            cache_dir: self.cache_dir,
            interval: self.interval,
            first_after: self.first_after,
            debounce: self.debounce,
            git_interval: self.git_interval,
            min_gap: self.min_gap.map(|s| s.max(0) as u64),
            rescan_interval: self.rescan_interval.map(|s| s.max(1) as u64),
            retention: self.retention.map(|p| p.0),
            retention_interval: self.retention_interval.map(|s| s.max(1) as u64),
            prune_interval: self.prune_interval.map(|s| s.max(0) as u64),
            prune_grace: self.prune_grace.map(|s| s.max(0)),
            grace: self.grace,
            platform_grace: self.platform_grace,
            nudge_cmd: self.nudge_cmd,
            nudge_url: self.nudge_url,
            author: self.author,
            credential_endpoint: self.credential_endpoint,
            identity_token_file: self.identity_token_file,
            git_token_file: self.git_token_file,
            git_token: std::env::var("BERTH_GIT_TOKEN").ok(),
            git_username: self.git_username,
            base: self.base,
            ttl: self.ttl,
            clone_timeout: self.clone_timeout,
            metrics_listen: self.metrics_listen,
        }
    }
}

/// A flag's help text with its default, read from the agent's one set of defaults.
fn with_default(text: &str, default: impl std::fmt::Display) -> String {
    format!("{text} [default: {default}]")
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

/// The log filter when `BERTH_LOG` is unset. A person at a terminal reads the agent's own
/// lines (each init phase, one summary) and, from the log, only warnings and errors: init's own
/// events are what that summary says, so they are off. A log collector (stderr not a terminal)
/// gets every event of init and run instead of the phase lines.
pub fn log_filter(cmd: &Command) -> &'static str {
    if std::io::stderr().is_terminal() {
        "warn,berth_agent::init=off"
    } else if matches!(cmd, Command::Init(_) | Command::Run { .. }) {
        "info,sqlx=warn"
    } else {
        "warn"
    }
}

/// What a person reads: each init phase as it ends (unless the log says it already) and one
/// summary once init has ended; with `--json`, stdout holds only the JSON report.
#[derive(Debug)]
struct ForPeople {
    json: bool,
}

impl Observer for ForPeople {
    fn phase(&self, p: &Phase) {
        if !tracing::enabled!(target: "berth_agent::init", tracing::Level::INFO) {
            eprintln!("init: {:<12} {:<8} {:>6} ms  {}", p.name, p.outcome, p.ms, p.detail);
        }
    }

    fn init_done(&self, report: &InitReport) {
        if !self.json {
            print!("{}", summary(report));
        }
    }
}

/// The summary of an init report, for people.
fn summary(r: &InitReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let state = if r.ready { "ready" } else { "NOT ready" };
    let restore = r.restore.map(|x| format!(", {}", x.as_str().replace('_', " "))).unwrap_or_default();
    let snapshot = r.snapshot.map(|s| format!(" {s}")).unwrap_or_default();
    let _ = writeln!(out, "workspace {} (generation {}): {state}{restore}{snapshot}", r.workspace, r.generation);
    for repo in &r.repos {
        let failure = repo.failure.map(|f| format!("{f:?}").to_lowercase()).unwrap_or_default();
        let why = repo.error.as_deref().map(|e| format!(" ({failure}: {e})")).unwrap_or_default();
        let _ = writeln!(out, "  repo {:<24} {:<14} {}{why}", repo.path, repo.outcome, repo.url);
    }
    for g in &r.git {
        let _ = match (&g.restore, &g.error) {
            (Some(x), _) if !x.head_matches => {
                let (expected, found) = (x.expected_head.as_deref().unwrap_or("-"), x.head.as_deref().unwrap_or("-"));
                writeln!(out, "  git  {:<24} HEAD mismatch: expected {expected}, found {found}", g.path)
            }
            (Some(x), _) => {
                let head = x.head.as_deref().unwrap_or("-");
                let n = x.index_refreshed;
                writeln!(out, "  git  {:<24} restored (HEAD {head}, {n} index entries refreshed)", g.path)
            }
            (None, Some(e)) => writeln!(out, "  git  {:<24} failed: {e}", g.path),
            (None, None) => Ok(()),
        };
    }
    let _ = writeln!(out, "  took {} ms", r.ms);
    out
}

/// Prints the JSON report (with `--json`) and the error, if any; returns the exit code.
fn finish(outcome: Outcome, json: bool) -> Result<i32> {
    if let (true, Some(r)) = (json, &outcome.init) {
        println!("{}", serde_json::to_string_pretty(r)?);
    }
    if let Some(e) = &outcome.error {
        eprintln!("error: {e}");
    }
    Ok(outcome.code)
}

/// Runs an agent subcommand; returns the exit code.
pub async fn run(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Init(args) => {
            let people = ForPeople { json: args.json };
            let cfg = AgentConfig::resolve(args.flags())?;
            finish(run::init_only(cfg, signals(), &people).await, people.json)
        }
        Command::Run { args, command } => {
            let people = ForPeople { json: args.json };
            let cfg = AgentConfig::resolve(args.flags())?;
            finish(run::run(cfg, command, signals(), &people).await, people.json)
        }
        Command::Wait { claim: Some(claim), .. } => wait_for_claim(&claim).await,
        Command::Wait { fetch: Some(fetch), spec_out: Some(out), .. } => fetch_claim(&fetch, &out).await,
        Command::Wait { .. } => Err(anyhow::anyhow!("give --claim FILE, or --fetch FILE with --spec-out FILE")),
        Command::Sweep { base, ttl, dry_run, json } => {
            let base = base.unwrap_or_else(default_base);
            let report = berth_agent::sweep::sweep(&base, ttl.unwrap_or(defaults::TTL_SECS), dry_run, None);
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

/// `berth agent wait`: polls for the claim (a stat every few milliseconds costs nothing) until
/// it comes, or exits 0 on SIGTERM or SIGINT.
async fn wait_for_claim(path: &std::path::Path) -> Result<i32> {
    // The claim is written while the supervisor looks: a read that fails is tried again for
    // a moment before it counts.
    const PATIENCE: u32 = 200;
    let signals = signals();
    let mut failed = 0;
    loop {
        match berth_agent::wait::read_claim(path) {
            Ok(Some(claim)) => {
                tracing::info!(event = "claimed", spec = %claim.spec.display());
                return Err(berth_agent::wait::exec_run(&claim).into());
            }
            Ok(None) => failed = 0,
            Err(e) if failed < PATIENCE => {
                failed += 1;
                tracing::debug!(event = "claim_unreadable", error = %e);
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = signals.term.cancelled() => return Ok(0),
            _ = signals.int.cancelled() => return Ok(0),
            _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
        }
    }
}

/// `berth agent wait --fetch`: asks the control plane for the claim until it comes, or exits 0
/// on SIGTERM or SIGINT. Each ask is a long poll: the server holds it up to [`WAIT_SECS`] and
/// answers as soon as the claim is made (a 401 at the end of the wait: the token is nobody's
/// yet). Asks start at least [`FETCH_INTERVAL`] apart, so a server that answers at once (one
/// that predates the long poll, or one that is failing) is not asked in a busy loop.
async fn fetch_claim(warm: &std::path::Path, spec_out: &std::path::Path) -> Result<i32> {
    use std::time::{Duration, Instant};
    const WAIT_SECS: u64 = 20;
    const FETCH_INTERVAL: Duration = Duration::from_millis(100);
    let signals = signals();
    let warm = berth_agent::wait::read_warm(warm)?;
    let client =
        berth_api::Client::new(&warm.server, warm.token.clone())?.with_timeout(Duration::from_secs(WAIT_SECS + 10));
    // A control plane away for a while is said once every 10 s, not at every ask.
    let mut failed: u64 = 0;
    loop {
        let asked = Instant::now();
        let answer = tokio::select! {
            _ = signals.term.cancelled() => return Ok(0),
            _ = signals.int.cancelled() => return Ok(0),
            answer = berth_agent::wait::fetch_claim(&client, WAIT_SECS) => answer,
        };
        match answer {
            Ok(Some(fetched)) => {
                let claim = berth_agent::wait::write_fetched(&fetched, &warm.token, spec_out)?;
                tracing::info!(event = "claimed", spec = %claim.spec.display());
                return Err(berth_agent::wait::exec_run(&claim).into());
            }
            Ok(None) => failed = 0,
            Err(e) => {
                if failed % 100 == 0 {
                    tracing::warn!(event = "claim_fetch_failed", error = %e, failures = failed + 1, hint = "asking again");
                }
                failed += 1;
            }
        }
        tokio::select! {
            _ = signals.term.cancelled() => return Ok(0),
            _ = signals.int.cancelled() => return Ok(0),
            _ = tokio::time::sleep(FETCH_INTERVAL.saturating_sub(asked.elapsed())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_agent::git::GitRestore;
    use berth_agent::init::{GitReport, RepoReport};
    use berth_core::init::{RepoOutcome, RestoreOutcome};
    use berth_core::repo::FailureKind;

    use super::*;

    fn repo(path: &str, outcome: RepoOutcome, failure: Option<(FailureKind, &str)>) -> RepoReport {
        RepoReport {
            path: path.into(),
            url: format!("https://git.example.test/org/{path}.git"),
            outcome,
            failure: failure.map(|f| f.0),
            error: failure.map(|f| f.1.to_string()),
            attempts: 1,
            ms: 5,
        }
    }

    fn git(path: &str, head: &str, expected: &str, error: Option<&str>) -> GitReport {
        let restore = GitRestore {
            expected_head: Some(expected.into()),
            head: Some(head.into()),
            head_matches: head == expected,
            rebuilt_from_bundle: false,
            index_refreshed: 12,
        };
        GitReport { path: path.into(), restore: error.is_none().then_some(restore), error: error.map(Into::into) }
    }

    #[test]
    fn the_summary_says_each_repo_and_git_state_once() {
        let report = InitReport {
            ready: true,
            workspace: "agent:42".into(),
            generation: 3,
            phases: Vec::new(),
            repos: vec![
                repo("app", RepoOutcome::FromSnapshot, None),
                repo("libs/lib", RepoOutcome::Cloned, None),
                repo("private", RepoOutcome::Failed, Some((FailureKind::Auth, "authentication failed"))),
            ],
            restore: Some(RestoreOutcome::Restored),
            snapshot: Some(berth_core::id::SnapshotId::of(b"s")),
            git: vec![
                git("app", "c0ffee", "c0ffee", None),
                git("old", "c0ffee", "beef", None),
                git("broken", "", "", Some("git restore: state.json is unreadable")),
            ],
            sqlite: vec!["memory.db".into()],
            error: None,
            ms: 840,
        };
        insta::assert_snapshot!(summary(&report), @r#"
        workspace agent:42 (generation 3): ready, restored 3d1d92230feb6db469532f26d9e2d7ab2b9a7982924c2706ac5a89679756e6bf
          repo app                      from_snapshot  https://git.example.test/org/app.git
          repo libs/lib                 cloned         https://git.example.test/org/libs/lib.git
          repo private                  failed         https://git.example.test/org/private.git (auth: authentication failed)
          git  app                      restored (HEAD c0ffee, 12 index entries refreshed)
          git  old                      HEAD mismatch: expected beef, found c0ffee
          git  broken                   failed: git restore: state.json is unreadable
          took 840 ms
        "#);
        let failed =
            InitReport { ready: false, restore: None, snapshot: None, repos: Vec::new(), git: Vec::new(), ..report };
        insta::assert_snapshot!(summary(&failed), @r"
        workspace agent:42 (generation 3): NOT ready
          took 840 ms
        ");
    }
}
