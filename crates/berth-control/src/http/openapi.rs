//! The OpenAPI description served at `/openapi.json`, generated from the handlers and wire types.

use axum::Json;
use berth_api as api;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::routes;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "berth control plane", description = "Durable workspaces for AI agent sandboxes: workspaces, single-writer sessions, drains, GC. Every /v1 endpoint takes 'Authorization: Bearer TOKEN' (the admin token; a viewer token, for reads only; or a sandbox token for its own session, workspace and drain scope)."),
    paths(
        routes::ensure_workspace, routes::get_workspace, routes::list_workspaces, routes::close_workspace,
        routes::set_retention,
        routes::delete_workspace, routes::attach, routes::heartbeat, routes::detach, routes::publish_snapshot,
        routes::list_snapshots, routes::start_drain, routes::get_drain, routes::list_drains, routes::ready,
        routes::events, routes::gc_run, routes::healthz, routes::readyz, routes::metrics,
    ),
    components(schemas(
        api::EnsureWorkspace, api::SetRetention, api::Workspace, api::WorkspaceList, api::Attach, api::Session, api::Heartbeat,
        api::HeartbeatReply, api::PublishSnapshot, api::SnapshotInfo, api::SnapshotList, api::StartDrain,
        api::DrainInfo, api::DrainList, api::Ready, api::ReadyReply, api::Event, api::EventList, api::GcRun,
        api::GcReport, api::ErrorBody,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// Serves the OpenAPI document.
pub async fn spec() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::sandboxes::SandboxDoc::openapi());
    doc.merge(crate::ui::StreamDoc::openapi());
    Json(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_integers_on_the_wire() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        for (schema, field) in [
            ("Heartbeat", "epoch"),
            ("Session", "epoch"),
            ("ErrorDetail", "current_epoch"),
            ("ErrorDetail", "presented_epoch"),
        ] {
            let ty = &schemas[schema]["properties"][field]["type"];
            assert!(
                ty == "integer" || ty.as_array().is_some_and(|t| t.contains(&"integer".into())),
                "{schema}.{field}: {ty}"
            );
        }
    }
}
