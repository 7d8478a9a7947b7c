//! Prune marks: the first phase of two-phase deletion. A mark lists objects found
//! unreferenced at a time; a later prune deletes those still unreferenced once the grace
//! period has passed.

use serde::{Deserialize, Serialize};

use crate::id::{ManifestId, MarkId, PackId};
use crate::time::Timestamp;
use crate::FormatError;

/// One prune mark.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// When the objects were found unreferenced.
    pub time: Timestamp,
    /// Packs no snapshot referenced.
    pub packs: Vec<PackId>,
    /// Manifests no snapshot referenced.
    pub manifests: Vec<ManifestId>,
}

impl Mark {
    /// Encodes the mark as JSON; returns its id and bytes.
    pub fn encode(&self) -> (MarkId, Vec<u8>) {
        // Serializing plain structs into a Vec cannot fail.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        (MarkId::of(&bytes), bytes)
    }

    /// Decodes a stored mark.
    pub fn decode(id: &MarkId, bytes: &[u8]) -> Result<Self, FormatError> {
        serde_json::from_slice(bytes).map_err(|e| FormatError::new(format!("prune mark {}", id.short()), e.to_string()))
    }
}
