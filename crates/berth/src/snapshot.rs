//! `berth snapshot ...`: one function per subcommand, which builds the engine's options from
//! the arguments, calls the engine and prints the outcome (for people, or `--json`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use berth_core::diff::ChangeKind;
use berth_core::excludes::Excludes;
use berth_core::lease::Epoch;
use berth_core::retention::Policy;
use berth_core::workspace::{Generation, WorkspaceId};
use berth_engine::create::{self, CreateOptions};
use berth_engine::progress::Progress;
use berth_engine::restore::{self, RestoreOptions};
use berth_engine::snapshot_store::{self, SnapshotStore};
use berth_engine::{cache, maintain, store};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::progress_bar::Bar;
use crate::units;

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Object store URL: file:///abs/path, s3://bucket/prefix (AWS_* settings), or memory://.
    #[arg(long, env = "BERTH_STORE", value_name = "URL")]
    store: String,
}

#[derive(Debug, Args)]
pub struct WorkspaceArgs {
    /// Workspace id (the owner key, e.g. agent:42).
    #[arg(long, env = "BERTH_WORKSPACE", value_name = "ID")]
    workspace: String,
    /// Workspace generation; a reused owner name gets a new one.
    #[arg(long, env = "BERTH_GENERATION", default_value_t = 1)]
    generation: u64,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Local cache directory (outside the workspace) [default: $XDG_CACHE_HOME/berth or ~/.cache/berth].
    #[arg(long, env = "BERTH_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Use no local cache: read every file.
    #[arg(long)]
    no_cache: bool,
}

#[derive(Debug, Args)]
pub struct ExcludeArgs {
    /// Leave out paths matching this .gitignore-style pattern (repeatable).
    #[arg(long = "exclude", value_name = "PATTERN")]
    excludes: Vec<String>,
    /// Do not apply the default excludes (node_modules/, .venv/, __pycache__/, .cache/, target/, dist/, build/).
    #[arg(long)]
    no_default_excludes: bool,
}

#[derive(Debug, Args)]
pub struct Output {
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

/// Snapshot subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Snapshot a directory and publish it as the workspace's latest.
    Create(CreateArgs),
    /// Restore a snapshot into a directory (created if missing; entries not in the snapshot are removed).
    Restore(RestoreArgs),
    /// List snapshots.
    Ls(LsArgs),
    /// Forget snapshots by a retention policy (the latest is always kept); data goes with `prune`.
    Forget(ForgetArgs),
    /// Delete data no snapshot references, in two phases: mark now, delete on a later run after the grace period.
    Prune(PruneArgs),
    /// Show added, removed and modified paths between two snapshots.
    Diff(DiffArgs),
    /// Check that snapshots are complete; with --read-data, that every chunk decodes to its hash.
    Verify(VerifyArgs),
}

/// Arguments of `berth snapshot create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    ws: WorkspaceArgs,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    exclude: ExcludeArgs,
    /// Size budget per snapshot; the largest files beyond it are left out and listed.
    #[arg(long, default_value = "1GiB", value_name = "SIZE|unlimited", value_parser = units::parse_budget)]
    budget: units::Budget,
    /// Worker threads [default: the number of cores].
    #[arg(long)]
    threads: Option<usize>,
    /// The writer's lease epoch: the run is refused (exit 1, nothing written) when the
    /// workspace's latest snapshot was published under a higher one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    epoch: u64,
    #[command(flatten)]
    out: Output,
    /// The directory to snapshot.
    dir: PathBuf,
}

/// Arguments of `berth snapshot restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    ws: WorkspaceArgs,
    /// `latest` or a snapshot id prefix.
    #[arg(long, default_value = "latest")]
    snapshot: String,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    exclude: ExcludeArgs,
    /// Worker threads [default: the number of cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Make a non-empty directory that berth did not restore into match the snapshot, removing
    /// what the snapshot lacks (without it such a directory is refused).
    #[arg(long)]
    delete: bool,
    #[command(flatten)]
    out: Output,
    /// The target directory.
    dir: PathBuf,
}

/// Arguments of `berth snapshot ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only this workspace.
    #[arg(long, value_name = "ID")]
    workspace: Option<String>,
    /// Only this generation (with --workspace).
    #[arg(long)]
    generation: Option<u64>,
    /// Only the latest snapshot of each workspace generation.
    #[arg(long)]
    latest: bool,
    #[command(flatten)]
    out: Output,
}

