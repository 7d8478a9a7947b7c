//! The single-writer lease of a workspace, with a fencing epoch that only grows.
//!
//! **Invariant:** at most one live lease per workspace; every write that carries an epoch is
//! accepted only while that epoch is the current, live one. An expired lease can be taken
//! over; the old holder's later writes are rejected because their epoch is stale.

use serde::{Deserialize, Serialize};

use crate::session::{InstanceId, SessionId};
use crate::time::Timestamp;

/// A lease's fencing epoch: handed out by the control plane, one higher at every acquire, never
/// reused. Every write that a lease guards carries it, and a higher epoch always supersedes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// No lease was ever handed out (also: records written before epochs existed).
    pub const ZERO: Epoch = Epoch(0);

    /// Returns the epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A write refused because the writer's epoch is no longer the workspace's: another sandbox
/// holds (or may hold) the lease. The writer must stop writing; retrying cannot help.
///
/// Every layer that fences (the lease, the snapshot store, the API client, the agent) maps its
/// refusal to this one error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("epoch {presented} is fenced{}; this writer lost the workspace and must stop writing", match current { Some(c) => format!(" (epoch {c} supersedes it)"), None => String::new() })]
pub struct Fenced {
    /// The epoch the refused write carried.
    pub presented: Epoch,
    /// The epoch that supersedes it, when known.
    pub current: Option<Epoch>,
}

/// Who holds a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The session.
    pub session: SessionId,
    /// The sandbox instance (a container or pod id).
    pub instance: InstanceId,
}

/// The lease state of one workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The last epoch handed out (0: never leased). Never decreases.
    pub epoch: u64,
    /// The current holder, if any (possibly expired).
    pub holder: Option<Holder>,
    /// When the current holder's lease ends unless renewed.
    pub expires: Timestamp,
}

impl Default for Lease {
    fn default() -> Self {
        Lease { epoch: 0, holder: None, expires: Timestamp(0) }
    }
}

/// Why a lease operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Another holder's lease is live.
    #[error("workspace is held by session {} (instance {}) until {expires}", holder.session, holder.instance)]
    Held {
        /// The live holder.
        holder: Holder,
        /// When its lease ends unless renewed.
        expires: Timestamp,
    },
    /// The epoch is not the current one, or its lease expired or was released.
    #[error("epoch {given} is stale (current epoch {current}); this writer lost the workspace")]
    Stale {
        /// The epoch presented.
        given: u64,
        /// The current epoch.
        current: u64,
    },
}

/// What a successful acquire did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The workspace was free.
    Fresh,
    /// An expired lease of another holder was taken over.
    TakenOver,
}

impl Lease {
    /// Returns whether a holder's lease is live at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.holder.is_some() && now < self.expires
    }

    /// Takes the lease for `holder` for `ttl_secs`; returns the new state, its epoch and how.
    pub fn acquire(&self, holder: Holder, now: Timestamp, ttl_secs: i64) -> Result<(Lease, Acquired), LeaseError> {
        if let Some(current) = self.holder.as_ref().filter(|_| self.is_live(now)) {
            return Err(LeaseError::Held { holder: current.clone(), expires: self.expires });
        }
        let how = if self.holder.is_some() { Acquired::TakenOver } else { Acquired::Fresh };
        Ok((Lease { epoch: self.epoch + 1, holder: Some(holder), expires: now.plus_secs(ttl_secs) }, how))
    }

    /// Checks that `epoch` may write at `now`.
    pub fn check(&self, epoch: u64, now: Timestamp) -> Result<(), LeaseError> {
        if epoch == self.epoch && self.is_live(now) {
            Ok(())
        } else {
            Err(LeaseError::Stale { given: epoch, current: self.epoch })
        }
    }

    /// Renews the live lease of `epoch` until `now + ttl_secs`.
    pub fn renew(&self, epoch: u64, now: Timestamp, ttl_secs: i64) -> Result<Lease, LeaseError> {
        self.check(epoch, now)?;
        Ok(Lease { expires: now.plus_secs(ttl_secs), ..self.clone() })
    }

    /// Releases the lease of `epoch`; releasing a stale epoch is refused, releasing twice is fine.
    pub fn release(&self, epoch: u64) -> Result<Lease, LeaseError> {
        if epoch != self.epoch {
            return Err(LeaseError::Stale { given: epoch, current: self.epoch });
        }
        Ok(Lease { holder: None, expires: Timestamp(0), ..self.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Holder {
        Holder { session: SessionId::new(s).unwrap(), instance: InstanceId::new(format!("{s}-pod")).unwrap() }
    }

    const T0: Timestamp = Timestamp(1_000 * 1_000_000_000);

    #[test]
    fn one_writer_and_fencing() {
        let free = Lease::default();
        let (a, how) = free.acquire(h("a"), T0, 60).unwrap();
        assert_eq!((a.epoch, how), (1, Acquired::Fresh));
        // A second attach while the lease is live is refused, naming the holder.
        let err = a.acquire(h("b"), T0.plus_secs(30), 60).unwrap_err();
        assert!(matches!(&err, LeaseError::Held { holder, .. } if holder.session.as_str() == "a"));
        let a = a.renew(1, T0.plus_secs(50), 60).unwrap();
        assert!(a.check(1, T0.plus_secs(100)).is_ok());
        // Without heartbeats it expires; b takes over with a higher epoch.
        let (b, how) = a.acquire(h("b"), T0.plus_secs(111), 60).unwrap();
        assert_eq!((b.epoch, how), (2, Acquired::TakenOver));
        // The old holder's late writes are rejected.
        assert_eq!(b.check(1, T0.plus_secs(112)), Err(LeaseError::Stale { given: 1, current: 2 }));
        assert!(b.renew(1, T0.plus_secs(112), 60).is_err());
        assert!(b.release(1).is_err());
        // Release keeps the epoch: the next holder gets a higher one.
        let freed = b.release(2).unwrap();
        assert!(!freed.is_live(T0.plus_secs(113)));
        assert_eq!(freed.acquire(h("c"), T0.plus_secs(114), 60).unwrap().0.epoch, 3);
    }
}
