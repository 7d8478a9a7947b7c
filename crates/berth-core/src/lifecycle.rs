//! The lifecycle of a workspace record: active, closed, deleting (one step at a time), deleted;
//! where its volume stands; and the bookkeeping of failed cleanup attempts.
//!
//! `step(record, event, now) -> (record, effects)`: the metadata store loads the record under a
//! row lock, lets this module decide, writes the new record and carries out the effects, in one
//! transaction. A refusal changes nothing.
//!
//! ```text
//! (none) --ensure--> active --close--> closed --ensure--> active (reopened)
//!                      |                  |
//!                      +------delete------+--> deleting: end_sessions -> delete_volume
//!                                              -> retire_snapshots -> mark_deleted --> deleted
//! deleted --ensure--> active (the next generation: new volume, no snapshots)
//! ```
//!
//! **Invariant:** a deleted owner's name starts a new generation, so nothing of the previous
//! generation is ever restored into it; the lease epoch survives every transition.
//! **Invariant:** only removed and not found mark a volume removed, and a mark is never undone
//! for the same generation except by reopening (which recreates the volume).

use std::fmt;

use crate::gc::{self, DeleteStep, Outcome};
use crate::lease::{Held, Lease};
use crate::session::ReplicaId;
use crate::time::Timestamp;
use crate::volume::VolumeName;
use crate::workspace::{Generation, WorkspaceId};

/// Where a workspace is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Sandboxes may attach.
    Active,
    /// No attaches; the volume is collected after the cooldown; snapshots stay.
    Closed,
    /// Deletion under way, one step at a time.
    Deleting,
    /// Deleted; the next ensure starts the next generation.
    Deleted,
}

impl State {
    /// Every state.
    pub const ALL: [State; 4] = [State::Active, State::Closed, State::Deleting, State::Deleted];

    /// Returns the stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Closed => "closed",
            State::Deleting => "deleting",
            State::Deleted => "deleted",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a workspace's volume stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VolumeState {
    /// Recorded; the substrate may not have it yet.
    Pending,
    /// The substrate has it.
    Present,
    /// Removed or found missing, for good.
    Removed,
}

impl VolumeState {
    /// Every volume state.
    pub const ALL: [VolumeState; 3] = [VolumeState::Pending, VolumeState::Present, VolumeState::Removed];

    /// Returns the stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Pending => "pending",
            VolumeState::Present => "present",
            VolumeState::Removed => "removed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<VolumeState> {
        VolumeState::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A workspace's volume as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Its name, derived from the owner and generation.
    pub name: VolumeName,
    /// Where it stands.
    pub state: VolumeState,
    /// When it was marked removed.
    pub removed_at: Option<Timestamp>,
    /// The last GC or deletion outcome.
    pub last_outcome: Option<Outcome>,
}

impl Volume {
    /// A volume of `owner`'s `generation` that the substrate does not have yet.
    pub fn pending(owner: &WorkspaceId, generation: Generation) -> Volume {
        Volume {
            name: VolumeName::derive(owner, generation),
            state: VolumeState::Pending,
            removed_at: None,
            last_outcome: None,
        }
    }
}

/// Failed cleanup attempts (GC or deletion) and when the next may run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Failed attempts since the last success.
    pub attempts: u64,
    /// When the next attempt may run.
    pub retry_at: Option<Timestamp>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// A reconciler's hold on a record (claims expire, so a crashed holder blocks only until then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The replica holding it.
    pub holder: ReplicaId,
    /// Until when.
    pub until: Timestamp,
}

