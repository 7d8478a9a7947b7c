//! The console's read-only pages: workspaces (filtered, searched, paginated), a workspace's
//! detail, drains, GC and the store. Each works without JavaScript; the script only refreshes
//! `main` on events and keeps ages ticking.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use berth_core::drain::Drain;
use berth_core::scope::Scope;
use berth_core::time::Timestamp;
use berth_core::workspace::WorkspaceId;
use maud::{html, Markup};
use serde::Deserialize;

use super::chart::{self, Bar};
use super::session::Console;
use super::view::{self, ago, bytes, enc, page, since_snapshot, Section};
use crate::app::App;
use crate::error::Error;
use crate::meta::{ConsoleFilter, ConsoleRow, EventRow, State as WsState};

/// Rows per page of the workspace list.
const PAGE: usize = 50;

/// A failed read as a page.
pub fn error_page(e: Error) -> Response {
    let status = match &e {
        Error::NotFound(_) => axum::http::StatusCode::NOT_FOUND,
        Error::BadRequest(_) => axum::http::StatusCode::BAD_REQUEST,
        _ => axum::http::StatusCode::SERVICE_UNAVAILABLE,
    };
    if status.is_server_error() {
        tracing::error!(event = "console_read_failed", error = %e);
    }
    (status, view::message_page("Cannot show this", &berth_core::bounded(&e.to_string(), 2048))).into_response()
}

/// Query of the workspace list.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// Only this state.
    #[serde(default)]
    state: String,
    /// Only these labels, `k=v[,k=v]`.
    #[serde(default)]
    label: String,
    /// Owner contains.
    #[serde(default)]
    q: String,
    /// Only at-risk workspaces.
    #[serde(default)]
    risk: String,
    /// Start after this owner.
    #[serde(default)]
    after: String,
}

impl ListQuery {
    fn filter(&self) -> Result<ConsoleFilter, Error> {
        let state = match self.state.as_str() {
            "" => None,
            s => Some(WsState::parse(s).ok_or_else(|| {
                Error::BadRequest(format!("state '{s}' is not one of active, closed, deleting, deleted"))
            })?),
        };
        let label = Some(self.label.trim()).filter(|l| !l.is_empty());
        Ok(ConsoleFilter {
            state,
            labels: crate::http::dto::label_selector(label)?,
            owner_contains: Some(self.q.trim().to_string()).filter(|q| !q.is_empty()),
            at_risk: !self.risk.is_empty(),
        })
    }

    /// This query's link, starting after `after`.
    fn link(&self, after: Option<&str>) -> String {
        let mut parts = Vec::new();
        for (k, v) in [("state", &self.state), ("label", &self.label), ("q", &self.q), ("risk", &self.risk)] {
            if !v.is_empty() {
                parts.push(format!("{k}={}", enc(v)));
            }
        }
        if let Some(a) = after {
            parts.push(format!("after={}", enc(a)));
        }
        if parts.is_empty() {
            "/ui/workspaces".into()
        } else {
            format!("/ui/workspaces?{}", parts.join("&"))
        }
    }
}

/// Redirects `/ui` to the workspaces.
pub async fn home() -> axum::response::Redirect {
    axum::response::Redirect::to("/ui/workspaces")
}

/// The workspace list.
pub async fn workspaces(console: Console, State(app): State<Arc<App>>, Query(q): Query<ListQuery>) -> Response {
    match workspaces_body(&console, &app, &q).await {
        Ok(body) => page(&console, Section::Workspaces, "Workspaces", "all", body).into_response(),
        Err(e) => error_page(e),
    }
}

