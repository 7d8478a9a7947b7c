//! The console's actions. Each has a confirmation page (GET) that names what will happen, and
//! a form (POST) that does it, refused with 403 for a viewer or without the session's CSRF
//! token. They call the same store methods and reconcilers as the JSON API.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use berth_core::drain::Drain;
use berth_core::scope::Scope;
use berth_core::workspace::WorkspaceId;
use maud::html;

use super::pages::error_page;
use super::session::Console;
use super::view::{self, bytes, confirm, csrf, enc, Section};
use crate::app::{now, App};
use crate::error::Error;
use crate::reconcile::{self, GcResult, SweepOptions};

type Fields = HashMap<String, String>;

fn owner_of(s: String) -> Result<WorkspaceId, Error> {
    WorkspaceId::new(s).map_err(|e| Error::BadRequest(e.to_string()))
}

fn scope_of(s: Option<&String>) -> Result<Scope, Error> {
    let s = s.map(String::as_str).unwrap_or("");
    s.trim().parse().map_err(|e: berth_core::scope::ScopeError| Error::BadRequest(e.to_string()))
}

fn detail(owner: &WorkspaceId) -> String {
    format!("/ui/workspaces/{}", enc(owner.as_str()))
}

/// Confirms closing a workspace.
pub async fn close_form(console: Console, State(app): State<Arc<App>>, Path(owner): Path<String>) -> Response {
    if !console.can_act() {
        return super::session::forbidden("a viewer token is read-only");
    }
    let owner = match owner_of(owner) {
        Ok(o) => o,
        Err(e) => return error_page(e),
    };
    let ws = match app.meta.workspace(&owner).await {
        Ok(Some(ws)) => ws,
        Ok(None) => return error_page(Error::NotFound(format!("workspace {owner} does not exist"))),
        Err(e) => return error_page(e),
    };
    let c = vec![
        format!("close {owner}: no sandbox may attach to it any more (ensuring it again reopens it)"),
        format!(
            "let GC remove its volume {} about {} s after closing; its snapshots stay in the store",
            ws.record.volume.name, app.config.gc.cooldown_secs
        ),
        "be refused while a sandbox holds a live lease (detach or drain it first)".into(),
    ];
    let form = html! {
        form method="post" action=(format!("{}/close", detail(&owner))) {
            (csrf(&console))
            button type="submit" { "Close " (owner.as_str()) }
        }
    };
    confirm(&console, Section::Workspaces, &format!("Close {owner}?"), &c, form, &detail(&owner)).into_response()
}

/// Closes a workspace.
pub async fn close(
    console: Console,
    State(app): State<Arc<App>>,
    Path(owner): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = console.check_action(f.get("csrf").map(String::as_str)) {
        return r.into_response();
    }
    let owner = match owner_of(owner) {
        Ok(o) => o,
        Err(e) => return error_page(e),
    };
    match app.meta.close_workspace(&owner, now()).await {
        Ok(_) => Redirect::to(&detail(&owner)).into_response(),
        Err(e) => refused(&format!("Cannot close {owner}"), e),
    }
}

