//! Sandbox routes: start a sandbox for a workspace, stop it (a drain), list them, read a
//! sandbox's output. A sandbox is a container of the substrate running berth's supervisor
//! (`berth agent run --spec FILE -- CMD`), bind-mounted read-only from this server's binary.
//!
//! The supervisor's spec holds the sandbox token: it goes into the container as a file owned
//! by the sandbox's user, mode 0400, never into its environment or command line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use berth_api as api;
use berth_core::session::InstanceId;
use berth_core::workspace::WorkspaceId;
use serde::Deserialize;
use utoipa::OpenApi;

use super::auth::{refusal, Bearer, Principal};
use super::dto::{self, parse_body};
use super::routes;
use super::App;
use crate::app::now;
use crate::error::{Error, Result};
use crate::meta::{random_hex, WorkspaceRow};
use crate::sandboxes::{
    self as sb, stop_timeout_secs, BERTH_PATH, CLAIM_PATH, DEFAULT_GRACE_SECS, LABEL_STOP_TIMEOUT, LABEL_TOKEN_HASH,
    SANDBOX_PREFIX, SPEC_PATH,
};
use crate::volumes::{
    HandOver, PrivateFile, SandboxInfo, SandboxKind, SandboxSpec, Sandboxes, LABEL_GENERATION, LABEL_OWNER,
    LABEL_SANDBOX, LABEL_SESSION, WORKSPACE_PATH,
};

/// Most log lines one call returns.
const LOG_TAIL_MAX: usize = 100_000;

/// The OpenAPI description of these routes, merged into the API's.
#[derive(OpenApi)]
#[openapi(
    paths(start_sandbox, stop_sandbox, list_sandboxes, sandbox_logs, sandbox_claim),
    components(schemas(api::StartSandbox, api::Sandbox, api::SandboxList, api::StopReply, api::StoppedSandbox))
)]
pub struct SandboxDoc;

fn owner_param(s: &str) -> Result<WorkspaceId> {
    WorkspaceId::new(s).map_err(|e| Error::BadRequest(e.to_string()))
}

/// The labels of `owner`'s workspace sandboxes.
fn owner_labels(app: &App, owner: &WorkspaceId) -> BTreeMap<String, String> {
    let mut labels = sb::install_labels(app);
    labels.insert(LABEL_SANDBOX.into(), SandboxKind::Workspace.as_str().into());
    labels.insert(LABEL_OWNER.into(), owner.to_string());
    labels
}

/// The name prefix of the sandboxes of the workspace whose volume is `ws`'s (a claimed warm
/// container carries no owner label, only this name).
fn name_prefix(ws: &WorkspaceRow) -> String {
    format!("{SANDBOX_PREFIX}{}-", ws.record.volume.name.as_str().trim_start_matches("ws-"))
}

/// `owner`'s sandboxes (cold and claimed warm ones), oldest first.
async fn owner_sandboxes(app: &App, sandboxes: &dyn Sandboxes, owner: &WorkspaceId) -> Result<Vec<SandboxInfo>> {
    let Some(ws) = app.meta.workspace(owner).await? else { return Ok(Vec::new()) };
    let prefix = name_prefix(&ws);
    let all = sandboxes.list(&sb::install_labels(app)).await?;
    Ok(all.into_iter().filter(|s| s.name.starts_with(&prefix)).collect())
}

/// Checks a start request; the error names the field.
fn validate(body: &api::StartSandbox) -> Result<()> {
    let bad = |m: String| Err(Error::BadRequest(m));
    if body.image.trim().is_empty() {
        return bad("image: name the sandbox's image".into());
    }
    if body.command.is_empty() || body.command[0].is_empty() {
        return bad("command: give the agent command to run (argv, at least the program)".into());
    }
    for k in body.env.keys() {
        if k.is_empty() || k.contains(['=', '\0']) || k.starts_with("BERTH_") {
            return bad(format!("env: '{k}' is not a usable variable name (BERTH_* are berth's own)"));
        }
    }
    if body.cpus.is_some_and(|c| !(c > 0.0 && c <= 1024.0)) {
        return bad("cpus: use a positive number of CPUs, e.g. 1.5".into());
    }
    if body.memory_bytes.is_some_and(|m| m < 6 << 20) {
        return bad("memory_bytes: the engine needs at least 6 MiB".into());
    }
    if body.grace_secs.is_some_and(|g| g == 0 || g > 3600) || body.interval_secs == Some(0) {
        return bad("grace_secs and interval_secs: use 1 s or more (grace at most 1 h)".into());
    }
    Ok(())
}

