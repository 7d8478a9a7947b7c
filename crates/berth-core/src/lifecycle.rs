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
//! Beside the state, a record says whether the workspace is **at risk**: its last session did
//! not end clean (it detached without a final snapshot, its lease expired, or it was taken
//! over), so its volume may hold work no snapshot has. A clean end of a later session or a
//! successful rescue clears it; a removal of its volume records how the work was given up.
//!
//! ```text
//! session ended unclean | expired | fenced --> at risk --session ended clean | drained--> not at risk
//! at risk --rescue started (GC, new epoch)--> rescue finished: ok --> not at risk
//!                                                               error --> still at risk (GC backs off)
//! at risk --volume removed (forced, or past the retention)--> not at risk, at_risk_removed
//! ```
//!
//! **Invariant:** a deleted owner's name starts a new generation, so nothing of the previous
//! generation is ever restored into it; the lease epoch survives every transition.
//! **Invariant:** only removed and not found mark a volume removed, and a mark is never undone
//! for the same generation except by reopening (which recreates the volume).
//! **Invariant:** an at-risk workspace's deletion is refused unless forced; GC never removes an
//! at-risk volume unless its plan says why (forced, or past the retention), and the removal
//! records that reason.

use std::fmt;

use crate::gc::{self, DeleteStep, Outcome};
use crate::id::SnapshotId;
use crate::lease::{Held, Holder, Lease};
use crate::session::{ReplicaId, SessionId};
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
    /// Its name, derived from the installation, owner and generation when the generation
    /// started, and kept as recorded.
    pub name: VolumeName,
    /// Where it stands.
    pub state: VolumeState,
    /// When it was marked removed.
    pub removed_at: Option<Timestamp>,
    /// The last GC or deletion outcome.
    pub last_outcome: Option<Outcome>,
}

impl Volume {
    /// A volume of `owner`'s `generation` in installation `install` that the substrate does not
    /// have yet.
    pub fn pending(install: &str, owner: &WorkspaceId, generation: Generation) -> Volume {
        Volume {
            name: VolumeName::derive(install, owner, generation),
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

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionEnd {
    /// It detached after publishing a final snapshot, with no publish since: its work is in
    /// the store.
    Clean,
    /// As clean, while its workspace was draining.
    Drained,
    /// It detached without a final snapshot.
    Unclean,
    /// Its lease expired without a renewal (a killed, frozen or partitioned sandbox).
    Expired,
    /// Another session took its expired lease over.
    Fenced,
    /// The owner's deletion ended it: its work is discarded on request.
    Deleted,
}

impl SessionEnd {
    /// Every outcome.
    pub const ALL: [SessionEnd; 6] = [
        SessionEnd::Clean,
        SessionEnd::Drained,
        SessionEnd::Unclean,
        SessionEnd::Expired,
        SessionEnd::Fenced,
        SessionEnd::Deleted,
    ];

    /// Returns the stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Clean => "clean",
            SessionEnd::Drained => "drained",
            SessionEnd::Unclean => "unclean",
            SessionEnd::Expired => "expired",
            SessionEnd::Fenced => "fenced",
            SessionEnd::Deleted => "deleted",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<SessionEnd> {
        SessionEnd::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Returns whether the session's work is known to be in the store.
    pub fn is_clean(self) -> bool {
        matches!(self, SessionEnd::Clean | SessionEnd::Drained)
    }

    /// Returns whether the end leaves the workspace at risk.
    pub fn leaves_at_risk(self) -> bool {
        matches!(self, SessionEnd::Unclean | SessionEnd::Expired | SessionEnd::Fenced)
    }

    /// Returns what ended it, as the sessions table has always recorded it.
    pub fn cause(self) -> &'static str {
        match self {
            SessionEnd::Clean | SessionEnd::Drained | SessionEnd::Unclean => "detached",
            SessionEnd::Expired => "expired",
            SessionEnd::Fenced => "taken_over",
            SessionEnd::Deleted => "deleted",
        }
    }

    /// Says in words why this end leaves work at risk.
    pub fn why(self) -> &'static str {
        match self {
            SessionEnd::Clean | SessionEnd::Drained => "it ended clean",
            SessionEnd::Unclean => "it detached without a final snapshot",
            SessionEnd::Expired => {
                "its lease expired without a final snapshot (the sandbox died or lost the control plane)"
            }
            SessionEnd::Fenced => "another session took its expired lease over before it published a final snapshot",
            SessionEnd::Deleted => "the owner's deletion ended it",
        }
    }
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a workspace is at risk: the session that ended without a final snapshot, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AtRisk {
    /// When that session ended (the retention counts from it).
    pub since: Timestamp,
    /// How it ended.
    pub outcome: SessionEnd,
    /// Which session.
    pub session: SessionId,
}

impl AtRisk {
    /// Says why, in words.
    pub fn reason(&self) -> String {
        format!("the last session ({}) ended {}: {}", self.session, self.outcome, self.outcome.why())
    }
}

/// Why an at-risk volume was removed without a rescue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtRiskRemoval {
    /// An operator forced it (`--force`).
    Forced,
    /// It stayed at risk past the retention limit.
    Retention,
}

impl AtRiskRemoval {
    /// Returns the stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            AtRiskRemoval::Forced => "forced",
            AtRiskRemoval::Retention => "retention",
        }
    }
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
    /// Whether its last session left work no snapshot has, and why.
    pub at_risk: Option<AtRisk>,
}

