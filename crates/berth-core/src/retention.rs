//! Retention (`forget`): which snapshots of a workspace to keep, as a plan that can be printed
//! before anything is deleted. Buckets work like restic's: newest first, one snapshot per
//! distinct hour/day/week/month until each count is used up. Snapshots something still points
//! at (a live session's, a pending handover's) are pinned: kept whatever the policy says.

use serde::{Deserialize, Serialize};

use crate::id::SnapshotId;
use crate::lease::Epoch;
use crate::time::Timestamp;

/// How many snapshots to keep of each kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The newest N.
    pub last: u32,
    /// The newest in each of the last N hours that have snapshots.
    pub hourly: u32,
    /// The newest in each of the last N days that have snapshots.
    pub daily: u32,
    /// The newest in each of the last N ISO weeks that have snapshots.
    pub weekly: u32,
    /// The newest in each of the last N months that have snapshots.
    pub monthly: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self { last: 10, hourly: 24, daily: 7, weekly: 4, monthly: 0 }
    }
}

impl Policy {
    /// A policy that keeps only the latest.
    pub const NONE: Policy = Policy { last: 0, hourly: 0, daily: 0, weekly: 0, monthly: 0 };

    /// Parses `keep-last=10,hourly=24,daily=7,weekly=4` (also `monthly=N`; each key may be
    /// written with or without `keep-`). A key left out keeps none of its kind.
    pub fn parse(s: &str) -> Result<Policy, String> {
        let mut policy = Policy::NONE;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not KEY=N; use e.g. keep-last=10,hourly=24,daily=7,weekly=4"))?;
            let n: u32 = value
                .trim()
                .parse()
                .map_err(|_| format!("'{value}' in '{part}' is not a count; use a whole number"))?;
            let slot = match key.trim().trim_start_matches("keep-") {
                "last" => &mut policy.last,
                "hourly" => &mut policy.hourly,
                "daily" => &mut policy.daily,
                "weekly" => &mut policy.weekly,
                "monthly" => &mut policy.monthly,
                other => {
                    return Err(format!(
                        "unknown retention key '{other}'; use keep-last, hourly, daily, weekly or monthly"
                    ))
                }
            };
            *slot = n;
        }
        Ok(policy)
    }
}

impl std::fmt::Display for Policy {
    /// Formats the policy as [`Policy::parse`] reads it back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "keep-last={},hourly={},daily={},weekly={}", self.last, self.hourly, self.daily, self.weekly)?;
        if self.monthly > 0 {
            write!(f, ",monthly={}", self.monthly)?;
        }
        Ok(())
    }
}

/// A snapshot as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Its id.
    pub id: SnapshotId,
    /// Its position in the workspace history.
    pub seq: u64,
    /// The epoch of its writer: the newest is the greatest by (epoch, seq).
    pub epoch: Epoch,
    /// When it was taken.
    pub time: Timestamp,
}

/// The decision for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its sequence number.
    pub seq: u64,
    /// When it was taken.
    pub time: Timestamp,
    /// Whether it is kept.
    pub keep: bool,
    /// The rules that keep it (empty when it is forgotten).
    pub reasons: Vec<&'static str>,
}

/// Decides which snapshots to keep. The latest (the greatest by (epoch, seq)) is always kept,
/// whatever the policy says. Returns decisions newest first.
pub fn plan(candidates: &[Candidate], policy: &Policy) -> Vec<Decision> {
    plan_pinned(candidates, policy, |_| false)
}