/// The wire view of a sandbox.
fn sandbox_dto(s: &SandboxInfo) -> api::Sandbox {
    api::Sandbox {
        id: s.id.clone(),
        name: s.name.clone(),
        kind: if s.name.starts_with(SANDBOX_PREFIX) { SandboxKind::Workspace } else { SandboxKind::Warm }
            .as_str()
            .to_string(),
        owner: s.labels.get(LABEL_OWNER).cloned(),
        session_id: s.labels.get(LABEL_SESSION).cloned(),
        image: s.image.clone(),
        state: s.state.clone(),
        status: s.status.clone(),
        created_at: dto::ts(berth_core::time::Timestamp(s.created_secs.saturating_mul(1_000_000_000))),
        warm: s.labels.get(LABEL_SANDBOX).map(String::as_str) == Some(SandboxKind::Warm.as_str()),
    }
}

/// The supervisor's spec: the session, where the control plane is, and the run's settings.
/// `platform_grace` is the sandbox's stop timeout (the drain is cut to fit in it).
fn agent_spec(
    app: &App,
    name: &str,
    body: &api::StartSandbox,
    session: api::Session,
    platform_grace: u64,
) -> Result<Vec<u8>> {
    let grace = body.grace_secs.unwrap_or(DEFAULT_GRACE_SECS);
    let mut spec = serde_json::json!({
        "session": session,
        "server": app.config.sandbox.server_url(&app.config),
        "dir": WORKSPACE_PATH,
        "instance_id": name,
        "grace_secs": grace,
        "platform_grace_secs": platform_grace,
    });
    if let Some(i) = body.interval_secs {
        spec["interval_secs"] = i.into();
        spec["first_after_secs"] = i.into();
    }
    if let Some(repos) = &body.repos {
        spec["repos"] = serde_json::to_value(repos).map_err(|e| Error::BadRequest(format!("repos: {e}")))?;
    }
    serde_json::to_vec(&spec).map_err(|e| Error::Corrupt(format!("agent spec: {e}")))
}

/// Everything the substrate needs to start `owner`'s sandbox.
fn sandbox_spec(
    app: &App,
    ws: &WorkspaceRow,
    name: &str,
    body: &api::StartSandbox,
    session: api::Session,
) -> Result<SandboxSpec> {
    let grace = body.grace_secs.unwrap_or(DEFAULT_GRACE_SECS);
    let stop_timeout = stop_timeout_secs(grace);
    let mut labels = app.config.sandbox.labels.clone();
    labels.extend(body.labels.clone());
    labels.extend(owner_labels(app, &ws.record.owner));
    labels.insert(LABEL_GENERATION.into(), ws.record.generation.to_string());
    labels.insert(LABEL_SESSION.into(), session.session_id.clone());
    labels.insert(LABEL_STOP_TIMEOUT.into(), stop_timeout.to_string());
    let mut env: Vec<String> = body.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.extend(sb::store_env_of(&app.config));
    let mut command = vec![BERTH_PATH.to_string(), "agent".into(), "run".into(), "--spec".into(), SPEC_PATH.into()];
    command.push("--".into());
    command.extend(body.command.iter().cloned());
    Ok(SandboxSpec {
        name: name.to_string(),
        image: body.image.clone(),
        command,
        env,
        volume: Some(ws.record.volume.name.clone()),
        binds: sb::binds_of(&app.config)?,
        private_file: Some(PrivateFile {
            path: SPEC_PATH.into(),
            content: agent_spec(app, name, body, session, stop_timeout)?,
        }),
        user: app.config.sandbox.user(),
        memory_bytes: body.memory_bytes,
        cpus: body.cpus,
        stop_timeout_secs: stop_timeout,
        network: app.config.sandbox.network.clone(),
        labels,
    })
}

