//! The test services `./dev test` starts (a PostgreSQL cluster and an S3 server): one way to get
//! a fresh database and a fresh bucket. A missing service fails the test with how to provide it.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A name no other test (in this process or another) uses: `prefix`, the pid, the time and a
/// counter, lowercase alphanumerics and `_`.
fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{:x}_{}", std::process::id(), nanos & 0xffff_ffff_ffff, N.fetch_add(1, Ordering::Relaxed))
}

/// Creates a fresh database in the PostgreSQL test cluster (`BERTH_TEST_PG_URL`) and returns
/// its URL.
pub async fn pg_database() -> String {
    let base = std::env::var("BERTH_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "BERTH_TEST_PG_URL is not set: this test needs the PostgreSQL test cluster. Run the suite with \
             `./dev test` (it starts one), or this test under `./dev services -- cargo nextest run ...`"
        )
    });
    let Some(slash) = base.rfind('/').filter(|i| *i > "postgres://".len()) else {
        panic!("BERTH_TEST_PG_URL has no database part: {base}")
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&base).await.expect("connect to the PostgreSQL test cluster");
    let name = unique("berth_test");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&pool).await.expect("create database");
    pool.close().await;
    format!("{}/{name}", &base[..slash])
}

/// [`pg_database`] for synchronous tests, on a throwaway runtime.
pub fn pg_database_blocking() -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(pg_database())
}

/// Returns the S3 test server's endpoint (`BERTH_TEST_S3_ENDPOINT`, `http://HOST:PORT`).
pub fn s3_endpoint() -> String {
    std::env::var("BERTH_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "BERTH_TEST_S3_ENDPOINT is not set: this test needs the S3 test server. Run the suite with \
             `./dev test`, or this test under `./dev s3 -- cargo nextest run ...`"
        )
    })
}

/// Creates a fresh bucket on the S3 test server and returns its name (`hint` goes into it).
/// The server accepts an unsigned `PUT /bucket`, so a raw HTTP/1.1 request is enough.
pub fn s3_bucket(hint: &str) -> String {
    let endpoint = s3_endpoint();
    let hint: String =
        hint.chars().take(16).map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    // At most 6 + 16 + 1 + 10 + 1 + 12 + 1 + 20 bytes: within S3's 63 for any realistic counter.
    let bucket = unique(&format!("berth-{hint}")).replace('_', "-");
    let authority = endpoint
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("BERTH_TEST_S3_ENDPOINT must be http://HOST:PORT, got {endpoint}"))
        .trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(authority)
        .unwrap_or_else(|e| panic!("connecting to the S3 test server at {endpoint}: {e} (is it running?)"));
    conn.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let request =
        format!("PUT /{bucket} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).expect("sending bucket creation");
    let mut response = Vec::new();
    conn.read_to_end(&mut response).expect("reading bucket creation answer");
    let status_line = response.split(|b| *b == b'\n').next().unwrap_or_default();
    let status = String::from_utf8_lossy(status_line);
    assert!(
        status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200"),
        "creating bucket {bucket} at {endpoint}: {}",
        String::from_utf8_lossy(&response)
    );
    bucket
}
