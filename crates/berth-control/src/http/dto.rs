//! Conversions between the metadata store's rows and the API's wire types, and validation of
//! request bodies into domain values.

use std::collections::BTreeMap;

use berth_api as api;
use berth_core::drain::Drain;
use berth_core::gc::{Action, OrphanAction};
use berth_core::id::SnapshotId;
use berth_core::lease::{Epoch, Holder};
use berth_core::repo::RepoSpec;
use berth_core::retention::Policy;
use berth_core::time::Timestamp;
use berth_core::volume::{AccessMode, MountSpec};
use serde::de::DeserializeOwned;

use crate::app::Config;
use crate::error::{Error, Result};
use crate::meta::{DrainRow, EnsureOptions, EventRow, SnapshotRow, SnapshotStats, State, VolumeState, WorkspaceRow};
use crate::reconcile::{GcReport, GcResult, OrphanResult};

/// Parses a JSON body; an empty body is `{}`. The error names the field.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { body };
    serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("invalid request body: {e}")))
}

/// Formats a timestamp for the wire.
pub fn ts(t: Timestamp) -> String {
    t.to_string()
}

/// The wire view of a lease holder.
pub fn lease_info(holder: &Holder, epoch: Epoch, expires: Timestamp) -> api::LeaseInfo {
    api::LeaseInfo {
        session_id: holder.session.to_string(),
        instance_id: holder.instance.to_string(),
        epoch,
        expires_at: ts(expires),
    }
}

/// The wire view of a workspace at `now`.
pub fn workspace(ws: &WorkspaceRow, now: Timestamp) -> api::Workspace {
    let r = &ws.record;
    let state = match r.state {
        State::Active => api::WorkspaceState::Active,
        State::Closed => api::WorkspaceState::Closed,
        State::Deleting => api::WorkspaceState::Deleting,
        State::Deleted => api::WorkspaceState::Deleted,
    };
    let volume_state = match r.volume.state {
        VolumeState::Pending => api::VolumeState::Pending,
        VolumeState::Present => api::VolumeState::Present,
        VolumeState::Removed => api::VolumeState::Removed,
    };
    let lease = r.lease.live_holder(now).map(|h| lease_info(h, r.lease.epoch, r.lease.expires));
    let deletion = (r.state == State::Deleting).then(|| api::Deletion {
        step: r.delete_step.map(|s| s.as_str().to_string()).unwrap_or_default(),
        error: r.cleanup.last_error.clone(),
        attempts: r.cleanup.attempts,
    });
    api::Workspace {
        owner: r.owner.to_string(),
        id: ws.id.clone(),
        generation: r.generation.0,
        state,
        volume: api::Volume {
            name: r.volume.name.to_string(),
            state: volume_state,
            removed_at: r.volume.removed_at.map(ts),
            last_outcome: r.volume.last_outcome.map(|o| o.as_str().to_string()),
        },
        size_bytes: ws.size_bytes,
        storage_class: ws.storage_class.clone(),
        access_mode: access_mode(ws.access_mode),
        labels: ws.labels.clone(),
        repos: ws.repos.iter().map(repo).collect(),
        epoch: r.lease.epoch,
        lease,
        latest_snapshot: ws.latest_snapshot.map(|id| id.to_hex()),
        draining: ws.is_draining(now),
        deletion,
        created_at: ts(ws.created_at),
        updated_at: ts(ws.updated_at),
        closed_at: r.closed_at.map(ts),
        at_risk: r.at_risk.is_some(),
        at_risk_reason: r.at_risk.as_ref().map(|a| a.reason()),
        at_risk_since: r.at_risk.as_ref().map(|a| ts(a.since)),
        retention: ws.retention.map(|p| p.to_string()),
    }
}

/// The wire view of a drain.
pub fn drain(row: &DrainRow) -> api::DrainInfo {
    let (draining, nonce, since, instance) = match &row.state {
        Drain::Open => (false, None, None, None),
        Drain::Draining { nonce, since, instance, .. } => (true, Some(nonce.clone()), Some(*since), instance.clone()),
    };
    api::DrainInfo {
        scope: row.scope.to_string(),
        draining,
        nonce,
        since: since.map(ts),
        expires_at: row.expires_at.map(ts),
        instance_id: instance.map(|i| i.to_string()),
        reason: if draining { row.reason.clone() } else { None },
        cleared_at: row.cleared_at.map(ts),
        cleared_by: row.cleared_by.clone(),
    }
}

