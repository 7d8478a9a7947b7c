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
    /// The last epoch handed out ([`Epoch::ZERO`]: never leased). Never decreases.
    pub epoch: Epoch,
    /// The current holder, if any (possibly expired).
    pub holder: Option<Holder>,
    /// When the current holder's lease ends unless renewed.
    pub expires: Timestamp,
}

impl Default for Lease {
    fn default() -> Self {
        Lease { epoch: Epoch::ZERO, holder: None, expires: Timestamp(0) }
    }
}

/// An acquire refused because another holder's lease is live.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("workspace is held by session {} (instance {}, epoch {epoch}) until {expires}", holder.session, holder.instance)]
pub struct Held {
    /// The live holder.
    pub holder: Holder,
    /// Its epoch.
    pub epoch: Epoch,
    /// When its lease ends unless renewed.
    pub expires: Timestamp,
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

    /// Returns the live holder at `now`, if there is one.
    pub fn live_holder(&self, now: Timestamp) -> Option<&Holder> {
        self.holder.as_ref().filter(|_| self.is_live(now))
    }

    /// Takes the lease for `holder` for `ttl_secs`; returns the new state, its epoch and how.
    pub fn acquire(&self, holder: Holder, now: Timestamp, ttl_secs: i64) -> Result<(Lease, Acquired), Held> {
        if let Some(current) = self.live_holder(now) {
            return Err(Held { holder: current.clone(), epoch: self.epoch, expires: self.expires });
        }
        let how = if self.holder.is_some() { Acquired::TakenOver } else { Acquired::Fresh };
        Ok((Lease { epoch: self.epoch.next(), holder: Some(holder), expires: now.plus_secs(ttl_secs) }, how))
    }

    /// Checks that `epoch` may write at `now`: it is the current epoch and its lease is live.
    pub fn check(&self, epoch: Epoch, now: Timestamp) -> Result<(), Fenced> {
        if epoch == self.epoch && self.is_live(now) {
            Ok(())
        } else {
            Err(self.fence(epoch))
        }
    }

    /// The refusal of a write carrying `epoch`.
    pub fn fence(&self, epoch: Epoch) -> Fenced {
        Fenced { presented: epoch, current: Some(self.epoch) }
    }

    /// Renews the live lease of `epoch` until `now + ttl_secs`.
    pub fn renew(&self, epoch: Epoch, now: Timestamp, ttl_secs: i64) -> Result<Lease, Fenced> {
        self.check(epoch, now)?;
        Ok(Lease { expires: now.plus_secs(ttl_secs), ..self.clone() })
    }

    /// Releases the lease of `epoch`; releasing a stale epoch is refused, releasing twice is fine.
    pub fn release(&self, epoch: Epoch) -> Result<Lease, Fenced> {
        if epoch != self.epoch {
            return Err(self.fence(epoch));
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
        assert_eq!((a.epoch, how), (Epoch(1), Acquired::Fresh));
        // A second attach while the lease is live is refused, naming the holder.
        let err = a.acquire(h("b"), T0.plus_secs(30), 60).unwrap_err();
        assert_eq!((err.holder.session.as_str(), err.epoch), ("a", Epoch(1)));
        let a = a.renew(Epoch(1), T0.plus_secs(50), 60).unwrap();
        assert!(a.check(Epoch(1), T0.plus_secs(100)).is_ok());
        // Without heartbeats it expires; b takes over with a higher epoch.
        let (b, how) = a.acquire(h("b"), T0.plus_secs(111), 60).unwrap();
        assert_eq!((b.epoch, how), (Epoch(2), Acquired::TakenOver));
        // The old holder's late writes are rejected.
        let fenced = Fenced { presented: Epoch(1), current: Some(Epoch(2)) };
        assert_eq!(b.check(Epoch(1), T0.plus_secs(112)), Err(fenced));
        assert_eq!(b.renew(Epoch(1), T0.plus_secs(112), 60), Err(fenced));
        assert_eq!(b.release(Epoch(1)), Err(fenced));
        // Release keeps the epoch: the next holder gets a higher one.
        let freed = b.release(Epoch(2)).unwrap();
        assert!(!freed.is_live(T0.plus_secs(113)));
        assert_eq!(freed.acquire(h("c"), T0.plus_secs(114), 60).unwrap().0.epoch, Epoch(3));
    }
}
