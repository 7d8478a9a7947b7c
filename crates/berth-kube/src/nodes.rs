//! `NodeWatch`: the cordon state of every node, from a watch of the cluster's nodes.
//!
//! A node is cordoned when `spec.unschedulable` is true ("Nodes", *Manual Node
//! Administration*: `kubectl cordon` sets it, `kubectl uncordon` clears it). The watcher lists
//! the nodes, reports each one's state, then watches from the list's version ("API Concepts",
//! *Efficient detection of changes*); bookmarks move the version on, and `410 Gone` or a broken
//! watch lists again, reporting every node's state anew. A deleted node is reported uncordoned.
//! Reports are level-triggered: the receiver may see a state it has already seen.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};

use crate::client::{Failure, Kube};

/// Pause after a failed list or watch before the next try.
const RETRY: Duration = Duration::from_secs(1);
/// Seconds a watch asks the server to keep it open.
const WATCH_SECS: u32 = 290;

/// A node's cordon state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// The node's name.
    pub name: String,
    /// Whether it is cordoned (`spec.unschedulable`); false once it is deleted.
    pub cordoned: bool,
}

/// Watches the cordon state of the cluster's nodes.
#[derive(Debug, Clone)]
pub struct NodeWatch {
    kube: Kube,
}

fn state(node: &Node, deleted: bool) -> NodeState {
    let cordoned = !deleted && node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    NodeState { name: node.metadata.name.clone().unwrap_or_default(), cordoned }
}

impl NodeWatch {
    /// Nodes of the cluster `kube` talks to (nodes are cluster-scoped: the namespace is unused).
    pub fn new(kube: Kube) -> NodeWatch {
        NodeWatch { kube }
    }

    /// Sends every node's state to `tx`, then each change, until `tx` closes.
    pub fn spawn(self) -> tokio::sync::mpsc::Receiver<NodeState> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while !tx.is_closed() {
                let round = tokio::select! {
                    r = self.round(&tx) => r,
                    _ = tx.closed() => return,
                };
                if let Err(e) = round {
                    tracing::warn!(event = "node_watch_failed", error = %e, hint = "listing again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        });
        rx
    }

    /// One list, then watches from its version until one ends with an error or `410 Gone`.
    async fn round(&self, tx: &tokio::sync::mpsc::Sender<NodeState>) -> Result<(), Failure> {
        let api: Api<Node> = Api::all(self.kube.client().clone());
        let lp = ListParams::default();
        let list = self.kube.retry("listing nodes", || api.list(&lp)).await?;
        let mut seen: BTreeMap<String, bool> = BTreeMap::new();
        for node in &list.items {
            let s = state(node, false);
            seen.insert(s.name.clone(), s.cordoned);
            if tx.send(s).await.is_err() {
                return Ok(());
            }
        }
        let mut version = list.metadata.resource_version.unwrap_or_default();
        loop {
            let wp = WatchParams::default().timeout(WATCH_SECS);
            let mut stream = self.kube.retry("watching nodes", || api.watch(&wp, &version)).await?.boxed();
            while let Some(event) = stream.try_next().await.map_err(Failure::from_kube)? {
                let s = match event {
                    WatchEvent::Added(n) | WatchEvent::Modified(n) => {
                        version = n.metadata.resource_version.clone().unwrap_or(version);
                        state(&n, false)
                    }
                    WatchEvent::Deleted(n) => {
                        version = n.metadata.resource_version.clone().unwrap_or(version);
                        state(&n, true)
                    }
                    WatchEvent::Bookmark(b) => {
                        version = b.metadata.resource_version;
                        continue;
                    }
                    WatchEvent::Error(e) => {
                        return Err(Failure::Status {
                            code: e.code,
                            reason: e.reason,
                            message: e.message,
                            retry_after: None,
                        })
                    }
                };
                if seen.get(&s.name) == Some(&s.cordoned) {
                    continue;
                }
                seen.insert(s.name.clone(), s.cordoned);
                if tx.send(s).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
