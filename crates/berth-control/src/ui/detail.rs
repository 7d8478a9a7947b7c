//! The bodies of the two richer pages: a workspace's detail (sessions, snapshot timeline,
//! drains, events, the restore command) and GC (sweeps, at-risk and orphan volumes).

use berth_core::drain::Drain;
use berth_core::scope::Scope;
use berth_core::workspace::WorkspaceId;
use maud::{html, Markup};

use super::chart::{self, Bar};
use super::pages::events_table;
use super::session::Console;
use super::view::{action_link, ago, bytes, enc, since_snapshot};
use crate::app::App;
use crate::error::Error;
use crate::meta::{ConsoleFilter, SnapshotRow, State as WsState};

/// Snapshots drawn in the timeline.
const TIMELINE: usize = 60;

/// The restore command an operator copies: into a new directory, from this workspace's
/// latest snapshot.
pub fn restore_command(store: Option<&str>, owner: &WorkspaceId, snapshot: Option<&str>) -> String {
    let store = store.map(crate::meta::redact_url).unwrap_or_else(|| "STORE_URL".into());
    let snap = snapshot.map(|s| format!(" --snapshot {s}")).unwrap_or_default();
    format!("berth snapshot restore --store '{store}' --workspace '{owner}'{snap} ./restored")
}

/// A workspace's detail.
pub async fn body(console: &Console, app: &App, owner: &WorkspaceId) -> Result<Markup, Error> {
    let now = console.now;
    let (ws, snaps) = app.meta.snapshots(owner).await?;
    let scope = Scope::Workspace(owner.clone());
    let (sessions, events, drain) = tokio::try_join!(
        app.meta.console_sessions(owner, 50),
        app.meta.recent_events(Some(owner), &[], 100),
        app.meta.drain(&scope, now),
    )?;
    let drain_events =
        app.meta.recent_events(None, &["drain_started", "drain_cleared", "drain_wrong_nonce"], 200).await?;
    let drain_events: Vec<_> = drain_events.into_iter().filter(|e| e.scope.as_ref() == Some(&scope)).take(20).collect();
    let rec = &ws.record;
    let latest = snaps.first();
    let o = enc(owner.as_str());
    Ok(html! {
        h1 { (owner.as_str()) }
        div.actions {
            @if rec.state == WsState::Active {
                (action_link(console, &format!("/ui/workspaces/{o}/close"), "Close…", false))
                (action_link(console, &format!("/ui/drains/start?scope={}", enc(&scope.to_string())), "Drain…", false))
            }
            @if matches!(rec.state, WsState::Active | WsState::Closed) {
                (action_link(console, &format!("/ui/workspaces/{o}/delete"), "Delete…", true))
            }
        }
        dl.facts {
            dt { "State" } dd { span class=(format!("state {}", rec.state.as_str())) { (rec.state.as_str()) }
                @if let Some(step) = rec.delete_step { " (step " (format!("{step:?}")) ")" } }
            dt { "Generation" } dd { (rec.generation.0) }
            dt { "Volume" } dd { code { (rec.volume.name.as_str()) } " " (rec.volume.state.as_str()) " · " (bytes(ws.size_bytes)) }
            dt { "Lease" } dd { @match rec.lease.live_holder(now) {
                Some(h) => { (h.instance.as_str()) " · session " code.short { (h.session.as_str()) } " · epoch " (rec.lease.epoch.0) " · expires " (super::view::until(rec.lease.expires, now)) },
                None => { span.muted { "no live lease" } " (epoch " (rec.lease.epoch.0) ")" },
            } }
            dt { "Last durable snapshot" } dd { (since_snapshot(latest.map(|s| s.recorded_at), now))
                @if let Some(s) = latest { " · " code.short { (s.snapshot_id.to_hex()) } } }
            dt { "At risk" } dd { @match &rec.at_risk {
                Some(r) => { span.badge.risk { "AT RISK" } " " (r.reason()) " · since " (ago(r.since, now)) },
                None => span.muted { "no" },
            } }
            dt { "Drain" } dd { @match &drain.state {
                Drain::Draining { since, .. } => { span.badge.draining { "draining" } " since " (ago(*since, now)) @if let Some(r) = &drain.reason { " · " (r) } },
                Drain::Open => span.muted { "open" },
            } }
            dt { "Labels" } dd { @for (k, v) in &ws.labels { span.label { (k) "=" (v) } " " } }
            dt { "Retention" } dd { @match (&ws.retention, &app.config.retention.policy) {
                (Some(own), _) => { code { (own.to_string()) } " (its own)" },
                (None, Some(server)) => { code { (server.to_string()) } span.muted { " (the server's)" } },
                (None, None) => span.muted { "every snapshot kept (the server's retention is off)" },
            } }
            dt { "Created" } dd { (ago(ws.created_at, now)) }
        }
        h2 { "Restore" }
        div.copy {
            pre { code #restore-cmd { (restore_command(app.config.store.as_deref(), owner, latest.map(|s| s.snapshot_id.to_hex()).as_deref())) } }
            button.copy-btn type="button" data-copy="restore-cmd" hidden { "Copy" }
        }
        h2 { "Snapshot timeline" }
        (timeline(&snaps))
        h2 { "Sessions" }
        @if sessions.is_empty() { p.muted { "No session yet." } } @else {
            table.list #sessions { thead { tr {
                th scope="col" { "Session" } th scope="col" { "Gen" } th scope="col" { "Epoch" } th scope="col" { "Instance" }
                th scope="col" { "Attached" } th scope="col" { "Ended" } th scope="col" { "Outcome" }
            } } tbody { @for s in &sessions { tr {
                td { code.short { (s.id.as_str()) } }
                td.num { (s.generation.0) } td.num { (s.epoch.0) }
                td { (s.instance.as_str()) @if let Some(n) = &s.node { " · node " (n.as_str()) } @if let Some(p) = &s.pool { " · pool " (p.as_str()) } }
                td { (ago(s.created_at, now)) }
                td { @match s.ended_at { Some(t) => (ago(t, now)), None => span.badge.live { "live" } } }
                td { @if let Some(out) = s.outcome { span class=(format!("outcome {}", out.as_str())) title=(out.why()) { (out.as_str()) } } }
            } } } }
        }
        h2 { "Drains" }
        (events_table(&drain_events, now, false))
        h2 { "Events" }
        (events_table(&events, now, false))
    })
}