/// Arguments of `berth snapshot forget`.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only this workspace.
    #[arg(long, value_name = "ID")]
    workspace: Option<String>,
    /// Keep the newest N.
    #[arg(long, default_value_t = Policy::default().last)]
    keep_last: u32,
    /// Keep the newest of each of the last N hours.
    #[arg(long, default_value_t = Policy::default().hourly)]
    keep_hourly: u32,
    /// Keep the newest of each of the last N days.
    #[arg(long, default_value_t = Policy::default().daily)]
    keep_daily: u32,
    /// Keep the newest of each of the last N weeks.
    #[arg(long, default_value_t = Policy::default().weekly)]
    keep_weekly: u32,
    /// Keep the newest of each of the last N months.
    #[arg(long, default_value_t = Policy::default().monthly)]
    keep_monthly: u32,
    /// Print the plan; delete nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    out: Output,
}

/// Arguments of `berth snapshot prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// How long marked data waits before deletion; must exceed the longest snapshot run.
    #[arg(long, default_value = "24h", value_name = "DURATION", value_parser = units::parse_duration)]
    grace: i64,
    /// How often the prune refreshes the store's prune lock while it runs; a lock not
    /// refreshed for 6 of its holder's periods is taken over by the next prune.
    #[arg(long, default_value = "20s", value_name = "DURATION", value_parser = units::parse_duration)]
    lock_heartbeat: i64,
    /// Print the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    out: Output,
}

/// Arguments of `berth snapshot diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    ws: WorkspaceArgs,
    /// The older snapshot (`latest` or an id prefix).
    a: String,
    /// The newer snapshot (`latest` or an id prefix).
    b: String,
    #[command(flatten)]
    out: Output,
}

/// Arguments of `berth snapshot verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    ws: WorkspaceArgs,
    /// Only this snapshot (`latest` or an id prefix) [default: all of the workspace].
    #[arg(long)]
    snapshot: Option<String>,
    /// Download and check every chunk, not only that objects exist.
    #[arg(long)]
    read_data: bool,
    #[command(flatten)]
    out: Output,
}

impl WorkspaceArgs {
    fn parse(&self) -> Result<(WorkspaceId, Generation)> {
        Ok((WorkspaceId::new(self.workspace.clone())?, Generation(self.generation)))
    }
}

impl CacheArgs {
    fn resolve(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir.clone().or_else(cache::default_dir)
    }
}

impl ExcludeArgs {
    fn build(&self) -> Result<Excludes> {
        Ok(Excludes::new(&self.excludes, !self.no_default_excludes)?)
    }
}

async fn open(store: &StoreArgs) -> Result<SnapshotStore> {
    Ok(SnapshotStore::open(store::open(&store.store)?).await?)
}

fn threads(t: Option<usize>) -> usize {
    t.unwrap_or_else(berth_engine::default_threads).max(1)
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs a snapshot subcommand.
pub async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Create(args) => create(args).await,
        Command::Restore(args) => restore(args).await,
        Command::Ls(args) => ls(args).await,
        Command::Forget(args) => forget(args).await,
        Command::Prune(args) => prune(args).await,
        Command::Diff(args) => diff(args).await,
        Command::Verify(args) => verify(args).await,
    }
}

