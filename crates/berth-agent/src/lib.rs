//! berth's sandbox agent (`berth agent init | run | sweep`): initialises a workspace in a sandbox,
//! keeps it persisted while the agent works, drains it gracefully on SIGTERM, and sweeps up what
//! crashed jobs left behind.

pub mod config;
pub mod control;
pub mod creds;
pub mod drain;
pub mod error;
pub mod git;
pub mod init;
pub mod job;
pub mod layout;
pub mod persist;
pub mod run;
pub mod sqlite;
pub mod supervise;
pub mod sweep;
pub mod upkeep;
pub mod wait;
pub mod watch;

pub use config::{AgentConfig, Flags, Nudge, Spec};
pub use error::AgentError;
