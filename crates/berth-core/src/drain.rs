//! The drain of a scope (a node, a pool, one workspace): set by an eviction, cleared only by
//! the replacement's acknowledgement with the matching nonce, a heartbeat from a new instance,
//! or a hard timeout. A late heartbeat from the old instance never clears it, and the drained
//! session can never acknowledge its own drain.
//!
//! `step(state, event, now) -> (state, outcome)`: the shell stores the state and records the
//! outcome in the audit log.

use serde::{Deserialize, Serialize};

use crate::session::{InstanceId, SessionId};
use crate::time::Timestamp;

/// Default hard timeout after which a drain clears by itself.
pub const DEFAULT_HARD_TIMEOUT_SECS: i64 = 15 * 60;

/// The shortest drain budget: enough to commit and snapshot a little.
pub const MIN_BUDGET_SECS: u64 = 3;

/// Returns the safety margin kept between the end of a drain and the platform's kill:
/// a tenth of the grace period, between 2 and 30 seconds.
pub fn margin_secs(grace_secs: u64) -> u64 {
    (grace_secs / 10).clamp(2, 30)
}

/// Returns the drain budget: `min(configured, grace - margin)`, at least [`MIN_BUDGET_SECS`].
/// For the Kubernetes default of 30 s that is 27 s; for a 120 s spot notice 108 s; for 15 min 870 s.
pub fn budget_secs(configured: Option<u64>, grace_secs: u64) -> u64 {
    let room = grace_secs.saturating_sub(margin_secs(grace_secs));
    configured.map_or(room, |c| c.min(room)).max(MIN_BUDGET_SECS)
}

/// The drain state of one scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Drain {
    /// Work may be dispatched into the scope.
    Open,
    /// No work may be dispatched into the scope.
    Draining {
        /// What the replacement must present to clear it.
        nonce: String,
        /// When the drain started.
        since: Timestamp,
        /// The instance being drained: its heartbeats never clear the drain, another
        /// instance's heartbeat does. `None` (a node or pool drain): heartbeats never clear it.
        instance: Option<InstanceId>,
        /// The session being drained: it may not acknowledge the drain. `None`: no session
        /// held the scope when the drain started.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionId>,
    },
}

/// Something that happened to a scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An eviction notice for `instance`, with a fresh nonce.
    Evict {
        /// The instance being evicted, if one is.
        instance: Option<InstanceId>,
        /// Its session, if one is.
        session: Option<SessionId>,
        /// A fresh random nonce.
        nonce: String,
    },
    /// A heartbeat from `instance`.
    Heartbeat {
        /// Who sent it.
        instance: InstanceId,
    },
    /// The replacement acknowledges readiness.
    Ack {
        /// The nonce it presents.
        nonce: String,
        /// The session acknowledging; `None` for the admin.
        by: Option<SessionId>,
    },
    /// Time passes (the reconciler's tick).
    Tick,
}

/// Why a drain cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClearedBy {
    /// The replacement acknowledged with the matching nonce.
    Ack,
    /// A heartbeat came from an instance other than the drained one.
    NewInstance,
    /// The hard timeout passed.
    Timeout,
}

/// What a step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The drain started; the nonce to hand to the replacement.
    Started(String),
    /// An eviction while already draining: the existing nonce stands.
    AlreadyDraining(String),
    /// The drain cleared.
    Cleared(ClearedBy),
    /// An acknowledgement with the wrong nonce: still draining.
    WrongNonce,
    /// An acknowledgement by the drained session itself: refused, still draining.
    OwnAck,
    /// Nothing changed.
    Unchanged,
}