/// An action the store refused (409 and the like) as a page that says why.
fn refused(title: &str, e: Error) -> Response {
    let status = match &e {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::BadRequest(_) => StatusCode::BAD_REQUEST,
        Error::Db(_) | Error::Volume(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::CONFLICT,
    };
    (status, view::message_page(title, &berth_core::bounded(&e.to_string(), 2048))).into_response()
}

/// Confirms deleting a workspace: the owner must be typed.
pub async fn delete_form(console: Console, State(app): State<Arc<App>>, Path(owner): Path<String>) -> Response {
    if !console.can_act() {
        return super::session::forbidden("a viewer token is read-only");
    }
    let owner = match owner_of(owner) {
        Ok(o) => o,
        Err(e) => return error_page(e),
    };
    delete_page(&console, &app, &owner, None).await
}

async fn delete_page(console: &Console, app: &App, owner: &WorkspaceId, error: Option<&str>) -> Response {
    let (ws, snaps) = match app.meta.snapshots(owner).await {
        Ok(v) => v,
        Err(e) => return error_page(e),
    };
    let rec = &ws.record;
    let mut c = vec![];
    if let Some(h) = rec.lease.live_holder(console.now) {
        c.push(format!("end the live session of {} (its lease is revoked; its later writes are refused)", h.instance));
    }
    c.push(format!("delete the volume {} ({}) and everything on it", rec.volume.name, bytes(ws.size_bytes)));
    c.push(format!(
        "retire this generation's {} snapshot(s){}",
        snaps.len(),
        if app.config.store.is_some() { " and forget their records in the store" } else { "" }
    ));
    c.push(format!("mark {owner} deleted: ensuring it again starts generation {}, empty", rec.generation.0 + 1));
    if let Some(risk) = &rec.at_risk {
        c.push(format!("DISCARD WORK AT RISK: {} (only with the box below ticked)", risk.reason()));
    }
    let form = html! {
        form method="post" action=(format!("{}/delete", detail(owner))) {
            (csrf(console))
            @if let Some(e) = error { p.error role="alert" { (e) } }
            label for="confirm-owner" { "Type the owner, " code { (owner.as_str()) } ", to confirm" }
            input #confirm-owner type="text" name="confirm" autocomplete="off" required;
            @if rec.at_risk.is_some() {
                label { input type="checkbox" name="force" value="1"; " discard the work at risk" }
            }
            button.danger type="submit" { "Delete " (owner.as_str()) }
        }
    };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let title = format!("Delete {owner}?");
    (status, confirm(console, Section::Workspaces, &title, &c, form, &detail(owner))).into_response()
}

/// Deletes a workspace once the typed owner matches.
pub async fn delete(
    console: Console,
    State(app): State<Arc<App>>,
    Path(owner): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = console.check_action(f.get("csrf").map(String::as_str)) {
        return r.into_response();
    }
    let owner = match owner_of(owner) {
        Ok(o) => o,
        Err(e) => return error_page(e),
    };
    if f.get("confirm").map(|s| s.trim()) != Some(owner.as_str()) {
        let msg = format!("the typed owner does not match: type {owner} exactly");
        return delete_page(&console, &app, &owner, Some(&msg)).await;
    }
    let force = f.get("force").is_some_and(|v| v == "1");
    match app.meta.request_delete(&owner, force, now()).await {
        Ok(_) => {
            app.wake_delete.notify_one();
            tracing::info!(event = "console_delete_requested", owner = %owner, force);
            Redirect::to(&detail(&owner)).into_response()
        }
        Err(e) => refused(&format!("Cannot delete {owner}"), e),
    }
}

/// Confirms starting a drain (the scope may be typed, or come from a link).
pub async fn drain_form(console: Console, Query(q): Query<Fields>) -> Response {
    if !console.can_act() {
        return super::session::forbidden("a viewer token is read-only");
    }
    let scope = q.get("scope").cloned().unwrap_or_default();
    let c = vec![
        "mark the scope draining, durably, with a new handover nonce".to_string(),
        "refuse every attach into it (503 with Retry-After) while it drains; maintenance continues".to_string(),
        "tell its sandboxes on their next heartbeat, so they save and hand over".to_string(),
        "clear only by the replacement's ack with the nonce, a heartbeat from a new instance, or the hard timeout"
            .to_string(),
    ];
    let form = html! {
        form method="post" action="/ui/drains/start" {
            (csrf(&console))
            label for="scope" { "Scope (node:NAME, pool:NAME or workspace:OWNER)" }
            input #scope type="text" name="scope" value=(scope) required;
            label for="reason" { "Reason" }
            input #reason type="text" name="reason" maxlength="500";
            button type="submit" { "Start draining" }
        }
    };
    confirm(&console, Section::Drains, "Start a drain?", &c, form, "/ui/drains").into_response()
}

/// Starts a drain.
pub async fn drain_start(console: Console, State(app): State<Arc<App>>, Form(f): Form<Fields>) -> Response {
    if let Err(r) = console.check_action(f.get("csrf").map(String::as_str)) {
        return r.into_response();
    }
    let scope = match scope_of(f.get("scope")) {
        Ok(s) => s,
        Err(e) => return error_page(e),
    };
    let reason = f.get("reason").map(|r| r.chars().take(500).collect::<String>()).filter(|r| !r.trim().is_empty());
    match app.meta.start_drain(&scope, None, reason.as_deref(), now()).await {
        Ok((_, started)) => {
            if started {
                metrics::counter!("berth_drains_started_total").increment(1);
                tracing::info!(event = "drain_started", scope = %scope, reason = reason.as_deref().unwrap_or(""), by = "console");
            }
            Redirect::to("/ui/drains").into_response()
        }
        Err(e) => refused(&format!("Cannot drain {scope}"), e),
    }
}

/// Confirms acknowledging a drain with its nonce.
pub async fn ack_form(console: Console, State(app): State<Arc<App>>, Query(q): Query<Fields>) -> Response {
    if !console.can_act() {
        return super::session::forbidden("a viewer token is read-only");
    }
    let scope = match scope_of(q.get("scope")) {
        Ok(s) => s,
        Err(e) => return error_page(e),
    };
    let row = match app.meta.drain(&scope, console.now).await {
        Ok(r) => r,
        Err(e) => return error_page(e),
    };
    let Drain::Draining { nonce, .. } = &row.state else {
        return view::message_page(
            "Not draining",
            &format!("{scope} is not draining: there is nothing to acknowledge"),
        )
        .into_response();
    };
    let c = vec![
        format!("acknowledge the handover of {scope} with its nonce, as its replacement would"),
        "clear the drain: attaches into the scope are accepted again".to_string(),
    ];
    let form = html! {
        form method="post" action="/ui/drains/ack" {
            (csrf(&console))
            input type="hidden" name="scope" value=(scope.to_string());
            input type="hidden" name="nonce" value=(nonce);
            button type="submit" { "Acknowledge and clear" }
        }
    };
    confirm(&console, Section::Drains, &format!("Acknowledge the drain of {scope}?"), &c, form, "/ui/drains")
        .into_response()
}

/// Acknowledges a drain.
pub async fn ack(console: Console, State(app): State<Arc<App>>, Form(f): Form<Fields>) -> Response {
    if let Err(r) = console.check_action(f.get("csrf").map(String::as_str)) {
        return r.into_response();
    }
    let scope = match scope_of(f.get("scope")) {
        Ok(s) => s,
        Err(e) => return error_page(e),
    };
    let nonce = f.get("nonce").cloned().unwrap_or_default();
    match app.meta.ack_drain(&scope, &nonce, None, now()).await {
        Ok((_, cleared)) => {
            if cleared {
                metrics::counter!("berth_drains_cleared_total", "by" => "ack").increment(1);
            }
            Redirect::to("/ui/drains").into_response()
        }
        Err(e) => refused(&format!("Cannot acknowledge {scope}"), e),
    }
}

/// The GC preview: a dry run's plan, then the form that runs it.
pub async fn gc_preview(console: Console, State(app): State<Arc<App>>) -> Response {
    if !console.can_act() {
        return super::session::forbidden("a viewer token is read-only");
    }
    let opts = SweepOptions { dry_run: true, orphans: true, force: false };
    let report = match reconcile::gc_sweep(&app, opts).await {
        Ok(r) => r,
        Err(e) => return error_page(e),
    };
    let mut c: Vec<String> = report
        .volumes
        .iter()
        .map(|v| match &v.result {
            GcResult::Planned(action) => format!("{}: volume {} → {action:?}", v.owner, v.volume),
            GcResult::Done(o) => format!("{}: volume {} → {}", v.owner, v.volume, o.as_str()),
        })
        .collect();
    for o in report.orphans.iter().flatten() {
        c.push(format!("orphan volume {} → {:?}", o.volume, o.action));
    }
    if let Some(s) = &report.skipped {
        c.push(format!("nothing: the sweep would be skipped ({s})"));
    } else if c.is_empty() {
        c.push("nothing: no volume is a candidate now".into());
    }
    c.push(format!(
        "(dry run: {} candidate(s) are still in their cooldown)",
        report.summary.get(berth_core::gc::Outcome::Cooldown)
    ));
    let form = html! {
        form method="post" action="/ui/gc/run" {
            (csrf(&console))
            label { input type="checkbox" name="orphans" value="1" checked; " also sweep orphan volumes" }
            button type="submit" { "Run GC now" }
        }
    };
    confirm(&console, Section::Gc, "Run volume GC?", &c, form, "/ui/gc").into_response()
}

/// Runs a GC sweep and shows what it did.
pub async fn gc_run(console: Console, State(app): State<Arc<App>>, Form(f): Form<Fields>) -> Response {
    if let Err(r) = console.check_action(f.get("csrf").map(String::as_str)) {
        return r.into_response();
    }
    let opts = SweepOptions { dry_run: false, orphans: f.get("orphans").is_some_and(|v| v == "1"), force: false };
    let report = match reconcile::gc_sweep(&app, opts).await {
        Ok(r) => r,
        Err(e) => return refused("GC failed", e),
    };
    let body = html! {
        h1 { "GC ran" }
        @if let Some(s) = &report.skipped { p.error { "Skipped: " (s.to_string()) } }
        table.list { thead { tr { th scope="col" { "Outcome" } th scope="col" { "Count" } } }
            tbody { @for (k, n) in report.summary.counts() { tr { td { (k) } td.num { (n) } } } } }
        ul { @for v in &report.volumes { li { (v.owner.as_str()) ": " code { (v.volume.as_str()) } " → "
            @match &v.result { GcResult::Done(o) => (o.as_str()), GcResult::Planned(a) => (format!("{a:?}")) }
            @if let Some(e) = &v.error { " (" (e) ")" } } } }
        p { a href="/ui/gc" { "Back to GC" } }
    };
    view::page(&console, Section::Gc, "GC ran", "", body).into_response()
}