/// The lifecycle part of one workspace record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The owner.
    pub owner: WorkspaceId,
    /// The generation (bumped when a deletion completes).
    pub generation: Generation,
    /// Lifecycle state.
    pub state: State,
    /// When it was closed (kept through deletion: GC's cooldown counts from it).
    pub closed_at: Option<Timestamp>,
    /// The volume of this generation.
    pub volume: Volume,
    /// The single-writer lease; its epoch survives every transition.
    pub lease: Lease,
    /// The next deletion step, while deleting.
    pub delete_step: Option<DeleteStep>,
    /// Failed cleanup attempts.
    pub cleanup: Cleanup,
    /// A reconciler's claim.
    pub claim: Option<Claim>,
}

/// Something asked of a workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Ensure it exists and is active.
    Ensure,
    /// The substrate created the volume of `generation`.
    VolumeCreated {
        /// The generation the volume belongs to.
        generation: Generation,
    },
    /// Close it: no more attaches.
    Close,
    /// Ask for its deletion.
    Delete,
    /// A sandbox wants to attach (a guard: the lease decides the rest).
    Attach,
    /// A sandbox publishes a snapshot (a guard: the lease decides the rest).
    Publish,
    /// The claim `holder` finished deletion step `step` of `generation`; for `DeleteVolume`, with
    /// the substrate's outcome (removed or not found; `None`: it was already marked removed).
    StepDone {
        /// The claim holder.
        holder: ReplicaId,
        /// The generation being deleted.
        generation: Generation,
        /// The step done.
        step: DeleteStep,
        /// The volume outcome of `DeleteVolume`.
        volume: Option<Outcome>,
    },
    /// The claim `holder` failed a deletion step of `generation` (referenced or error).
    StepFailed {
        /// The claim holder.
        holder: ReplicaId,
        /// The generation being deleted.
        generation: Generation,
        /// Referenced or error.
        outcome: Outcome,
        /// Why.
        error: String,
    },
    /// A GC attempt by claim `holder` on the volume of `generation` came to `outcome`.
    Collected {
        /// The claim holder.
        holder: ReplicaId,
        /// The generation the volume belongs to.
        generation: Generation,
        /// What the attempt came to.
        outcome: Outcome,
        /// Why it failed, if it did.
        error: Option<String>,
    },
}

/// Why sessions end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The workspace was closed.
    Closed,
    /// The workspace is being deleted.
    Deleted,
}

impl EndReason {
    /// Returns the stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::Deleted => "deleted",
        }
    }
}

/// Who acted on a volume, for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// Volume GC.
    Gc,
    /// Owner deletion.
    Delete,
}

impl By {
    /// Returns the stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            By::Gc => "gc",
            By::Delete => "delete",
        }
    }
}

/// An audit event a transition records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audit {
    /// A generation began (the first, or one after a deletion).
    Ensured,
    /// A closed workspace was reopened.
    Reopened,
    /// The substrate has the volume.
    VolumeCreated,
    /// Closed.
    Closed,
    /// Deletion was asked for.
    DeleteRequested,
    /// Deletion ended the sessions.
    SessionsEnded,
    /// A removal attempt on the volume came to this outcome.
    Volume(Outcome, By),
    /// Deletion retired the snapshot pointers.
    SnapshotsRetired,
    /// Deletion completed.
    Deleted,
}

impl Audit {
    /// Returns the stable event name.
    pub fn kind(self) -> &'static str {
        match self {
            Audit::Ensured => "workspace_ensured",
            Audit::Reopened => "workspace_reopened",
            Audit::VolumeCreated => "volume_created",
            Audit::Closed => "workspace_closed",
            Audit::DeleteRequested => "workspace_delete_requested",
            Audit::SessionsEnded => "sessions_ended",
            Audit::Volume(o, _) => match o {
                Outcome::Removed => "volume_removed",
                Outcome::NotFound => "volume_not_found",
                Outcome::Referenced => "volume_referenced",
                Outcome::Cooldown => "volume_cooldown",
                Outcome::Error => "volume_error",
            },
            Audit::SnapshotsRetired => "snapshots_retired",
            Audit::Deleted => "workspace_deleted",
        }
    }
}

