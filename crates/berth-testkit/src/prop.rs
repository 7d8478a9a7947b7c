//! Proptest settings for integration tests. Proptest's default failure file is found next to a
//! crate's `lib.rs`, which integration tests do not have, so a failing case would not be saved;
//! here it goes to `tests/proptest-regressions/<file>.txt` of the crate, is checked in, and
//! replays before new cases.

use proptest::test_runner::{Config, FileFailurePersistence};

/// A config running `cases` cases that saves failures to `path` (absolute, built with
/// `concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proptest-regressions/NAME.txt")`).
pub fn persisted(cases: u32, path: &'static str) -> Config {
    Config {
        cases,
        max_shrink_iters: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(path))),
        ..Config::default()
    }
}
