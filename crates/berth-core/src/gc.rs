//! Volume garbage collection, owner deletion and the orphan sweep as plans: what to remove, what
//! to leave and why. The shell executes a plan, re-checking preconditions, and records outcomes.
//!
//! **Invariant:** only [`Outcome::Removed`] and [`Outcome::NotFound`] mark a volume removed; a
//! volume with a live lease is never removed; an at-risk volume is rescued before it is removed,
//! unless the operator forced the removal or it stayed at risk past the retention.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::lease::Lease;
use crate::lifecycle::{AtRisk, AtRiskRemoval};
use crate::time::Timestamp;
use crate::volume::VolumeName;
use crate::workspace::{Generation, WorkspaceId};

/// What one removal attempt (or the decision not to make one) came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The substrate removed the volume.
    Removed,
    /// The substrate had no such volume: as good as removed.
    NotFound,
    /// Still in use (a live lease, or mounted by a live container or pod): left alone.
    Referenced,
    /// Closed too recently, or backing off after an error: not attempted this sweep.
    Cooldown,
    /// The substrate failed; retried after a backoff.
    Error,
    /// At risk and not rescued (the rescue failed, or none is possible): kept, retried after a
    /// backoff.
    AtRisk,
}

impl Outcome {
    /// Every outcome, in the order summaries print them.
    pub const ALL: [Outcome; 6] =
        [Outcome::Removed, Outcome::NotFound, Outcome::Referenced, Outcome::Cooldown, Outcome::Error, Outcome::AtRisk];

    /// Returns whether this outcome marks the volume removed for good.
    pub fn marks_removed(self) -> bool {
        matches!(self, Outcome::Removed | Outcome::NotFound)
    }

    /// Returns the stable name used in events, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Removed => "removed",
            Outcome::NotFound => "not_found",
            Outcome::Referenced => "referenced",
            Outcome::Cooldown => "cooldown",
            Outcome::Error => "error",
            Outcome::AtRisk => "at_risk",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A closed or deleted workspace whose volume is not yet marked removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The owner.
    pub owner: WorkspaceId,
    /// The generation the volume belongs to.
    pub generation: Generation,
    /// The volume.
    pub volume: VolumeName,
    /// The workspace's lease as stored.
    pub lease: Lease,
    /// Whether its last session left work no snapshot has.
    pub at_risk: Option<AtRisk>,
}

/// What to do with one candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask the substrate to delete the volume.
    Remove,
    /// At risk: rescue it (a snapshot under a new epoch), then remove it once that succeeded.
    Rescue,
    /// At risk, and given up without a rescue for this reason: remove it, recording why.
    RemoveAtRisk(AtRiskRemoval),
    /// Leave it, with this outcome.
    Skip(Outcome),
}

/// How a sweep treats at-risk volumes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Seconds a volume may stay at risk before it is removed without a rescue (`None`: forever).
    pub at_risk_retention_secs: Option<i64>,
    /// The operator forces removal of at-risk volumes (`--force`).
    pub force: bool,
}

/// Plans one sweep over claimed candidates: a live lease means referenced; an at-risk volume
/// is rescued first, unless forced or past the retention; everything else is removed.
pub fn plan(candidates: Vec<Candidate>, now: Timestamp, policy: Policy) -> Vec<(Candidate, Action)> {
    candidates
        .into_iter()
        .map(|c| {
            let action = match &c.at_risk {
                _ if c.lease.is_live(now) => Action::Skip(Outcome::Referenced),
                None => Action::Remove,
                Some(_) if policy.force => Action::RemoveAtRisk(AtRiskRemoval::Forced),
                Some(r) if policy.at_risk_retention_secs.is_some_and(|secs| now >= r.since.plus_secs(secs)) => {
                    Action::RemoveAtRisk(AtRiskRemoval::Retention)
                }
                Some(_) => Action::Rescue,
            };
            (c, action)
        })
        .collect()
}

/// Returns when a volume that failed `attempts` times (1 = the first failure) is tried again:
/// 30 s doubling up to an hour.
pub fn retry_at(attempts: u32, now: Timestamp) -> Timestamp {
    let secs = 30i64.saturating_mul(1 << attempts.saturating_sub(1).min(7)).min(3600);
    now.plus_secs(secs)
}

/// Counts of outcomes of one sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    counts: BTreeMap<Outcome, u64>,
}