/// Like [`plan`]; every snapshot `pinned` says yes to is kept too (reason `pinned`), without
/// using up any of the policy's counts.
pub fn plan_pinned(candidates: &[Candidate], policy: &Policy, pinned: impl Fn(&SnapshotId) -> bool) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by_key(|c| std::cmp::Reverse((c.epoch, c.seq)));
    type BucketFn = fn(&Timestamp) -> i64;
    let rules: [(&'static str, u32, BucketFn); 4] = [
        ("hourly", policy.hourly, |t| t.secs().div_euclid(3600)),
        ("daily", policy.daily, |t| t.days()),
        ("weekly", policy.weekly, |t| {
            let (y, w) = t.iso_week();
            y * 100 + w
        }),
        ("monthly", policy.monthly, |t| {
            let c = t.civil();
            c.year * 100 + c.month as i64
        }),
    ];
    let mut left: Vec<u32> = rules.iter().map(|r| r.1).collect();
    let mut last_bucket: Vec<Option<i64>> = vec![None; rules.len()];
    let mut decisions = Vec::with_capacity(sorted.len());
    for (i, c) in sorted.iter().enumerate() {
        let mut reasons = Vec::new();
        if i == 0 {
            reasons.push("latest");
        }
        if (i as u64) < policy.last as u64 {
            reasons.push("last");
        }
        for (r, (name, _, bucket)) in rules.iter().enumerate() {
            let b = bucket(&c.time);
            if left[r] > 0 && last_bucket[r] != Some(b) {
                left[r] -= 1;
                last_bucket[r] = Some(b);
                reasons.push(name);
            }
        }
        if pinned(&c.id) {
            reasons.push("pinned");
        }
        decisions.push(Decision { id: c.id, seq: c.seq, time: c.time, keep: !reasons.is_empty(), reasons });
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600 * 1_000_000_000;

    fn candidates(hours: &[i64]) -> Vec<Candidate> {
        hours
            .iter()
            .enumerate()
            .map(|(i, h)| Candidate {
                id: SnapshotId::of(&i.to_le_bytes()),
                seq: i as u64 + 1,
                epoch: Epoch::ZERO,
                time: Timestamp(h * H),
            })
            .collect()
    }

    fn check(hours: &[i64], policy: Policy, expect_kept_seqs: &[u64]) {
        let kept: Vec<u64> = plan(&candidates(hours), &policy).iter().filter(|d| d.keep).map(|d| d.seq).collect();
        assert_eq!(kept, expect_kept_seqs);
    }

    #[test]
    fn policies() {
        let none = Policy { last: 0, hourly: 0, daily: 0, weekly: 0, monthly: 0 };
        // The latest survives even an empty policy.
        check(&[0, 1, 2], none, &[3]);
        check(&[0, 1, 2, 3], Policy { last: 2, ..none }, &[4, 3]);
        // Two per hour over three hours: hourly keeps the newest of each hour.
        check(&[0, 0, 1, 1, 2, 2], Policy { hourly: 2, ..none }, &[6, 4]);
        // Daily over 3 days, 12-hour spacing.
        check(&[0, 12, 24, 36, 48, 60], Policy { daily: 10, ..none }, &[6, 4, 2]);
        let d = plan(&candidates(&[0, 1]), &Policy::default());
        assert_eq!(d[0].reasons, vec!["latest", "last", "hourly", "daily", "weekly"]);
    }

    #[test]
    fn pinned_snapshots_are_kept_beyond_the_policy() {
        let c = candidates(&[0, 1, 2, 3]);
        let pinned = c[1].id;
        let kept: Vec<(u64, Vec<&str>)> = plan_pinned(&c, &Policy { last: 1, ..Policy::NONE }, |id| *id == pinned)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| (d.seq, d.reasons))
            .collect();
        assert_eq!(kept, vec![(4, vec!["latest", "last"]), (2, vec!["pinned"])]);
    }

    #[test]
    fn policies_parse_and_print() {
        let check = |s: &str, want: Result<Policy, &str>| match (Policy::parse(s), want) {
            (Ok(got), Ok(want)) => {
                assert_eq!(got, want, "{s}");
                assert_eq!(Policy::parse(&got.to_string()), Ok(got), "{got} reads back");
            }
            (Err(got), Err(want)) => assert!(got.contains(want), "{s}: {got}"),
            (got, want) => panic!("{s}: got {got:?}, want {want:?}"),
        };
        check("keep-last=10,hourly=24,daily=7,weekly=4", Ok(Policy::default()));
        check("last=3, keep-monthly=2", Ok(Policy { last: 3, monthly: 2, ..Policy::NONE }));
        check("", Ok(Policy::NONE));
        check("keep-last", Err("is not KEY=N"));
        check("keep-last=x", Err("is not a count"));
        check("yearly=1", Err("unknown retention key 'yearly'"));
        assert_eq!(Policy::default().to_string(), "keep-last=10,hourly=24,daily=7,weekly=4");
    }

    /// The latest kept is the greatest by (epoch, seq): a higher epoch's record at a lower seq
    /// survives an empty policy, and the zombie's higher seq does not.
    #[test]
    fn latest_is_by_epoch_then_seq() {
        let none = Policy { last: 0, hourly: 0, daily: 0, weekly: 0, monthly: 0 };
        let mut c = candidates(&[0, 1]);
        c[0].seq = 5;
        c[0].epoch = Epoch(2);
        c[1].seq = 9;
        c[1].epoch = Epoch(1);
        let kept: Vec<u64> = plan(&c, &none).iter().filter(|d| d.keep).map(|d| d.seq).collect();
        assert_eq!(kept, vec![5]);
    }
}