/// Applies `event` at `now` with the given hard timeout.
pub fn step(state: &Drain, event: Event, now: Timestamp, hard_timeout_secs: i64) -> (Drain, Outcome) {
    match (state, event) {
        (Drain::Open, Event::Evict { instance, session, nonce }) => {
            (Drain::Draining { nonce: nonce.clone(), since: now, instance, session }, Outcome::Started(nonce))
        }
        (Drain::Draining { nonce, .. }, Event::Evict { .. }) => {
            (state.clone(), Outcome::AlreadyDraining(nonce.clone()))
        }
        (Drain::Draining { since, .. }, _) if now >= since.plus_secs(hard_timeout_secs) => {
            (Drain::Open, Outcome::Cleared(ClearedBy::Timeout))
        }
        (Drain::Draining { session: Some(drained), .. }, Event::Ack { by: Some(by), .. }) if *drained == by => {
            (state.clone(), Outcome::OwnAck)
        }
        (Drain::Draining { nonce, .. }, Event::Ack { nonce: given, .. }) => {
            if *nonce == given {
                (Drain::Open, Outcome::Cleared(ClearedBy::Ack))
            } else {
                (state.clone(), Outcome::WrongNonce)
            }
        }
        (Drain::Draining { instance: Some(instance), .. }, Event::Heartbeat { instance: from })
            if *instance != from =>
        {
            (Drain::Open, Outcome::Cleared(ClearedBy::NewInstance))
        }
        // Not draining (an ack is a no-op), a late heartbeat from the drained instance, a tick
        // inside the timeout.
        _ => (state.clone(), Outcome::Unchanged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp(1_000 * 1_000_000_000);
    const HARD: i64 = DEFAULT_HARD_TIMEOUT_SECS;

    fn inst(s: &str) -> InstanceId {
        InstanceId::new(s).unwrap()
    }

    fn ses(s: &str) -> SessionId {
        SessionId::new(s).unwrap()
    }

    fn evict() -> Event {
        Event::Evict { instance: Some(inst("old")), session: Some(ses("ses_old")), nonce: "n1".into() }
    }

    fn check(events: &[(i64, Event)], expect: &[Outcome], draining_at_end: bool) {
        let mut state = Drain::Open;
        let mut outcomes = Vec::new();
        for (secs, e) in events {
            let (s, o) = step(&state, e.clone(), T0.plus_secs(*secs), HARD);
            state = s;
            outcomes.push(o);
        }
        assert_eq!(outcomes, expect);
        assert_eq!(matches!(state, Drain::Draining { .. }), draining_at_end);
    }

    #[test]
    fn budgets_adapt_to_the_grace_period() {
        assert_eq!([budget_secs(None, 30), budget_secs(None, 120), budget_secs(None, 900)], [27, 108, 870]);
        assert_eq!(budget_secs(Some(10), 30), 10);
        assert_eq!(budget_secs(Some(60), 30), 27, "never past the platform's kill");
        assert_eq!(budget_secs(None, 2), MIN_BUDGET_SECS);
    }

    #[test]
    fn clearing_rules() {
        use Outcome::*;
        let hb = |i: &str| Event::Heartbeat { instance: inst(i) };
        let ack = |n: &str| Event::Ack { nonce: n.into(), by: Some(ses("ses_new")) };
        let own_ack = |n: &str| Event::Ack { nonce: n.into(), by: Some(ses("ses_old")) };
        let admin_ack = |n: &str| Event::Ack { nonce: n.into(), by: None };
        // A late heartbeat from the old instance never clears it; a wrong nonce leaves it draining.
        check(&[(0, evict()), (1, hb("old")), (2, ack("nope"))], &[Started("n1".into()), Unchanged, WrongNonce], true);
        // The matching nonce clears it, from the replacement's session or the admin.
        check(&[(0, evict()), (5, ack("n1"))], &[Started("n1".into()), Cleared(ClearedBy::Ack)], false);
        check(&[(0, evict()), (5, admin_ack("n1"))], &[Started("n1".into()), Cleared(ClearedBy::Ack)], false);
        // The drained session never acknowledges its own drain, even with the right nonce.
        check(&[(0, evict()), (5, own_ack("n1"))], &[Started("n1".into()), OwnAck], true);
        // A heartbeat from a new instance clears it.
        check(&[(0, evict()), (5, hb("new"))], &[Started("n1".into()), Cleared(ClearedBy::NewInstance)], false);
        // The hard timeout clears it, whatever comes.
        check(&[(0, evict()), (HARD, Event::Tick)], &[Started("n1".into()), Cleared(ClearedBy::Timeout)], false);
        check(&[(0, evict()), (HARD - 1, Event::Tick)], &[Started("n1".into()), Unchanged], true);
        // An ack while not draining is a no-op; a second eviction keeps the first nonce.
        check(&[(0, ack("n1"))], &[Unchanged], false);
        let again = Event::Evict { instance: Some(inst("old")), session: Some(ses("ses_old")), nonce: "n2".into() };
        check(&[(0, evict()), (1, again)], &[Started("n1".into()), AlreadyDraining("n1".into())], true);
        // A drain that names no instance (a node or pool) is not cleared by any heartbeat.
        let node = Event::Evict { instance: None, session: None, nonce: "n3".into() };
        check(&[(0, node), (1, hb("new"))], &[Started("n3".into()), Unchanged], true);
    }
}