/// The wire view of a snapshot.
pub fn snapshot(s: &SnapshotRow, latest: Option<SnapshotId>) -> api::SnapshotInfo {
    api::SnapshotInfo {
        snapshot_id: s.snapshot_id.to_hex(),
        generation: s.generation.0,
        epoch: s.epoch,
        session_id: s.session.to_string(),
        recorded_at: ts(s.recorded_at),
        stats: api::SnapshotStats {
            files: s.stats.files,
            bytes: s.stats.bytes,
            bytes_uploaded: s.stats.bytes_uploaded,
            duration_ms: s.stats.duration_ms,
        },
        latest: latest == Some(s.snapshot_id),
    }
}

/// The wire view of an event.
pub fn event(e: EventRow) -> api::Event {
    api::Event {
        id: e.id,
        at: ts(e.at),
        kind: e.kind,
        owner: e.owner.map(String::from),
        generation: e.generation.map(|g| g.0),
        session_id: e.session.map(|s| s.to_string()),
        scope: e.scope.map(|s| s.to_string()),
        detail: e.detail,
    }
}

/// The wire form of a substrate's mount spec.
pub fn mount(m: MountSpec) -> api::Mount {
    match m {
        MountSpec::Local { path, lock } => api::Mount::Local { path, lock },
        MountSpec::Docker { volume } => api::Mount::Docker { volume: volume.to_string() },
        MountSpec::Kubernetes { claim_name } => api::Mount::Kubernetes { claim_name: claim_name.to_string() },
    }
}

/// The wire form of a domain repo spec.
pub fn repo(r: &RepoSpec) -> api::RepoSpec {
    api::RepoSpec { url: r.url.clone(), branch: r.branch.clone(), depth: r.depth, path: r.path.clone() }
}

/// The wire form of an access mode.
pub fn access_mode(m: AccessMode) -> api::AccessMode {
    match m {
        AccessMode::ReadWriteOnce => api::AccessMode::ReadWriteOnce,
        AccessMode::ReadWriteOncePod => api::AccessMode::ReadWriteOncePod,
        AccessMode::ReadWriteMany => api::AccessMode::ReadWriteMany,
    }
}

/// The domain form of a wire access mode.
pub fn access_mode_from(m: api::AccessMode) -> AccessMode {
    match m {
        api::AccessMode::ReadWriteOnce => AccessMode::ReadWriteOnce,
        api::AccessMode::ReadWriteOncePod => AccessMode::ReadWriteOncePod,
        api::AccessMode::ReadWriteMany => AccessMode::ReadWriteMany,
    }
}

/// The domain form of reported snapshot statistics.
pub fn snapshot_stats(s: &api::SnapshotStats) -> SnapshotStats {
    SnapshotStats { files: s.files, bytes: s.bytes, bytes_uploaded: s.bytes_uploaded, duration_ms: s.duration_ms }
}

/// The wire view of a GC run.
pub fn gc_report(r: &GcReport) -> api::GcReport {
    let volumes = r
        .volumes
        .iter()
        .map(|v| api::GcItem {
            owner: v.owner.to_string(),
            generation: v.generation.0,
            volume: v.volume.to_string(),
            outcome: match v.result {
                GcResult::Planned(Action::Remove) => "remove".to_string(),
                GcResult::Planned(Action::Rescue) => "rescue".to_string(),
                GcResult::Planned(Action::RemoveAtRisk(_)) => "remove_at_risk".to_string(),
                GcResult::Planned(Action::Skip(o)) | GcResult::Done(o) => o.as_str().to_string(),
            },
            error: v.error.clone(),
        })
        .collect();
    api::GcReport {
        dry_run: r.dry_run,
        skipped: r.skipped.as_ref().map(ToString::to_string),
        volumes,
        counts: r.summary.counts().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        orphans: r.orphans.as_ref().map(|o| o.iter().map(orphan).collect()),
        duration_ms: r.duration.as_millis() as u64,
        db_ms: r.db.as_millis() as u64,
    }
}