/// What the store does besides writing the new record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Insert the record (the owner had none): a fresh id and the ensure's options.
    Create,
    /// A new generation of an existing record: a fresh id, the ensure's options, no snapshot
    /// pointer.
    StartGeneration,
    /// End the owner's open sessions.
    EndSessions(EndReason),
    /// Retire the generation's snapshot pointers.
    RetireSnapshots,
    /// Forget the latest-snapshot pointer (the generation is gone).
    ForgetLatest,
    /// Record an audit event about the generation the event concerned.
    Audit(Audit),
}

/// Why an event was refused; nothing changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The event does not apply in this state.
    WrongState(State),
    /// A GC sweep holds the closed workspace's volume until `until`.
    Collecting {
        /// When its claim ends.
        until: Timestamp,
    },
    /// A live lease is held.
    Held(Held),
    /// The volume is not on the substrate yet.
    VolumeNotReady,
}

/// The result of a step: the record to store and the effects to carry out.
pub type Transition = (Record, Vec<Effect>);

/// Creates `owner`'s first record: what an ensure does when there is none.
pub fn create(owner: &WorkspaceId) -> Transition {
    let generation = Generation(1);
    let record = Record {
        owner: owner.clone(),
        generation,
        state: State::Active,
        closed_at: None,
        volume: Volume::pending(owner, generation),
        lease: Lease::default(),
        delete_step: None,
        cleanup: Cleanup::default(),
        claim: None,
    };
    (record, vec![Effect::Create, Effect::Audit(Audit::Ensured)])
}

/// Applies `event` to `record` at `now`.
pub fn step(record: &Record, event: Event, now: Timestamp) -> Result<Transition, Refusal> {
    let unchanged = || Ok((record.clone(), Vec::new()));
    let mut next = record.clone();
    let effects = match (record.state, event) {
        (State::Active | State::Closed | State::Deleted, Event::Ensure) => ensure(&mut next, now)?,
        (State::Active, Event::VolumeCreated { generation })
            if generation == record.generation && record.volume.state == VolumeState::Pending =>
        {
            next.volume.state = VolumeState::Present;
            vec![Effect::Audit(Audit::VolumeCreated)]
        }
        (_, Event::VolumeCreated { .. }) => Vec::new(),
        (State::Active, Event::Close) => {
            if let Some(holder) = record.lease.live_holder(now) {
                let held = Held { holder: holder.clone(), epoch: record.lease.epoch, expires: record.lease.expires };
                return Err(Refusal::Held(held));
            }
            next.state = State::Closed;
            next.closed_at = Some(now);
            next.lease = Lease { holder: None, expires: Timestamp(0), ..record.lease.clone() };
            vec![Effect::EndSessions(EndReason::Closed), Effect::Audit(Audit::Closed)]
        }
        (State::Closed, Event::Close) => Vec::new(),
        (State::Active | State::Closed, Event::Delete) => {
            next.state = State::Deleting;
            next.delete_step = Some(DeleteStep::EndSessions);
            next.cleanup = Cleanup::default();
            vec![Effect::Audit(Audit::DeleteRequested)]
        }
        (State::Deleting | State::Deleted, Event::Delete) => Vec::new(),
        (State::Active, Event::Attach) if record.volume.state != VolumeState::Present => {
            return Err(Refusal::VolumeNotReady)
        }
        (State::Active, Event::Attach | Event::Publish) => Vec::new(),
        (State::Deleting, Event::StepDone { holder, generation, step, volume }) => {
            if !holds(record, &holder, generation) || record.delete_step != Some(step) {
                return unchanged();
            }
            next.delete_step = step.next();
            delete_step(&mut next, step, volume, now)
        }
        (State::Deleting, Event::StepFailed { holder, generation, outcome, error }) => {
            if !holds(record, &holder, generation) {
                return unchanged();
            }
            back_off(&mut next, outcome, error, now);
            vec![Effect::Audit(Audit::Volume(outcome, By::Delete))]
        }
        (State::Closed | State::Deleted, Event::Collected { generation, outcome, .. }) if outcome.marks_removed() => {
            if generation != record.generation || record.volume.state == VolumeState::Removed {
                return unchanged();
            }
            mark_removed(&mut next, outcome, now);
            next.claim = None;
            vec![Effect::Audit(Audit::Volume(outcome, By::Gc))]
        }
        (_, Event::Collected { holder, generation, outcome, error }) if !outcome.marks_removed() => {
            if !holds(record, &holder, generation) {
                return unchanged();
            }
            back_off(&mut next, outcome, error.unwrap_or_default(), now);
            vec![Effect::Audit(Audit::Volume(outcome, By::Gc))]
        }
        (_, Event::StepDone { .. } | Event::StepFailed { .. } | Event::Collected { .. }) => Vec::new(),
        (state, Event::Ensure | Event::Close | Event::Attach | Event::Publish) => {
            return Err(Refusal::WrongState(state))
        }
    };
    Ok((next, effects))
}

