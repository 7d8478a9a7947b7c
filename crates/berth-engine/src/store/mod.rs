//! The object-store port, `Store`, and its adapters: `FsStore` (a local directory, the embedded
//! default), `ObjStore` (the `object_store` crate: S3 through `s3()`, memory through `memory()`)
//! and `FaultyStore` (fault injection for tests).
//!
//! **Invariant:** immutable data is written create-if-absent; no protocol here relies on
//! rename across keys or on ETag compare-and-swap.

mod fault;
mod fs;
mod objstore;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use fault::{Fault, FaultyStore};
pub use fs::FsStore;
pub use objstore::{memory, s3, ObjStore};

/// Outcome of a create-if-absent write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// The object was written.
    Created,
    /// An object already existed under that key; nothing was written.
    AlreadyExists,
}

/// Outcome of a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    /// The object was removed.
    Removed,
    /// There was nothing to remove (counts as done).
    NotFound,
}

/// An object in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A store operation that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("object {key} not found in {store}")]
    NotFound {
        /// The store, as a URL.
        store: String,
        /// The key.
        key: String,
    },
    /// A failure that may pass: a timeout, a dropped connection, a 5xx answer, an injected fault.
    #[error("{op} {key} in {store} failed (temporary, retrying may help): {message}")]
    Temporary {
        /// The store, as a URL.
        store: String,
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
        /// What the store said.
        message: String,
    },
    /// A failure that retrying will not fix: permissions, a missing bucket, bad configuration.
    #[error("{op} {key} in {store} failed: {message}")]
    Permanent {
        /// The store, as a URL.
        store: String,
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
        /// What the store said.
        message: String,
    },
}

impl StoreError {
    /// Returns whether retrying the operation may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, StoreError::Temporary { .. })
    }
}

/// An object store as berth uses it: a flat namespace of immutable objects.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Returns the store's URL, for messages.
    fn url(&self) -> &str;

    /// Writes `data` under `key` unless an object is already there. Returns only once the
    /// object is durable.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<Put, StoreError>;

    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;

    /// Lists every object whose key starts with `prefix` (a directory-like prefix ending in
    /// `/`, or empty for everything).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Deletes an object; a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<Deleted, StoreError>;
}

/// A shared store handle.
pub type DynStore = Arc<dyn Store>;

/// A store URL that berth cannot open.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store URL '{url}' is not usable: {reason}")]
pub struct UrlError {
    /// The URL as given.
    pub url: String,
    /// Why, and what to write instead.
    pub reason: String,
}

/// Opens a store from its URL: `file:///abs/path`, `s3://bucket[/prefix]` or `memory://`.
///
/// S3 settings come from the usual `AWS_*` variables (`AWS_ENDPOINT_URL` for a custom endpoint,
/// which also switches to path-style requests and allows plain http).
pub fn open(url: &str) -> Result<DynStore, UrlError> {
    let fail =
        |reason: &str| UrlError { url: berth_core::bounded(url, berth_core::ECHO_MAX), reason: reason.to_string() };
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(fail("a file store needs an absolute path, like file:///var/lib/berth/store"));
        }
        return Ok(Arc::new(FsStore::new(path, url)));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(fail("an S3 store needs a bucket, like s3://my-bucket/berth"));
        }
        return s3(url, bucket, prefix.trim_matches('/')).map_err(|e| fail(&e));
    }
    if url == "memory://" {
        return Ok(memory());
    }
    Err(fail("use file:///abs/path, s3://bucket/prefix or memory://"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(open("file:///tmp/x").is_ok());
        assert!(open("memory://").is_ok());
        assert!(open("file://relative").unwrap_err().reason.contains("absolute"));
        assert!(open("s3://").unwrap_err().reason.contains("bucket"));
        assert!(open("ftp://x").unwrap_err().reason.contains("file:///"));
    }
}
