//! Who is calling: the admin (the orchestrator or an operator) or a sandbox, by bearer token.
//!
//! **Invariant:** tokens are compared and stored only as BLAKE3 hashes and never logged; a
//! sandbox token acts only on its own session, workspace and drain scope.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use berth_core::scope::Scope;
use berth_core::session::SessionId;
use berth_core::workspace::WorkspaceId;

use super::App;
use crate::error::{Error, Result};
use crate::meta::token_hash;

/// Cached sandbox principals, at most this many (cleared when full).
const CACHE_MAX: usize = 100_000;

/// The caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The admin token: may do everything.
    Admin,
    /// A sandbox token: its session and that session's workspace.
    Sandbox {
        /// The session.
        session: SessionId,
        /// The owner it is attached to.
        owner: WorkspaceId,
    },
}

impl Principal {
    /// Refuses anyone but the admin.
    pub fn admin(&self) -> Result<()> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Sandbox { .. } => {
                Err(Error::Forbidden("this needs the admin token; a sandbox token cannot do it".into()))
            }
        }
    }

    /// Refuses a sandbox of another workspace.
    pub fn owner(&self, owner: &WorkspaceId) -> Result<()> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Sandbox { owner: own, .. } if own == owner => Ok(()),
            Principal::Sandbox { .. } => {
                Err(Error::Forbidden(format!("this sandbox token belongs to another workspace, not {owner}")))
            }
        }
    }

    /// Refuses a sandbox of another session.
    pub fn session(&self, session: &SessionId) -> Result<()> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Sandbox { session: own, .. } if own == session => Ok(()),
            Principal::Sandbox { .. } => {
                Err(Error::Forbidden(format!("this sandbox token belongs to another session, not {session}")))
            }
        }
    }

    /// Refuses a sandbox outside its own workspace's drain scope.
    pub fn scope(&self, scope: &Scope) -> Result<()> {
        match (self, scope) {
            (Principal::Admin, _) => Ok(()),
            (Principal::Sandbox { owner, .. }, Scope::Workspace(w)) if w == owner => Ok(()),
            (Principal::Sandbox { owner, .. }, _) => {
                Err(Error::Forbidden(format!("a sandbox token may act only on its own drain scope, workspace:{owner}")))
            }
        }
    }
}

/// Token hash → sandbox principal. A session's owner never changes, so entries never go stale.
#[derive(Debug, Default)]
pub struct TokenCache(Mutex<HashMap<String, (SessionId, WorkspaceId)>>);

impl TokenCache {
    fn get(&self, hash: &str) -> Option<(SessionId, WorkspaceId)> {
        self.0.lock().ok()?.get(hash).cloned()
    }

    fn put(&self, hash: String, value: (SessionId, WorkspaceId)) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= CACHE_MAX {
                map.clear();
            }
            map.insert(hash, value);
        }
    }
}

impl FromRequestParts<Arc<App>> for Principal {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Error::Unauthorized)?;
        let hash = blake3::hash(token.as_bytes());
        // blake3::Hash compares in constant time.
        if hash == app.admin {
            return Ok(Principal::Admin);
        }
        let hex = hash.to_hex().to_string();
        debug_assert_eq!(hex, token_hash(token));
        if let Some((session, owner)) = app.tokens.get(&hex) {
            return Ok(Principal::Sandbox { session, owner });
        }
        match app.meta.session_by_token(&hex).await? {
            Some(s) => {
                app.tokens.put(hex, (s.id.clone(), s.owner.clone()));
                Ok(Principal::Sandbox { session: s.id, owner: s.owner })
            }
            None => Err(Error::Unauthorized),
        }
    }
}
