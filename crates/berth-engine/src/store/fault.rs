//! `FaultyStore`: wraps a store and fails every operation from the k-th on, to test that a
//! crash at any point leaves the store consistent.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Deleted, DynStore, ObjectInfo, Put, Store, StoreError};

/// A store that starts failing after a number of operations.
#[derive(Debug)]
pub struct FaultyStore {
    inner: DynStore,
    fail_from: u64,
    ops: AtomicU64,
}

impl FaultyStore {
    /// Wraps `inner`; operations number `fail_from` and later (counting from 0) fail.
    pub fn new(inner: DynStore, fail_from: u64) -> Self {
        Self { inner, fail_from, ops: AtomicU64::new(0) }
    }

    /// Returns how many operations were attempted.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    fn check(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_from {
            return Err(StoreError::Temporary {
                store: self.inner.url().to_string(),
                op,
                key: key.to_string(),
                message: format!("injected fault at operation {n}"),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn url(&self) -> &str {
        self.inner.url()
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<Put, StoreError> {
        self.check("put", key)?;
        self.inner.put_if_absent(key, data).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.check("get", key)?;
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.check("list", prefix)?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<Deleted, StoreError> {
        self.check("delete", key)?;
        self.inner.delete(key).await
    }
}