/// Starts a sandbox for the workspace: ensures the workspace and its volume, attaches a
/// session, and starts a container running the agent command under berth's supervisor.
#[utoipa::path(post, path = "/v1/workspaces/{owner}/sandboxes", tag = "sandboxes",
    params(("owner" = String, Path)), request_body = api::StartSandbox,
    responses((status = 201, body = api::Sandbox), (status = 400, body = api::ErrorBody),
        (status = 409, body = api::ErrorBody, description = "a sandbox runs already, the lease is held, or this substrate runs no sandboxes"),
        (status = 503, body = api::ErrorBody, description = "draining, or the engine failed")))]
pub async fn start_sandbox(
    principal: Principal,
    State(app): State<Arc<App>>,
    Path(owner): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse> {
    principal.admin()?;
    let owner = owner_param(&owner)?;
    let body: api::StartSandbox = parse_body(&body)?;
    validate(&body)?;
    let sandboxes = sb::of(&app)?.clone();
    let ensure = api::EnsureWorkspace {
        labels: body.labels.clone(),
        repos: body.repos.clone().unwrap_or_default(),
        ..Default::default()
    };
    let (ws, _) = app.meta.ensure_workspace(&owner, &dto::ensure_options(ensure, &app.config)?, now()).await?;
    for s in owner_sandboxes(&app, sandboxes.as_ref(), &owner).await? {
        if matches!(s.state.as_str(), "running" | "created" | "restarting") {
            return Err(Error::WrongState(format!(
                "a sandbox of {owner} is {} already (container {}): stop it first (berth sandbox stop {owner})",
                s.state, s.name
            )));
        }
        // A dead one the watcher has not removed yet holds the volume.
        sandboxes.remove(&s.id).await?;
    }
    // The lease needs the volume's record present, even for a warm container that never
    // mounts it.
    let ws = routes::ensure_volume(&app, ws, false).await?;
    let name = format!("{}{}", name_prefix(&ws), random_hex(3));
    let instance = InstanceId::new(name.clone()).map_err(|e| Error::Corrupt(e.to_string()))?;
    let attached = app.meta.attach(&owner, &instance, None, None, now()).await?;
    metrics::counter!("berth_attaches_total").increment(1);
    let session_id = attached.session.id.clone();
    let session = routes::session_reply(&app, attached);
    match start_with_session(&app, sandboxes.as_ref(), ws, &name, &body, session).await {
        Ok(info) => {
            let warm = info.labels.get(LABEL_SANDBOX).map(String::as_str) == Some(SandboxKind::Warm.as_str());
            tracing::info!(event = "sandbox_started", owner = %owner, container = %info.name, session = %session_id, warm);
            Ok((StatusCode::CREATED, Json(sandbox_dto(&info))))
        }
        Err(e) => {
            // No container runs the session: end it now rather than at lease expiry.
            if let Err(d) = app.meta.detach(&session_id, now()).await {
                tracing::warn!(event = "detach_failed", session = %session_id, error = %d);
            }
            Err(e)
        }
    }
}

/// Runs the attached session: in a claimed warm container of the image when its pool has one
/// (and no limits are asked for: a warm container was made without them), else in a new
/// container with the workspace volume.
async fn start_with_session(
    app: &App,
    sandboxes: &dyn Sandboxes,
    ws: WorkspaceRow,
    name: &str,
    body: &api::StartSandbox,
    session: api::Session,
) -> Result<SandboxInfo> {
    let limits = body.memory_bytes.is_some() || body.cpus.is_some();
    let warm = if limits { None } else { sb::claim_warm(app, sandboxes, &body.image, name).await? };
    if let Some(info) = warm {
        if let Err(e) = hand_over(app, sandboxes, &info, body, session).await {
            let _ = sandboxes.remove(&info.id).await;
            return Err(e);
        }
        return Ok(info);
    }
    // Always: a volume lost with its node is made again, and the agent restores into it.
    let ws = routes::ensure_volume(app, ws, true).await?;
    let spec = sandbox_spec(app, &ws, name, body, session)?;
    Ok(sandboxes.start(&spec).await?)
}

/// Hands the attached session to claimed warm sandbox `info`: puts the spec, then the claim
/// (what its supervisor waits for) into it; or, where the sandbox fetches its claim, makes the
/// token it holds the session's and keeps the claim (its spec without a token) for it.
async fn hand_over(
    app: &App,
    sandboxes: &dyn Sandboxes,
    info: &SandboxInfo,
    body: &api::StartSandbox,
    mut session: api::Session,
) -> Result<()> {
    let stop_timeout = info
        .labels
        .get(LABEL_STOP_TIMEOUT)
        .and_then(|t| t.parse().ok())
        .unwrap_or(stop_timeout_secs(DEFAULT_GRACE_SECS));
    match sandboxes.hand_over() {
        HandOver::PutFiles => {
            let spec = agent_spec(app, &info.name, body, session, stop_timeout)?;
            let spec = PrivateFile { path: SPEC_PATH.into(), content: spec };
            let claim = serde_json::json!({"spec": SPEC_PATH, "command": body.command, "env": body.env});
            let claim = PrivateFile { path: CLAIM_PATH.into(), content: claim.to_string().into_bytes() };
            let user = app.config.sandbox.user();
            // The spec first: the claim is what the waiting supervisor looks for. One call (on
            // Docker one archive upload, each a round trip of 100-200 ms on a loaded engine).
            Ok(sandboxes.put_files(&info.id, &[spec, claim], user).await?)
        }
        HandOver::Fetch => {
            let hash = info.labels.get(LABEL_TOKEN_HASH).ok_or_else(|| {
                Error::Corrupt(format!("warm sandbox {} carries no {LABEL_TOKEN_HASH} label", info.id))
            })?;
            let id = berth_core::session::SessionId::new(session.session_id.clone())
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            // The sandbox holds its token already: the attach's dies unseen.
            session.token = String::new();
            let spec: serde_json::Value =
                serde_json::from_slice(&agent_spec(app, &info.name, body, session, stop_timeout)?)
                    .map_err(|e| Error::Corrupt(format!("agent spec: {e}")))?;
            let claim = serde_json::json!({"spec": spec, "command": body.command, "env": body.env});
            app.meta.hand_to_warm(&id, hash, &claim.to_string()).await
        }
    }
}

/// Query of a claim request.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ClaimQuery {
    /// Seconds to wait for the claim before answering 401, 0-25 (default 0: answer at once).
    wait_secs: Option<u64>,
}

