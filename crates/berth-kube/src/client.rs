//! [`Kube`]: the client of one namespace, shared by every Kubernetes adapter, with the retry
//! policy the API conventions ask of clients.
//!
//! Retries follow "API Concepts" (*Retrying requests*) and the API conventions (*HTTP status
//! codes*): `429 Too Many Requests` (honouring `retryAfterSeconds`), `500`, `502`, `503` and
//! `504`, and a connection that fails or times out are retried with exponential backoff, a
//! bounded number of times; any other answer is final. A `409 Conflict` is not retried here: the
//! caller re-reads the object and decides again.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use berth_substrate::VolumeError;
use kube::{Client, Config};

/// How the adapter retries failed calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled each time after.
    pub first_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Time bound of one attempt.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// The Kubernetes API as one namespace sees it: a client and the retry policy.
#[derive(Clone)]
pub struct Kube {
    client: Client,
    namespace: String,
    retry: RetryPolicy,
    /// Where the client was pointed, for messages.
    server: String,
}

impl fmt::Debug for Kube {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kube").field("server", &self.server).field("namespace", &self.namespace).finish()
    }
}

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Neither a kubeconfig nor the in-cluster service account was found or usable.
    #[error(
        "no Kubernetes configuration: {0}; set KUBECONFIG (or write ~/.kube/config), or run inside a pod with a \
         service account"
    )]
    Infer(String),
    /// The configuration was found but a client could not be built from it.
    #[error("cannot build a Kubernetes client for {server}: {why}")]
    Client {
        /// The API server's URL.
        server: String,
        /// What failed.
        why: String,
    },
    /// The namespace is not a DNS-1123 label.
    #[error("namespace '{0}' is not valid: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit")]
    Namespace(String),
}

impl Kube {
    /// A client configured the way kube-rs infers it (`KUBECONFIG` or `~/.kube/config`, else the
    /// in-cluster service account), in `namespace` (else the configuration's namespace).
    pub async fn infer(namespace: Option<String>, retry: RetryPolicy) -> Result<Kube, ConnectError> {
        let config = Config::infer().await.map_err(|e| ConnectError::Infer(e.to_string()))?;
        Kube::from_config(config, namespace, retry)
    }

    /// A client of the API server at `config`, in `namespace` (else the configuration's).
    pub fn from_config(
        mut config: Config,
        namespace: Option<String>,
        retry: RetryPolicy,
    ) -> Result<Kube, ConnectError> {
        let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
        if berth_core::volume::VolumeName::new(namespace.as_str()).is_err() {
            return Err(ConnectError::Namespace(namespace));
        }
        // berth retries by its own policy (which also covers 500s and connection failures).
        config.default_retry = false;
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config)
            .map_err(|e| ConnectError::Client { server: server.clone(), why: e.to_string() })?;
        Ok(Kube { client, namespace, retry, server })
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The namespace every object lives in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Runs `call` until it succeeds, fails for good, or the attempts run out; `what` names the
    /// call in logs and errors.
    pub async fn retry<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        loop {
            let failure = match tokio::time::timeout(self.retry.attempt_timeout, call()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => Failure::from_kube(e),
                Err(_) => Failure::Transport(format!("no answer within {:?}", self.retry.attempt_timeout)),
            };
            let Some(after) = failure.retry_after() else { return Err(failure) };
            if attempt >= self.retry.attempts {
                return Err(failure);
            }
            let wait = after.unwrap_or(backoff).min(self.retry.max_backoff);
            tracing::debug!(event = "kube_retry", call = what, attempt, error = %failure, wait_ms = wait.as_millis() as u64);
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
            attempt += 1;
        }
    }

    /// The error berth reports for `failure` of `what` on this server.
    pub fn error(&self, what: &str, failure: Failure) -> VolumeError {
        let text = format!("{what} in namespace {} on {}: {failure}", self.namespace, self.server);
        match failure {
            Failure::Status { code: 429 | 500..=599, .. } => VolumeError::temporary(text),
            Failure::Status { code: 401 | 403, .. } => VolumeError::permanent(format!(
                "{text}: the service account lacks a permission; grant the Role in deploy/kubernetes/"
            )),
            Failure::Status { .. } | Failure::Decode(_) => VolumeError::permanent(text),
            Failure::Transport(_) => VolumeError::temporary(text),
        }
    }
}

/// A failed call, as the retry policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The API server answered with an error status.
    #[error("{code} {reason}: {message}")]
    Status {
        /// The HTTP status.
        code: u16,
        /// The machine-readable reason (`AlreadyExists`, `Conflict`, `NotFound`, ...).
        reason: String,
        /// The server's message.
        message: String,
        /// `details.retryAfterSeconds`, when the server gave one.
        retry_after: Option<u32>,
    },
    /// No answer: the connection failed or timed out.
    #[error("the API server did not answer: {0}")]
    Transport(String),
    /// An answer that could not be read.
    #[error("unreadable answer: {0}")]
    Decode(String),
}

impl Failure {
    /// Classifies a client error.
    pub fn from_kube(e: kube::Error) -> Failure {
        match e {
            kube::Error::Api(status) => Failure::Status {
                code: status.code,
                reason: status.reason.clone(),
                message: berth_core::bounded(&status.message, 400),
                retry_after: status.details.as_ref().map(|d| d.retry_after_seconds).filter(|s| *s > 0),
            },
            kube::Error::SerdeError(e) => Failure::Decode(e.to_string()),
            other => Failure::Transport(berth_core::bounded(&other.to_string(), 400)),
        }
    }

    /// `Some(wait)` when a retry may succeed (the wait the server asked for, if any); `None`
    /// when the failure is final.
    fn retry_after(&self) -> Option<Option<Duration>> {
        match self {
            Failure::Status { code: 429, retry_after, .. } => {
                Some(retry_after.map(|s| Duration::from_secs(u64::from(s))))
            }
            Failure::Status { code: 500 | 502 | 503 | 504, .. } | Failure::Transport(_) => Some(None),
            _ => None,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            Failure::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}
