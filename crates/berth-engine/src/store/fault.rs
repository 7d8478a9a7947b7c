//! `FaultyStore`: wraps a store and injects one of three faults at operation k, to test that a
//! failure at any point leaves the store consistent and is never mistaken for success.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Deleted, DynStore, ObjectInfo, Put, Store, StoreError};

/// Which operations fail, counting operations from 0 in the order they reach the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Operation k and every later one fail before reaching the store: a crash at k.
    From(u64),
    /// Only operation k fails, before reaching the store; the others go through: a lone
    /// transient error, which a caller must report, not swallow.
    Only(u64),
    /// Operation k reaches the store and takes effect, then reports failure; the others go
    /// through: a write that landed whose answer was lost.
    AppliedThenFailed(u64),
}

/// What happens to one operation.
enum Fate {
    Pass,
    Fail,
    ApplyThenFail,
}

/// A store that fails as its [`Fault`] says, and can keep a log of the operations it saw.
#[derive(Debug)]
pub struct FaultyStore {
    inner: DynStore,
    fault: Fault,
    ops: AtomicU64,
    log: Option<Mutex<Vec<(&'static str, String)>>>,
}

impl FaultyStore {
    /// Wraps `inner`; operations number `fail_from` and later (counting from 0) fail.
    pub fn new(inner: DynStore, fail_from: u64) -> Self {
        Self::with(inner, Fault::From(fail_from))
    }

    /// Wraps `inner`, injecting `fault`.
    pub fn with(inner: DynStore, fault: Fault) -> Self {
        Self { inner, fault, ops: AtomicU64::new(0), log: None }
    }

    /// Wraps `inner` with no fault, logging every operation (name and key) in order.
    pub fn recording(inner: DynStore) -> Self {
        Self { inner, fault: Fault::From(u64::MAX), ops: AtomicU64::new(0), log: Some(Mutex::new(Vec::new())) }
    }

    /// Returns how many operations were attempted.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// Returns the operations seen so far (name and key), when recording.
    pub fn log(&self) -> Vec<(&'static str, String)> {
        // A poisoned log means a test thread panicked while pushing; its entries are still valid.
        self.log.as_ref().map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()
    }

    fn fate(&self, op: &'static str, key: &str) -> (u64, Fate) {
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        if let Some(log) = &self.log {
            log.lock().unwrap_or_else(|p| p.into_inner()).push((op, key.to_string()));
        }
        let fate = match self.fault {
            Fault::From(k) if n >= k => Fate::Fail,
            Fault::Only(k) if n == k => Fate::Fail,
            Fault::AppliedThenFailed(k) if n == k => Fate::ApplyThenFail,
            _ => Fate::Pass,
        };
        (n, fate)
    }

    fn injected(&self, n: u64, op: &'static str, key: &str, applied: bool) -> StoreError {
        let what = if applied { "applied, then reported as failed" } else { "failed" };
        StoreError::Temporary {
            store: self.inner.url().to_string(),
            op,
            key: key.to_string(),
            message: format!("injected fault at operation {n} ({what})"),
        }
    }

    /// Runs `call` on the inner store unless the fault stops it first.
    async fn run<T, F>(&self, op: &'static str, key: &str, call: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        match self.fate(op, key) {
            (_, Fate::Pass) => call.await,
            (n, Fate::Fail) => Err(self.injected(n, op, key, false)),
            (n, Fate::ApplyThenFail) => {
                call.await?;
                Err(self.injected(n, op, key, true))
            }
        }
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn url(&self) -> &str {
        self.inner.url()
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<Put, StoreError> {
        self.run("put", key, self.inner.put_if_absent(key, data)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.run("get", key, self.inner.get(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.run("list", prefix, self.inner.list(prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<Deleted, StoreError> {
        self.run("delete", key, self.inner.delete(key)).await
    }
}
