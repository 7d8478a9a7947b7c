//! The flags of the store's upkeep, shared by `berth serve` and `berth agent run`: the
//! retention policy applied on a schedule, the prune schedule and its grace.

use berth_core::retention::Policy;

/// A retention policy from the command line; `off` turns scheduled retention off.
#[derive(Clone, Copy, Debug)]
pub struct PolicyArg(pub Option<Policy>);

/// Parses `keep-last=N,hourly=N,daily=N,weekly=N[,monthly=N]` or `off`.
pub fn parse_policy(s: &str) -> Result<PolicyArg, String> {
    match s.trim() {
        "off" | "none" => Ok(PolicyArg(None)),
        p => Policy::parse(p).map(|p| PolicyArg(Some(p))),
    }
}

impl Default for PolicyArg {
    fn default() -> Self {
        PolicyArg(Some(Policy::default()))
    }
}

impl std::fmt::Display for PolicyArg {
    /// Prints the policy as [`parse_policy`] reads it back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(p) => p.fmt(f),
            None => f.write_str("off"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_from_flags() {
        assert_eq!(parse_policy("off").unwrap().0, None);
        assert_eq!(parse_policy(&PolicyArg::default().to_string()).unwrap().0, Some(Policy::default()));
        assert_eq!(PolicyArg(None).to_string(), "off");
        assert!(parse_policy("keep=3").unwrap_err().contains("unknown retention key"));
    }
}
