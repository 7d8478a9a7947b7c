//! berth's snapshot engine: object stores, snapshot creation, restore, retention, prune,
//! verify and diff. I/O lives here; formats and decisions live in `berth_core`.

pub mod beneath;
pub mod cache;
pub mod create;
pub mod error;
pub mod maintain;
pub mod progress;
pub mod repo;
pub mod restore;
pub mod scan;
pub mod store;

pub use error::{EngineError, Result};
