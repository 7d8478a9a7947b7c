//! An async client for the control-plane API, used by the operator CLI and the sandbox agent.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::*;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the connection broke; retrying may help.
    #[error("cannot reach the berth server at {url}: {source}")]
    Transport {
        /// The URL called.
        url: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The server refused the write's epoch (409 `stale_epoch`): another sandbox holds, or
    /// may hold, the workspace. The writer must stop writing; a retry cannot help.
    #[error("stale_epoch (409): {0}")]
    Fenced(Fenced),
    /// The server answered with any other error.
    #[error("{} ({status}): {}", detail.code, detail.message)]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error body.
        detail: Box<ErrorDetail>,
    },
    /// The server's answer could not be understood (a different berth version?).
    #[error("unexpected answer from {url} ({status}): {reason}")]
    Decode {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What did not parse.
        reason: String,
    },
    /// The server URL given is not usable.
    #[error("server URL '{0}' is not valid: use http://HOST:PORT or https://HOST")]
    BadUrl(String),
}

impl ClientError {
    /// Returns whether trying again later may succeed (transport errors, 5xx, 503 draining).
    pub fn is_temporary(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            ClientError::Fenced(_) | ClientError::Decode { .. } | ClientError::BadUrl(_) => false,
        }
    }

    /// Returns the error code of an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { detail, .. } => Some(&detail.code),
            ClientError::Fenced(_) => Some(STALE_EPOCH),
            _ => None,
        }
    }

    /// Returns the HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Fenced(_) => Some(StatusCode::CONFLICT.as_u16()),
            _ => None,
        }
    }

    /// Returns the fencing refusal, if this is one.
    pub fn fenced(&self) -> Option<Fenced> {
        match self {
            ClientError::Fenced(f) => Some(*f),
            _ => None,
        }
    }

    /// Classifies an error answer: a 409 `stale_epoch` is `Fenced`, anything else `Api`.
    fn from_answer(status: StatusCode, detail: ErrorDetail) -> ClientError {
        if status == StatusCode::CONFLICT && detail.code == STALE_EPOCH {
            return ClientError::Fenced(Fenced {
                presented: detail.presented_epoch.unwrap_or_default(),
                current: detail.current_epoch,
            });
        }
        ClientError::Api { status: status.as_u16(), detail: Box::new(detail) }
    }
}

/// The error code of a write refused for its epoch.
pub const STALE_EPOCH: &str = "stale_epoch";

/// The error code of a heartbeat from an instance other than the one its session attached
/// with: that sandbox must attach a session of its own.
pub const WRONG_INSTANCE: &str = "wrong_instance";

