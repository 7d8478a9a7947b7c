//! The operator console at `/ui`, served by `berth serve` itself: server-rendered HTML (maud,
//! escaping every value), one stylesheet and one small script embedded in the binary, SVG
//! charts drawn by the template, and `GET /v1/events/stream` (Server-Sent Events) for live
//! updates. Logins are signed cookies (`session`); every action has a confirmation page and
//! a CSRF-checked form (`actions`); viewer tokens see everything and change nothing.
//!
//! **Invariant:** every console response carries a strict Content-Security-Policy (no inline
//! script or style, nothing from another origin), so an escaped value could not run even if
//! it were not escaped.

mod actions;
mod chart;
mod detail;
mod pages;
pub mod session;
mod stream;
mod view;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

pub use detail::restore_command;
pub use stream::StreamDoc;

use crate::app::App;

/// The console's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Builds the console's routes (and the event stream) over `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/ui", get(pages::home))
        .route("/ui/", get(pages::home))
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/workspaces", get(pages::workspaces))
        .route("/ui/workspaces/{owner}", get(pages::workspace))
        .route("/ui/workspaces/{owner}/close", get(actions::close_form).post(actions::close))
        .route("/ui/workspaces/{owner}/delete", get(actions::delete_form).post(actions::delete))
        .route("/ui/drains", get(pages::drains))
        .route("/ui/drains/start", get(actions::drain_form).post(actions::drain_start))
        .route("/ui/drains/ack", get(actions::ack_form).post(actions::ack))
        .route("/ui/gc", get(pages::gc))
        .route("/ui/gc/run", get(actions::gc_preview).post(actions::gc_run))
        .route("/ui/store", get(pages::store))
        .route("/ui/assets/console.css", get(pages::css))
        .route("/ui/assets/console.js", get(pages::js))
        .route("/v1/events/stream", get(stream::events_stream))
        .layer(middleware::from_fn(secure_headers))
        .layer(middleware::from_fn(crate::http::observe))
        .with_state(app)
}

/// Adds the CSP and its companions to every console response; pages are never cached.
async fn secure_headers(req: Request, next: Next) -> Response {
    let asset = req.uri().path().starts_with("/ui/assets/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !asset {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
