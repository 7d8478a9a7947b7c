//! Content-defined chunking parameters and boundaries (FastCDC, 2020 variant).
//!
//! Identical parameters everywhere make identical content produce identical chunks,
//! which is what deduplicates across snapshots and across workspaces in one store.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Hard upper bound on any chunk berth reads back (the FastCDC maximum).
pub const MAX_CHUNK: u32 = 16 * 1024 * 1024;

/// Chunk size bounds in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// No chunk is shorter, except a file's last one.
    pub min: u32,
    /// The expected chunk size.
    pub avg: u32,
    /// No chunk is longer.
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self { min: 256 * 1024, avg: 1024 * 1024, max: 4 * 1024 * 1024 }
    }
}

impl ChunkerParams {
    /// Checks the bounds against what FastCDC accepts.
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020 as f;
        let ok = (f::MINIMUM_MIN..=f::MINIMUM_MAX).contains(&(self.min as usize))
            && (f::AVERAGE_MIN..=f::AVERAGE_MAX).contains(&(self.avg as usize))
            && (f::MAXIMUM_MIN..=f::MAXIMUM_MAX).contains(&(self.max as usize))
            && self.min <= self.avg
            && self.avg <= self.max;
        if ok {
            Ok(())
        } else {
            Err(format!("chunker bounds {self:?} are outside FastCDC's limits"))
        }
    }

    /// Returns the chunk boundaries of `data` as ranges that cover it exactly, in order.
    pub fn chunks<'a>(&self, data: &'a [u8]) -> impl Iterator<Item = Range<usize>> + 'a {
        let cdc = fastcdc::v2020::FastCDC::new(data, self.min as usize, self.avg as usize, self.max as usize);
        cdc.map(|c| c.offset..c.offset + c.length)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn small() -> ChunkerParams {
        ChunkerParams { min: 64, avg: 256, max: 1024 }
    }

    fn data(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    proptest! {
        #[test]
        fn chunks_cover_input_within_bounds(seed in any::<u64>(), len in 0usize..20_000) {
            let p = small();
            let input = data(seed, len);
            let ranges: Vec<_> = p.chunks(&input).collect();
            let mut joined = Vec::new();
            for (i, r) in ranges.iter().enumerate() {
                prop_assert!(r.len() <= p.max as usize);
                if i + 1 < ranges.len() {
                    prop_assert!(r.len() >= p.min as usize);
                }
                joined.extend_from_slice(&input[r.clone()]);
            }
            prop_assert_eq!(joined, input);
        }

        #[test]
        fn an_edit_changes_only_nearby_chunks(seed in any::<u64>(), at in 0usize..30_000) {
            let p = small();
            let before = data(seed, 40_000);
            let mut after = before.clone();
            let at = at.min(after.len() - 1);
            after.insert(at, 0x5a);
            let ids = |d: &[u8]| -> Vec<Vec<u8>> { p.chunks(d).map(|r| d[r].to_vec()).collect() };
            let (a, b) = (ids(&before), ids(&after));
            let new_bytes: usize = b.iter().filter(|c| !a.contains(c)).map(|c| c.len()).sum();
            // An insert disturbs the chunk holding it and a few neighbours, never the whole file.
            prop_assert!(new_bytes <= 4 * p.max as usize, "{new_bytes} new bytes of {}", after.len());
        }
    }

    #[test]
    fn default_params_are_valid() {
        ChunkerParams::default().validate().unwrap();
        assert!(ChunkerParams { min: 1, avg: 2, max: 3 }.validate().is_err());
    }
}
