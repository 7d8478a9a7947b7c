//! Test support shared by every crate's integration tests (a dev-dependency only, never
//! published): one tree image and comparison, one seeded generator, one way to get a fresh
//! PostgreSQL database and S3 bucket, one polling helper, one `berth` command builder, and the
//! proptest settings that persist failing cases.

pub mod command;
pub mod poll;
pub mod prop;
pub mod rng;
pub mod services;
pub mod tree;

pub use command::berth_command;
pub use poll::{eventually, eventually_async};
pub use rng::Rng;
pub use tree::{assert_same, assert_same_dirs, differences, Kind, Node, TreeImage};