async fn workspaces_body(console: &Console, app: &App, q: &ListQuery) -> Result<Markup, Error> {
    let filter = q.filter()?;
    let after = Some(q.after.as_str())
        .filter(|a| !a.is_empty())
        .map(WorkspaceId::new)
        .transpose()
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let counts = app.meta.console_counts().await?;
    let (rows, more) = app.meta.console_workspaces(&filter, after.as_ref(), PAGE).await?;
    let next = if more { rows.last().map(|r| q.link(Some(r.ws.record.owner.as_str()))) } else { None };
    let now = console.now;
    Ok(html! {
        h1 { "Workspaces" }
        p.counts {
            a href="/ui/workspaces?state=active" { (counts.active) " active" } " · "
            a href="/ui/workspaces?state=closed" { (counts.closed) " closed" } " · "
            a href="/ui/workspaces?state=deleting" { (counts.deleting) " deleting" } " · "
            a href="/ui/workspaces?state=deleted" { (counts.deleted) " deleted" } " · "
            a.risk[counts.at_risk > 0] href="/ui/workspaces?risk=1" { (counts.at_risk) " at risk" }
        }
        (filter_form(q))
        @if rows.is_empty() {
            p.muted { "No workspace matches." }
        } @else {
            table.list #workspaces {
                thead { tr {
                    th scope="col" { "Owner" } th scope="col" { "State" } th scope="col" { "Gen" }
                    th scope="col" { "Lease holder" } th scope="col" { "Since snapshot" } th scope="col" { "Size" }
                    th scope="col" { "At risk" } th scope="col" { "Labels" }
                } }
                tbody { @for r in &rows { (row(r, now)) } }
            }
        }
        nav.pages aria-label="Pages" {
            @if !q.after.is_empty() { a href=(q.link(None)) { "First page" } }
            @if let Some(n) = next { a rel="next" href=(n) { "Next page" } }
        }
    })
}

fn filter_form(q: &ListQuery) -> Markup {
    let states = ["", "active", "closed", "deleting", "deleted"];
    html! {
        form.filters method="get" action="/ui/workspaces" role="search" {
            label { "State " select name="state" {
                @for s in states { option value=(s) selected[q.state == s] { @if s.is_empty() { "any" } @else { (s) } } }
            } }
            label { "Label " input type="text" name="label" value=(q.label) placeholder="team=infra"; }
            label { "Owner " input type="search" name="q" value=(q.q) placeholder="search owners"; }
            label { input type="checkbox" name="risk" value="1" checked[!q.risk.is_empty()]; " at risk only" }
            button type="submit" { "Filter" }
            @if !q.q.is_empty() { span.muted { "owners containing “" (q.q) "”" } }
        }
    }
}

/// One row of the list.
fn row(r: &ConsoleRow, now: Timestamp) -> Markup {
    let rec = &r.ws.record;
    let owner = rec.owner.as_str();
    html! {
        tr data-owner=(owner) .at-risk[rec.at_risk.is_some()] {
            td { a href=(format!("/ui/workspaces/{}", enc(owner))) { (owner) } }
            td { span class=(format!("state {}", rec.state.as_str())) { (rec.state.as_str()) }
                @if r.ws.is_draining(now) { " " span.badge.draining { "draining" } } }
            td.num { (rec.generation.0) }
            td { @match rec.lease.live_holder(now) {
                Some(h) => { (h.instance.as_str()) @if let Some(t) = r.lease_since { " · " (ago(t, now)) } },
                None => span.muted { "none" },
            } }
            td.num { (since_snapshot(r.snapshot_at, now)) }
            td.num { @match r.snapshot_stats.bytes {
                Some(b) => span title=(format!("volume {}", bytes(r.ws.size_bytes))) { (bytes(b)) },
                None => span.muted title=(format!("volume {}", bytes(r.ws.size_bytes))) { "–" },
            } }
            td { @if let Some(risk) = &rec.at_risk {
                span.badge.risk title=(risk.reason()) { "AT RISK" } " " (risk.outcome.as_str())
            } }
            td { @for (k, v) in &r.ws.labels { span.label { (k) "=" (v) } " " } }
        }
    }
}

/// A workspace's detail.
pub async fn workspace(console: Console, State(app): State<Arc<App>>, Path(owner): Path<String>) -> Response {
    let owner = match WorkspaceId::new(owner) {
        Ok(o) => o,
        Err(e) => return error_page(Error::BadRequest(e.to_string())),
    };
    match super::detail::body(&console, &app, &owner).await {
        Ok(body) => {
            page(&console, Section::Workspaces, owner.as_str(), &format!("owner:{owner}"), body).into_response()
        }
        Err(e) => error_page(e),
    }
}

