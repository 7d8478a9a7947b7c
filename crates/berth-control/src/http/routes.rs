//! Request handlers, one per endpoint.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use berth_api as api;
use berth_core::id::SnapshotId;
use berth_core::lease::Fenced;
use berth_core::scope::Scope;
use berth_core::session::{InstanceId, PlaceName, SessionId};
use berth_core::workspace::WorkspaceId;
use serde::Deserialize;

use super::auth::{refusal, Bearer, Principal};
use super::dto::{self, parse_body};
use super::App;
use crate::app::now;
use crate::error::{Error, Result};
use crate::meta::{Attached, Ensured, ListFilter, State as WsState, VolumeState, WorkspaceRow};
use crate::reconcile;
use crate::volumes::{volume_labels, VolumeSpec};

fn owner_param(s: &str) -> Result<WorkspaceId> {
    WorkspaceId::new(s).map_err(|e| Error::BadRequest(e.to_string()))
}

fn session_param(s: &str) -> Result<SessionId> {
    SessionId::new(s).map_err(|e| Error::BadRequest(e.to_string()))
}

fn snapshot_param(s: &str) -> Result<SnapshotId> {
    SnapshotId::from_hex(s).map_err(|_| {
        let shown: String = s.chars().take(80).collect();
        Error::BadRequest(format!("snapshot_id '{shown}' is not a snapshot id: use its 64 hex digits"))
    })
}

fn scope_param(s: &str) -> Result<Scope> {
    s.parse().map_err(|e: berth_core::scope::ScopeError| Error::BadRequest(e.to_string()))
}

fn instance_param(s: String) -> Result<InstanceId> {
    InstanceId::new(s).map_err(|e| Error::BadRequest(format!("instance_id: {e}")))
}

pub(super) fn query_param<T>(query: std::result::Result<Query<T>, QueryRejection>) -> Result<T> {
    query.map(|Query(q)| q).map_err(|e| Error::BadRequest(format!("invalid query: {}", e.body_text())))
}

/// A page size: 1-1000, 100 when not given.
fn limit_param(limit: Option<u32>) -> Result<u32> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Error::BadRequest(format!("limit {limit} is out of range: use 1-1000")));
    }
    Ok(limit)
}

fn place(field: &str, v: Option<String>) -> Result<Option<PlaceName>> {
    v.map(PlaceName::new).transpose().map_err(|e| Error::BadRequest(format!("{field}: {e}")))
}

/// Ensures a workspace (idempotent): 201 when created, 200 when it existed or was reopened.
#[utoipa::path(put, path = "/v1/workspaces/{owner}", tag = "workspaces",
    params(("owner" = String, Path, description = "owner key, e.g. agent:42")),
    request_body = api::EnsureWorkspace,
    responses((status = 201, body = api::Workspace, description = "created"), (status = 200, body = api::Workspace),
        (status = 400, body = api::ErrorBody), (status = 409, body = api::ErrorBody, description = "being deleted"),
        (status = 503, body = api::ErrorBody, description = "volume being collected, or the substrate failed")))]
pub async fn ensure_workspace(
    principal: Principal,
    State(app): State<Arc<App>>,
    Path(owner): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse> {
    principal.admin()?;
    let owner = owner_param(&owner)?;
    let opts = dto::ensure_options(parse_body(&body)?, &app.config)?;
    let (ws, how) = app.meta.ensure_workspace(&owner, &opts, now()).await?;
    let ws = ensure_volume(&app, ws, false).await?;
    let status = if how == Ensured::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(dto::workspace(&ws, now()))))
}

/// Creates the workspace's volume unless it is marked present (`always`: whatever the record
/// says, e.g. after the volume was lost); returns the workspace as it is now.
pub(crate) async fn ensure_volume(app: &App, mut ws: WorkspaceRow, always: bool) -> Result<WorkspaceRow> {
    let owner = ws.record.owner.clone();
    let present = ws.record.volume.state == VolumeState::Present;
    if !present || always {
        // The record exists first, so the substrate never holds a volume berth does not know.
        let spec = VolumeSpec {
            name: ws.record.volume.name.clone(),
            labels: volume_labels(&app.install, &owner, ws.record.generation, &ws.labels),
            size_bytes: ws.size_bytes,
            storage_class: ws.storage_class.clone(),
            access_mode: ws.access_mode,
        };
        app.volumes.ensure(&spec).await?;
    }
    if !present {
        app.meta.mark_volume_present(&owner, ws.record.generation, now()).await?;
        ws = app.meta.workspace(&owner).await?.ok_or_else(|| Error::NotFound(owner.to_string()))?;
    }
    Ok(ws)
}

