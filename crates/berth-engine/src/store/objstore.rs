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

/// Opens an S3 bucket, with settings from the `AWS_*` environment variables and credentials
/// from the sources [`credential_source`] accepts; without any, it fails at once, before a
/// request is made.
pub fn s3(url: &str, bucket: &str, prefix: &str) -> Result<DynStore, String> {
    let source = credential_source(&|k| std::env::var(k).ok())?;
    tracing::debug!(event = "s3_credentials", source);
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

/// The environment variable that lets berth ask the instance metadata endpoint for S3
/// credentials (set it to `1` on a cloud instance with a role). Without it berth never calls it.
pub const IMDS_VAR: &str = "BERTH_S3_IMDS";

/// Decides where S3 credentials come from, in this order, from the environment only:
/// `AWS_ACCESS_KEY_ID` with `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`, when temporary);
/// `AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`; a container's credentials endpoint
/// (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, or `AWS_CONTAINER_CREDENTIALS_FULL_URI` with
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`); unsigned requests (`AWS_SKIP_SIGNATURE=true`);
/// the instance metadata endpoint only when `BERTH_S3_IMDS=1`. Profiles and `~/.aws` files are
/// not read. Returns the source's name, or the error that says what to set.
pub fn credential_source(get: &dyn Fn(&str) -> Option<String>) -> Result<&'static str, String> {
    let set = |k: &str| get(k).is_some_and(|v| !v.is_empty());
    match (set("AWS_ACCESS_KEY_ID"), set("AWS_SECRET_ACCESS_KEY")) {
        (true, true) => return Ok("AWS_ACCESS_KEY_ID"),
        (true, false) => return Err("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both".into()),
        (false, true) => return Err("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not: set both".into()),
        (false, false) => {}
    }
    if set("AWS_WEB_IDENTITY_TOKEN_FILE") && set("AWS_ROLE_ARN") {
        return Ok("AWS_WEB_IDENTITY_TOKEN_FILE");
    }
    if set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        return Ok("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    }
    if set("AWS_CONTAINER_CREDENTIALS_FULL_URI") && set("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
        return Ok("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    }
    if get("AWS_SKIP_SIGNATURE").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok("AWS_SKIP_SIGNATURE");
    }
    if get(IMDS_VAR).as_deref() == Some("1") {
        return Ok(IMDS_VAR);
    }
    let profile = if set("AWS_PROFILE") {
        " AWS_PROFILE is set, but berth reads no profiles or ~/.aws files: export that profile's keys instead."
    } else {
        ""
    };
    Err(format!(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for \
         session keys), or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN; on a cloud instance whose \
         role should be used, set {IMDS_VAR}=1 to allow its metadata endpoint.{profile}"
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn source(vars: &[(&str, &str)]) -> Result<&'static str, String> {
        credential_source(&|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn credential_sources_are_explicit() {
        assert_eq!(source(&[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")]), Ok("AWS_ACCESS_KEY_ID"));
        assert!(source(&[("AWS_ACCESS_KEY_ID", "k")]).unwrap_err().contains("AWS_SECRET_ACCESS_KEY is not"));
        assert_eq!(
            source(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"), ("AWS_ROLE_ARN", "arn")]),
            Ok("AWS_WEB_IDENTITY_TOKEN_FILE")
        );
        assert_eq!(source(&[("AWS_SKIP_SIGNATURE", "true")]), Ok("AWS_SKIP_SIGNATURE"));
        assert_eq!(source(&[(IMDS_VAR, "1")]), Ok(IMDS_VAR));
        // Nothing set: no metadata endpoint, an error naming what to set.
        let none = source(&[("AWS_ACCESS_KEY_ID", ""), (IMDS_VAR, "0")]).unwrap_err();
        for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "BERTH_S3_IMDS=1"] {
            assert!(none.contains(name), "{none}");
        }
        assert!(!none.contains("AWS_PROFILE"));
        assert!(source(&[("AWS_PROFILE", "dev")]).unwrap_err().contains("AWS_PROFILE is set"));
    }
}
