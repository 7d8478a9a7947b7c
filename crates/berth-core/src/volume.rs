//! Volume names: derived from the installation, owner and generation, valid on every substrate.
//!
//! **Invariant:** a name is a Kubernetes DNS-1123 label (lowercase alphanumerics and `-`, at most
//! 63 characters, alphanumeric at both ends) and a valid Docker volume name, and two
//! (installation, owner, generation) triples get different names unless 36 bits of BLAKE3
//! collide: within an installation the metadata store's unique constraint then catches it, and
//! across installations sharing an engine or namespace the substrate's label check refuses the
//! other installation's volume (never adopted).
//!
//! A name is derived once, when a generation starts, and recorded; everything after reads the
//! record. So a change of the derivation never renames a volume that exists: records written
//! before the installation was part of the hash keep their names.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::workspace::{Generation, WorkspaceId};

/// The longest readable part taken from the owner key.
const SLUG_MAX: usize = 50;
/// Hex digits of the hash suffix.
const HASH_HEX: usize = 9;

/// The name of a workspace volume on its substrate.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeName(String);

/// A volume name that does not follow the rules above.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("volume name '{0}' is not valid: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit")]
pub struct VolumeNameError(pub String);

impl VolumeName {
    /// Derives the name of `owner`'s volume in `generation` for installation `install` (its id
    /// in the metadata store): `ws-<slug>-<hash>`, the hash over all three, so two
    /// installations on one Docker Engine or Kubernetes namespace never want the same name.
    pub fn derive(install: &str, owner: &WorkspaceId, generation: Generation) -> VolumeName {
        let mut slug = String::with_capacity(SLUG_MAX);
        for c in owner.as_str().chars() {
            let c = c.to_ascii_lowercase();
            let c = if c.is_ascii_alphanumeric() { c } else { '-' };
            if c == '-' && (slug.is_empty() || slug.ends_with('-')) {
                continue;
            }
            if slug.len() == SLUG_MAX {
                break;
            }
            slug.push(c);
        }
        while slug.ends_with('-') {
            slug.pop();
        }
        let mut hasher = blake3::Hasher::new();
        // Neither an installation id nor an owner key holds a NUL: the input is unambiguous.
        hasher.update(install.as_bytes());
        hasher.update(&[0]);
        hasher.update(owner.as_str().as_bytes());
        hasher.update(&[0]);
        hasher.update(&generation.0.to_le_bytes());
        let hash = hasher.finalize().to_hex();
        let name = if slug.is_empty() {
            format!("ws-{}", &hash[..HASH_HEX])
        } else {
            format!("ws-{slug}-{}", &hash[..HASH_HEX])
        };
        VolumeName(name)
    }

    /// Validates a name read back from a store or a substrate.
    pub fn new(s: impl Into<String>) -> Result<VolumeName, VolumeNameError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(VolumeName(s))
        } else {
            Err(VolumeNameError(s))
        }
    }

    /// Returns the name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VolumeName {
    type Error = VolumeNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<VolumeName> for String {
    fn from(v: VolumeName) -> String {
        v.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VolumeName({})", self.0)
    }
}

/// Who may mount a volume at once (the Kubernetes access modes; other substrates honour the
/// single-writer ones through the lease).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AccessMode {
    /// One node may mount it read-write.
    #[default]
    ReadWriteOnce,
    /// One pod may mount it read-write.
    ReadWriteOncePod,
    /// Many nodes may mount it read-write.
    ReadWriteMany,
}

impl AccessMode {
    /// Every access mode.
    pub const ALL: [AccessMode; 3] =
        [AccessMode::ReadWriteOnce, AccessMode::ReadWriteOncePod, AccessMode::ReadWriteMany];

    /// Returns the Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
            AccessMode::ReadWriteMany => "ReadWriteMany",
        }
    }

    /// Parses the Kubernetes spelling.
    pub fn parse(s: &str) -> Option<AccessMode> {
        AccessMode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for AccessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a sandbox mounts a workspace volume, as its substrate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountSpec {
    /// A directory on this machine.
    Local {
        /// The workspace directory.
        path: String,
        /// A file the sandbox holds a shared lock on while it uses the directory; GC and
        /// deletion treat a held lock as "referenced".
        lock: String,
    },
    /// A Docker named volume.
    Docker {
        /// The volume name.
        volume: VolumeName,
    },
    /// A Kubernetes PersistentVolumeClaim.
    Kubernetes {
        /// The claim name.
        claim_name: VolumeName,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(owner: &str, generation: u64, expect_prefix: &str) {
        let name = VolumeName::derive("0123456789abcdef", &WorkspaceId::new(owner).unwrap(), Generation(generation));
        assert!(name.as_str().starts_with(expect_prefix), "{name} does not start with {expect_prefix}");
        assert!(VolumeName::new(name.as_str()).is_ok(), "{name} is not valid");
        assert!(name.as_str().len() <= 63);
    }

    #[test]
    fn derived_names_are_valid_everywhere() {
        check("agent:42", 1, "ws-agent-42-");
        check("Thread_ABC", 1, "ws-thread-abc-");
        check("a..b::c", 1, "ws-a-b-c-");
        check(&"x".repeat(128), 1, &format!("ws-{}-", "x".repeat(50)));
        // A slug cut at a '-' does not end in '-' before the hash.
        check(&format!("{}-tail", "y".repeat(49)), 1, &format!("ws-{}-", "y".repeat(49)));
        check("9", 7, "ws-9-");
    }

    #[test]
    fn owners_and_generations_never_share_a_name() {
        let a = WorkspaceId::new("agent:42").unwrap();
        let b = WorkspaceId::new("agent-42").unwrap();
        let names = [
            VolumeName::derive("i1", &a, Generation(1)),
            VolumeName::derive("i1", &b, Generation(1)),
            VolumeName::derive("i1", &a, Generation(2)),
            VolumeName::derive("i2", &a, Generation(1)),
        ];
        for (i, x) in names.iter().enumerate() {
            for y in &names[i + 1..] {
                assert_ne!(x, y);
            }
        }
        // Deterministic, and readable whatever the installation.
        assert_eq!(names[0], VolumeName::derive("i1", &a, Generation(1)));
        assert!(names[3].as_str().starts_with("ws-agent-42-"), "{}", names[3]);
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(VolumeName::new(bad).is_err(), "{bad}");
        }
    }
}