/// Reads a workspace.
#[utoipa::path(get, path = "/v1/workspaces/{owner}", tag = "workspaces",
    params(("owner" = String, Path)),
    responses((status = 200, body = api::Workspace), (status = 404, body = api::ErrorBody)))]
pub async fn get_workspace(
    principal: Principal,
    State(app): State<Arc<App>>,
    Path(owner): Path<String>,
) -> Result<Json<api::Workspace>> {
    let owner = owner_param(&owner)?;
    principal.read_owner(&owner)?;
    let ws = app
        .meta
        .workspace(&owner)
        .await?
        .ok_or_else(|| Error::NotFound(format!("workspace {owner} does not exist")))?;
    Ok(Json(dto::workspace(&ws, now())))
}

/// Query of the workspace listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this state (active, closed, deleting, deleted).
    state: Option<String>,
    /// Only workspaces with these labels: `key=value[,key=value...]`.
    label: Option<String>,
    /// Start after this owner (the `next` of the previous page).
    after: Option<String>,
    /// Page size, 1-1000 (default 100).
    limit: Option<u32>,
}

/// Lists workspaces by owner, one page at a time.
#[utoipa::path(get, path = "/v1/workspaces", tag = "workspaces", params(ListQuery),
    responses((status = 200, body = api::WorkspaceList), (status = 400, body = api::ErrorBody)))]
pub async fn list_workspaces(
    principal: Principal,
    State(app): State<Arc<App>>,
    query: std::result::Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<api::WorkspaceList>> {
    principal.reader()?;
    let q = query_param(query)?;
    let state = match q.state.as_deref() {
        None => None,
        Some("active") => Some(WsState::Active),
        Some("closed") => Some(WsState::Closed),
        Some("deleting") => Some(WsState::Deleting),
        Some("deleted") => Some(WsState::Deleted),
        Some(other) => {
            return Err(Error::BadRequest(format!("state '{other}' is not one of active, closed, deleting, deleted")))
        }
    };
    let limit = limit_param(q.limit)?;
    let after = q.after.as_deref().map(owner_param).transpose()?;
    let filter = ListFilter { state, labels: dto::label_selector(q.label.as_deref())? };
    let (rows, more) = app.meta.workspaces(&filter, after.as_ref(), limit as usize).await?;
    let t = now();
    let next = if more { rows.last().map(|w| w.record.owner.to_string()) } else { None };
    let items = rows.iter().map(|w| dto::workspace(w, t)).collect();
    Ok(Json(api::WorkspaceList { items, next }))
}

/// Closes a workspace: no more attaches; the volume is collected after the cooldown; snapshots stay.
#[utoipa::path(post, path = "/v1/workspaces/{owner}/close", tag = "workspaces", params(("owner" = String, Path)),
    responses((status = 200, body = api::Workspace), (status = 409, body = api::ErrorBody, description = "a live lease, or deleting")))]
pub async fn close_workspace(
    principal: Principal,
    State(app): State<Arc<App>>,
    Path(owner): Path<String>,
) -> Result<Json<api::Workspace>> {
    principal.admin()?;
    let owner = owner_param(&owner)?;
    let ws = app.meta.close_workspace(&owner, now()).await?;
    Ok(Json(dto::workspace(&ws, now())))
}

/// Sets a workspace's own retention policy, applied by scheduled retention instead of the
/// server's (`default` or null: the server's again).
#[utoipa::path(put, path = "/v1/workspaces/{owner}/retention", tag = "workspaces", params(("owner" = String, Path)),
    request_body = api::SetRetention,
    responses((status = 200, body = api::Workspace), (status = 400, body = api::ErrorBody, description = "not a policy"),
        (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody, description = "deleting or deleted")))]
pub async fn set_retention(
    principal: Principal,
    State(app): State<Arc<App>>,
    Path(owner): Path<String>,
    body: Bytes,
) -> Result<Json<api::Workspace>> {
    principal.admin()?;
    let owner = owner_param(&owner)?;
    let body: api::SetRetention = parse_body(&body)?;
    let policy = dto::retention_policy("policy", body.policy.as_deref())?;
    let ws = app.meta.set_workspace_retention(&owner, policy, now()).await?;
    Ok(Json(dto::workspace(&ws, now())))
}

/// Query of a deletion.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Delete an at-risk workspace too, discarding the work its volume holds that no snapshot has.
    force: Option<bool>,
}

