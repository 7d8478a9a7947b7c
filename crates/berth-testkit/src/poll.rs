//! The one polling helper: wait for a condition with a deadline, failing the test with what was
//! awaited. Polling is for conditions a test cannot be told about (a file another process
//! writes, a server's state); the deadline is generous because it only bounds a failure.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often conditions are checked.
const EVERY: Duration = Duration::from_millis(25);

/// Calls `check` until it returns `Some`, for at most `secs` seconds; panics naming `what`
/// (and the last state `check` reported through `what`'s caller) when it never does.
#[track_caller]
pub fn eventually<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        std::thread::sleep(EVERY);
    }
}

/// [`eventually`] for async checks, sleeping on the runtime between them.
pub async fn eventually_async<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(EVERY).await;
    }
}