/// Something asked of a workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Ensure it exists and is active.
    Ensure {
        /// The installation's id, which a new generation's volume name is derived with.
        install: String,
    },
    /// The substrate created the volume of `generation`.
    VolumeCreated {
        /// The generation the volume belongs to.
        generation: Generation,
    },
    /// Close it: no more attaches.
    Close,
    /// Ask for its deletion; an at-risk workspace only with `force`.
    Delete {
        /// Discard the work of an at-risk workspace.
        force: bool,
    },
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
        /// Why the plan removes an at-risk volume without a rescue.
        at_risk_removal: Option<AtRiskRemoval>,
    },
    /// A session ended (the caller has already updated the lease accordingly).
    SessionEnded {
        /// The session.
        session: SessionId,
        /// How.
        outcome: SessionEnd,
    },
    /// The claim `holder` starts rescuing the at-risk volume of `generation`: `session` takes
    /// the lease with a new epoch for `ttl_secs`, so any zombie writer is fenced.
    RescueStarted {
        /// The claim holder.
        holder: ReplicaId,
        /// The generation the volume belongs to.
        generation: Generation,
        /// The rescue's session.
        session: Holder,
        /// How long its lease lasts.
        ttl_secs: i64,
    },
    /// The rescue of `session` finished: the snapshot it published, or why it failed.
    RescueFinished {
        /// The rescue's session.
        session: SessionId,
        /// The published snapshot, or the error.
        result: Result<SnapshotId, String>,
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// A session ended, with how.
    SessionEnded(SessionId, SessionEnd),
    /// The workspace became at risk.
    AtRisk,
    /// A clean end cleared the risk.
    AtRiskCleared,
    /// A rescue took the lease.
    RescueStarted,
    /// A rescue published this snapshot: nothing is at risk any more.
    RescueSucceeded(SnapshotId),
    /// A rescue failed, with why.
    RescueFailed(String),
    /// An at-risk volume was removed without a rescue, with why (`None`: not planned as such).
    AtRiskRemoved(Option<AtRiskRemoval>),
}