/// The claim of the calling warm sandbox (by its own token, which its claim made the
/// session's): the supervisor's spec without the token, the agent command and its environment.
/// A warm sandbox not claimed yet holds a token of no session, so it gets 401 until then; with
/// `wait_secs` the request is held until the claim comes or the wait ends (a long poll).
#[utoipa::path(get, path = "/v1/sandboxes/claim", tag = "sandboxes", params(ClaimQuery),
    responses((status = 200, body = Object), (status = 401, body = api::ErrorBody, description = "not claimed (yet)"),
        (status = 404, body = api::ErrorBody, description = "the session was not handed to a warm sandbox")))]
pub async fn sandbox_claim(
    Bearer(token): Bearer,
    State(app): State<Arc<App>>,
    query: std::result::Result<Query<ClaimQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    let query = match routes::query_param(query) {
        Ok(q) => q,
        Err(e) => return Err(refusal(&app, &token, None, e).await),
    };
    let wait = query.wait_secs.unwrap_or(0).min(api::CLAIM_WAIT_MAX_SECS);
    let principal = tokio::select! {
        p = app.tokens.principal_within(&app.meta, &token, Duration::from_secs(wait)) => p?,
        // A waiting ask must not hold the server's shutdown open: the sandbox asks again.
        _ = app.streams.cancelled() => {
            return Err(Error::Busy { message: "the server is shutting down; ask again".into(), retry_after_secs: 1 })
        }
    };
    let session = principal
        .sandbox_session()
        .ok_or_else(|| Error::Forbidden("only a claimed warm sandbox's own token reads its claim".into()))?;
    let claim = app.meta.warm_claim(session).await?;
    let claim = claim.ok_or_else(|| Error::NotFound(format!("session {session} was not handed to a warm sandbox")))?;
    let claim: serde_json::Value = serde_json::from_str(&claim).map_err(|e| Error::Corrupt(format!("claim: {e}")))?;
    Ok(Json(claim))
}

