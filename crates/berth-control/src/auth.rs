//! Who is calling: the admin (the orchestrator or an operator) or a sandbox's session, and what
//! each may act on. The HTTP layer reads the bearer token; this module decides who it is.
//!
//! **Invariant:** tokens are compared and stored only as BLAKE3 hashes and never logged; a
//! sandbox token acts only on its own session, workspace and drain scope.

use std::collections::HashMap;
use std::sync::Mutex;

use berth_core::scope::Scope;
use berth_core::session::SessionId;
use berth_core::workspace::WorkspaceId;

use crate::error::{Error, Result};
use crate::meta::{token_hash, Meta};

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

    /// The session of a sandbox caller; `None` for the admin.
    pub fn sandbox_session(&self) -> Option<&SessionId> {
        match self {
            Principal::Sandbox { session, .. } => Some(session),
            Principal::Admin => None,
        }
    }
}

/// Resolves bearer tokens: the admin token's hash, and a cache of sandbox tokens' sessions.
/// A session's owner never changes, so cached entries never name the wrong workspace.
#[derive(Debug)]
pub struct Tokens {
    admin: blake3::Hash,
    sandboxes: Mutex<HashMap<String, (SessionId, WorkspaceId)>>,
}

impl Tokens {
    /// Recognises `admin_token` as the admin.
    pub fn new(admin_token: &str) -> Tokens {
        Tokens { admin: blake3::hash(admin_token.as_bytes()), sandboxes: Mutex::default() }
    }

    /// Returns who `token` is; an unknown token is `Unauthorized`.
    pub async fn principal(&self, meta: &Meta, token: &str) -> Result<Principal> {
        let hash = blake3::hash(token.as_bytes());
        // blake3::Hash compares in constant time.
        if hash == self.admin {
            return Ok(Principal::Admin);
        }
        let hex = hash.to_hex().to_string();
        debug_assert_eq!(hex, token_hash(token));
        if let Some((session, owner)) = self.cached(&hex) {
            return Ok(Principal::Sandbox { session, owner });
        }
        match meta.session_by_token(&hex).await? {
            Some(s) => {
                self.remember(hex, (s.id.clone(), s.owner.clone()));
                Ok(Principal::Sandbox { session: s.id, owner: s.owner })
            }
            None => Err(Error::Unauthorized),
        }
    }

    fn cached(&self, hash: &str) -> Option<(SessionId, WorkspaceId)> {
        self.sandboxes.lock().ok()?.get(hash).cloned()
    }

    fn remember(&self, hash: String, value: (SessionId, WorkspaceId)) {
        if let Ok(mut map) = self.sandboxes.lock() {
            if map.len() >= CACHE_MAX {
                map.clear();
            }
            map.insert(hash, value);
        }
    }
}
