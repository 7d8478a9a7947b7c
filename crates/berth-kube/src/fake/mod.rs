//! A fake Kubernetes API server for tests: axum in this process on 127.0.0.1, serving the core
//! (`/api/v1`) resources berth uses (persistentvolumeclaims, pods, secrets, nodes) from one
//! in-memory [`Store`].
//!
//! It answers the way the API reference describes (see [`store`] for the life-cycle rules and
//! [`select`] for selectors) and adds what a test needs:
//! - every call is classified as an RBAC (verb, resource); a call outside the allowed list
//!   (by default [`API_CALLS`](crate::API_CALLS)) is answered `403 Forbidden`, as a Role
//!   granting exactly that list would, and the [`FakeApi`] panics when dropped, failing the test;
//! - [`FakeApi::inject`] makes the next matching calls fail with a given status (429 with
//!   `retryAfterSeconds`, 500, 503, ...);
//! - the test moves pods through their phases and finishes terminating pods, since nothing runs
//!   containers here.
//!
//! What it does not prove: that a real API server, scheduler, kubelet and storage driver behave
//! as modelled here. It checks berth against the documented behaviour, not against a cluster.

pub mod harness;
mod http;
pub mod select;
pub mod store;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::client::{Kube, RetryPolicy};
use crate::names::{ApiCall, API_CALLS};
pub use store::{ApiError, Store, PVC_PROTECTION};

/// A failure the fake answers instead of serving a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The verb it applies to, or every verb.
    pub verb: Option<String>,
    /// The resource it applies to, or every resource.
    pub resource: Option<String>,
    /// The HTTP status (429, 500, 503, ...).
    pub code: u16,
    /// `details.retryAfterSeconds` (and the `Retry-After` header) of a 429.
    pub retry_after: Option<u32>,
    /// How many calls it fails.
    pub times: u32,
}

impl Fault {
    /// Fails the next `times` calls of `verb` on `resource` with `code`.
    pub fn new(verb: &str, resource: &str, code: u16, times: u32) -> Fault {
        Fault { verb: Some(verb.into()), resource: Some(resource.into()), code, retry_after: None, times }
    }
}

/// What the server shares between requests and the test.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    store: Mutex<Store>,
    allowed: Vec<ApiCall>,
    calls: Mutex<Vec<(String, String)>>,
    violations: Mutex<Vec<String>>,
    faults: Mutex<Vec<Fault>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data; the test that panicked fails anyway.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fake API server; stopped when dropped.
#[derive(Debug)]
pub struct FakeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl FakeApi {
    /// Starts a server allowing exactly [`API_CALLS`].
    pub async fn start() -> FakeApi {
        FakeApi::start_allowing(API_CALLS).await
    }

    /// Starts a server allowing exactly `allowed`.
    pub async fn start_allowing(allowed: &[ApiCall]) -> FakeApi {
        let shared = Arc::new(Shared { allowed: allowed.to_vec(), ..Default::default() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake API server");
        let addr = listener.local_addr().expect("the fake API server's address");
        let app = http::router(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(event = "fake_kube_stopped", error = %e);
            }
        });
        FakeApi { shared, addr, server }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of this server in `namespace`, retrying quickly.
    pub fn kube(&self, namespace: &str) -> Kube {
        self.kube_with(namespace, test_retry())
    }

    /// A client of this server in `namespace` with `retry`.
    pub fn kube_with(&self, namespace: &str, retry: RetryPolicy) -> Kube {
        let config = kube::Config::new(self.url().parse().expect("the fake's URL"));
        Kube::from_config(config, Some(namespace.to_string()), retry).expect("a client of the fake API server")
    }

    /// A client of a server that refuses connections.
    pub fn unreachable(namespace: &str) -> Kube {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("a URL"));
        Kube::from_config(config, Some(namespace.to_string()), test_retry()).expect("a client")
    }

    /// The objects, for the test to read or change behind the adapter's back.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.shared.store)
    }

    /// Fails the next matching calls with `fault`.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    /// Every call served or refused so far, as (verb, resource).
    pub fn calls(&self) -> Vec<(String, String)> {
        lock(&self.shared.calls).clone()
    }

    /// Calls outside the allowed list so far.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.shared.violations).clone()
    }

    /// Calls outside the allowed list so far, forgotten: a test that provokes one on purpose
    /// takes them, so dropping the fake does not fail it.
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.shared.violations))
    }
}

/// Quick retries for tests: 4 attempts, 20 ms doubling, at most 200 ms apart.
pub fn test_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        first_backoff: std::time::Duration::from_millis(20),
        max_backoff: std::time::Duration::from_millis(200),
        attempt_timeout: std::time::Duration::from_secs(10),
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
        let violations = self.violations();
        if !violations.is_empty() && !std::thread::panicking() {
            panic!("the adapter made calls outside API_CALLS (a Role granting API_CALLS would refuse them): {violations:?}");
        }
    }
}
