//! Workspace identity: the owner-derived id and the generation that changes when a name is reused.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A workspace id that cannot be used as given.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("workspace id '{}' is not valid: use 1-128 characters from A-Z a-z 0-9 . _ : @ + = -, starting with a letter or digit", crate::bounded(.0, crate::ECHO_MAX))]
pub struct WorkspaceIdError(pub String);

/// The durable key of a workspace, such as `agent:42` or `thread-abc`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkspaceId(String);

impl WorkspaceId {
    /// Validates an id: it becomes part of object keys and file names, so the alphabet is narrow.
    pub fn new(s: impl Into<String>) -> Result<Self, WorkspaceIdError> {
        let s = s.into();
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "._:@+=-".contains(c);
        let valid = !s.is_empty()
            && s.len() <= 128
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().all(ok_char);
        if valid {
            Ok(Self(s))
        } else {
            Err(WorkspaceIdError(s))
        }
    }

    /// Returns the id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WorkspaceId {
    type Error = WorkspaceIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<WorkspaceId> for String {
    fn from(w: WorkspaceId) -> String {
        w.0
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkspaceId({})", self.0)
    }
}

/// The generation of a workspace: a reused owner name gets a new one and never sees older state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Generation(pub u64);

impl Default for Generation {
    fn default() -> Self {
        Generation(1)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["agent:42", "thread-abc", "a", "x.y_z@w+1=2"] {
            assert!(WorkspaceId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a/b", "..", "a b", "é", &"a".repeat(129)] {
            assert!(WorkspaceId::new(bad).is_err(), "{bad}");
        }
    }
}