/// An event list, newest first.
pub fn events_table(events: &[EventRow], now: Timestamp, with_owner: bool) -> Markup {
    html! {
        @if events.is_empty() { p.muted { "No events." } } @else {
            table.list.events {
                thead { tr {
                    th scope="col" { "When" } th scope="col" { "Event" }
                    @if with_owner { th scope="col" { "Owner / scope" } }
                    th scope="col" { "Session" } th scope="col" { "Detail" }
                } }
                tbody { @for e in events { tr {
                    td { (ago(e.at, now)) }
                    td { code { (e.kind) } }
                    @if with_owner { td {
                        @if let Some(o) = &e.owner { a href=(format!("/ui/workspaces/{}", enc(o.as_str()))) { (o.as_str()) } }
                        @if let Some(s) = &e.scope { (s.to_string()) }
                    } }
                    td { @if let Some(s) = &e.session { code.short { (s.as_str()) } } }
                    td.detail { @if e.detail.as_object().is_some_and(|o| !o.is_empty()) { code { (e.detail.to_string()) } } }
                } } }
            }
        }
    }
}

/// Drains: pending first, then recently cleared, then the drain events.
pub async fn drains(console: Console, State(app): State<Arc<App>>) -> Response {
    let now = console.now;
    let (rows, events) = match tokio::try_join!(
        app.meta.drains(now),
        app.meta.recent_events(None, &["drain_started", "drain_cleared", "drain_wrong_nonce"], 100)
    ) {
        Ok(v) => v,
        Err(e) => return error_page(e),
    };
    let wrong = |scope: &Scope| {
        events.iter().filter(|e| e.kind == "drain_wrong_nonce" && e.scope.as_ref() == Some(scope)).count()
    };
    let pending: Vec<_> = rows.iter().filter(|d| matches!(d.state, Drain::Draining { .. })).collect();
    let mut cleared: Vec<_> =
        rows.iter().filter(|d| d.cleared_at.is_some() && matches!(d.state, Drain::Open)).collect();
    cleared.sort_by_key(|d| std::cmp::Reverse(d.cleared_at));
    let body = html! {
        h1 { "Drains" }
        @if console.can_act() { p { a.button href="/ui/drains/start" { "Start a drain…" } } }
        h2 { "Pending (" (pending.len()) ")" }
        @if pending.is_empty() { p.muted { "No scope is draining." } } @else {
            table.list #pending { thead { tr {
                th scope="col" { "Scope" } th scope="col" { "Since" } th scope="col" { "Reason" } th scope="col" { "Instance" }
                th scope="col" { "Nonce" } th scope="col" { "Clears by timeout" } th scope="col" {}
            } } tbody { @for d in &pending { @if let Drain::Draining { nonce, since, instance, .. } = &d.state { tr {
                td { (d.scope.to_string()) }
                td { (ago(*since, now)) }
                td { @if let Some(r) = &d.reason { (r) } }
                td { @if let Some(i) = instance { (i.as_str()) } @else { span.muted { "any" } } }
                td { "issued, awaiting ack" @if console.can_act() { " (" code { (nonce.chars().take(8).collect::<String>()) "…" } ")" }
                    @let n = wrong(&d.scope); @if n > 0 { " · " span.badge.risk { (n) " wrong" } } }
                td { @if let Some(t) = d.expires_at { (view::until(t, now)) } }
                td { (view::action_link(&console, &format!("/ui/drains/ack?scope={}", enc(&d.scope.to_string())), "Acknowledge…", false)) }
            } } } }
            }
        }
        h2 { "Recently cleared" }
        @if cleared.is_empty() { p.muted { "None yet." } } @else {
            table.list #cleared { thead { tr { th scope="col" { "Scope" } th scope="col" { "Cleared" } th scope="col" { "By" } th scope="col" { "Last reason" } } }
            tbody { @for d in cleared.iter().take(50) { tr {
                td { (d.scope.to_string()) }
                td { @if let Some(t) = d.cleared_at { (ago(t, now)) } }
                td { @if let Some(b) = &d.cleared_by { (cleared_by_words(b)) } }
                td { @if let Some(r) = &d.reason { (r) } }
            } } } }
        }
        h2 { "Drain events" }
        (events_table(&events, now, true))
    };
    page(&console, Section::Drains, "Drains", "all", body).into_response()
}

fn cleared_by_words(by: &str) -> &str {
    match by {
        "ack" => "the replacement's ack (matching nonce)",
        "new_instance" => "a heartbeat from a new instance",
        "timeout" => "the hard timeout",
        other => other,
    }
}

/// GC: recent sweeps with their outcome counts, at-risk workspaces and orphan volumes.
pub async fn gc(console: Console, State(app): State<Arc<App>>) -> Response {
    match super::detail::gc_body(&console, &app).await {
        Ok(body) => page(&console, Section::Gc, "GC", "all", body).into_response(),
        Err(e) => error_page(e),
    }
}

