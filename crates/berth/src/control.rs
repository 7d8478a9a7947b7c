//! Operator commands over the control-plane API: `berth workspace`, `berth drain`, `berth gc`,
//! `berth events`. Readable tables by default, `--json` for scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_api::client::{EventQuery, WorkspaceQuery};
use berth_api::{Client, EnsureWorkspace, GcRun, Ready, RepoSpec, SetRetention, StartDrain, Workspace, WorkspaceState};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::units;

/// How to reach the control plane.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Control-plane URL.
    #[arg(long, env = "BERTH_SERVER", default_value = "http://127.0.0.1:7878", global = true)]
    server: String,
    /// API token [default: BERTH_TOKEN, else DATA_DIR/admin-token]. Prefer the environment:
    /// other users can read a process's arguments.
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Data dir of a local `berth serve`, for its admin token.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "./berth-data", global = true)]
    data_dir: PathBuf,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl ServerArgs {
    pub(crate) fn client(&self) -> Result<Client> {
        let token = match &self.token {
            Some(t) => t.clone(),
            None => {
                let path = self.data_dir.join("admin-token");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!("no token: set BERTH_TOKEN, pass --token, or point --data-dir at the server's data dir ({} is not readable)", path.display())
                    })?
                    .trim()
                    .to_string()
            }
        };
        Ok(Client::new(&self.server, token)?)
    }
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

fn parse_state(s: &str) -> Result<WorkspaceState, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("'{s}' is not one of active, closed, deleting, deleted"))
}