fn orphan(o: &OrphanResult) -> api::OrphanItem {
    let (planned, until) = match o.action {
        OrphanAction::Track => ("track", None),
        OrphanAction::Wait { until } => ("wait", Some(ts(until))),
        OrphanAction::Remove => ("remove", None),
        OrphanAction::Forget => ("forget", None),
    };
    let action = o.removal.map_or(planned, |r| r.as_str()).to_string();
    api::OrphanItem { volume: o.volume.to_string(), action, until }
}

/// Reads a workspace's own retention policy from `field`: `None`, `default` or an empty string
/// choose the server's.
pub fn retention_policy(field: &str, policy: Option<&str>) -> Result<Option<Policy>> {
    match policy.map(str::trim) {
        None | Some("" | "default") => Ok(None),
        Some(p) => Policy::parse(p)
            .map(Some)
            .map_err(|e| Error::BadRequest(format!("{field}: {e} (or 'default' for the server's policy)"))),
    }
}

/// Validates an ensure body against the rules of every substrate; what it leaves out comes
/// from the server's configuration.
pub fn ensure_options(body: api::EnsureWorkspace, defaults: &Config) -> Result<EnsureOptions> {
    let bad = |m: String| Err(Error::BadRequest(m));
    let size_bytes = body.size_bytes.unwrap_or(defaults.volume_size);
    if size_bytes == 0 || size_bytes > 1 << 50 {
        return bad(format!("size_bytes {size_bytes} is out of range: use 1 byte to 1 PiB"));
    }
    let storage_class = body.storage_class.or_else(|| defaults.storage_class.clone());
    if let Some(c) = &storage_class {
        if !is_dns_subdomain(c) {
            return bad(format!(
                "storage_class '{c}' is not valid: use lowercase letters, digits, '-' and '.', at most 253"
            ));
        }
    }
    for (k, v) in &body.labels {
        check_label(k, v)?;
    }
    let repos = body
        .repos
        .into_iter()
        .map(|r| {
            let spec = RepoSpec { url: r.url, branch: r.branch, depth: r.depth, path: r.path };
            spec.target().map_err(|e| Error::BadRequest(format!("repos: {e}")))?;
            Ok(spec)
        })
        .collect::<Result<Vec<_>>>()?;
    let retention = body.retention.as_deref().map(|p| retention_policy("retention", Some(p))).transpose()?;
    Ok(EnsureOptions {
        retention,
        size_bytes,
        storage_class,
        access_mode: body.access_mode.map_or(defaults.access_mode, access_mode_from),
        labels: body.labels,
        repos,
    })
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn is_label_name(s: &str, allow_empty: bool) -> bool {
    if s.is_empty() {
        return allow_empty;
    }
    s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Checks a label against the Kubernetes rules (the strictest substrate); `berth.` keys are
/// reserved.
pub fn check_label(key: &str, value: &str) -> Result<()> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let key_ok = is_label_name(name, false) && prefix.is_none_or(is_dns_subdomain);
    if !key_ok {
        return Err(Error::BadRequest(format!(
            "label key '{key}' is not valid: use [prefix/]name, name 1-63 letters, digits, '-', '_', '.'"
        )));
    }
    if key.starts_with("berth.") || prefix.is_some_and(|p| p == "berth" || p.ends_with(".berth")) {
        return Err(Error::BadRequest(format!("label key '{key}' is reserved for berth")));
    }
    if !is_label_name(value, true) {
        return Err(Error::BadRequest(format!(
            "label value '{value}' of '{key}' is not valid: use at most 63 letters, digits, '-', '_', '.'"
        )));
    }
    Ok(())
}

/// Parses `k=v,k2=v2` label selectors from a query string.
pub fn label_selector(s: Option<&str>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in s.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Error::BadRequest(format!("label selector '{pair}' is not key=value")))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(check_label("team", "infra").is_ok());
        assert!(check_label("example.com/tier", "").is_ok());
        assert!(check_label("berth.owner", "x").is_err());
        assert!(check_label("bad key", "x").is_err());
        assert!(check_label("k", "no spaces").is_err());
        assert!(check_label(&"k".repeat(64), "v").is_err());
    }

    #[test]
    fn bodies_name_the_field() {
        let err = parse_body::<api::Heartbeat>(br#"{"instance_id": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `epoch`"), "{err}");
        let err = parse_body::<api::Heartbeat>(br#"{"epoch": "one", "instance_id": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        assert_eq!(parse_body::<api::GcRun>(b"").unwrap(), api::GcRun::default());
    }
}
