//! `berth sandbox ...`: start, stop, list and read sandboxes through the control plane (the
//! docker and kubernetes substrates run them).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use berth_api::{Sandbox, StartSandbox};
use clap::Subcommand;

use crate::control::{print_json, ServerArgs};
use crate::units;

/// Time a stop may take beyond the sandbox's own stop timeout.
const STOP_SLACK: Duration = Duration::from_secs(60);

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

fn parse_memory(s: &str) -> Result<u64, String> {
    units::parse_size(s)?.ok_or_else(|| "a memory limit needs a size, e.g. 2GiB".to_string())
}

/// `berth sandbox ...` (in `ls`, a workspace sandbox that was a warm container is `workspace*`)
#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// Start a sandbox for a workspace: its volume at /workspace, the command under berth's
    /// supervisor (restore, snapshots, drain on stop).
    Start {
        /// The owner key.
        owner: String,
        /// The image (it needs a glibc as new as berth's, sh, and git for repos).
        #[arg(long)]
        image: String,
        /// Drain budget on stop [default: 30s].
        #[arg(long, value_parser = units::parse_duration)]
        grace: Option<i64>,
        /// Time between snapshots [default: the agent's, 60s].
        #[arg(long, value_parser = units::parse_duration)]
        interval: Option<i64>,
        /// Environment of the agent command (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Memory limit, e.g. 2GiB.
        #[arg(long, value_parser = parse_memory)]
        memory: Option<u64>,
        /// CPU limit, e.g. 1.5.
        #[arg(long)]
        cpus: Option<f64>,
        /// Repositories to clone: a JSON list of {url, branch?, depth?, path?}, one URL, or @FILE.
        #[arg(long)]
        repos: Option<String>,
        /// A label of the workspace (when this creates it) and the container (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_env)]
        labels: Vec<(String, String)>,
        /// The agent command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop a workspace's sandbox: it drains (work in progress pushed, final snapshot), then
    /// is removed. Exits with the sandbox's exit code.
    Stop {
        /// The owner key.
        owner: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print the last lines of a workspace's sandbox's output.
    Logs {
        /// The owner key.
        owner: String,
        /// How many lines.
        #[arg(long, default_value_t = 200)]
        tail: usize,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List sandboxes (workspace and warm).
    Ls {
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Runs `berth sandbox ...`; returns the exit code to end with.
pub async fn run(cmd: SandboxCmd) -> Result<i32> {
    match cmd {
        SandboxCmd::Start { owner, image, grace, interval, env, memory, cpus, repos, labels, command, server } => {
            let repos = repos.map(|r| berth_agent::config::parse_repos(&r)).transpose()?;
            let body = StartSandbox {
                image,
                command,
                env: env.into_iter().collect(),
                grace_secs: grace.map(|g| g.max(0) as u64),
                interval_secs: interval.map(|i| i.max(0) as u64),
                memory_bytes: memory,
                cpus,
                repos,
                labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
            };
            // A start can wait for the engine to create the volume and the container.
            let client = server.client()?.with_timeout(Duration::from_secs(120));
            let s = client.start_sandbox(&owner, &body).await?;
            if server.json {
                print_json(&s)?;
            } else {
                println!(
                    "started {} for {owner} (container {}, session {})",
                    s.name,
                    short(&s.id),
                    s.session_id.as_deref().unwrap_or("-")
                );
            }
            Ok(0)
        }
        SandboxCmd::Stop { owner, server } => {
            let client = server.client()?.with_timeout(Duration::from_secs(3600) + STOP_SLACK);
            let reply = client.stop_sandbox(&owner).await?;
            if server.json {
                print_json(&reply)?;
            }
            let mut code = 0;
            for s in &reply.stopped {
                let exit = s.exit_code.unwrap_or(-1);
                if !server.json {
                    let oom = if s.oom_killed { " (OOM-killed)" } else { "" };
                    println!("stopped container {} of {owner}: exit {exit}{oom}", short(&s.id));
                }
                if code == 0 {
                    code = exit.clamp(0, 255) as i32;
                }
            }
            Ok(code)
        }
        SandboxCmd::Logs { owner, tail, server } => {
            print!("{}", server.client()?.sandbox_logs(&owner, tail).await?);
            Ok(0)
        }
        SandboxCmd::Ls { server } => {
            let list = server.client()?.sandboxes().await?;
            if server.json {
                print_json(&list)?;
            } else {
                print_table(&list.items);
            }
            Ok(0)
        }
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn print_table(items: &[Sandbox]) {
    println!("{:<14} {:<10} {:<24} {:<30} {:<10} STATUS", "CONTAINER", "KIND", "OWNER", "NAME", "STATE");
    for s in items {
        println!(
            "{:<14} {:<10} {:<24} {:<30} {:<10} {}",
            short(&s.id),
            if s.warm && s.kind == "workspace" { "workspace*" } else { s.kind.as_str() },
            s.owner.as_deref().unwrap_or("-"),
            s.name,
            s.state,
            s.status
        );
    }
}