/// The timeline: changed bytes, duration and RPO (time since the previous snapshot) of the
/// latest snapshots.
fn timeline(snaps: &[SnapshotRow]) -> Markup {
    let recent: Vec<&SnapshotRow> = snaps.iter().take(TIMELINE).rev().collect();
    let changed: Vec<Bar> = recent
        .iter()
        .map(|s| {
            let b = s.stats.bytes_uploaded.unwrap_or(0);
            Bar { at: s.recorded_at, value: b as f64, label: format!("{} uploaded", bytes(b)) }
        })
        .collect();
    let duration: Vec<Bar> = recent
        .iter()
        .map(|s| {
            let ms = s.stats.duration_ms.unwrap_or(0);
            Bar { at: s.recorded_at, value: ms as f64 / 1000.0, label: format!("{:.2} s", ms as f64 / 1000.0) }
        })
        .collect();
    let rpo: Vec<Bar> = recent
        .windows(2)
        .map(|w| {
            let gap = (w[1].recorded_at.0 - w[0].recorded_at.0) as f64 / 1e9;
            Bar { at: w[1].recorded_at, value: gap, label: format!("{gap:.1} s since the previous snapshot") }
        })
        .collect();
    html! {
        div.charts {
            (chart::bars("Changed bytes (uploaded)", "b1", &changed, chart::fmt_bytes))
            (chart::bars("Duration", "b2", &duration, chart::fmt_secs))
            (chart::bars("RPO: time since the previous snapshot", "b3", &rpo, chart::fmt_secs))
        }
    }
}

/// The GC page: settings, recent sweeps, at-risk workspaces, orphan volumes.
pub async fn gc_body(console: &Console, app: &App) -> Result<Markup, Error> {
    let now = console.now;
    let cfg = &app.config.gc;
    let risky = ConsoleFilter { at_risk: true, ..Default::default() };
    let (sweeps, (at_risk, more), orphans) = tokio::try_join!(
        app.meta.recent_events(None, &["gc_sweep"], 30),
        app.meta.console_workspaces(&risky, None, 100),
        app.meta.orphans(),
    )?;
    let outcomes = ["removed", "not_found", "referenced", "error", "at_risk", "cooldown"];
    Ok(html! {
        h1 { "Volume GC" }
        p { "Sweeps every " (cfg.interval_secs) " s; a closed workspace's volume is a candidate " (cfg.cooldown_secs) " s after closing; at most "
            (cfg.batch) " per sweep, " (cfg.concurrency) " at once; at-risk volumes are kept "
            @match cfg.at_risk_retention_secs { Some(s) => { "until rescued, or for " (super::view::relative(s).trim_end_matches(" ago")) }, None => "until rescued or forced" } "." }
        @if console.can_act() { p { a.button href="/ui/gc/run" { "Run GC… (dry-run preview first)" } } }
        h2 { "Recent sweeps" }
        @if sweeps.is_empty() { p.muted { "No sweep has acted yet (sweeps with nothing to do are not recorded)." } } @else {
            table.list #sweeps { thead { tr { th scope="col" { "When" }
                @for o in outcomes { th scope="col" { (o) } }
                th scope="col" { "Orphans removed" } th scope="col" { "Skipped" } th scope="col" { "Duration" } } }
            tbody { @for e in &sweeps { tr {
                td { (ago(e.at, now)) }
                @for o in outcomes { td.num { (e.detail["outcomes"][o].as_u64().unwrap_or(0)) } }
                td.num { (e.detail["orphans_removed"].as_u64().unwrap_or(0)) }
                td { @if let Some(s) = e.detail["skipped"].as_str() { (s) } }
                td.num { (e.detail["duration_ms"].as_u64().unwrap_or(0)) " ms" }
            } } } }
        }
        h2 { "At-risk volumes (" (at_risk.len()) @if more { "+" } ")" }
        @if at_risk.is_empty() { p.muted { "None: every workspace's last session ended clean or was rescued." } } @else {
            table.list #at-risk { thead { tr { th scope="col" { "Owner" } th scope="col" { "Volume" } th scope="col" { "Why" } th scope="col" { "Since" } } }
            tbody { @for r in &at_risk { @if let Some(risk) = &r.ws.record.at_risk { tr {
                td { a href=(format!("/ui/workspaces/{}", enc(r.ws.record.owner.as_str()))) { (r.ws.record.owner.as_str()) } }
                td { code { (r.ws.record.volume.name.as_str()) } }
                td { (risk.reason()) }
                td { (ago(risk.since, now)) }
            } } } } }
        }
        h2 { "Orphan volumes (" (orphans.len()) ")" }
        @if orphans.is_empty() { p.muted { "None tracked: every volume of this installation has a record." } } @else {
            table.list #orphans { thead { tr { th scope="col" { "Volume" } th scope="col" { "First seen" } th scope="col" { "Removable" } } }
            tbody { @for (v, first) in &orphans { tr {
                td { code { (v.as_str()) } }
                td { (ago(*first, now)) }
                td { (super::view::until(first.plus_secs(cfg.orphan_grace_secs), now)) }
            } } } }
        }
    })
}
