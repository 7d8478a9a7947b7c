//! Node drains from the cluster (`--watch-nodes`, kubernetes substrate): a cordoned node
//! (`spec.unschedulable`, what `kubectl cordon` and `kubectl drain` set) starts a `node:NAME`
//! drain, so no new session lands there and the sandboxes on it are told; uncordoning clears
//! that drain. Every replica watches; starting a running drain and clearing an open one are
//! no-ops, so replicas agree without coordination.

use std::sync::Arc;

use berth_core::drain::Drain;
use berth_core::scope::Scope;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{now, App};
use crate::error::Result;

/// The reason recorded on a drain a cordon started.
fn reason(node: &str) -> String {
    format!("node {node} cordoned (spec.unschedulable)")
}

/// Applies one node's cordon state: starts its drain, or clears it (with its own nonce).
pub async fn apply(app: &App, node: &str, cordoned: bool) -> Result<()> {
    let Ok(scope) = format!("node:{node}").parse::<Scope>() else {
        tracing::warn!(event = "node_name_unusable", node = %berth_core::bounded(node, 100));
        return Ok(());
    };
    if cordoned {
        let (_, started) = app.meta.start_drain(&scope, None, Some(&reason(node)), now()).await?;
        if started {
            metrics::counter!("berth_drains_started_total").increment(1);
            tracing::info!(event = "drain_started", scope = %scope, reason = %reason(node));
        }
        return Ok(());
    }
    let row = app.meta.drain(&scope, now()).await?;
    if let Drain::Draining { nonce, .. } = &row.state {
        // Only a drain a cordon started is cleared by the uncordon; an operator's stays.
        if row.reason.as_deref() == Some(reason(node).as_str()) {
            let (_, cleared) = app.meta.ack_drain(&scope, nonce, None, now()).await?;
            if cleared {
                tracing::info!(event = "drain_cleared", scope = %scope, by = "uncordon");
            }
        }
    }
    Ok(())
}

/// Starts the node watcher when `--watch-nodes` is set.
#[cfg(feature = "kubernetes")]
pub fn spawn(app: &Arc<App>, tracker: &TaskTracker, shutdown: CancellationToken) {
    if !app.config.watch_nodes {
        return;
    }
    let app = app.clone();
    tracker.spawn(async move {
        let kube = match berth_kube::Kube::infer(app.config.namespace.clone(), Default::default()).await {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(event = "node_watch_unavailable", error = %e);
                return;
            }
        };
        let mut states = berth_kube::NodeWatch::new(kube).spawn();
        loop {
            let state = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = states.recv() => match s { Some(s) => s, None => return },
            };
            if let Err(e) = apply(&app, &state.name, state.cordoned).await {
                tracing::warn!(event = "node_drain_failed", node = %state.name, error = %e);
            }
        }
    });
}

/// Without the kubernetes substrate there are no nodes to watch.
#[cfg(not(feature = "kubernetes"))]
pub fn spawn(app: &Arc<App>, _: &TaskTracker, _: CancellationToken) {
    if app.config.watch_nodes {
        tracing::error!(event = "node_watch_unavailable", error = "built without the kubernetes substrate");
    }
}