impl Audit {
    /// Returns the stable event name.
    pub fn kind(&self) -> &'static str {
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
                Outcome::AtRisk => "volume_kept_at_risk",
            },
            Audit::SnapshotsRetired => "snapshots_retired",
            Audit::Deleted => "workspace_deleted",
            Audit::SessionEnded(..) => "session_ended",
            Audit::AtRisk => "at_risk",
            Audit::AtRiskCleared => "at_risk_cleared",
            Audit::RescueStarted => "rescue_started",
            Audit::RescueSucceeded(_) => "rescue_succeeded",
            Audit::RescueFailed(_) => "rescue_failed",
            Audit::AtRiskRemoved(_) => "at_risk_removed",
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
    /// End one session with its outcome.
    EndSession {
        /// The session.
        session: SessionId,
        /// How it ended.
        outcome: SessionEnd,
    },
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
    /// The workspace is at risk: deleting it needs `force`.
    AtRisk(AtRisk),
    /// A rescue was asked for a workspace that is not at risk.
    NotAtRisk,
    /// The caller does not hold the reconciler claim (or the generation moved on).
    NotClaimed,
}

/// The result of a step: the record to store and the effects to carry out.
pub type Transition = (Record, Vec<Effect>);

/// Creates `owner`'s first record in installation `install`: what an ensure does when there is
/// none.
pub fn create(install: &str, owner: &WorkspaceId) -> Transition {
    let generation = Generation(1);
    let record = Record {
        owner: owner.clone(),
        generation,
        state: State::Active,
        closed_at: None,
        volume: Volume::pending(install, owner, generation),
        lease: Lease::default(),
        delete_step: None,
        cleanup: Cleanup::default(),
        claim: None,
        at_risk: None,
    };
    (record, vec![Effect::Create, Effect::Audit(Audit::Ensured)])
}

/// Applies `event` to `record` at `now`.
pub fn step(record: &Record, event: Event, now: Timestamp) -> Result<Transition, Refusal> {
    let unchanged = || Ok((record.clone(), Vec::new()));
    let mut next = record.clone();
    let effects = match (record.state, event) {
        (State::Active | State::Closed | State::Deleted, Event::Ensure { install }) => {
            ensure(&mut next, &install, now)?
        }
        (State::Active, Event::VolumeCreated { generation })
            if generation == record.generation && record.volume.state == VolumeState::Pending =>
        {
            next.volume.state = VolumeState::Present;
            vec![Effect::Audit(Audit::VolumeCreated)]
        }
        (_, Event::VolumeCreated { .. }) => Vec::new(),
        (State::Active, Event::Close) => close(&mut next, now)?,
        (State::Closed, Event::Close) => Vec::new(),
        (State::Active | State::Closed, Event::Delete { force }) => {
            if let Some(at_risk) = record.at_risk.as_ref().filter(|_| !force) {
                return Err(Refusal::AtRisk(at_risk.clone()));
            }
            next.state = State::Deleting;
            next.delete_step = Some(DeleteStep::EndSessions);
            next.cleanup = Cleanup::default();
            vec![Effect::Audit(Audit::DeleteRequested)]
        }
        (State::Deleting | State::Deleted, Event::Delete { .. }) => Vec::new(),
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
        (State::Closed | State::Deleted, Event::Collected { generation, outcome, at_risk_removal, .. })
            if outcome.marks_removed() =>
        {
            if generation != record.generation || record.volume.state == VolumeState::Removed {
                return unchanged();
            }
            mark_removed(&mut next, outcome, now);
            next.claim = None;
            let mut effects = vec![Effect::Audit(Audit::Volume(outcome, By::Gc))];
            if next.at_risk.take().is_some() {
                effects.push(Effect::Audit(Audit::AtRiskRemoved(at_risk_removal)));
            }
            effects
        }
        (_, Event::Collected { holder, generation, outcome, error, .. }) if !outcome.marks_removed() => {
            if !holds(record, &holder, generation) {
                return unchanged();
            }
            back_off(&mut next, outcome, error.unwrap_or_default(), now);
            vec![Effect::Audit(Audit::Volume(outcome, By::Gc))]
        }
        (state, Event::SessionEnded { session, outcome }) => session_ended(&mut next, state, session, outcome, now),
        (State::Closed | State::Deleted, Event::RescueStarted { holder, generation, session, ttl_secs }) => {
            rescue_started(&mut next, &holder, generation, session, ttl_secs, now)?
        }
        (_, Event::RescueFinished { session, result }) => rescue_finished(&mut next, session, result),
        (_, Event::StepDone { .. } | Event::StepFailed { .. } | Event::Collected { .. }) => Vec::new(),
        (state, Event::Ensure { .. } | Event::Close | Event::Attach | Event::Publish | Event::RescueStarted { .. }) => {
            return Err(Refusal::WrongState(state))
        }
    };
    Ok((next, effects))
}