async fn create(args: CreateArgs) -> Result<()> {
    let CreateArgs { store, ws, cache, exclude, budget, threads: t, epoch, out, dir } = args;
    let (workspace, generation) = ws.parse()?;
    // Check the directory before a new store is initialised for nothing.
    if !dir.is_dir() {
        bail!("{} is not a directory: give the workspace directory to snapshot", dir.display());
    }
    let snapshots = SnapshotStore::open_or_init(store::open(&store.store)?).await?;
    let opts = CreateOptions {
        workspace,
        generation,
        dir,
        excludes: exclude.build()?,
        budget: budget.0,
        cache_dir: cache.resolve(),
        host: berth_engine::host_name(),
        threads: threads(t),
        epoch: Epoch(epoch),
    };
    let progress = Arc::new(Progress::default());
    let bar = Bar::start(&progress, out.json);
    let s = create::create(&snapshots, &opts, &progress).await?;
    drop(bar);
    if !s.skipped_for_budget.is_empty() {
        eprintln!(
            "warning: {} file(s) left out by the size budget ({}); raise --budget to include them: {}",
            s.skipped_for_budget.len(),
            budget.0.map(units::bytes).unwrap_or_default(),
            s.skipped_for_budget.join(", ")
        );
    }
    for p in &s.skipped_unreadable {
        eprintln!("warning: skipped {p}");
    }
    if out.json {
        return print_json(&s);
    }
    if s.unchanged {
        println!("unchanged since snapshot {} (seq {}): nothing published", s.snapshot.short(), s.seq);
    } else {
        println!("snapshot {} (seq {}) of {} published", s.snapshot.short(), s.seq, opts.workspace);
    }
    println!(
        "  {} files, {} dirs, {}; read {} files ({}); {} new chunks ({}); uploaded {} in {:.2}s",
        s.files_scanned,
        s.dirs,
        units::bytes(s.bytes_scanned),
        s.files_read,
        units::bytes(s.bytes_read),
        s.chunks_new,
        units::bytes(s.bytes_new),
        units::bytes(s.bytes_uploaded),
        s.duration_secs
    );
    Ok(())
}

async fn restore(args: RestoreArgs) -> Result<()> {
    let RestoreArgs { store, ws, snapshot, cache, exclude, threads: t, delete, out, dir } = args;
    let (workspace, generation) = ws.parse()?;
    let snapshots = open(&store).await?;
    let opts = RestoreOptions {
        workspace,
        generation,
        snapshot,
        dir,
        excludes: exclude.build()?,
        cache_dir: cache.resolve(),
        threads: threads(t),
        delete,
    };
    let progress = Arc::new(Progress::default());
    let bar = Bar::start(&progress, out.json);
    let s = restore::restore(&snapshots, &opts, &progress).await?;
    drop(bar);
    if out.json {
        return print_json(&s);
    }
    println!(
        "restored snapshot {} (seq {}) into {}: {} files, {} dirs, {} symlinks, {}; removed {} entries; in {:.2}s",
        s.snapshot.short(),
        s.seq,
        opts.dir.display(),
        s.files,
        s.dirs,
        s.symlinks,
        units::bytes(s.bytes),
        s.removed,
        s.duration_secs
    );
    Ok(())
}

async fn ls(args: LsArgs) -> Result<()> {
    let LsArgs { store, workspace, generation, latest, out } = args;
    let snapshots = open(&store).await?;
    let ws = workspace.map(WorkspaceId::new).transpose()?;
    if generation.is_some() && ws.is_none() {
        bail!("--generation needs --workspace");
    }
    let mut listed = snapshots.list(ws.as_ref(), generation.map(Generation)).await?;
    if latest {
        listed = snapshot_store::latest_of_each(listed);
    }
    if out.json {
        let rows: Vec<_> =
            listed.iter().map(|s| serde_json::json!({ "id": s.id, "key": s.key, "record": s.record })).collect();
        return print_json(&rows);
    }
    println!(
        "{:<14} {:<24} {:>4} {:>5} {:>6}  {:<20}  {:>8}  {:>10}",
        "ID", "WORKSPACE", "GEN", "EPOCH", "SEQ", "TIME", "FILES", "SIZE"
    );
    for s in &listed {
        let r = &s.record;
        println!(
            "{:<14} {:<24} {:>4} {:>5} {:>6}  {:<20}  {:>8}  {:>10}",
            s.id.short(),
            r.workspace.as_str(),
            r.generation.0,
            r.epoch.0,
            r.seq,
            r.time.to_string(),
            r.totals.files,
            units::bytes(r.totals.bytes)
        );
    }
    Ok(())
}

