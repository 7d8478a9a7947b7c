//! Console logins: a signed session cookie (HttpOnly, SameSite=Strict, Secure behind TLS, with
//! an expiry), the CSRF token derived from it, and the login and logout handlers.
//!
//! **Invariant:** a cookie is accepted only with a valid keyed BLAKE3 MAC, before its expiry,
//! and (for a viewer) while its viewer token is still configured; every action checks a CSRF
//! token that only the holder of the cookie can compute.
//! **Caveat:** sessions are not stored, so a logout clears the browser's cookie but a copy of
//! it stays valid until it expires; changing the admin token ends every session at once.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use berth_core::time::Timestamp;
use serde::Deserialize;

use super::view;
use crate::app::{now, App};
use crate::auth::{Login, Tokens};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "berth_console";

/// What a console user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Read only: no action is shown, and every action is refused.
    Viewer,
}

/// A logged-in console user: who, and the CSRF token every action form carries.
#[derive(Clone, Debug)]
pub struct Console {
    /// Admin or viewer.
    pub role: Role,
    /// The CSRF token of this session.
    pub csrf: String,
    /// The request's time.
    pub now: Timestamp,
}

impl Console {
    /// Returns whether this user may act.
    pub fn can_act(&self) -> bool {
        self.role == Role::Admin
    }

    /// Refuses a viewer, and a form without this session's CSRF token (403 either way).
    pub fn check_action(&self, csrf: Option<&str>) -> Result<(), Forbidden> {
        if self.role != Role::Admin {
            return Err(Forbidden("a viewer token is read-only: log in with the admin token to act"));
        }
        match csrf {
            Some(token) if constant_eq(token.as_bytes(), self.csrf.as_bytes()) => Ok(()),
            _ => Err(Forbidden("the form's CSRF token is missing or wrong: reload the page and try again")),
        }
    }
}

