//! The bearer token of a request, resolved to a `Principal` by `auth::Tokens`.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;

use berth_core::session::SessionId;

use crate::app::App;
use crate::error::{Error, Result};

pub use crate::auth::Principal;

impl FromRequestParts<Arc<App>> for Principal {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self> {
        let Bearer(token) = Bearer::from_request_parts(parts, app).await?;
        app.tokens.principal(&app.meta, &token).await
    }
}

/// The bearer token of a request, not yet resolved: for a handler that checks a sandbox token
/// inside its own statement instead of looking it up first (the heartbeat).
pub struct Bearer(pub String);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

impl FromRequestParts<Arc<App>> for Bearer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<App>) -> Result<Self> {
        bearer(&parts.headers).map(|t| Bearer(t.to_string())).ok_or(Error::Unauthorized)
    }
}

/// Why a request with `token` that a handler refused with `e` (having checked the token in its
/// own statement, or not yet) is refused, as the token's lookup says it, so that who asks is
/// said first: an unknown or dead token is unauthorized; another session's than `session`, when
/// the request acts on one, is forbidden; otherwise `e` stands.
pub async fn refusal(app: &App, token: &str, session: Option<&SessionId>, e: Error) -> Error {
    match app.tokens.principal(&app.meta, token).await {
        Ok(p) => session.and_then(|s| p.session(s).err()).unwrap_or(e),
        Err(auth) => auth,
    }
}

/// The token of an `Authorization: Bearer TOKEN` header, if there is a non-empty one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    Some(value.strip_prefix("Bearer ")?.trim()).filter(|t| !t.is_empty())
}