/// Ensure on an existing record (`next`, not deleting): active stays, closed reopens unless a
/// GC sweep holds it, deleted starts the next generation.
fn ensure(next: &mut Record, now: Timestamp) -> Result<Vec<Effect>, Refusal> {
    match next.state {
        State::Closed => {
            if let Some(claim) = next.claim.as_ref().filter(|c| c.until > now) {
                return Err(Refusal::Collecting { until: claim.until });
            }
            next.state = State::Active;
            next.closed_at = None;
            if next.volume.state == VolumeState::Removed {
                next.volume.state = VolumeState::Pending;
            }
            next.volume.removed_at = None;
            next.cleanup = Cleanup::default();
            Ok(vec![Effect::Audit(Audit::Reopened)])
        }
        State::Deleted => {
            // The generation was bumped when the deletion completed.
            next.state = State::Active;
            next.closed_at = None;
            next.volume = Volume::pending(&next.owner, next.generation);
            next.lease = Lease { holder: None, expires: Timestamp(0), ..next.lease.clone() };
            next.delete_step = None;
            next.cleanup = Cleanup::default();
            next.claim = None;
            Ok(vec![Effect::StartGeneration, Effect::Audit(Audit::Ensured)])
        }
        State::Active | State::Deleting => Ok(Vec::new()),
    }
}

/// Returns whether `holder` holds the claim on `record` and it is still of `generation`.
fn holds(record: &Record, holder: &ReplicaId, generation: Generation) -> bool {
    record.generation == generation && record.claim.as_ref().is_some_and(|c| c.holder == *holder)
}

/// The bookkeeping of one finished deletion step on `next` (its step already advanced).
fn delete_step(next: &mut Record, step: DeleteStep, volume: Option<Outcome>, now: Timestamp) -> Vec<Effect> {
    match step {
        DeleteStep::EndSessions => {
            next.lease = Lease { holder: None, expires: Timestamp(0), ..next.lease.clone() };
            vec![Effect::EndSessions(EndReason::Deleted), Effect::Audit(Audit::SessionsEnded)]
        }
        DeleteStep::DeleteVolume => {
            if next.volume.state != VolumeState::Removed {
                next.volume.state = VolumeState::Removed;
                next.volume.removed_at = Some(now);
            }
            next.volume.last_outcome = volume.or(next.volume.last_outcome);
            next.cleanup = Cleanup::default();
            volume.map(|o| Effect::Audit(Audit::Volume(o, By::Delete))).into_iter().collect()
        }
        DeleteStep::RetireSnapshots => vec![Effect::RetireSnapshots, Effect::Audit(Audit::SnapshotsRetired)],
        DeleteStep::MarkDeleted => {
            next.state = State::Deleted;
            next.generation = Generation(next.generation.0 + 1);
            next.closed_at = next.closed_at.or(Some(now));
            next.cleanup = Cleanup::default();
            next.claim = None;
            vec![Effect::ForgetLatest, Effect::Audit(Audit::Deleted)]
        }
    }
}

