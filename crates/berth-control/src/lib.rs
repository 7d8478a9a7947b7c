//! berth's control plane (`berth serve`): workspaces, single-writer sessions, the drain
//! protocol, ordered deletion and durable volume GC, over SQLite or PostgreSQL.

pub mod error;
pub mod http;
pub mod meta;
pub mod reconcile;
pub mod server;
pub use berth_substrate as volumes;

pub use server::{run, serve, App, Config, GcConfig};