/// A refused action: 403 with a page saying why.
#[derive(Debug)]
pub struct Forbidden(pub &'static str);

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        forbidden(self.0)
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A 403 page naming why.
pub fn forbidden(why: &str) -> Response {
    (StatusCode::FORBIDDEN, view::message_page("Forbidden", why)).into_response()
}

/// Signs a session for `login` that ends at `expires` (seconds since the epoch).
pub fn sign(tokens: &Tokens, login: &Login, expires: i64, nonce: &str) -> String {
    let (role, who) = match login {
        Login::Admin => ("admin", "-"),
        Login::Viewer(name) => ("viewer", name.as_str()),
    };
    let payload = format!("v1.{role}.{who}.{expires}.{nonce}");
    let mac = blake3::keyed_hash(tokens.console_key(), payload.as_bytes());
    format!("{payload}.{}", mac.to_hex())
}

/// Checks a cookie value at `now`: the role it grants, or `None`.
pub fn verify(tokens: &Tokens, value: &str, now: Timestamp) -> Option<Role> {
    let (payload, mac) = value.rsplit_once('.')?;
    let mac = blake3::Hash::from_hex(mac).ok()?;
    // blake3::Hash compares in constant time.
    if blake3::keyed_hash(tokens.console_key(), payload.as_bytes()) != mac {
        return None;
    }
    let mut parts = payload.split('.');
    let (version, role, who, expires) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "v1" || expires.parse::<i64>().ok()? <= now.secs() {
        return None;
    }
    match role {
        "admin" => Some(Role::Admin),
        "viewer" if tokens.has_viewer(who) => Some(Role::Viewer),
        _ => None,
    }
}

/// The CSRF token of a session cookie: only someone holding the cookie and the key computes it.
pub fn csrf_token(tokens: &Tokens, cookie: &str) -> String {
    let mut hasher = blake3::Hasher::new_keyed(tokens.console_key());
    hasher.update(b"csrf\0");
    hasher.update(cookie.as_bytes());
    hasher.finalize().to_hex()[..32].to_string()
}

/// The value of the session cookie in `headers`, if any.
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

/// Resolves the session cookie of `headers` at `now`.
pub fn console_of(app: &App, headers: &HeaderMap, now: Timestamp) -> Option<Console> {
    let value = cookie_value(headers)?;
    let role = verify(&app.tokens, value, now)?;
    Some(Console { role, csrf: csrf_token(&app.tokens, value), now })
}

/// Whether the request reached the server over TLS (a proxy in front says so): the cookie is
/// then `Secure`.
fn over_tls(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

impl FromRequestParts<Arc<App>> for Console {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Response> {
        match console_of(app, &parts.headers, now()) {
            Some(console) => Ok(console),
            // A page asks to log in; an action without a session is refused.
            None if parts.method == Method::GET || parts.method == Method::HEAD => {
                Err(Redirect::to("/ui/login").into_response())
            }
            None => Err(forbidden("not logged in: log in to the console first")),
        }
    }
}

/// Shows the login form.
pub async fn login_form(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if console_of(&app, &headers, now()).is_some() {
        return Redirect::to("/ui/workspaces").into_response();
    }
    view::login_page(None).into_response()
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
}

/// Logs in with the admin or a viewer token: sets the session cookie and goes to the
/// workspaces.
pub async fn login(State(app): State<Arc<App>>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let Some(login) = app.tokens.login(form.token.trim()) else {
        tracing::info!(event = "console_login_refused");
        let page = view::login_page(Some("that token is neither the admin token nor a viewer token"));
        return (StatusCode::UNAUTHORIZED, page).into_response();
    };
    let ttl = app.config.console_session_secs;
    let expires = now().secs() + ttl;
    let value = sign(&app.tokens, &login, expires, &crate::meta::random_hex(12));
    let secure = if over_tls(&headers) { "; Secure" } else { "" };
    let cookie = format!("{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={ttl}{secure}");
    tracing::info!(event = "console_login", role = if login == Login::Admin { "admin" } else { "viewer" });
    let mut resp = Redirect::to("/ui/workspaces").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
    resp
}

/// The logout form's fields.
#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    csrf: Option<String>,
}

/// Logs out: clears the cookie (CSRF-checked, so another site cannot log a user out).
pub async fn logout(console: Console, headers: HeaderMap, Form(form): Form<LogoutForm>) -> Response {
    let csrf_ok = form.csrf.as_deref().is_some_and(|t| constant_eq(t.as_bytes(), console.csrf.as_bytes()));
    if !csrf_ok {
        return forbidden("the form's CSRF token is missing or wrong: reload the page and try again");
    }
    let secure = if over_tls(&headers) { "; Secure" } else { "" };
    let cookie = format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    let mut resp = Redirect::to("/ui/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_verify_only_as_signed_and_in_time() {
        let tokens = Tokens::new("admin-token-0123456789", &["viewer-token-0123456789".into()]);
        let viewer = tokens.login("viewer-token-0123456789").unwrap();
        let t = Timestamp(1_000 * 1_000_000_000);
        let admin = sign(&tokens, &Login::Admin, 2_000, "n1");
        assert_eq!(verify(&tokens, &admin, t), Some(Role::Admin));
        assert_eq!(verify(&tokens, &sign(&tokens, &viewer, 2_000, "n2"), t), Some(Role::Viewer));
        // Expired, tampered, signed with another admin token, or of a viewer no longer configured.
        assert_eq!(verify(&tokens, &admin, Timestamp(2_000 * 1_000_000_000)), None);
        assert_eq!(verify(&tokens, &admin.replacen("admin", "viewer", 1), t), None);
        let other = Tokens::new("another-admin-token-0123", &[]);
        assert_eq!(verify(&other, &admin, t), None);
        assert_eq!(verify(&other, &sign(&tokens, &viewer, 2_000, "n2"), t), None);
        assert_eq!(verify(&tokens, "garbage", t), None);
        // The CSRF token depends on the cookie.
        assert_ne!(csrf_token(&tokens, &admin), csrf_token(&tokens, &sign(&tokens, &Login::Admin, 2_000, "n3")));
    }
}