/// Stops the workspace's sandbox: the stop signal drains it (work in progress pushed, final
/// snapshot published) within its grace, after which the engine kills it; then it is removed.
#[utoipa::path(delete, path = "/v1/workspaces/{owner}/sandboxes", tag = "sandboxes",
    params(("owner" = String, Path)),
    responses((status = 200, body = api::StopReply), (status = 404, body = api::ErrorBody, description = "no sandbox")))]
pub async fn stop_sandbox(
    principal: Principal,
    State(app): State<Arc<App>>,
    Path(owner): Path<String>,
) -> Result<Json<api::StopReply>> {
    principal.admin()?;
    let owner = owner_param(&owner)?;
    let sandboxes = sb::of(&app)?.clone();
    let found = owner_sandboxes(&app, sandboxes.as_ref(), &owner).await?;
    if found.is_empty() {
        return Err(Error::NotFound(format!("no sandbox of {owner} exists")));
    }
    let mut stopped = Vec::new();
    for s in found {
        let timeout = s
            .labels
            .get(LABEL_STOP_TIMEOUT)
            .and_then(|t| t.parse().ok())
            .unwrap_or(stop_timeout_secs(DEFAULT_GRACE_SECS));
        if let Some(ended) = sandboxes.stop(&s.id, timeout).await? {
            tracing::info!(event = "sandbox_stopped", owner = %owner, container = %s.name,
                exit_code = ended.exit_code.unwrap_or(-1));
            stopped.push(api::StoppedSandbox { id: s.id, exit_code: ended.exit_code, oom_killed: ended.oom_killed });
        }
    }
    Ok(Json(api::StopReply { stopped }))
}

/// Lists this installation's sandboxes (workspace and warm), oldest first.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", responses((status = 200, body = api::SandboxList)))]
pub async fn list_sandboxes(principal: Principal, State(app): State<Arc<App>>) -> Result<Json<api::SandboxList>> {
    principal.reader()?;
    let found = sb::of(&app)?.list(&sb::install_labels(&app)).await?;
    Ok(Json(api::SandboxList { items: found.iter().map(sandbox_dto).collect() }))
}

/// Query of the sandbox logs.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Last lines, 1-100000 (default 200).
    tail: Option<usize>,
}

/// The last lines of the workspace's sandbox's output (supervisor and agent), as a JSON string.
#[utoipa::path(get, path = "/v1/workspaces/{owner}/sandboxes/logs", tag = "sandboxes",
    params(("owner" = String, Path), LogsQuery),
    responses((status = 200, body = String), (status = 404, body = api::ErrorBody, description = "no sandbox")))]
pub async fn sandbox_logs(
    principal: Principal,
    State(app): State<Arc<App>>,
    Path(owner): Path<String>,
    query: std::result::Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<String>> {
    principal.admin()?;
    let owner = owner_param(&owner)?;
    let q = routes::query_param(query)?;
    let tail = q.tail.unwrap_or(200).clamp(1, LOG_TAIL_MAX);
    let sandboxes = sb::of(&app)?;
    let found = owner_sandboxes(&app, sandboxes.as_ref(), &owner).await?;
    let latest = found.last().ok_or_else(|| Error::NotFound(format!("no sandbox of {owner} exists")))?;
    Ok(Json(sandboxes.logs(&latest.id, tail).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_timeout_leaves_the_drain_its_whole_grace() {
        for grace in [1, 3, 10, 30, 60, 299, 300, 301, 3600] {
            let t = stop_timeout_secs(grace);
            assert!(berth_core::drain::budget_secs(Some(grace), t) >= grace, "grace {grace}: {t}");
            assert!(berth_core::drain::budget_secs(Some(grace), t - 1) < grace || t == grace + 2, "{grace}: {t}");
        }
        assert_eq!(stop_timeout_secs(30), 33);
        assert_eq!(stop_timeout_secs(10), 12);
    }
}