fn mark_removed(next: &mut Record, outcome: Outcome, now: Timestamp) {
    next.volume.state = VolumeState::Removed;
    next.volume.removed_at = Some(now);
    next.volume.last_outcome = Some(outcome);
    next.cleanup = Cleanup::default();
}

/// A failed attempt: count it, back off durably, and release the claim for the next sweep.
fn back_off(next: &mut Record, outcome: Outcome, error: String, now: Timestamp) {
    let attempts = next.cleanup.attempts + 1;
    next.cleanup = Cleanup { attempts, retry_at: Some(gc::retry_at(attempts as u32, now)), last_error: Some(error) };
    next.volume.last_outcome = Some(outcome);
    next.claim = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Epoch, Holder};
    use crate::session::{InstanceId, SessionId};

    const T0: Timestamp = Timestamp(1_000 * 1_000_000_000);
    fn me() -> ReplicaId {
        ReplicaId::new("replica_a").unwrap()
    }

    fn owner() -> WorkspaceId {
        WorkspaceId::new("agent:42").unwrap()
    }

    /// A record of generation 3 in `state`, with the volume present, epoch 7 and no holder.
    fn rec(state: State) -> Record {
        let mut r = create(&owner()).0;
        r.generation = Generation(3);
        r.volume = Volume { state: VolumeState::Present, ..Volume::pending(&owner(), Generation(3)) };
        r.lease.epoch = Epoch(7);
        r.state = state;
        if state == State::Deleting {
            r.delete_step = Some(DeleteStep::EndSessions);
        }
        r
    }

    fn live(mut r: Record) -> Record {
        let holder = Holder { session: SessionId::new("ses_1").unwrap(), instance: InstanceId::new("pod").unwrap() };
        r.lease = Lease { epoch: r.lease.epoch, holder: Some(holder), expires: T0.plus_secs(30) };
        r
    }

    fn claimed(mut r: Record, until: Timestamp) -> Record {
        r.claim = Some(Claim { holder: me(), until });
        r
    }

    /// Steps `record` through `event`; `expect` is the new record's state, volume state and
    /// generation with the effects, or the refusal.
    fn check(record: Record, event: Event, expect: Result<(State, VolumeState, u64, Vec<Effect>), Refusal>) {
        let got = step(&record, event.clone(), T0).map(|(r, e)| (r.state, r.volume.state, r.generation.0, e));
        assert_eq!(got, expect, "{:?} + {event:?}", record.state);
        if let Ok((next, _)) = step(&record, event, T0) {
            assert_eq!(next.lease.epoch, record.lease.epoch, "the epoch survives every transition");
            assert_eq!(next.owner, record.owner);
        }
    }

    fn audit(a: Audit) -> Effect {
        Effect::Audit(a)
    }

    fn done(step: DeleteStep, volume: Option<Outcome>) -> Event {
        Event::StepDone { holder: me(), generation: Generation(3), step, volume }
    }

    fn collected(outcome: Outcome) -> Event {
        Event::Collected { holder: me(), generation: Generation(3), outcome, error: None }
    }

    #[test]
    fn ensure() {
        use State::*;
        use VolumeState::*;
        let (first, effects) = create(&owner());
        assert_eq!((first.state, first.volume.state, first.generation.0), (Active, Pending, 1));
        assert_eq!(effects, [Effect::Create, audit(Audit::Ensured)]);
        check(rec(Active), Event::Ensure, Ok((Active, Present, 3, vec![])));
        let mut collected_volume = rec(Closed);
        collected_volume.volume.state = Removed;
        check(collected_volume, Event::Ensure, Ok((Active, Pending, 3, vec![audit(Audit::Reopened)])));
        check(rec(Closed), Event::Ensure, Ok((Active, Present, 3, vec![audit(Audit::Reopened)])));
        // A GC sweep holding the closed workspace's volume refuses the reopen until its claim ends.
        let until = T0.plus_secs(10);
        check(claimed(rec(Closed), until), Event::Ensure, Err(Refusal::Collecting { until }));
        check(claimed(rec(Closed), T0), Event::Ensure, Ok((Active, Present, 3, vec![audit(Audit::Reopened)])));
        check(rec(Deleting), Event::Ensure, Err(Refusal::WrongState(Deleting)));
        let new_generation = vec![Effect::StartGeneration, audit(Audit::Ensured)];
        check(rec(Deleted), Event::Ensure, Ok((Active, Pending, 3, new_generation)));
        let (next, _) = step(&live(rec(Deleted)), Event::Ensure, T0).unwrap();
        assert_eq!(next.volume.name, VolumeName::derive(&owner(), Generation(3)));
        assert_eq!(next.lease.holder, None, "no holder survives a deletion");
    }

    #[test]
    fn volume_created() {
        use State::*;
        use VolumeState::*;
        let pending = |s| Record { volume: Volume::pending(&owner(), Generation(3)), ..rec(s) };
        let created = |g| Event::VolumeCreated { generation: Generation(g) };
        check(pending(Active), created(3), Ok((Active, Present, 3, vec![audit(Audit::VolumeCreated)])));
        check(pending(Active), created(2), Ok((Active, Pending, 3, vec![])));
        check(pending(Closed), created(3), Ok((Closed, Pending, 3, vec![])));
        check(rec(Active), created(3), Ok((Active, Present, 3, vec![])));
    }

    #[test]
    fn close_and_delete() {
        use State::*;
        use VolumeState::*;
        let closed = vec![Effect::EndSessions(EndReason::Closed), audit(Audit::Closed)];
        check(rec(Active), Event::Close, Ok((Closed, Present, 3, closed)));
        let held = step(&live(rec(Active)), Event::Close, T0).unwrap_err();
        assert!(matches!(held, Refusal::Held(h) if h.epoch == Epoch(7)), "a live lease refuses the close");
        check(rec(Closed), Event::Close, Ok((Closed, Present, 3, vec![])));
        check(rec(Deleting), Event::Close, Err(Refusal::WrongState(Deleting)));
        check(rec(Deleted), Event::Close, Err(Refusal::WrongState(Deleted)));
        for s in [Active, Closed] {
            check(rec(s), Event::Delete, Ok((Deleting, Present, 3, vec![audit(Audit::DeleteRequested)])));
        }
        check(live(rec(Active)), Event::Delete, Ok((Deleting, Present, 3, vec![audit(Audit::DeleteRequested)])));
        check(rec(Deleting), Event::Delete, Ok((Deleting, Present, 3, vec![])));
        check(rec(Deleted), Event::Delete, Ok((Deleted, Present, 3, vec![])));
    }

    #[test]
    fn guards() {
        use State::*;
        use VolumeState::*;
        check(rec(Active), Event::Attach, Ok((Active, Present, 3, vec![])));
        check(rec(Active), Event::Publish, Ok((Active, Present, 3, vec![])));
        let pending = Record { volume: Volume::pending(&owner(), Generation(3)), ..rec(Active) };
        check(pending, Event::Attach, Err(Refusal::VolumeNotReady));
        for s in [Closed, Deleting, Deleted] {
            check(rec(s), Event::Attach, Err(Refusal::WrongState(s)));
            check(rec(s), Event::Publish, Err(Refusal::WrongState(s)));
        }
    }

    #[test]
    fn deletion_runs_its_steps_in_order_under_the_claim() {
        use DeleteStep::*;
        use State::*;
        use VolumeState::*;
        let r = claimed(live(rec(Deleting)), T0.plus_secs(60));
        let (r, effects) = step(&r, done(EndSessions, None), T0).unwrap();
        assert_eq!(effects, [Effect::EndSessions(EndReason::Deleted), audit(Audit::SessionsEnded)]);
        assert_eq!((r.delete_step, r.lease.holder.is_none(), r.lease.epoch), (Some(DeleteVolume), true, Epoch(7)));
        // A step that already ran, another holder's, or another generation's changes nothing.
        check(r.clone(), done(EndSessions, None), Ok((Deleting, Present, 3, vec![])));
        let other = Event::StepDone {
            holder: ReplicaId::new("replica_b").unwrap(),
            generation: Generation(3),
            step: DeleteVolume,
            volume: None,
        };
        check(r.clone(), other, Ok((Deleting, Present, 3, vec![])));
        let (r, effects) = step(&r, done(DeleteVolume, Some(Outcome::NotFound)), T0).unwrap();
        assert_eq!(effects, [audit(Audit::Volume(Outcome::NotFound, By::Delete))]);
        assert_eq!(
            (r.volume.state, r.volume.last_outcome, r.volume.removed_at),
            (Removed, Some(Outcome::NotFound), Some(T0))
        );
        let (r, effects) = step(&r, done(RetireSnapshots, None), T0).unwrap();
        assert_eq!(effects, [Effect::RetireSnapshots, audit(Audit::SnapshotsRetired)]);
        let (r, effects) = step(&r, done(MarkDeleted, None), T0).unwrap();
        assert_eq!(effects, [Effect::ForgetLatest, audit(Audit::Deleted)]);
        assert_eq!((r.state, r.generation, r.delete_step, r.claim.is_none()), (Deleted, Generation(4), None, true));
        assert_eq!(r.closed_at, Some(T0), "GC's cooldown counts from the deletion");
    }

    #[test]
    fn failures_back_off_durably() {
        use State::*;
        use VolumeState::*;
        let mut r = claimed(rec(Deleting), T0.plus_secs(60));
        r.delete_step = Some(DeleteStep::DeleteVolume);
        let failed = Event::StepFailed {
            holder: me(),
            generation: Generation(3),
            outcome: Outcome::Referenced,
            error: "in use".into(),
        };
        let (next, effects) = step(&r, failed.clone(), T0).unwrap();
        assert_eq!(effects, [audit(Audit::Volume(Outcome::Referenced, By::Delete))]);
        assert_eq!(
            next.cleanup,
            Cleanup { attempts: 1, retry_at: Some(gc::retry_at(1, T0)), last_error: Some("in use".into()) }
        );
        assert_eq!((next.state, next.delete_step, &next.claim), (Deleting, Some(DeleteStep::DeleteVolume), &None));
        // Without the claim, nothing is recorded.
        check(next, failed, Ok((Deleting, Present, 3, vec![])));
        // GC: a failure backs off under the claim; removed and not found mark the volume for good.
        let closed = claimed(rec(Closed), T0.plus_secs(60));
        let (next, _) = step(&closed, collected(Outcome::Error), T0).unwrap();
        assert_eq!((next.cleanup.attempts, next.claim, next.volume.state), (1, None, Present));
        for o in [Outcome::Removed, Outcome::NotFound] {
            check(closed.clone(), collected(o), Ok((Closed, Removed, 3, vec![audit(Audit::Volume(o, By::Gc))])));
            let (marked, _) = step(&closed, collected(o), T0).unwrap();
            // A mark is never overwritten, and a reopened workspace's volume is not GC's.
            check(marked, collected(Outcome::Removed), Ok((Closed, Removed, 3, vec![])));
        }
        check(rec(Active), collected(Outcome::Removed), Ok((Active, Present, 3, vec![])));
        let old = Event::Collected { holder: me(), generation: Generation(2), outcome: Outcome::Removed, error: None };
        check(claimed(rec(Deleted), T0), old, Ok((Deleted, Present, 3, vec![])));
    }
}