/// `berth workspace ...`
#[derive(Debug, Subcommand)]
pub enum WorkspaceCmd {
    /// List workspaces.
    Ls {
        /// Only this state: active, closed, deleting, deleted.
        #[arg(long, value_parser = parse_state)]
        state: Option<WorkspaceState>,
        /// Only workspaces with this label (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// At most this many [default: all].
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one workspace.
    Show {
        /// The owner key.
        owner: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Ensure a workspace exists (idempotent; reopens a closed one).
    Ensure {
        /// The owner key.
        owner: String,
        /// Volume size [default: the server's].
        #[arg(long, value_parser = units::parse_size)]
        size: Option<Option<u64>>,
        /// Storage class [default: the server's].
        #[arg(long)]
        storage_class: Option<String>,
        /// A label (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// A repository to clone on init (repeatable).
        #[arg(long = "repo", value_name = "URL")]
        repos: Vec<String>,
        /// The workspace's own retention policy (keep-last=N,hourly=N,daily=N,weekly=N[,monthly=N]),
        /// or `default` for the server's [default: unchanged; the server's for a new workspace].
        #[arg(long, value_name = "POLICY")]
        retention: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Set a workspace's own retention policy, applied by scheduled retention instead of the
    /// server's `--retention`.
    Retention {
        /// The owner key.
        owner: String,
        /// keep-last=N,hourly=N,daily=N,weekly=N[,monthly=N] (a kind left out keeps none; the
        /// latest snapshot is always kept), or `default` for the server's.
        policy: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Attach a sandbox (take the lease) and write the agent's spec file for it.
    Attach {
        /// The owner key.
        owner: String,
        /// The sandbox instance id (container, pod or VM).
        #[arg(long)]
        instance: String,
        /// The node it runs on.
        #[arg(long)]
        node: Option<String>,
        /// The pool it belongs to.
        #[arg(long)]
        pool: Option<String>,
        /// Write `{"session": ..., "server": ...}` here (mode 0600) for `berth agent --spec`;
        /// without it the attach response goes to stdout (it holds the sandbox token).
        #[arg(long, value_name = "FILE")]
        spec_out: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Close a workspace: no more attaches; its volume is collected after the cooldown.
    Close {
        /// The owner key.
        owner: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a workspace: end its sessions, delete its volume, retire its snapshots.
    #[command(visible_alias = "delete")]
    Rm {
        /// The owner key.
        owner: String,
        /// Delete an at-risk workspace too (its last session ended without a final snapshot),
        /// discarding the work its volume holds that no snapshot has.
        #[arg(long)]
        force: bool,
        /// Wait until the deletion completes.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "5m", value_parser = units::parse_duration)]
        timeout: i64,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `berth drain ...`
#[derive(Debug, Subcommand)]
pub enum DrainCmd {
    /// Start draining a scope: node:NAME, pool:NAME or workspace:OWNER.
    Start {
        /// The scope.
        scope: String,
        /// The instance being drained.
        #[arg(long)]
        instance: Option<String>,
        /// Why, for the audit log.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show the drain state of a scope, or of every scope.
    Status {
        /// The scope [default: all].
        scope: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Acknowledge a drain handover with its nonce (clears the drain).
    Ack {
        /// The scope.
        scope: String,
        /// The nonce the drain handed out.
        #[arg(long)]
        nonce: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `berth gc ...`
#[derive(Debug, Subcommand)]
pub enum GcCmd {
    /// Run a volume GC sweep now.
    Run {
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also sweep orphans (volumes labelled as berth's with no live record).
        #[arg(long)]
        orphans: bool,
        /// Remove at-risk volumes without rescuing them (their unsaved work is lost).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `berth events` flags.
#[derive(Debug, Args)]
pub struct EventsCmd {
    /// Only this owner.
    #[arg(long)]
    owner: Option<String>,
    /// Only this kind (workspace_ensured, session_attached, lease_taken_over, drain_cleared, volume_removed, ...).
    #[arg(long)]
    kind: Option<String>,
    /// Only events after this id.
    #[arg(long, default_value_t = 0)]
    after: i64,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Keep printing new events as they come.
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    server: ServerArgs,
}

fn workspace_row(w: &Workspace) -> String {
    let state = serde_json::to_value(w.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let lease =
        w.lease.as_ref().map(|l| format!("{} (epoch {})", l.instance_id, l.epoch)).unwrap_or_else(|| "-".into());
    let snap = w.latest_snapshot.as_deref().map(|s| &s[..s.len().min(12)]).unwrap_or("-");
    let state = if w.draining { format!("{state},draining") } else { state };
    let state = if w.at_risk { format!("{state},at_risk") } else { state };
    format!("{:<32} {:>4} {:<16} {:<28} {:<28} {}", w.owner, w.generation, state, w.volume.name, lease, snap)
}

/// A workspace's retention as `show` prints it.
fn retention_shown(w: &Workspace) -> String {
    match &w.retention {
        Some(p) => format!("{p} (its own)"),
        None => "the server's".to_string(),
    }
}

fn show_workspace(w: &Workspace) {
    let state = serde_json::to_value(w.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let vstate =
        serde_json::to_value(w.volume.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    println!("owner:       {}", w.owner);
    println!("id:          {}", w.id);
    println!("generation:  {}", w.generation);
    println!("state:       {state}{}", if w.draining { " (draining)" } else { "" });
    println!(
        "volume:      {} ({vstate}{})",
        w.volume.name,
        w.volume.last_outcome.as_deref().map(|o| format!(", last: {o}")).unwrap_or_default()
    );
    println!("size:        {}", units::bytes(w.size_bytes));
    println!("epoch:       {}", w.epoch);
    match &w.lease {
        Some(l) => println!("lease:       session {} instance {} until {}", l.session_id, l.instance_id, l.expires_at),
        None => println!("lease:       free"),
    }
    println!("snapshot:    {}", w.latest_snapshot.as_deref().unwrap_or("none"));
    println!("retention:   {}", retention_shown(w));
    if w.at_risk {
        println!(
            "at risk:     since {}: {}",
            w.at_risk_since.as_deref().unwrap_or("?"),
            w.at_risk_reason.as_deref().unwrap_or("its last session did not end clean")
        );
    }
    for (k, v) in &w.labels {
        println!("label:       {k}={v}");
    }
    for r in &w.repos {
        println!("repo:        {}", r.url);
    }
    if let Some(d) = &w.deletion {
        println!(
            "deletion:    next step {}, {} failed attempt(s){}",
            d.step,
            d.attempts,
            d.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    println!("created:     {}", w.created_at);
    println!("updated:     {}", w.updated_at);
    if let Some(c) = &w.closed_at {
        println!("closed:      {c}");
    }
}

/// Runs `berth workspace ...`.
pub async fn workspace(cmd: WorkspaceCmd) -> Result<()> {
    match cmd {
        WorkspaceCmd::Ls { state, labels, limit, server } => ls(state, labels, limit, &server).await,
        WorkspaceCmd::Show { owner, server } => show(&owner, &server).await,
        WorkspaceCmd::Ensure { owner, size, storage_class, labels, repos, retention, server } => {
            let body = EnsureWorkspace {
                size_bytes: size.flatten(),
                storage_class,
                access_mode: None,
                labels: labels.into_iter().collect(),
                repos: repos.into_iter().map(|url| RepoSpec { url, branch: None, depth: None, path: None }).collect(),
                retention,
            };
            ensure(&owner, &body, &server).await
        }
        WorkspaceCmd::Attach { owner, instance, node, pool, spec_out, server } => {
            attach(&owner, berth_api::Attach { instance_id: instance, node, pool }, spec_out, &server).await
        }
        WorkspaceCmd::Retention { owner, policy, server } => {
            let w = server.client()?.set_retention(&owner, &SetRetention { policy: Some(policy) }).await?;
            if server.json {
                return print_json(&w);
            }
            println!("workspace {}: retention {}", w.owner, retention_shown(&w));
            Ok(())
        }
        WorkspaceCmd::Close { owner, server } => close(&owner, &server).await,
        WorkspaceCmd::Rm { owner, force, wait, timeout, server } => rm(&owner, force, wait, timeout, &server).await,
    }
}

/// `berth workspace ls`: every page, up to `limit`.
async fn ls(
    state: Option<WorkspaceState>,
    labels: Vec<(String, String)>,
    limit: Option<usize>,
    server: &ServerArgs,
) -> Result<()> {
    let client = server.client()?;
    let mut items = Vec::new();
    let mut after = None;
    loop {
        let page_limit = limit.map(|l| (l - items.len()).min(1000)).unwrap_or(1000) as u32;
        let q = WorkspaceQuery { state, labels: labels.clone(), after: after.clone(), limit: Some(page_limit.max(1)) };
        let page = client.workspaces(&q).await?;
        items.extend(page.items);
        match page.next {
            Some(n) if limit.is_none_or(|l| items.len() < l) => after = Some(n),
            _ => break,
        }
    }
    if server.json {
        return print_json(&items);
    }
    println!("{:<32} {:>4} {:<16} {:<28} {:<28} SNAPSHOT", "OWNER", "GEN", "STATE", "VOLUME", "LEASE");
    for w in &items {
        println!("{}", workspace_row(w));
    }
    Ok(())
}

/// `berth workspace show`.
async fn show(owner: &str, server: &ServerArgs) -> Result<()> {
    let w = server.client()?.workspace(owner).await?;
    if server.json {
        return print_json(&w);
    }
    show_workspace(&w);
    Ok(())
}

/// `berth workspace ensure`.
async fn ensure(owner: &str, body: &EnsureWorkspace, server: &ServerArgs) -> Result<()> {
    let (w, created) = server.client()?.ensure(owner, body).await?;
    if server.json {
        return print_json(&w);
    }
    let verb = if created { "created" } else { "ensured" };
    println!("{verb} workspace {} (generation {}, volume {})", w.owner, w.generation, w.volume.name);
    Ok(())
}

/// `berth workspace attach`: the session goes to the spec file (0600), or to stdout.
async fn attach(owner: &str, body: berth_api::Attach, spec_out: Option<PathBuf>, server: &ServerArgs) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let session = server.client()?.attach(owner, &body).await?;
    let Some(path) = spec_out else { return print_json(&session) };
    let spec = serde_json::json!({"session": session, "server": server.server});
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write the spec file {}", path.display()))?;
    f.write_all(serde_json::to_string_pretty(&spec)?.as_bytes())?;
    if server.json {
        println!("{}", serde_json::json!({"session_id": session.session_id, "epoch": session.epoch, "spec": path}));
    } else {
        println!(
            "attached session {} (epoch {}) to {owner}; run: berth agent run --spec {} -- AGENT COMMAND",
            session.session_id,
            session.epoch,
            path.display()
        );
    }
    Ok(())
}

/// `berth workspace close`.
async fn close(owner: &str, server: &ServerArgs) -> Result<()> {
    let w = server.client()?.close(owner).await?;
    if server.json {
        return print_json(&w);
    }
    println!("closed workspace {}", w.owner);
    Ok(())
}

/// `berth workspace rm`: asks for the deletion; with `wait`, polls until it completes.
async fn rm(owner: &str, force: bool, wait: bool, timeout: i64, server: &ServerArgs) -> Result<()> {
    let client = server.client()?;
    let mut w = if force { client.delete_forced(owner).await? } else { client.delete(owner).await? };
    if wait {
        let deadline = std::time::Instant::now() + Duration::from_secs(timeout.max(1) as u64);
        while w.state != WorkspaceState::Deleted {
            if std::time::Instant::now() > deadline {
                let why =
                    w.deletion.as_ref().and_then(|d| d.error.clone()).unwrap_or_else(|| "still in progress".into());
                bail!("deletion of {owner} did not complete within {timeout} s: {why}; it keeps retrying in the background");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            w = client.workspace(owner).await?;
        }
    }
    if server.json {
        return print_json(&w);
    }
    match w.state {
        WorkspaceState::Deleted => {
            println!("deleted workspace {owner}; the next ensure starts generation {}", w.generation)
        }
        _ => println!("deletion of {owner} requested; it completes in the background (berth workspace show {owner})"),
    }
    Ok(())
}

fn drain_line(d: &berth_api::DrainInfo) -> String {
    if d.draining {
        format!(
            "{:<40} draining since {} (clears by {}){}{}",
            d.scope,
            d.since.as_deref().unwrap_or("?"),
            d.expires_at.as_deref().unwrap_or("?"),
            d.instance_id.as_deref().map(|i| format!(" instance {i}")).unwrap_or_default(),
            d.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default(),
        )
    } else {
        format!(
            "{:<40} open{}",
            d.scope,
            d.cleared_by
                .as_deref()
                .map(|b| format!(" (last drain cleared by {b} at {})", d.cleared_at.as_deref().unwrap_or("?")))
                .unwrap_or_default()
        )
    }
}

/// Runs `berth drain ...`.
pub async fn drain(cmd: DrainCmd) -> Result<()> {
    match cmd {
        DrainCmd::Start { scope, instance, reason, server } => {
            drain_start(StartDrain { scope, instance_id: instance, reason }, &server).await
        }
        DrainCmd::Status { scope, server } => drain_status(scope.as_deref(), &server).await,
        DrainCmd::Ack { scope, nonce, server } => drain_ack(&scope, nonce, &server).await,
    }
}

/// `berth drain start`: prints the drain and its nonce.
async fn drain_start(body: StartDrain, server: &ServerArgs) -> Result<()> {
    let d = server.client()?.start_drain(&body).await?;
    if server.json {
        return print_json(&d);
    }
    println!("{}", drain_line(&d));
    if let Some(n) = &d.nonce {
        println!("nonce: {n}");
    }
    Ok(())
}

/// `berth drain status`: one scope, or every scope with a drain record.
async fn drain_status(scope: Option<&str>, server: &ServerArgs) -> Result<()> {
    let client = server.client()?;
    let items = match scope {
        Some(s) => vec![client.drain(s).await?],
        None => client.drains().await?.items,
    };
    if server.json {
        return print_json(&items);
    }
    for d in &items {
        println!("{}", drain_line(d));
    }
    Ok(())
}

/// `berth drain ack`.
async fn drain_ack(scope: &str, nonce: String, server: &ServerArgs) -> Result<()> {
    let r = server.client()?.ready(scope, &Ready { nonce, epoch: None }).await?;
    if server.json {
        return print_json(&r);
    }
    if r.cleared {
        println!("{scope}: drain cleared");
    } else {
        println!("{scope}: was not draining; nothing to do");
    }
    Ok(())
}

/// Runs `berth gc ...`.
pub async fn gc(cmd: GcCmd) -> Result<()> {
    let GcCmd::Run { dry_run, orphans, force, server } = cmd;
    let r = server.client()?.gc_run(&GcRun { dry_run, orphans, force }).await?;
    if server.json {
        return print_json(&r);
    }
    if let Some(why) = &r.skipped {
        println!("sweep skipped: {why}");
    }
    for v in &r.volumes {
        let verb = if dry_run && v.outcome == "remove" { "would remove" } else { v.outcome.as_str() };
        println!(
            "{:<14} {:<28} {}{}",
            verb,
            v.volume,
            v.owner,
            v.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    for o in r.orphans.iter().flatten() {
        println!(
            "orphan {:<8} {}{}",
            o.action,
            o.volume,
            o.until.as_deref().map(|u| format!(" (until {u})")).unwrap_or_default()
        );
    }
    let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("{}{} in {} ms", if dry_run { "dry run: " } else { "" }, counts.join(" "), r.duration_ms);
    Ok(())
}

/// Runs `berth events`.
pub async fn events(cmd: EventsCmd) -> Result<()> {
    let client = cmd.server.client()?;
    let mut after = cmd.after;
    loop {
        let q =
            EventQuery { after: Some(after), owner: cmd.owner.clone(), kind: cmd.kind.clone(), limit: Some(cmd.limit) };
        let page = client.events(&q).await?;
        for e in &page.items {
            if cmd.server.json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                let subject = e.owner.clone().or_else(|| e.scope.clone()).unwrap_or_default();
                let detail = if e.detail.as_object().is_some_and(|o| o.is_empty()) {
                    String::new()
                } else {
                    e.detail.to_string()
                };
                println!("{:>8} {} {:<26} {:<32} {detail}", e.id, e.at, e.kind, subject);
            }
            after = e.id;
        }
        if !cmd.follow {
            return Ok(());
        }
        if page.items.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
