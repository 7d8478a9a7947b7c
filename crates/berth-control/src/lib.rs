//! berth's control plane (`berth serve`): workspaces, single-writer sessions, the drain
//! protocol, ordered deletion and durable volume GC, over SQLite or PostgreSQL.
//!
//! Modules depend downwards only: `server` wires `http`, `ui` (the console, over `http`'s
//! extractors and wire types) and `reconcile`, all of which use
//! `app` (configuration, shared state, the clock), which uses `auth` and `meta`.

pub mod app;
pub mod auth;
pub mod container_rescue;
pub mod error;
pub mod http;
pub mod meta;
pub mod modes;
pub mod nodes;
pub mod reconcile;
pub mod rescue;
pub mod retention;
pub mod sandboxes;
pub mod server;
pub mod ui;
pub mod volumes;

pub use app::{App, Config, GcConfig, HttpLimits, RetentionConfig};
pub use server::{run, serve};