/// Asks for a workspace's deletion: 202 with state `deleting`; it completes in the background
/// (sessions ended, volume deleted, snapshots retired, generation bumped). An at-risk
/// workspace is refused (409 `at_risk`) unless `force=true`.
#[utoipa::path(delete, path = "/v1/workspaces/{owner}", tag = "workspaces", params(("owner" = String, Path), DeleteQuery),
    responses((status = 202, body = api::Workspace), (status = 200, body = api::Workspace, description = "already deleted"),
        (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody, description = "at risk: needs force")))]
pub async fn delete_workspace(
    principal: Principal,
    State(app): State<Arc<App>>,
    Path(owner): Path<String>,
    query: std::result::Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    principal.admin()?;
    let owner = owner_param(&owner)?;
    let force = query_param(query)?.force.unwrap_or(false);
    let (ws, _) = app.meta.request_delete(&owner, force, now()).await?;
    app.wake_delete.notify_one();
    let status = if ws.record.state == WsState::Deleted { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(dto::workspace(&ws, now()))))
}

/// Attaches a sandbox: takes the single-writer lease with a new fencing epoch.
#[utoipa::path(post, path = "/v1/workspaces/{owner}/sessions", tag = "sessions", params(("owner" = String, Path)),
    request_body = api::Attach,
    responses((status = 201, body = api::Session), (status = 409, body = api::ErrorBody, description = "another lease is live (lease_held) or the workspace is not active"),
        (status = 503, body = api::ErrorBody, description = "the scope is draining; see Retry-After")))]
pub async fn attach(
    principal: Principal,
    State(app): State<Arc<App>>,
    Path(owner): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse> {
    principal.admin()?;
    let owner = owner_param(&owner)?;
    let body: api::Attach = parse_body(&body)?;
    let instance = instance_param(body.instance_id)?;
    let node = place("node", body.node)?;
    let pool = place("pool", body.pool)?;
    let a = app.meta.attach(&owner, &instance, node.as_ref(), pool.as_ref(), now()).await?;
    metrics::counter!("berth_attaches_total").increment(1);
    Ok((StatusCode::CREATED, Json(session_reply(&app, a))))
}

/// The answer of an attach: the session with its token, mount and init spec.
pub(crate) fn session_reply(app: &App, a: Attached) -> api::Session {
    let cfg = &app.config;
    let owner = a.session.owner.clone();
    api::Session {
        session_id: a.session.id.to_string(),
        owner: owner.to_string(),
        generation: a.session.generation.0,
        workspace_id: a.workspace.id.clone(),
        instance_id: a.session.instance.to_string(),
        epoch: a.session.epoch,
        lease_expires_at: dto::ts(a.expires),
        lease_ttl_secs: app.meta.rules().lease_ttl_secs as u64,
        token: a.token,
        mount: dto::mount(app.volumes.mount(&a.workspace.record.volume.name)),
        init: api::InitSpec {
            owner: owner.to_string(),
            generation: a.session.generation.0,
            store: cfg.store.clone(),
            repos: a.workspace.repos.iter().map(dto::repo).collect(),
            latest_snapshot: a.workspace.latest_snapshot.map(|id| id.to_hex()),
        },
        handover: a.handover.map(|nonce| api::Handover { scope: Scope::Workspace(owner.clone()).to_string(), nonce }),
    }
}

/// Renews a session's lease; returns the drain state of its scopes from the same transaction.
#[utoipa::path(post, path = "/v1/sessions/{id}/heartbeat", tag = "sessions", params(("id" = String, Path)),
    request_body = api::Heartbeat,
    responses((status = 200, body = api::HeartbeatReply), (status = 409, body = api::ErrorBody, description = "stale epoch: stop writing")))]
pub async fn heartbeat(
    Bearer(token): Bearer,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<api::HeartbeatReply>> {
    let id = session_param(&id)?;
    // The hot path: a sandbox token is checked by the heartbeat's own statement, one round trip
    // instead of a lookup and then the heartbeat. Refusals take the lookup, which says why.
    let sandbox = match app.tokens.configured(&token) {
        Ok(known) => {
            known.session(&id)?;
            None
        }
        Err(hash) => Some(hash),
    };
    let parsed =
        parse_body::<api::Heartbeat>(&body).and_then(|b| Ok((b.epoch, instance_param(b.instance_id)?, b.init_done)));
    let (epoch, instance, init_done) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if sandbox.is_some() => return Err(refusal(&app, &token, Some(&id), e).await),
        Err(e) => return Err(e),
    };
    let hb = match app.meta.heartbeat(&id, epoch, &instance, now(), sandbox.as_deref()).await {
        Err(e @ (Error::Unauthorized | Error::NotFound(_))) if sandbox.is_some() => {
            return Err(refusal(&app, &token, Some(&id), e).await)
        }
        other => other?,
    };
    metrics::counter!("berth_heartbeats_total").increment(1);
    if init_done == Some(true) {
        app.refill_holds.init_ended(instance.as_str(), now());
    }
    let drains: Vec<_> = hb
        .draining
        .iter()
        .map(|d| {
            let mut info = dto::drain(d);
            // Only the workspace's own drain hands its nonce to the sandbox.
            if !matches!(d.scope, Scope::Workspace(_)) {
                info.nonce = None;
            }
            info
        })
        .collect();
    Ok(Json(api::HeartbeatReply { lease_expires_at: dto::ts(hb.expires), draining: !drains.is_empty(), drains }))
}