impl Summary {
    /// Adds `n` of `outcome`.
    pub fn add(&mut self, outcome: Outcome, n: u64) {
        *self.counts.entry(outcome).or_default() += n;
    }

    /// Returns the count of `outcome`.
    pub fn get(&self, outcome: Outcome) -> u64 {
        self.counts.get(&outcome).copied().unwrap_or(0)
    }

    /// Returns every outcome with its count, zeros included.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        Outcome::ALL.iter().map(|o| (o.as_str(), self.get(*o))).collect()
    }
}

impl fmt::Display for Summary {
    /// Formats as `removed=1 not_found=0 referenced=0 cooldown=2 error=0 at_risk=0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{o}={}", self.get(*o))?;
        }
        Ok(())
    }
}

/// The steps of deleting an owner, in order. Each is idempotent and recorded durably before the
/// next begins, so a restart resumes where the last one stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteStep {
    /// End the owner's sessions and release its lease.
    EndSessions,
    /// Delete the volume (not found counts as done).
    DeleteVolume,
    /// Retire the generation's snapshot pointers.
    RetireSnapshots,
    /// Bump the generation and mark the record deleted.
    MarkDeleted,
}

impl DeleteStep {
    /// Returns the step after this one, or `None` after the last.
    pub fn next(self) -> Option<DeleteStep> {
        match self {
            DeleteStep::EndSessions => Some(DeleteStep::DeleteVolume),
            DeleteStep::DeleteVolume => Some(DeleteStep::RetireSnapshots),
            DeleteStep::RetireSnapshots => Some(DeleteStep::MarkDeleted),
            DeleteStep::MarkDeleted => None,
        }
    }

    /// Returns the stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteStep::EndSessions => "end_sessions",
            DeleteStep::DeleteVolume => "delete_volume",
            DeleteStep::RetireSnapshots => "retire_snapshots",
            DeleteStep::MarkDeleted => "mark_deleted",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<DeleteStep> {
        [DeleteStep::EndSessions, DeleteStep::DeleteVolume, DeleteStep::RetireSnapshots, DeleteStep::MarkDeleted]
            .into_iter()
            .find(|step| step.as_str() == s)
    }
}

/// What the orphan sweep does with one volume name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum OrphanAction {
    /// Seen without a record for the first time: remember when.
    Track,
    /// Still inside the grace window.
    Wait {
        /// When it may be removed.
        until: Timestamp,
    },
    /// Past the grace window with no record: remove it.
    Remove,
    /// Tracked before, but it has a record again or is gone: stop tracking it.
    Forget,
}