async fn forget(args: ForgetArgs) -> Result<()> {
    let ForgetArgs { store, workspace, keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, dry_run, out } =
        args;
    let policy =
        Policy { last: keep_last, hourly: keep_hourly, daily: keep_daily, weekly: keep_weekly, monthly: keep_monthly };
    let snapshots = open(&store).await?;
    let ws = workspace.map(WorkspaceId::new).transpose()?;
    let listed = snapshots.list(ws.as_ref(), None).await?;
    let plan = maintain::forget_plan(&listed, &policy);
    let forgotten = if dry_run { 0 } else { maintain::forget_apply(&snapshots, &plan).await? };
    if out.json {
        return print_json(&serde_json::json!({ "dry_run": dry_run, "forgotten": forgotten, "plan": plan }));
    }
    for g in &plan {
        println!("{} (generation {}):", g.workspace, g.generation);
        for d in &g.decisions {
            let what = if d.keep { format!("keep   ({})", d.reasons.join(", ")) } else { "forget".to_string() };
            println!("  {}  seq {:>6}  {}  {what}", d.id.short(), d.seq, d.time);
        }
    }
    let n: usize = plan.iter().map(|g| g.decisions.iter().filter(|d| !d.keep).count()).sum();
    if dry_run {
        println!("dry run: would forget {n} snapshot(s)");
    } else {
        println!("forgot {forgotten} snapshot(s); run `berth snapshot prune` to delete their data");
    }
    Ok(())
}

async fn prune(args: PruneArgs) -> Result<()> {
    let PruneArgs { store, grace, lock_heartbeat, dry_run, out } = args;
    let snapshots = open(&store).await?;
    let heartbeat = std::time::Duration::from_secs(lock_heartbeat.max(1) as u64);
    let (prune, outcome) = maintain::prune(&snapshots, grace, &berth_engine::host_name(), heartbeat, dry_run).await?;
    if out.json {
        return print_json(&serde_json::json!({ "dry_run": dry_run, "plan": prune.plan, "outcome": outcome }));
    }
    let p = &prune.plan;
    let marked = p.new_mark.as_ref().map_or(0, |m| m.packs.len() + m.manifests.len());
    println!(
        "{}: {} packs; delete {} packs ({}) and {} manifests; mark {} objects; {} marked objects wait for the grace period; \
         {} partly used packs hold {} unreferenced",
        if dry_run { "plan" } else { "pruned" },
        p.packs_total,
        p.delete_packs.len(),
        units::bytes(p.delete_pack_bytes),
        p.delete_manifests.len(),
        marked,
        p.waiting,
        p.packs_partly_used,
        units::bytes(p.partly_used_waste_bytes)
    );
    if let Some(o) = outcome.filter(|o| o.index_objects_compacted > 0) {
        println!("replaced {} index objects with one", o.index_objects_compacted);
    }
    Ok(())
}

async fn diff(args: DiffArgs) -> Result<()> {
    let DiffArgs { store, ws, a, b, out } = args;
    let (workspace, generation) = ws.parse()?;
    let snapshots = open(&store).await?;
    let old = snapshots.resolve(&workspace, generation, &a).await?;
    let new = snapshots.resolve(&workspace, generation, &b).await?;
    let changes = maintain::diff(&snapshots, &old, &new).await?;
    if out.json {
        return print_json(&changes);
    }
    for c in &changes {
        let sign = match c.kind {
            ChangeKind::Added => "+",
            ChangeKind::Removed => "-",
            ChangeKind::Modified => "M",
        };
        println!("{sign} {}  ({} -> {})", c.path, units::bytes(c.size_before), units::bytes(c.size_after));
    }
    println!("{} change(s) from {} to {}", changes.len(), old.id.short(), new.id.short());
    Ok(())
}

async fn verify(args: VerifyArgs) -> Result<()> {
    let VerifyArgs { store, ws, snapshot, read_data, out } = args;
    let (workspace, generation) = ws.parse()?;
    let snapshots = open(&store).await?;
    let selected = snapshots.select(&workspace, generation, snapshot.as_deref()).await?;
    let report = maintain::verify(&snapshots, &selected, read_data).await?;
    if out.json {
        print_json(&report)?;
    } else {
        println!(
            "checked {} snapshot(s): {} chunks in {} packs{}",
            report.snapshots,
            report.chunks,
            report.packs,
            if read_data { format!(", {} packs read and hashed", report.packs_read) } else { String::new() }
        );
        for e in &report.errors {
            println!("  error: {e}");
        }
    }
    if let Some(first) = report.errors.first() {
        bail!("{} problem(s) found, first: {first}; the affected snapshots may not restore", report.errors.len());
    }
    if !out.json {
        println!("ok");
    }
    Ok(())
}