/// The store: growth per day, and retention and prune runs.
pub async fn store(console: Console, State(app): State<Arc<App>>) -> Response {
    let now = console.now;
    let since = now.plus_secs(-30 * 86_400);
    let (growth, runs) = match tokio::try_join!(
        app.meta.store_growth(since),
        app.meta.recent_events(None, &["retention_applied", "prune_done"], 50)
    ) {
        Ok(v) => v,
        Err(e) => return error_page(e),
    };
    let day_ts = |d: i64| Timestamp(d * 86_400 * 1_000_000_000);
    let per_day: Vec<Bar> = growth
        .iter()
        .map(|d| Bar {
            at: day_ts(d.day),
            value: d.bytes_uploaded as f64,
            label: format!("{} in {} snapshots", bytes(d.bytes_uploaded), d.snapshots),
        })
        .collect();
    let mut total = 0u64;
    let cumulative: Vec<Bar> = growth
        .iter()
        .map(|d| {
            total += d.bytes_uploaded;
            Bar { at: day_ts(d.day), value: total as f64, label: bytes(total) }
        })
        .collect();
    let body = html! {
        h1 { "Store" }
        p { "Snapshots go to " @match &app.config.store { Some(s) => code { (crate::meta::redact_url(s)) }, None => span.muted { "no store configured on this server (sandboxes are told none)" } } "." }
        p { (growth.iter().map(|d| d.snapshots).sum::<u64>()) " snapshots recorded in the last 30 days, uploading " (bytes(total)) " (new data after deduplication and compression)." }
        (chart::bars("Uploaded per day (30 days)", "b1", &per_day, chart::fmt_bytes))
        (chart::bars("Uploaded, cumulative", "b2", &cumulative, chart::fmt_bytes))
        h2 { "Retention and prune runs" }
        (upkeep(&app))
        @if runs.is_empty() {
            p.muted { "No retention or prune run recorded yet." }
        } @else { (runs_table(&runs, now)) }
    };
    page(&console, Section::Store, "Store", "all", body).into_response()
}

/// What upkeep the server is configured to run on the store.
fn upkeep(app: &App) -> Markup {
    let r = &app.config.retention;
    let store = app.config.store.is_some();
    html! {
        p {
            @match (&r.policy, store) {
                (Some(policy), true) => { "Retention " code { (policy.to_string()) } " (or a workspace's own) every " (r.interval_secs) " s; " },
                (None, true) => { "Retention of workspaces with their own policy only, every " (r.interval_secs) " s; " },
                _ => "No scheduled retention; ",
            }
            @if store && r.prune_interval_secs > 0 {
                "prune every " (r.prune_interval_secs) " s, deleting unreferenced data after a grace of " (r.prune_grace_secs) " s."
            } @else { "no scheduled prune." }
        }
    }
}

/// Retention and prune runs, each summarised from its event.
fn runs_table(runs: &[EventRow], now: Timestamp) -> Markup {
    let n = |e: &EventRow, k: &str| e.detail[k].as_u64().unwrap_or(0);
    html! {
        table.list #runs { thead { tr { th scope="col" { "When" } th scope="col" { "Run" } th scope="col" { "Result" } th scope="col" { "Duration" } } }
        tbody { @for e in runs { tr {
            td { (ago(e.at, now)) }
            @if e.kind == "retention_applied" {
                td { "retention " code { (e.detail["policy"].as_str().unwrap_or("")) } }
                td { (n(e, "workspaces")) " workspace generation(s): kept " (n(e, "kept")) " (" (n(e, "pinned")) " pinned), forgot " (n(e, "forgotten")) }
            } @else {
                td { "prune" }
                td { "deleted " (n(e, "packs_deleted")) " pack(s), " (bytes(n(e, "bytes_deleted"))) "; marked " (n(e, "marked"))
                    "; " (n(e, "waiting")) " waiting out the grace, of " (n(e, "packs_total")) " pack(s)" }
            }
            td.num { (n(e, "duration_ms")) " ms" }
        } } } }
    }
}

/// The stylesheet.
pub async fn css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", include_str!("assets/console.css"))
}

/// The script.
pub async fn js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", include_str!("assets/console.js"))
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "public, max-age=300")], body)
}
