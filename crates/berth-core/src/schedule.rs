//! When the agent snapshots: on an interval (first after a shorter delay), and soon after
//! changes (a debounce from the first change), never two at once. A pure state machine over
//! monotonic milliseconds that the agent feeds with changes, ticks and finished runs.
//!
//! **Invariant:** a change is saved by a snapshot that starts at most `debounce` after it, or,
//! if one is running then, right after that one ends; so work at risk is bounded by the
//! debounce plus two snapshot runs.

/// Why a snapshot is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Files changed.
    Change,
    /// The interval passed.
    Interval,
}

impl Reason {
    /// Returns the stable name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Change => "change",
            Reason::Interval => "interval",
        }
    }
}

/// The scheduler's settings, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Between interval snapshots.
    pub interval_ms: u64,
    /// From start to the first interval snapshot.
    pub first_after_ms: u64,
    /// From the first unsaved change to the snapshot that saves it.
    pub debounce_ms: u64,
}

/// The scheduler's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduler {
    schedule: Schedule,
    /// The first change not yet covered by a snapshot that started after it.
    dirty_since: Option<u64>,
    next_interval: u64,
    running: bool,
}

impl Scheduler {
    /// Starts at `now`.
    pub fn new(schedule: Schedule, now: u64) -> Scheduler {
        Scheduler { schedule, dirty_since: None, next_interval: now + schedule.first_after_ms, running: false }
    }

    /// Records a change at `now`.
    pub fn changed(&mut self, now: u64) {
        self.dirty_since.get_or_insert(now);
    }

    /// Returns whether a snapshot should start at `now`, and why.
    pub fn due(&self, now: u64) -> Option<Reason> {
        if self.running {
            return None;
        }
        match self.dirty_since {
            Some(t) if now >= t + self.schedule.debounce_ms => Some(Reason::Change),
            _ if now >= self.next_interval => Some(Reason::Interval),
            _ => None,
        }
    }

    /// Returns when [`Scheduler::due`] next turns true if nothing else happens (`None` while a
    /// snapshot runs).
    pub fn next_due(&self) -> Option<u64> {
        if self.running {
            return None;
        }
        let change = self.dirty_since.map(|t| t + self.schedule.debounce_ms);
        Some(change.map_or(self.next_interval, |c| c.min(self.next_interval)))
    }

    /// A snapshot starts at `now`: it covers every change so far.
    pub fn started(&mut self, now: u64) {
        self.running = true;
        self.dirty_since = None;
        self.next_interval = now + self.schedule.interval_ms;
    }

    /// The running snapshot ended at `now`; a failed one leaves its changes unsaved.
    pub fn finished(&mut self, now: u64, ok: bool, covered_since: Option<u64>) {
        self.running = false;
        if !ok {
            if let Some(t) = covered_since {
                self.dirty_since = Some(self.dirty_since.map_or(t, |d| d.min(t)));
            }
            // Retry a failed run after a debounce rather than at once.
            self.dirty_since.get_or_insert(now);
        }
    }

    /// Returns the first unsaved change, if any.
    pub fn dirty_since(&self) -> Option<u64> {
        self.dirty_since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Schedule = Schedule { interval_ms: 60_000, first_after_ms: 30_000, debounce_ms: 500 };

    #[test]
    fn interval_and_first_delay() {
        let mut s = Scheduler::new(S, 0);
        assert_eq!(s.due(29_999), None);
        assert_eq!(s.due(30_000), Some(Reason::Interval));
        s.started(30_000);
        assert_eq!(s.due(31_000), None, "never two at once");
        s.finished(31_000, true, None);
        assert_eq!(s.next_due(), Some(90_000));
    }

    #[test]
    fn changes_are_saved_a_debounce_later() {
        let mut s = Scheduler::new(S, 0);
        s.changed(1_000);
        s.changed(1_300);
        assert_eq!(s.next_due(), Some(1_500));
        assert_eq!(s.due(1_499), None);
        assert_eq!(s.due(1_500), Some(Reason::Change));
        s.started(1_500);
        // A change during the run is saved by the next one, right after.
        s.changed(1_700);
        assert_eq!(s.due(2_500), None);
        s.finished(2_500, true, None);
        assert_eq!(s.due(2_500), Some(Reason::Change));
    }

    #[test]
    fn a_failed_run_keeps_its_changes_unsaved() {
        let mut s = Scheduler::new(S, 0);
        s.changed(100);
        s.started(600);
        s.finished(900, false, Some(100));
        assert_eq!(s.dirty_since(), Some(100));
        assert_eq!(s.due(900), Some(Reason::Change));
    }
}