/// Closes an active workspace (`next`): refused while a lease is live. A holder whose lease
/// expired unrenewed ended without a final snapshot, so the workspace is at risk.
fn close(next: &mut Record, now: Timestamp) -> Result<Vec<Effect>, Refusal> {
    if let Some(holder) = next.lease.live_holder(now) {
        let held = Held { holder: holder.clone(), epoch: next.lease.epoch, expires: next.lease.expires };
        return Err(Refusal::Held(held));
    }
    let mut effects = vec![Effect::EndSessions(EndReason::Closed), Effect::Audit(Audit::Closed)];
    if let Some(holder) = next.lease.holder.take() {
        next.at_risk = Some(AtRisk { since: now, outcome: SessionEnd::Expired, session: holder.session.clone() });
        effects.push(Effect::Audit(Audit::SessionEnded(holder.session, SessionEnd::Expired)));
        effects.push(Effect::Audit(Audit::AtRisk));
    }
    next.state = State::Closed;
    next.closed_at = Some(now);
    next.lease = Lease { holder: None, expires: Timestamp(0), ..next.lease.clone() };
    Ok(effects)
}

/// A session of `next` (in `state`) ended with `outcome`: a clean end clears the risk, an
/// unclean one (outside a deletion) sets it.
fn session_ended(
    next: &mut Record,
    state: State,
    session: SessionId,
    outcome: SessionEnd,
    now: Timestamp,
) -> Vec<Effect> {
    let mut effects = vec![
        Effect::EndSession { session: session.clone(), outcome },
        Effect::Audit(Audit::SessionEnded(session.clone(), outcome)),
    ];
    if outcome.is_clean() && next.at_risk.take().is_some() {
        effects.push(Effect::Audit(Audit::AtRiskCleared));
    } else if outcome.leaves_at_risk() && matches!(state, State::Active | State::Closed) {
        next.at_risk = Some(AtRisk { since: now, outcome, session });
        effects.push(Effect::Audit(Audit::AtRisk));
    }
    effects
}

/// The claim `holder` takes the lease of the at-risk `next` for a rescue.
fn rescue_started(
    next: &mut Record,
    holder: &ReplicaId,
    generation: Generation,
    session: Holder,
    ttl_secs: i64,
    now: Timestamp,
) -> Result<Vec<Effect>, Refusal> {
    if !holds(next, holder, generation) || next.volume.state == VolumeState::Removed {
        return Err(Refusal::NotClaimed);
    }
    if next.at_risk.is_none() {
        return Err(Refusal::NotAtRisk);
    }
    let (lease, _) = next.lease.acquire(session, now, ttl_secs).map_err(Refusal::Held)?;
    next.lease = lease;
    Ok(vec![Effect::Audit(Audit::RescueStarted)])
}

/// The rescue of `session` on `next` finished; without its lease any more, nothing changes.
fn rescue_finished(next: &mut Record, session: SessionId, result: Result<SnapshotId, String>) -> Vec<Effect> {
    if next.lease.holder.as_ref().is_none_or(|h| h.session != session) {
        return Vec::new();
    }
    next.lease = Lease { holder: None, expires: Timestamp(0), ..next.lease.clone() };
    match result {
        Ok(snapshot) => {
            next.at_risk = None;
            vec![
                Effect::EndSession { session: session.clone(), outcome: SessionEnd::Clean },
                Effect::Audit(Audit::SessionEnded(session, SessionEnd::Clean)),
                Effect::Audit(Audit::RescueSucceeded(snapshot)),
            ]
        }
        Err(error) => vec![
            Effect::EndSession { session: session.clone(), outcome: SessionEnd::Unclean },
            Effect::Audit(Audit::RescueFailed(error)),
        ],
    }
}

