//! Drain scopes: a node, a pool, or one workspace (`node:NAME`, `pool:NAME`, `workspace:OWNER`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::session::PlaceName;
use crate::workspace::WorkspaceId;

/// What a drain covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scope {
    /// Every session on one node.
    Node(PlaceName),
    /// Every session in one pool.
    Pool(PlaceName),
    /// One workspace.
    Workspace(WorkspaceId),
}

/// A scope string that does not parse.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("scope '{0}' is not valid: use node:NAME, pool:NAME or workspace:OWNER")]
pub struct ScopeError(pub String);

impl FromStr for Scope {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ScopeError(s.chars().take(300).collect());
        let (kind, name) = s.split_once(':').ok_or_else(err)?;
        match kind {
            "node" => PlaceName::new(name).map(Scope::Node).map_err(|_| err()),
            "pool" => PlaceName::new(name).map(Scope::Pool).map_err(|_| err()),
            "workspace" => WorkspaceId::new(name).map(Scope::Workspace).map_err(|_| err()),
            _ => Err(err()),
        }
    }
}

impl TryFrom<String> for Scope {
    type Error = ScopeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        s.to_string()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Node(n) => write!(f, "node:{n}"),
            Scope::Pool(p) => write!(f, "pool:{p}"),
            Scope::Workspace(w) => write!(f, "workspace:{w}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for s in ["node:n1", "pool:gpu-a", "workspace:agent:42"] {
            assert_eq!(s.parse::<Scope>().unwrap().to_string(), s);
        }
        for bad in ["", "node", "node:", "cluster:x", "workspace:a/b", "node:a b"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
    }
}
