//! Sizes and durations as people write them (`1GiB`, `15m`), parsed and printed the same way
//! on the command line, in spec files and in help texts.

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

/// Formats seconds in the largest unit that divides them (`3600` is `1h`), as
/// [`parse_duration`] reads it back.
pub fn format_duration(secs: i64) -> String {
    let (n, unit) = [(86_400, "d"), (3600, "h"), (60, "m")]
        .into_iter()
        .find(|(u, _)| secs != 0 && secs % u == 0)
        .map_or((secs, "s"), |(u, name)| (secs / u, name));
    format!("{n}{unit}")
}

/// Formats bytes in the largest binary unit that divides them (`1073741824` is `1GiB`), as
/// [`parse_size`] reads it back.
pub fn format_size(bytes: u64) -> String {
    let (n, unit) = [(1u64 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        .into_iter()
        .find(|(u, _)| bytes != 0 && bytes % u == 0)
        .map_or((bytes, "B"), |(u, name)| (bytes / u, name));
    format!("{n}{unit}")
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
    }

    #[test]
    fn printed_forms_read_back() {
        for secs in [0, 1, 59, 60, 90, 300, 3600, 5400, 86_400] {
            assert_eq!(parse_duration(&format_duration(secs)), Ok(secs), "{secs}");
        }
        assert_eq!((format_duration(3600).as_str(), format_duration(300).as_str()), ("1h", "5m"));
        for bytes in [0, 1, 1000, 1024, 1 << 30, 3 << 20, (1 << 30) + 1] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(Some(bytes)), "{bytes}");
        }
        assert_eq!(format_size(1 << 30), "1GiB");
    }
}
