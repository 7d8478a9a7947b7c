//! The store's configuration object: format version and the chunker parameters every writer
//! must share for deduplication to work.

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crate::FormatError;

/// The store format this berth writes and reads.
pub const STORE_VERSION: u32 = 1;

/// Contents of the `config` object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Store format version.
    pub version: u32,
    /// Chunk size bounds.
    pub chunker: ChunkerParams,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { version: STORE_VERSION, chunker: ChunkerParams::default() }
    }
}

impl StoreConfig {
    /// Encodes the config as JSON.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs into a Vec cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Decodes and checks a stored config.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let c: StoreConfig =
            serde_json::from_slice(bytes).map_err(|e| FormatError::new("store config", e.to_string()))?;
        if c.version != STORE_VERSION {
            return Err(FormatError::new(
                "store config",
                format!("store format {} is not supported by this berth (it reads format {STORE_VERSION})", c.version),
            ));
        }
        c.chunker.validate().map_err(|e| FormatError::new("store config", e))?;
        Ok(c)
    }
}
