//! The `berth` binary: parses the command line and hands each subcommand to its module.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error; `berth agent` ends with the agent's own
//! (`berth_agent::run::exit`: 3 fenced, 130 and 143 on a signal), and `berth sandbox stop` with
//! the stopped container's.

mod agent;
mod control;
mod progress_bar;
mod sandbox;
mod serve;
mod snapshot;
mod units;
mod upkeep;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Durable workspaces for AI agent sandboxes.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Take, list, restore, check and clean up workspace snapshots.
    #[command(subcommand)]
    Snapshot(snapshot::Command),
    /// Run the control plane: the HTTP API, deletion, volume GC and expiry reconcilers.
    Serve(Box<serve::Serve>),
    /// Apply the metadata store's schema migrations and exit.
    Migrate {
        #[command(flatten)]
        meta: serve::MetaArgs,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
    /// List, show, ensure, close and delete workspaces.
    #[command(subcommand)]
    Workspace(control::WorkspaceCmd),
    /// Start, inspect and acknowledge drains.
    #[command(subcommand)]
    Drain(control::DrainCmd),
    /// Start, stop, list and read sandboxes (docker and kubernetes substrates).
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCmd),
    /// Run volume garbage collection.
    #[command(subcommand)]
    Gc(control::GcCmd),
    /// Read the control plane's audit log.
    Events(control::EventsCmd),
    /// Run inside (or beside) a sandbox: initialise, persist and drain its workspace.
    #[command(subcommand)]
    Agent(Box<agent::Command>),
}

/// An exit code chosen by a subcommand that already reported why.
#[derive(Debug)]
struct Exit(i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if std::env::var("BERTH_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server says what it does; a command-line tool speaks only when something is wrong.
    init_logging(match &cli.command {
        Command::Serve(_) => "info,sqlx=warn",
        Command::Agent(a) => agent::log_filter(a),
        _ => "warn",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Snapshot(cmd) => snapshot::run(cmd).await,
            Command::Serve(args) => serve::serve(*args).await,
            Command::Migrate { meta, json } => serve::migrate(meta, json).await,
            Command::Workspace(cmd) => control::workspace(cmd).await,
            Command::Drain(cmd) => control::drain(cmd).await,
            Command::Gc(cmd) => control::gc(cmd).await,
            Command::Sandbox(cmd) => match sandbox::run(cmd).await {
                Ok(0) => Ok(()),
                Ok(code) => Err(Exit(code).into()),
                Err(e) => Err(e),
            },
            Command::Events(cmd) => control::events(cmd).await,
            Command::Agent(cmd) => match agent::run(*cmd).await {
                Ok(0) => Ok(()),
                Ok(code) => Err(Exit(code).into()),
                Err(e) => Err(e),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Exit>().is_some() => {
            // The agent printed its own message; keep its exit code.
            ExitCode::from(e.downcast_ref::<Exit>().map_or(1, |x| x.0.clamp(1, 255) as u8))
        }
        Err(e) => {
            // Print the chain, skipping causes whose text the message already carries.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