/// Query of `GET /v1/workspaces`.
#[derive(Clone, Debug, Default)]
pub struct WorkspaceQuery {
    /// Only this state.
    pub state: Option<WorkspaceState>,
    /// Only workspaces with every one of these labels (`key=value`).
    pub labels: Vec<(String, String)>,
    /// Start after this owner.
    pub after: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// Query of `GET /v1/events`.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    /// Only events after this id.
    pub after: Option<i64>,
    /// Only this owner.
    pub owner: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// A client bound to one server and token.
#[derive(Clone, Debug)]
pub struct Client {
    base: Url,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// Creates a client for `server` (e.g. `http://127.0.0.1:7878`) acting with `token`.
    pub fn new(server: &str, token: impl Into<String>) -> Result<Client, ClientError> {
        let base = Url::parse(server).map_err(|_| ClientError::BadUrl(server.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientError::BadUrl(server.to_string()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Transport { url: server.to_string(), source: e })?;
        Ok(Client { base, token: token.into(), http })
    }

    /// Returns a copy that gives up on each call after `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .build()
            .unwrap_or_else(|_| self.http.clone());
        Client { http, ..self.clone() }
    }

    pub(crate) fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        {
            // `cannot_be_a_base` was refused in `new`, so segments exist.
            let mut path = url.path_segments_mut().expect("base URL checked in Client::new");
            path.pop_if_empty();
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    pub(crate) async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<(StatusCode, T), ClientError> {
        let shown = url.to_string();
        let mut req = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| ClientError::Transport { url: shown.clone(), source: e })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Transport { url: shown.clone(), source: e })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ClientError::from_answer(status, body.error),
                Err(_) => ClientError::Decode {
                    url: shown,
                    status: status.as_u16(),
                    reason: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
                },
            });
        }
        // An empty success body (204) decodes as JSON null.
        let bytes = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
        let value = serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            url: shown,
            status: status.as_u16(),
            reason: e.to_string(),
        })?;
        Ok((status, value))
    }

    /// Ensures the workspace of `owner`; returns it and whether this call created it.
    pub async fn ensure(&self, owner: &str, body: &EnsureWorkspace) -> Result<(Workspace, bool), ClientError> {
        let (status, w) = self.call(Method::PUT, self.url(&["v1", "workspaces", owner], &[]), Some(body)).await?;
        Ok((w, status == StatusCode::CREATED))
    }

    /// Sets a workspace's own retention policy (`None` or `default`: the server's).
    pub async fn set_retention(&self, owner: &str, body: &SetRetention) -> Result<Workspace, ClientError> {
        Ok(self.call(Method::PUT, self.url(&["v1", "workspaces", owner, "retention"], &[]), Some(body)).await?.1)
    }

    /// Reads one workspace.
    pub async fn workspace(&self, owner: &str) -> Result<Workspace, ClientError> {
        Ok(self.call::<(), _>(Method::GET, self.url(&["v1", "workspaces", owner], &[]), None).await?.1)
    }

    /// Lists workspaces, one page.
    pub async fn workspaces(&self, q: &WorkspaceQuery) -> Result<WorkspaceList, ClientError> {
        let mut query = Vec::new();
        if let Some(s) = q.state {
            query.push((
                "state",
                serde_json::to_value(s).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            ));
        }
        for (k, v) in &q.labels {
            query.push(("label", format!("{k}={v}")));
        }
        if let Some(a) = &q.after {
            query.push(("after", a.clone()));
        }
        if let Some(l) = q.limit {
            query.push(("limit", l.to_string()));
        }
        Ok(self.call::<(), _>(Method::GET, self.url(&["v1", "workspaces"], &query), None).await?.1)
    }

    /// Closes a workspace: no more attaches; its volume is collected after the cooldown.
    pub async fn close(&self, owner: &str) -> Result<Workspace, ClientError> {
        let url = self.url(&["v1", "workspaces", owner, "close"], &[]);
        Ok(self.call::<(), _>(Method::POST, url, None).await?.1)
    }

    /// Asks for the deletion of a workspace; it completes in the background. An at-risk
    /// workspace is refused (`at_risk`): see [`Client::delete_forced`].
    pub async fn delete(&self, owner: &str) -> Result<Workspace, ClientError> {
        Ok(self.call::<(), _>(Method::DELETE, self.url(&["v1", "workspaces", owner], &[]), None).await?.1)
    }

    /// Asks for the deletion of a workspace even when it is at risk, discarding the work its
    /// volume holds that no snapshot has.
    pub async fn delete_forced(&self, owner: &str) -> Result<Workspace, ClientError> {
        let url = self.url(&["v1", "workspaces", owner], &[("force", "true".into())]);
        Ok(self.call::<(), _>(Method::DELETE, url, None).await?.1)
    }

    /// Attaches a sandbox: takes the single-writer lease.
    pub async fn attach(&self, owner: &str, body: &Attach) -> Result<Session, ClientError> {
        let url = self.url(&["v1", "workspaces", owner, "sessions"], &[]);
        Ok(self.call(Method::POST, url, Some(body)).await?.1)
    }

    /// Renews a session's lease and reads its drain state.
    pub async fn heartbeat(&self, session: &str, body: &Heartbeat) -> Result<HeartbeatReply, ClientError> {
        let url = self.url(&["v1", "sessions", session, "heartbeat"], &[]);
        Ok(self.call(Method::POST, url, Some(body)).await?.1)
    }

    /// Detaches a session, releasing its lease.
    pub async fn detach(&self, session: &str) -> Result<(), ClientError> {
        let url = self.url(&["v1", "sessions", session], &[]);
        self.call::<(), serde_json::Value>(Method::DELETE, url, None).await?;
        Ok(())
    }

    /// Records a published snapshot as the workspace's latest.
    pub async fn publish_snapshot(&self, owner: &str, body: &PublishSnapshot) -> Result<SnapshotInfo, ClientError> {
        let url = self.url(&["v1", "workspaces", owner, "snapshots"], &[]);
        Ok(self.call(Method::POST, url, Some(body)).await?.1)
    }

    /// Lists the snapshots of a workspace's current generation.
    pub async fn snapshots(&self, owner: &str) -> Result<SnapshotList, ClientError> {
        let url = self.url(&["v1", "workspaces", owner, "snapshots"], &[]);
        Ok(self.call::<(), _>(Method::GET, url, None).await?.1)
    }

    /// Starts draining a scope (or returns the running drain's nonce).
    pub async fn start_drain(&self, body: &StartDrain) -> Result<DrainInfo, ClientError> {
        Ok(self.call(Method::POST, self.url(&["v1", "drains"], &[]), Some(body)).await?.1)
    }

    /// Reads the drain state of a scope.
    pub async fn drain(&self, scope: &str) -> Result<DrainInfo, ClientError> {
        Ok(self.call::<(), _>(Method::GET, self.url(&["v1", "drains", scope], &[]), None).await?.1)
    }

    /// Lists every scope that is draining or has drained.
    pub async fn drains(&self) -> Result<DrainList, ClientError> {
        Ok(self.call::<(), _>(Method::GET, self.url(&["v1", "drains"], &[]), None).await?.1)
    }

    /// Acknowledges a drain handover with its nonce.
    pub async fn ready(&self, scope: &str, body: &Ready) -> Result<ReadyReply, ClientError> {
        let url = self.url(&["v1", "drains", scope, "ready"], &[]);
        Ok(self.call(Method::POST, url, Some(body)).await?.1)
    }

    /// Reads the audit log.
    pub async fn events(&self, q: &EventQuery) -> Result<EventList, ClientError> {
        let mut query = Vec::new();
        if let Some(a) = q.after {
            query.push(("after", a.to_string()));
        }
        if let Some(o) = &q.owner {
            query.push(("owner", o.clone()));
        }
        if let Some(k) = &q.kind {
            query.push(("kind", k.clone()));
        }
        if let Some(l) = q.limit {
            query.push(("limit", l.to_string()));
        }
        Ok(self.call::<(), _>(Method::GET, self.url(&["v1", "events"], &query), None).await?.1)
    }

    /// Runs a GC sweep now (or plans one).
    pub async fn gc_run(&self, body: &GcRun) -> Result<GcReport, ClientError> {
        Ok(self.call(Method::POST, self.url(&["v1", "gc", "run"], &[]), Some(body)).await?.1)
    }
}