/// Detaches a session and releases its lease (idempotent).
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody)))]
pub async fn detach(principal: Principal, State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<StatusCode> {
    let id = session_param(&id)?;
    principal.session(&id)?;
    app.meta.detach(&id, now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Records a published snapshot as the latest of the workspace's generation; fenced by epoch.
#[utoipa::path(post, path = "/v1/workspaces/{owner}/snapshots", tag = "snapshots", params(("owner" = String, Path)),
    request_body = api::PublishSnapshot,
    responses((status = 201, body = api::SnapshotInfo), (status = 409, body = api::ErrorBody, description = "stale epoch")))]
pub async fn publish_snapshot(
    principal: Principal,
    State(app): State<Arc<App>>,
    Path(owner): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse> {
    let owner = owner_param(&owner)?;
    principal.owner(&owner)?;
    let body: api::PublishSnapshot = parse_body(&body)?;
    let snapshot_id = snapshot_param(&body.snapshot_id)?;
    let stats = dto::snapshot_stats(&body.stats);
    let session = principal.sandbox_session();
    let s = app
        .meta
        .publish_snapshot(&owner, session, body.epoch, &snapshot_id, &stats, body.final_snapshot, now())
        .await?;
    Ok((StatusCode::CREATED, Json(dto::snapshot(&s, Some(s.snapshot_id)))))
}

/// Lists the snapshots of the workspace's current generation, newest first.
#[utoipa::path(get, path = "/v1/workspaces/{owner}/snapshots", tag = "snapshots", params(("owner" = String, Path)),
    responses((status = 200, body = api::SnapshotList)))]
pub async fn list_snapshots(
    principal: Principal,
    State(app): State<Arc<App>>,
    Path(owner): Path<String>,
) -> Result<Json<api::SnapshotList>> {
    let owner = owner_param(&owner)?;
    principal.read_owner(&owner)?;
    let (ws, snaps) = app.meta.snapshots(&owner).await?;
    Ok(Json(api::SnapshotList { items: snaps.iter().map(|s| dto::snapshot(s, ws.latest_snapshot)).collect() }))
}

/// Starts draining a scope (201), or returns the running drain and its nonce (200).
#[utoipa::path(post, path = "/v1/drains", tag = "drains", request_body = api::StartDrain,
    responses((status = 201, body = api::DrainInfo), (status = 200, body = api::DrainInfo, description = "already draining")))]
pub async fn start_drain(principal: Principal, State(app): State<Arc<App>>, body: Bytes) -> Result<impl IntoResponse> {
    let body: api::StartDrain = parse_body(&body)?;
    let scope = scope_param(&body.scope)?;
    principal.scope(&scope)?;
    let mut instance = body.instance_id.map(instance_param).transpose()?;
    if let Principal::Sandbox { session, .. } = &principal {
        // A sandbox evicts only itself, so the drain records its session, which may then
        // not acknowledge it.
        let own = app.meta.session(session).await?.instance;
        if instance.as_ref().is_some_and(|i| *i != own) {
            return Err(Error::Forbidden(format!(
                "a sandbox token may drain only its own instance {own}; leave instance_id out"
            )));
        }
        instance = Some(own);
    }
    let reason = body.reason.map(|r| r.chars().take(500).collect::<String>());
    let (row, started) = app.meta.start_drain(&scope, instance.as_ref(), reason.as_deref(), now()).await?;
    if started {
        metrics::counter!("berth_drains_started_total").increment(1);
        tracing::info!(event = "drain_started", scope = %scope, reason = reason.as_deref().unwrap_or(""));
    }
    let status = if started { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(dto::drain(&row))))
}

/// Reads the drain state of a scope (a scope never drained is open).
#[utoipa::path(get, path = "/v1/drains/{scope}", tag = "drains", params(("scope" = String, Path, description = "node:NAME, pool:NAME or workspace:OWNER")),
    responses((status = 200, body = api::DrainInfo)))]
