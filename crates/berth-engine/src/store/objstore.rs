//! `ObjStore`: the port implemented over the `object_store` crate, for S3 (any S3-compatible
//! server) and memory.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use super::{Deleted, DynStore, ObjectInfo, Put, Store, StoreError};

/// A store backed by an `object_store` implementation.
#[derive(Debug, Clone)]
pub struct ObjStore {
    inner: Arc<dyn ObjectStore>,
    url: String,
}

/// Returns a fresh in-memory store.
pub fn memory() -> DynStore {
    Arc::new(ObjStore { inner: Arc::new(InMemory::new()), url: "memory://".into() })
}

/// Opens an S3 bucket, with settings from the `AWS_*` environment variables.
pub fn s3(url: &str, bucket: &str, prefix: &str) -> Result<DynStore, String> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
        builder = builder.with_region("us-east-1");
    }
    if let Some(endpoint) = std::env::var("AWS_ENDPOINT_URL").ok().or_else(|| std::env::var("AWS_ENDPOINT").ok()) {
        // Custom endpoints (MinIO, moto, Ceph, ...) want path-style requests, which is the
        // builder's default; plain http is allowed only when the endpoint says so.
        builder = builder.with_allow_http(endpoint.starts_with("http://")).with_endpoint(endpoint);
    }
    let s3 = builder.build().map_err(|e| e.to_string())?;
    let inner: Arc<dyn ObjectStore> =
        if prefix.is_empty() { Arc::new(s3) } else { Arc::new(PrefixStore::new(s3, Path::from(prefix))) };
    Ok(Arc::new(ObjStore { inner, url: url.to_string() }))
}

impl ObjStore {
    fn err(&self, op: &'static str, key: &str, e: object_store::Error) -> StoreError {
        use object_store::Error as E;
        let (store, key) = (self.url.clone(), key.to_string());
        match e {
            E::NotFound { .. } => StoreError::NotFound { store, key },
            // The client already retried with backoff; a remaining generic error is still
            // most likely a network or server problem.
            E::Generic { source, .. } => StoreError::Temporary { store, op, key, message: source.to_string() },
            other => StoreError::Permanent { store, op, key, message: other.to_string() },
        }
    }
}

#[async_trait]
impl Store for ObjStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<Put, StoreError> {
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.inner.put_opts(&Path::from(key), PutPayload::from_bytes(data), opts).await {
            Ok(_) => Ok(Put::Created),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                Ok(Put::AlreadyExists)
            }
            Err(e) => Err(self.err("put", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let result = self.inner.get(&Path::from(key)).await.map_err(|e| self.err("get", key, e))?;
        result.bytes().await.map_err(|e| self.err("get", key, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let p = Path::from(prefix);
        let stream = self.inner.list(if prefix.is_empty() { None } else { Some(&p) });
        let metas: Vec<_> = stream.try_collect().await.map_err(|e| self.err("list", prefix, e))?;
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .map(|m| ObjectInfo { key: m.location.to_string(), size: m.size })
            .filter(|o| o.key.starts_with(prefix))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<Deleted, StoreError> {
        match self.inner.delete(&Path::from(key)).await {
            Ok(()) => Ok(Deleted::Removed),
            Err(object_store::Error::NotFound { .. }) => Ok(Deleted::NotFound),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }
}
