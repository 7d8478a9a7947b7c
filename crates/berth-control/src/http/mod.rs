//! The HTTP API: JSON under `/v1`, described at `/openapi.json`, plus `/healthz`, `/readyz` and
//! `/metrics`. Handlers authorise first (401, 403), then parse (400), then act.

pub mod auth;
pub mod conn;
pub mod dto;
mod error;
mod openapi;
mod routes;
mod sandboxes;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::app::App;

/// Builds the router over `app`.
pub fn router(app: Arc<App>) -> Router {
    use routes::*;
    Router::new()
        .route("/v1/workspaces", get(list_workspaces))
        .route("/v1/workspaces/{owner}", get(get_workspace).put(ensure_workspace).delete(delete_workspace))
        .route("/v1/workspaces/{owner}/close", post(close_workspace))
        .route("/v1/workspaces/{owner}/retention", axum::routing::put(set_retention))
        .route("/v1/workspaces/{owner}/sessions", post(attach))
        .route("/v1/workspaces/{owner}/snapshots", get(list_snapshots).post(publish_snapshot))
        .route("/v1/sessions/{id}/heartbeat", post(heartbeat))
        .route("/v1/sessions/{id}", axum::routing::delete(detach))
        .route("/v1/drains", get(list_drains).post(start_drain))
        .route("/v1/drains/{scope}", get(get_drain))
        .route("/v1/drains/{scope}/ready", post(ready))
        .route("/v1/workspaces/{owner}/sandboxes", post(sandboxes::start_sandbox).delete(sandboxes::stop_sandbox))
        .route("/v1/workspaces/{owner}/sandboxes/logs", get(sandboxes::sandbox_logs))
        .route("/v1/sandboxes", get(sandboxes::list_sandboxes))
        .route("/v1/sandboxes/claim", get(sandboxes::sandbox_claim))
        .route("/v1/events", get(events))
        .route("/v1/gc/run", post(gc_run))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::spec))
        .layer(middleware::from_fn(observe))
        .with_state(app)
}

/// Counts and times every request by route and status.
/// The method as a metric label: one of a closed set, so made-up methods cannot grow the
/// metric's series without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub(crate) async fn observe(req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!("berth_http_request_duration_seconds", "route" => route, "method" => method, "status" => status)
        .record(started.elapsed().as_secs_f64());
    resp
}
