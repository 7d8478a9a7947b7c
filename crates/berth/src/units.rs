//! Parsing and printing sizes and durations for the command line.

/// Parses `1GiB`, `500M`, `4096`, or `unlimited`/`none` (returns `None`).
pub fn parse_size(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a size; use e.g. 512MiB, 1GiB or unlimited"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        _ => return Err(format!("'{s}' has an unknown unit; use B, KiB, MiB, GiB, TiB (or kB, MB, GB, TB)")),
    };
    Ok(Some((n * mult) as u64))
}

/// A size budget; `None` is unlimited.
#[derive(Debug, Clone, Copy)]
pub struct Budget(pub Option<u64>);

/// Parses a size budget for clap.
pub fn parse_budget(s: &str) -> Result<Budget, String> {
    parse_size(s).map(Budget)
}

/// Parses `90s`, `15m`, `24h`, `7d`, or bare seconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num.parse().map_err(|_| format!("'{s}' is not a duration; use e.g. 30s, 15m, 24h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("'{s}' has an unknown unit; use s, m, h or d")),
    };
    Ok(n * mult)
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
    fn sizes_and_durations() {
        assert_eq!(parse_size("1GiB"), Ok(Some(1 << 30)));
        assert_eq!(parse_size("500M"), Ok(Some(500_000_000)));
        assert_eq!(parse_size("4096"), Ok(Some(4096)));
        assert_eq!(parse_size("unlimited"), Ok(None));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1 parsec").is_err());
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("0s"), Ok(0));
        assert_eq!(parse_duration("90"), Ok(90));
        assert!(parse_duration("soon").is_err());
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12), "12 B");
    }
}