pub async fn get_drain(
    principal: Principal,
    State(app): State<Arc<App>>,
    Path(scope): Path<String>,
) -> Result<Json<api::DrainInfo>> {
    let scope = scope_param(&scope)?;
    principal.read_scope(&scope)?;
    let row = app.meta.drain(&scope, now()).await?;
    Ok(Json(dto::drain(&row)))
}

/// Lists every scope that is draining or has drained.
#[utoipa::path(get, path = "/v1/drains", tag = "drains", responses((status = 200, body = api::DrainList)))]
pub async fn list_drains(principal: Principal, State(app): State<Arc<App>>) -> Result<Json<api::DrainList>> {
    principal.reader()?;
    let rows = app.meta.drains(now()).await?;
    Ok(Json(api::DrainList { items: rows.iter().map(dto::drain).collect() }))
}

/// The replacement acknowledges the handover: the matching nonce clears the drain; the wrong
/// one is 409 and it keeps draining; an ack while not draining is a no-op.
#[utoipa::path(post, path = "/v1/drains/{scope}/ready", tag = "drains", params(("scope" = String, Path)),
    request_body = api::Ready,
    responses((status = 200, body = api::ReadyReply), (status = 409, body = api::ErrorBody, description = "wrong nonce, or stale epoch")))]
pub async fn ready(
    principal: Principal,
    State(app): State<Arc<App>>,
    Path(scope): Path<String>,
    body: Bytes,
) -> Result<Json<api::ReadyReply>> {
    let scope = scope_param(&scope)?;
    principal.scope(&scope)?;
    let body: api::Ready = parse_body(&body)?;
    let fence = match &principal {
        Principal::Sandbox { session, .. } => {
            let s = app.meta.session(session).await?;
            if let Some(epoch) = body.epoch.filter(|e| *e != s.epoch) {
                return Err(Fenced { presented: epoch, current: Some(s.epoch) }.into());
            }
            Some((session.clone(), s.epoch))
        }
        // A viewer was refused by the scope check above.
        Principal::Admin | Principal::Viewer => None,
    };
    let (row, cleared) = app.meta.ack_drain(&scope, &body.nonce, fence.as_ref().map(|(s, e)| (s, *e)), now()).await?;
    if cleared {
        metrics::counter!("berth_drains_cleared_total", "by" => "ack").increment(1);
    }
    Ok(Json(api::ReadyReply { cleared, drain: dto::drain(&row) }))
}

/// Query of the audit log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Only events after this id.
    after: Option<i64>,
    /// Only this owner.
    owner: Option<String>,
    /// Only this kind.
    kind: Option<String>,
    /// Page size, 1-1000 (default 100).
    limit: Option<u32>,
}

/// Reads the audit log, oldest first.
#[utoipa::path(get, path = "/v1/events", tag = "operations", params(EventQuery),
    responses((status = 200, body = api::EventList)))]
pub async fn events(
    principal: Principal,
    State(app): State<Arc<App>>,
    query: std::result::Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<api::EventList>> {
    principal.reader()?;
    let q = query_param(query)?;
    let limit = limit_param(q.limit)?;
    let owner = q.owner.as_deref().map(owner_param).transpose()?;
    let rows = app.meta.events(q.after.unwrap_or(0), owner.as_ref(), q.kind.as_deref(), limit).await?;
    Ok(Json(api::EventList { items: rows.into_iter().map(dto::event).collect() }))
}

/// Runs a volume GC sweep now (optionally the orphan sweep too); `dry_run` plans only.
#[utoipa::path(post, path = "/v1/gc/run", tag = "operations", request_body = api::GcRun,
    responses((status = 200, body = api::GcReport)))]
pub async fn gc_run(principal: Principal, State(app): State<Arc<App>>, body: Bytes) -> Result<Json<api::GcReport>> {
    principal.admin()?;
    let body: api::GcRun = parse_body(&body)?;
    let opts = reconcile::SweepOptions { dry_run: body.dry_run, orphans: body.orphans, force: body.force };
    Ok(Json(dto::gc_report(&reconcile::gc_sweep(&app, opts).await?)))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the metadata store and the substrate answer.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, body = api::ErrorBody)))]
pub async fn readyz(State(app): State<Arc<App>>) -> Result<&'static str> {
    app.meta.ping().await?;
    app.volumes.health().await?;
    Ok("ready\n")
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    // Read at each scrape, so the gauge is the database's truth across replicas.
    match app.meta.count_at_risk().await {
        Ok(n) => metrics::gauge!("berth_workspaces_at_risk").set(n as f64),
        Err(e) => tracing::warn!(event = "metrics_read_failed", error = %e),
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render())
}