/// Plans an orphan sweep. `listed`: the substrate's volumes carrying berth's labels, listed
/// before `known` (the volume names of every record not marked removed) was read, so a volume
/// created after its record always finds it. `tracked`: orphans seen before, with when.
pub fn orphan_plan(
    listed: &BTreeSet<VolumeName>,
    known: &BTreeSet<VolumeName>,
    tracked: &BTreeMap<VolumeName, Timestamp>,
    now: Timestamp,
    grace_secs: i64,
) -> Vec<(VolumeName, OrphanAction)> {
    let mut plan = Vec::new();
    for name in listed.difference(known) {
        let action = match tracked.get(name) {
            None => OrphanAction::Track,
            Some(seen) if now >= seen.plus_secs(grace_secs) => OrphanAction::Remove,
            Some(seen) => OrphanAction::Wait { until: seen.plus_secs(grace_secs) },
        };
        plan.push((name.clone(), action));
    }
    for name in tracked.keys() {
        if known.contains(name) || !listed.contains(name) {
            plan.push((name.clone(), OrphanAction::Forget));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Holder;
    use crate::session::{InstanceId, SessionId};

    const T0: Timestamp = Timestamp(1_000 * 1_000_000_000);

    fn candidate(owner: &str, lease_expires: Option<Timestamp>) -> Candidate {
        let owner = WorkspaceId::new(owner).unwrap();
        let lease = match lease_expires {
            Some(expires) => Lease {
                epoch: crate::lease::Epoch(3),
                holder: Some(Holder {
                    session: SessionId::new("ses_1").unwrap(),
                    instance: InstanceId::new("pod").unwrap(),
                }),
                expires,
            },
            None => Lease::default(),
        };
        Candidate {
            volume: VolumeName::derive("inst", &owner, Generation(1)),
            owner,
            generation: Generation(1),
            lease,
            at_risk: None,
        }
    }

    #[test]
    fn a_live_lease_is_referenced() {
        let candidates = vec![candidate("a", None), candidate("b", Some(T0.plus_secs(5))), candidate("c", Some(T0))];
        let plan = plan(candidates, T0, Policy::default());
        let actions: Vec<_> = plan.iter().map(|(c, a)| (c.owner.as_str(), *a)).collect();
        assert_eq!(actions, [("a", Action::Remove), ("b", Action::Skip(Outcome::Referenced)), ("c", Action::Remove)]);
    }

    #[test]
    fn at_risk_volumes_are_rescued_unless_forced_or_past_the_retention() {
        use crate::lifecycle::SessionEnd;
        let risky = |owner, since: Timestamp| Candidate {
            at_risk: Some(AtRisk { since, outcome: SessionEnd::Expired, session: SessionId::new("ses_1").unwrap() }),
            ..candidate(owner, None)
        };
        let week = 7 * 24 * 3600;
        let retention = Policy { at_risk_retention_secs: Some(week), force: false };
        let check = |policy, want: [Action; 3]| {
            let cands = vec![risky("a", T0), risky("b", T0.plus_secs(-week)), candidate("c", None)];
            let got: Vec<_> = plan(cands, T0, policy).into_iter().map(|(_, a)| a).collect();
            assert_eq!(got, want, "{policy:?}");
        };
        check(Policy::default(), [Action::Rescue, Action::Rescue, Action::Remove]);
        check(retention, [Action::Rescue, Action::RemoveAtRisk(AtRiskRemoval::Retention), Action::Remove]);
        let forced = Action::RemoveAtRisk(AtRiskRemoval::Forced);
        check(Policy { force: true, ..retention }, [forced, forced, Action::Remove]);
        // A live lease wins over everything: never removed while in use.
        let live = Candidate { at_risk: risky("d", T0).at_risk, ..candidate("d", Some(T0.plus_secs(5))) };
        let got = plan(vec![live], T0, Policy { force: true, ..retention });
        assert_eq!(got[0].1, Action::Skip(Outcome::Referenced));
    }

    #[test]
    fn only_removed_and_not_found_mark() {
        let marking: Vec<_> = Outcome::ALL.into_iter().filter(|o| o.marks_removed()).collect();
        assert_eq!(marking, [Outcome::Removed, Outcome::NotFound]);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let secs = |n| (retry_at(n, T0).0 - T0.0) / 1_000_000_000;
        assert_eq!([secs(1), secs(2), secs(3), secs(8), secs(30)], [30, 60, 120, 3600, 3600]);
    }

    #[test]
    fn summary_line() {
        let mut s = Summary::default();
        s.add(Outcome::Removed, 2);
        s.add(Outcome::Cooldown, 1);
        assert_eq!(s.to_string(), "removed=2 not_found=0 referenced=0 cooldown=1 error=0 at_risk=0");
    }

    #[test]
    fn delete_steps_run_in_order_and_round_trip() {
        let mut step = Some(DeleteStep::EndSessions);
        let mut names = Vec::new();
        while let Some(s) = step {
            assert_eq!(DeleteStep::parse(s.as_str()), Some(s));
            names.push(s.as_str());
            step = s.next();
        }
        assert_eq!(names, ["end_sessions", "delete_volume", "retire_snapshots", "mark_deleted"]);
    }

    #[test]
    fn orphans_wait_out_the_grace_window() {
        let v = |s: &str| VolumeName::new(s).unwrap();
        let listed: BTreeSet<_> = ["ws-a", "ws-b", "ws-c", "ws-d"].map(v).into();
        let known: BTreeSet<_> = ["ws-a", "ws-e"].map(v).into();
        let tracked: BTreeMap<_, _> =
            [(v("ws-b"), T0), (v("ws-c"), T0.plus_secs(-3600)), (v("ws-e"), T0), (v("ws-gone"), T0)].into();
        let plan = orphan_plan(&listed, &known, &tracked, T0.plus_secs(60), 3600);
        let got: Vec<_> = plan.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        assert_eq!(
            got,
            [
                ("ws-b", OrphanAction::Wait { until: T0.plus_secs(3600) }),
                ("ws-c", OrphanAction::Remove),
                ("ws-d", OrphanAction::Track),
                ("ws-e", OrphanAction::Forget),
                ("ws-gone", OrphanAction::Forget),
            ]
        );
    }
}
