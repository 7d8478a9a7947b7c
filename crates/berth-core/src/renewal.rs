//! A sandbox's own reckoning of its lease, on its monotonic clock: until when it may write.
//!
//! The control plane renews a lease to `its now + TTL` when it handles a heartbeat. The sandbox
//! cannot read that clock, so it counts from the moment it *sent* the heartbeat that succeeded
//! (the control plane handled it later, so its expiry is later still), and stops writing a
//! safety margin before: `deadline = sent + TTL - margin`.
//!
//! # Assumptions
//! - The sandbox's monotonic clock and the control plane's clock advance at rates that differ
//!   by less than `margin / TTL` (ordinary clocks differ by parts per million; the default
//!   margin, a quarter of the TTL, tolerates 25% less the time of a write).
//! - A store write started before the deadline lands within what is left of the margin. A
//!   writer paused for longer than that (SIGSTOP, a frozen VM) is caught by the store instead:
//!   records are written create-if-absent after their parent, and a higher epoch supersedes.

/// The default margin for a lease of `ttl_secs`: a quarter of it, at least 1 s, at most half.
pub fn default_margin_secs(ttl_secs: u64) -> u64 {
    (ttl_secs / 4).max(1).min(ttl_secs / 2)
}

/// What the sandbox knows about its lease, over monotonic milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseClock {
    ttl_ms: u64,
    margin_ms: u64,
    renewed_ms: Option<u64>,
}

impl LeaseClock {
    /// A lease of `ttl_ms` with `margin_ms` kept back (at most half the TTL), not yet renewed:
    /// nothing may be written before the first renewal, since the sandbox cannot know when
    /// its attach happened.
    pub fn new(ttl_ms: u64, margin_ms: u64) -> LeaseClock {
        LeaseClock { ttl_ms, margin_ms: margin_ms.min(ttl_ms / 2), renewed_ms: None }
    }

    /// A heartbeat sent at `sent_ms` succeeded.
    pub fn renewed(&mut self, sent_ms: u64) {
        self.renewed_ms = Some(self.renewed_ms.map_or(sent_ms, |r| r.max(sent_ms)));
    }

    /// Returns when writing must stop unless renewed again; `None` before the first renewal.
    pub fn deadline(&self) -> Option<u64> {
        self.renewed_ms.map(|r| r + self.ttl_ms - self.margin_ms)
    }

    /// Returns whether the sandbox may write at `now_ms`.
    pub fn holds(&self, now_ms: u64) -> bool {
        self.deadline().is_some_and(|d| now_ms < d)
    }

    /// The margin kept back, in milliseconds.
    pub fn margin_ms(&self) -> u64 {
        self.margin_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stop_a_margin_before_the_lease_can_expire() {
        let mut c = LeaseClock::new(60_000, 15_000);
        assert!(!c.holds(0), "nothing before the first renewal");
        c.renewed(1_000);
        assert_eq!(c.deadline(), Some(46_000));
        assert!(c.holds(45_999) && !c.holds(46_000));
        c.renewed(500);
        assert_eq!(c.deadline(), Some(46_000), "a late answer to an older heartbeat never moves it back");
        c.renewed(30_000);
        assert!(c.holds(60_000));
        assert_eq!(LeaseClock::new(4_000, 9_000).margin_ms(), 2_000, "at most half the TTL");
    }

    #[test]
    fn default_margins() {
        assert_eq!(default_margin_secs(60), 15);
        assert_eq!(default_margin_secs(4), 1);
        assert_eq!(default_margin_secs(1), 0);
        assert_eq!(default_margin_secs(2), 1);
    }
}