/// Ensure on an existing record (`next`, not deleting): active stays, closed reopens unless a
/// GC sweep holds it, deleted starts the next generation (its volume named for `install`). A
/// reopen keeps the recorded volume name, whatever derivation made it.
fn ensure(next: &mut Record, install: &str, now: Timestamp) -> Result<Vec<Effect>, Refusal> {
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
            next.volume = Volume::pending(install, &next.owner, next.generation);
            next.lease = Lease { holder: None, expires: Timestamp(0), ..next.lease.clone() };
            next.delete_step = None;
            next.cleanup = Cleanup::default();
            next.claim = None;
            next.at_risk = None;
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
            let mut effects: Vec<_> = volume.map(|o| Effect::Audit(Audit::Volume(o, By::Delete))).into_iter().collect();
            // Deletion starts on an at-risk workspace only when forced.
            if next.at_risk.take().is_some() {
                effects.push(Effect::Audit(Audit::AtRiskRemoved(Some(AtRiskRemoval::Forced))));
            }
            effects
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

    const INSTALL: &str = "0123456789abcdef";

    fn ensure_ev() -> Event {
        Event::Ensure { install: INSTALL.to_string() }
    }

    /// A record of generation 3 in `state`, with the volume present, epoch 7 and no holder.
    fn rec(state: State) -> Record {
        let mut r = create(INSTALL, &owner()).0;
        r.generation = Generation(3);
        r.volume = Volume { state: VolumeState::Present, ..Volume::pending(INSTALL, &owner(), Generation(3)) };
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
        Event::Collected { holder: me(), generation: Generation(3), outcome, error: None, at_risk_removal: None }
    }

    #[test]
    fn ensure() {
        use State::*;
        use VolumeState::*;
        let (first, effects) = create(INSTALL, &owner());
        assert_eq!((first.state, first.volume.state, first.generation.0), (Active, Pending, 1));
        assert_eq!(effects, [Effect::Create, audit(Audit::Ensured)]);
        check(rec(Active), ensure_ev(), Ok((Active, Present, 3, vec![])));
        let mut collected_volume = rec(Closed);
        collected_volume.volume.state = Removed;
        check(collected_volume, ensure_ev(), Ok((Active, Pending, 3, vec![audit(Audit::Reopened)])));
        check(rec(Closed), ensure_ev(), Ok((Active, Present, 3, vec![audit(Audit::Reopened)])));
        // A GC sweep holding the closed workspace's volume refuses the reopen until its claim ends.
        let until = T0.plus_secs(10);
        check(claimed(rec(Closed), until), ensure_ev(), Err(Refusal::Collecting { until }));
        check(claimed(rec(Closed), T0), ensure_ev(), Ok((Active, Present, 3, vec![audit(Audit::Reopened)])));
        check(rec(Deleting), ensure_ev(), Err(Refusal::WrongState(Deleting)));
        let new_generation = vec![Effect::StartGeneration, audit(Audit::Ensured)];
        check(rec(Deleted), ensure_ev(), Ok((Active, Pending, 3, new_generation)));
        let (next, _) = step(&live(rec(Deleted)), ensure_ev(), T0).unwrap();
        assert_eq!(next.volume.name, VolumeName::derive(INSTALL, &owner(), Generation(3)));
        let (other, _) = step(&rec(Deleted), Event::Ensure { install: "fedcba9876543210".into() }, T0).unwrap();
        assert_ne!(other.volume.name, next.volume.name, "another installation's new generation is named apart");
        // A reopen keeps the recorded name, even one derived otherwise (before the installation
        // was part of the name): the volume that exists is the one used, never a new one.
        for state in [Active, Closed] {
            let mut old = rec(state);
            old.volume.name = VolumeName::new("ws-agent-42-0a1b2c3d4").unwrap();
            let (next, _) = step(&old, ensure_ev(), T0).unwrap();
            assert_eq!(next.volume.name.as_str(), "ws-agent-42-0a1b2c3d4");
        }
        assert_eq!(next.lease.holder, None, "no holder survives a deletion");
    }

    #[test]
    fn volume_created() {
        use State::*;
        use VolumeState::*;
        let pending = |s| Record { volume: Volume::pending(INSTALL, &owner(), Generation(3)), ..rec(s) };
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
            check(
                rec(s),
                Event::Delete { force: false },
                Ok((Deleting, Present, 3, vec![audit(Audit::DeleteRequested)])),
            );
        }
        check(
            live(rec(Active)),
            Event::Delete { force: false },
            Ok((Deleting, Present, 3, vec![audit(Audit::DeleteRequested)])),
        );
        check(rec(Deleting), Event::Delete { force: false }, Ok((Deleting, Present, 3, vec![])));
        check(rec(Deleted), Event::Delete { force: false }, Ok((Deleted, Present, 3, vec![])));
    }

    #[test]
    fn guards() {
        use State::*;
        use VolumeState::*;
        check(rec(Active), Event::Attach, Ok((Active, Present, 3, vec![])));
        check(rec(Active), Event::Publish, Ok((Active, Present, 3, vec![])));
        let pending = Record { volume: Volume::pending(INSTALL, &owner(), Generation(3)), ..rec(Active) };
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
        let old = Event::Collected {
            holder: me(),
            generation: Generation(2),
            outcome: Outcome::Removed,
            error: None,
            at_risk_removal: None,
        };
        check(claimed(rec(Deleted), T0), old, Ok((Deleted, Present, 3, vec![])));
    }

    fn ses(s: &str) -> SessionId {
        SessionId::new(s).unwrap()
    }

    fn ended(s: &str, outcome: SessionEnd) -> Event {
        Event::SessionEnded { session: ses(s), outcome }
    }

    fn at_risk(mut r: Record) -> Record {
        r.at_risk = Some(AtRisk { since: T0, outcome: SessionEnd::Expired, session: ses("ses_1") });
        r
    }

    #[test]
    fn unclean_ends_leave_the_workspace_at_risk_until_a_clean_one() {
        use SessionEnd::*;
        let end = |s: &str, o| {
            vec![Effect::EndSession { session: ses(s), outcome: o }, audit(Audit::SessionEnded(ses(s), o))]
        };
        for o in [Unclean, Expired, Fenced] {
            let (next, effects) = step(&rec(State::Active), ended("ses_1", o), T0).unwrap();
            assert_eq!(next.at_risk, Some(AtRisk { since: T0, outcome: o, session: ses("ses_1") }), "{o}");
            assert_eq!(effects, [end("ses_1", o), vec![audit(Audit::AtRisk)]].concat());
        }
        for o in [Clean, Drained] {
            let (next, effects) = step(&rec(State::Active), ended("ses_1", o), T0).unwrap();
            assert_eq!((next.at_risk, effects), (None, end("ses_1", o)));
            let (next, effects) = step(&at_risk(rec(State::Active)), ended("ses_2", o), T0).unwrap();
            assert_eq!((next.at_risk, effects), (None, [end("ses_2", o), vec![audit(Audit::AtRiskCleared)]].concat()));
        }
        // A deletion's ends discard the work on request: never at risk.
        for s in [State::Deleting, State::Deleted] {
            assert_eq!(step(&rec(s), ended("ses_1", Expired), T0).unwrap().0.at_risk, None);
        }
        assert_eq!(step(&rec(State::Active), ended("ses_1", Deleted), T0).unwrap().0.at_risk, None);
        // Closing over a holder whose lease expired unrenewed: that session ended expired.
        let mut expired = live(rec(State::Active));
        expired.lease.expires = T0;
        let (next, effects) = step(&expired, Event::Close, T0).unwrap();
        assert_eq!(next.at_risk.map(|a| (a.outcome, a.session)), Some((Expired, ses("ses_1"))));
        assert!(effects.contains(&audit(Audit::AtRisk)), "{effects:?}");
        assert_eq!(step(&rec(State::Active), Event::Close, T0).unwrap().0.at_risk, None);
    }

    #[test]
    fn an_at_risk_workspace_is_deleted_only_when_forced() {
        let r = at_risk(rec(State::Closed));
        let refused = step(&r, Event::Delete { force: false }, T0).unwrap_err();
        assert_eq!(refused, Refusal::AtRisk(r.at_risk.clone().unwrap()));
        let (mut next, _) = step(&r, Event::Delete { force: true }, T0).unwrap();
        assert!(next.at_risk.is_some(), "still at risk until the volume goes");
        next = claimed(next, T0.plus_secs(60));
        next.delete_step = Some(DeleteStep::DeleteVolume);
        let (next, effects) = step(&next, done(DeleteStep::DeleteVolume, Some(Outcome::Removed)), T0).unwrap();
        assert_eq!(next.at_risk, None);
        assert!(effects.contains(&audit(Audit::AtRiskRemoved(Some(AtRiskRemoval::Forced)))), "{effects:?}");
    }

    #[test]
    fn a_rescue_takes_a_new_epoch_and_clears_the_risk() {
        let rescuer = Holder { session: ses("ses_rescue"), instance: InstanceId::new("berth-rescue").unwrap() };
        let start = |r: &Record, g| {
            let ev = Event::RescueStarted {
                holder: me(),
                generation: Generation(g),
                session: rescuer.clone(),
                ttl_secs: 60,
            };
            step(r, ev, T0)
        };
        let r = claimed(at_risk(rec(State::Closed)), T0.plus_secs(60));
        // Only under the claim, for the claimed generation, of an at-risk closed workspace.
        assert_eq!(start(&claimed(rec(State::Closed), T0.plus_secs(60)), 3).unwrap_err(), Refusal::NotAtRisk);
        assert_eq!(start(&at_risk(rec(State::Closed)), 3).unwrap_err(), Refusal::NotClaimed);
        assert_eq!(start(&r, 2).unwrap_err(), Refusal::NotClaimed);
        assert_eq!(start(&at_risk(rec(State::Active)), 3).unwrap_err(), Refusal::WrongState(State::Active));
        let (taken, effects) = start(&r, 3).unwrap();
        assert_eq!(effects, [audit(Audit::RescueStarted)]);
        assert_eq!((taken.lease.epoch, taken.lease.holder.as_ref()), (Epoch(8), Some(&rescuer)));
        let snapshot = SnapshotId::from_hex(&"ab".repeat(32)).unwrap();
        let finished = |result| Event::RescueFinished { session: ses("ses_rescue"), result };
        let (ok, effects) = step(&taken, finished(Ok(snapshot)), T0).unwrap();
        assert_eq!((ok.at_risk.as_ref(), ok.lease.holder.as_ref(), ok.lease.epoch), (None, None, Epoch(8)));
        assert!(effects.contains(&audit(Audit::RescueSucceeded(snapshot))), "{effects:?}");
        let (failed, effects) = step(&taken, finished(Err("no space".into())), T0).unwrap();
        assert!(failed.at_risk.is_some() && failed.lease.holder.is_none());
        assert!(effects.contains(&audit(Audit::RescueFailed("no space".into()))), "{effects:?}");
        // A rescue that lost its lease changes nothing.
        assert_eq!(step(&r, finished(Ok(snapshot)), T0).unwrap(), (r.clone(), vec![]));
        // Removal of an at-risk volume records why it was given up.
        let removed = Event::Collected {
            holder: me(),
            generation: Generation(3),
            outcome: Outcome::Removed,
            error: None,
            at_risk_removal: Some(AtRiskRemoval::Retention),
        };
        let (gone, effects) = step(&r, removed, T0).unwrap();
        assert_eq!(gone.at_risk, None);
        assert!(effects.contains(&audit(Audit::AtRiskRemoved(Some(AtRiskRemoval::Retention)))), "{effects:?}");
    }
}
