//! `Engine`: the connection to a Docker Engine, found as the docker CLI finds it (`DOCKER_HOST`,
//! the unix socket `/var/run/docker.sock` by default), shared by every Docker adapter.
//!
//! # Guarantees
//! - Nothing is contacted when an `Engine` is made: an engine that is down (or a socket that
//!   does not exist yet) is an error of each call, never of the start, and the first call
//!   after the engine comes up connects.
//! - The API version is negotiated on first contact (the lower of the engine's and bollard's),
//!   so berth works with engines from API 1.41 (Engine 20.10) to the newest.
//! - Every failure to reach the engine, and every 5xx, is temporary; a 4xx is permanent.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use berth_substrate::VolumeError;
use bollard::errors::Error as BollardError;
use bollard::Docker;

/// The socket the docker CLI uses when `DOCKER_HOST` is unset.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// Time bound of one request to the engine; a hung engine fails calls instead of holding them.
const REQUEST_TIMEOUT_SECS: u64 = 30;
/// Time bound of a health check.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest part of an engine's message repeated in an error.
const MESSAGE_MAX: usize = 300;

/// A Docker Engine, connected on first use.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    client: tokio::sync::OnceCell<Docker>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").field("host", &self.inner.host).finish()
    }
}

/// What an engine error means for the caller.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The engine answered with this status.
    Status(u16, String),
    /// Anything else: the engine was not reached, timed out, or answered garbage.
    Other(VolumeError),
}

impl Engine {
    /// The engine `DOCKER_HOST` names, or the default socket.
    pub fn from_env() -> Result<Engine, VolumeError> {
        let host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
        Engine::new(host.as_deref().unwrap_or(DEFAULT_HOST))
    }

    /// The engine at `host`: `unix:///PATH`, or `tcp://HOST:PORT` (plain HTTP).
    pub fn new(host: &str) -> Result<Engine, VolumeError> {
        let supported = host.starts_with("unix://") || host.starts_with("tcp://") || host.starts_with("http://");
        if !supported {
            return Err(VolumeError::permanent(format!(
                "DOCKER_HOST={host} is not supported: use unix:///PATH (default {DEFAULT_HOST}) or tcp://HOST:PORT; \
                 for ssh:// or TLS, forward the engine's socket to a local unix socket"
            )));
        }
        if !host.starts_with("unix://") && std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty()) {
            return Err(VolumeError::permanent(format!(
                "DOCKER_TLS_VERIFY is set but berth talks to {host} without TLS: unset it for a plain tcp:// engine, \
                 or forward the engine's socket to a local unix socket"
            )));
        }
        Ok(Engine { inner: Arc::new(Inner { host: host.to_string(), client: tokio::sync::OnceCell::new() }) })
    }

    /// The engine's address.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The client, connecting and negotiating the API version on the first successful call.
    pub async fn client(&self) -> Result<Docker, VolumeError> {
        let host = &self.inner.host;
        let docker = self
            .inner
            .client
            .get_or_try_init(|| async {
                let docker = Docker::connect_with_host(host)
                    .map_err(|e| self.unreachable(&e))?
                    .with_timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS));
                match tokio::time::timeout(PING_TIMEOUT, docker.negotiate_version()).await {
                    Ok(Ok(docker)) => {
                        tracing::info!(event = "docker_connected", host = %host, api = %docker.client_version());
                        Ok(docker)
                    }
                    Ok(Err(e)) => Err(self.unreachable(&e)),
                    Err(_) => Err(VolumeError::temporary(format!(
                        "the docker engine at {host} did not answer within {} s",
                        PING_TIMEOUT.as_secs()
                    ))),
                }
            })
            .await?;
        Ok(docker.clone())
    }

    /// Checks that the engine answers, within a few seconds.
    pub async fn ping(&self) -> Result<(), VolumeError> {
        let check = async {
            let docker = self.client().await?;
            docker.ping().await.map_err(|e| self.error("ping", e)).map(|_| ())
        };
        match tokio::time::timeout(PING_TIMEOUT, check).await {
            Ok(r) => r,
            Err(_) => Err(VolumeError::temporary(format!(
                "the docker engine at {} did not answer a ping within {} s",
                self.host(),
                PING_TIMEOUT.as_secs()
            ))),
        }
    }

    fn unreachable(&self, e: &BollardError) -> VolumeError {
        let why = match e {
            BollardError::SocketNotFoundError(path) => format!("no socket at {path}"),
            other => {
                // The transport's own message is generic ("client error (Connect)"); the cause
                // at the end of the chain says what happened (refused, permission denied).
                let mut why = other.to_string();
                let mut source = std::error::Error::source(other);
                while let Some(cause) = source {
                    let cause_text = cause.to_string();
                    if !why.contains(&cause_text) {
                        why = format!("{why}: {cause_text}");
                    }
                    source = cause.source();
                }
                bounded(&why)
            }
        };
        VolumeError::temporary(format!(
            "cannot reach the docker engine at {} ({why}): start the engine, or point DOCKER_HOST at it",
            self.host()
        ))
    }

    /// Classifies a failed call: the engine's status, or a [`VolumeError`] ready to return.
    pub(crate) fn failure(&self, what: &str, e: BollardError) -> Failure {
        match e {
            BollardError::DockerResponseServerError { status_code, message } => {
                Failure::Status(status_code, bounded(&message))
            }
            BollardError::RequestTimeoutError => Failure::Other(VolumeError::temporary(format!(
                "{what}: the docker engine at {} did not answer within {REQUEST_TIMEOUT_SECS} s",
                self.host()
            ))),
            e @ (BollardError::JsonDataError { .. }
            | BollardError::JsonSerdeError { .. }
            | BollardError::APIVersionParseError {}) => Failure::Other(VolumeError::permanent(format!(
                "{what}: the docker engine at {} answered something berth cannot read: {}",
                self.host(),
                bounded(&e.to_string())
            ))),
            other => Failure::Other(self.unreachable(&other)),
        }
    }

    /// Maps a failed call to a [`VolumeError`]: 5xx and anything short of an answer are
    /// temporary, other statuses permanent.
    pub(crate) fn error(&self, what: &str, e: BollardError) -> VolumeError {
        status_error(what, self.failure(what, e))
    }
}

/// Turns a [`Failure`] into the error to return.
pub(crate) fn status_error(what: &str, failure: Failure) -> VolumeError {
    match failure {
        Failure::Status(code, message) if code >= 500 => {
            VolumeError::temporary(format!("{what}: the docker engine failed ({code}): {message}"))
        }
        Failure::Status(code, message) => {
            VolumeError::permanent(format!("{what}: the docker engine refused ({code}): {message}"))
        }
        Failure::Other(e) => e,
    }
}

/// Cuts a message from the engine to a length fit for an error.
pub(crate) fn bounded(s: &str) -> String {
    berth_substrate::bounded(s, MESSAGE_MAX)
}
