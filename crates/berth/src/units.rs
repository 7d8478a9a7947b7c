//! Sizes and durations for the command line: parsing comes from `berth_core::units`; the
//! rounded forms for people are here.

pub use berth_core::units::{parse_duration, parse_size};

/// A size budget; `None` is unlimited.
#[derive(Debug, Clone, Copy)]
pub struct Budget(pub Option<u64>);

/// Parses a size budget for clap.
pub fn parse_budget(s: &str) -> Result<Budget, String> {
    parse_size(s).map(Budget)
}

/// Formats bytes with a binary unit.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_for_people() {
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12), "12 B");
    }
}
