//! Identities of the control plane's moving parts: sessions, sandbox instances and node or pool
//! names, each validated where it enters.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A name or id from input that cannot be used as given.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{what} '{value}' is not valid: {rule}")]
pub struct NameError {
    /// What kind of name it was.
    pub what: &'static str,
    /// The rejected text (never a secret).
    pub value: String,
    /// What a valid one looks like.
    pub rule: &'static str,
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal, $rule:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates the text: 1 to the maximum length, printable ASCII without spaces,
            /// quotes or slashes, starting with a letter or digit.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                let ok = |c: char| c.is_ascii_alphanumeric() || "._:@+=-".contains(c);
                if !s.is_empty()
                    && s.len() <= $max
                    && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                    && s.chars().all(ok)
                {
                    Ok(Self(s))
                } else {
                    let value: String = s.chars().take(80).collect();
                    Err(NameError { what: $what, value, rule: $rule })
                }
            }

            /// Returns the text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }
    };
}

name_type!(
    /// A session: one sandbox attached to a workspace (`ses_` and 32 hex digits).
    SessionId,
    "session id",
    128,
    "use the id returned by attach"
);
name_type!(
    /// A sandbox instance (a container id, pod name or VM id) as the platform names it.
    InstanceId,
    "instance id",
    253,
    "use 1-253 characters from A-Z a-z 0-9 . _ : @ + = -, starting with a letter or digit"
);
name_type!(
    /// A node or pool name, as a drain scope uses it.
    PlaceName,
    "node or pool name",
    253,
    "use 1-253 characters from A-Z a-z 0-9 . _ : @ + = -, starting with a letter or digit"
);
name_type!(
    /// A control-plane replica (`replica_` and 16 hex digits, new at every start): reconciler
    /// claims and named locks carry it.
    ReplicaId,
    "replica id",
    128,
    "use the id a replica gives itself"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(InstanceId::new("pod-7f9c:abc").is_ok());
        for bad in ["", " x", "a/b", "-a", "x y", "é"] {
            let err = InstanceId::new(bad).unwrap_err();
            assert_eq!(err.what, "instance id");
        }
        assert!(InstanceId::new("a".repeat(253)).is_ok());
        assert!(InstanceId::new("a".repeat(254)).is_err());
    }
}
