//! Who is calling: the admin (the orchestrator or an operator), a read-only viewer, or a
//! sandbox's session, and what each may act on. The HTTP layer reads the bearer token (or the
//! console's session cookie); this module decides who it is.
//!
//! **Invariant:** tokens are compared and stored only as BLAKE3 hashes and never logged; a
//! sandbox token acts only on its own session, workspace and drain scope, and only while that
//! session lives.

use std::time::Duration;

use berth_core::scope::Scope;
use berth_core::session::SessionId;
use berth_core::workspace::WorkspaceId;

use crate::error::{Error, Result};
use crate::meta::{token_hash, Meta};

/// The caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The admin token: may do everything.
    Admin,
    /// A viewer token (`--viewer-token-file`): may read everything and change nothing.
    Viewer,
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
            Principal::Viewer => Err(read_only()),
            Principal::Sandbox { .. } => {
                Err(Error::Forbidden("this needs the admin token; a sandbox token cannot do it".into()))
            }
        }
    }

    /// Refuses anyone who may not read everything (a sandbox): for reads across workspaces.
    pub fn reader(&self) -> Result<()> {
        match self {
            Principal::Admin | Principal::Viewer => Ok(()),
            Principal::Sandbox { .. } => {
                Err(Error::Forbidden("this needs the admin or a viewer token; a sandbox token cannot read it".into()))
            }
        }
    }

    /// Refuses a sandbox of another workspace, for reading `owner`'s workspace.
    pub fn read_owner(&self, owner: &WorkspaceId) -> Result<()> {
        match self {
            Principal::Viewer => Ok(()),
            _ => self.owner(owner),
        }
    }

    /// Refuses a sandbox outside its own workspace's drain scope, for reading `scope`.
    pub fn read_scope(&self, scope: &Scope) -> Result<()> {
        match self {
            Principal::Viewer => Ok(()),
            _ => self.scope(scope),
        }
    }

    /// Refuses a sandbox of another workspace, and a viewer.
    pub fn owner(&self, owner: &WorkspaceId) -> Result<()> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Viewer => Err(read_only()),
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
            Principal::Viewer => Err(read_only()),
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
            (Principal::Viewer, _) => Err(read_only()),
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
            Principal::Admin | Principal::Viewer => None,
        }
    }
}

fn read_only() -> Error {
    Error::Forbidden("a viewer token is read-only: this needs the admin token".into())
}

/// Who may log in to the console, and as what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Login {
    /// The admin token.
    Admin,
    /// A viewer token, named by the first 16 hex digits of its hash (so a session of a
    /// token taken out of the viewer file ends with it).
    Viewer(String),
}

/// Resolves bearer tokens: the admin token's hash, the viewer tokens' hashes, and sandbox tokens
/// through the sessions they belong to. A sandbox token dies with its session (detach, lease
/// expiry, takeover, the owner's deletion), so it is looked up every time and never cached:
/// another replica may have ended the session a moment ago.
pub struct Tokens {
    admin: blake3::Hash,
    viewers: Vec<blake3::Hash>,
    /// Signs the console's session cookies; derived from the admin token, so replicas sharing
    /// it accept each other's cookies, and changing it ends every console session.
    console_key: [u8; 32],
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("viewers", &self.viewers.len()).finish_non_exhaustive()
    }
}

impl Tokens {
    /// Recognises `admin_token` as the admin and each of `viewer_tokens` as a viewer.
    pub fn new(admin_token: &str, viewer_tokens: &[String]) -> Tokens {
        Tokens {
            admin: blake3::hash(admin_token.as_bytes()),
            viewers: viewer_tokens.iter().map(|t| blake3::hash(t.as_bytes())).collect(),
            console_key: blake3::derive_key("berth console session cookie v1", admin_token.as_bytes()),
        }
    }

    /// The key that signs console session cookies.
    pub fn console_key(&self) -> &[u8; 32] {
        &self.console_key
    }

    /// Returns who may log in to the console with `token`: the admin or a viewer; a sandbox
    /// token or an unknown one cannot.
    pub fn login(&self, token: &str) -> Option<Login> {
        let hash = blake3::hash(token.as_bytes());
        if hash == self.admin {
            return Some(Login::Admin);
        }
        self.viewers.iter().find(|v| **v == hash).map(|v| Login::Viewer(v.to_hex()[..16].to_string()))
    }

    /// Returns whether a viewer of this name (see [`Login::Viewer`]) is still configured.
    pub fn has_viewer(&self, name: &str) -> bool {
        self.viewers.iter().any(|v| &v.to_hex()[..16] == name)
    }

    /// Returns who `token` is; an unknown token, or the token of a session that has ended, is
    /// `Unauthorized`.
    pub async fn principal(&self, meta: &Meta, token: &str) -> Result<Principal> {
        self.principal_within(meta, token, Duration::ZERO).await
    }

    /// [`Tokens::principal`], but a token of no live session is waited for up to `wait`, for a
    /// session to take it (a warm sandbox waiting for its claim), before it is `Unauthorized`.
    pub async fn principal_within(&self, meta: &Meta, token: &str, wait: Duration) -> Result<Principal> {
        match self.configured(token) {
            Ok(known) => Ok(known),
            Err(hash) => match meta.session_by_token_within(&hash, wait).await? {
                Some(s) => Ok(Principal::Sandbox { session: s.id, owner: s.owner }),
                None => Err(Error::Unauthorized),
            },
        }
    }

    /// The admin or a viewer when `token` is one of theirs, known without the database;
    /// otherwise the hash a sandbox token is stored as, for the caller to look up.
    pub fn configured(&self, token: &str) -> std::result::Result<Principal, String> {
        let hash = blake3::hash(token.as_bytes());
        // blake3::Hash compares in constant time.
        if hash == self.admin {
            return Ok(Principal::Admin);
        }
        if self.viewers.contains(&hash) {
            return Ok(Principal::Viewer);
        }
        let hex = hash.to_hex().to_string();
        debug_assert_eq!(hex, token_hash(token));
        Err(hex)
    }
}
