//! The init plan: what `berth agent init` does with a workspace directory, decided before it
//! writes anything, from what the directory holds, the latest snapshot record and the repos.
//!
//! **Invariant:** init never overwrites newer work. It restores only into an empty directory or
//! one whose volume marker says it holds an older snapshot of the same workspace and
//! generation; a directory of another workspace or generation is refused whatever the store
//! holds, and files berth did not write are refused when a snapshot would replace them.
//! "Never backed up" starts empty; a store that cannot be read fails init unless the directory
//! is this workspace's own, and never leads to an empty start over work that may be saved.

use serde::{Deserialize, Serialize};

use crate::id::SnapshotId;
use crate::lease::Epoch;
use crate::manifest::{EntryKind, Manifest};
use crate::path::RelPath;
use crate::repo::{RepoError, RepoSpec};
use crate::snapshot::Contents;
use crate::workspace::{Generation, WorkspaceId};

/// What a workspace directory holds, as berth records it (`.berth/run/volume.json`) at init and
/// after every durable snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMarker {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// Its generation.
    pub generation: Generation,
    /// The snapshot this directory was last saved as (or restored from).
    pub snapshot: Option<SnapshotId>,
    /// Its sequence number (0: none yet).
    pub seq: u64,
    /// Its writer's lease epoch (0: none, or written before epochs existed).
    #[serde(default)]
    pub epoch: Epoch,
    /// A publish under way from this directory: the seq it will get and the instance writing it.
    /// A crash between the store's record and this marker's update leaves it here, so the next
    /// init knows that snapshot came from this directory and keeps the (newer) local files.
    #[serde(default)]
    pub pending: Option<(u64, String)>,
}

impl VolumeMarker {
    /// A marker for a directory that holds no snapshot yet.
    pub fn new(workspace: WorkspaceId, generation: Generation) -> VolumeMarker {
        VolumeMarker { workspace, generation, snapshot: None, seq: 0, epoch: Epoch::ZERO, pending: None }
    }

    /// Returns whether the store's latest snapshot `s` is no newer, by (epoch, seq), than what
    /// this directory holds, or is the publish this directory had under way.
    pub fn holds(&self, s: &LatestSnapshot) -> bool {
        (s.epoch, s.seq) <= (self.epoch, self.seq)
            || self.pending.as_ref().is_some_and(|(p, h)| *p == s.seq && *h == s.host)
    }
}

/// Returns whether an entry of a workspace's top level may be there before berth wrote
/// anything: a fresh volume's `lost+found`, and berth's own `.berth`.
pub fn is_preexisting(name: &[u8]) -> bool {
    name == b"lost+found" || name == b".berth"
}

/// What the workspace directory holds before init.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirState {
    /// Nothing (or only `lost+found` and berth's runtime files).
    Empty,
    /// Written by berth for this workspace and generation.
    Ours(VolumeMarker),
    /// Written by berth for another workspace or generation.
    Other(VolumeMarker),
    /// Files berth did not write.
    Foreign,
}

impl DirState {
    /// Classifies a directory by its volume marker, if it has one, and whether it holds
    /// anything else (see [`is_preexisting`]).
    pub fn classify(
        workspace: &WorkspaceId,
        generation: Generation,
        marker: Option<VolumeMarker>,
        other_files: bool,
    ) -> DirState {
        match marker {
            Some(m) if m.workspace == *workspace && m.generation == generation => DirState::Ours(m),
            Some(m) => DirState::Other(m),
            None if other_files => DirState::Foreign,
            None => DirState::Empty,
        }
    }

    /// Refuses a directory of another workspace or generation: nothing in it may be touched,
    /// whatever the store holds (so this is checked before the store is read).
    pub fn check(&self) -> Result<(), Refusal> {
        match self {
            DirState::Other(m) => {
                Err(Refusal::OtherWorkspace { workspace: m.workspace.clone(), generation: m.generation })
            }
            _ => Ok(()),
        }
    }
}

/// The latest snapshot record of this workspace and generation, as far as init needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatestSnapshot {
    /// Its id.
    pub id: SnapshotId,
    /// Its sequence number.
    pub seq: u64,
    /// Its writer's lease epoch.
    pub epoch: Epoch,
    /// The instance that wrote it.
    pub host: String,
    /// Where its tree is stored.
    pub contents: Contents,
}

/// How init's choice of the snapshot to restore relates to the control plane's pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointerUse {
    /// No pointer (no control plane, or nothing published): the store's greatest (epoch, seq).
    NoPointer,
    /// The pointer's snapshot.
    Pointer,
    /// The store holds a record ordered after the pointer's: a lease holder's work whose
    /// publish did not reach the control plane (every writer of a higher epoch, and the
    /// pointer's own writer, held the lease when it wrote).
    StoreAhead,
    /// The pointer's snapshot is not in the store (forgotten, or another store): the store's
    /// greatest (epoch, seq).
    PointerMissing,
}

/// Chooses what init restores from the generation's `records` and the control plane's
/// `pointer` (its latest published snapshot): the pointer, unless the store holds a record
/// ordered after it by (epoch, seq); without a pointer, the greatest (epoch, seq). A pointer
/// with no record at all in the store means the snapshot exists but cannot be read.
pub fn choose_latest(records: &[LatestSnapshot], pointer: Option<&SnapshotId>) -> (Latest, PointerUse) {
    let head = records.iter().max_by_key(|s| (s.epoch, s.seq));
    let Some(pointer) = pointer else {
        return (head.map_or(Latest::Never, |h| Latest::Snapshot(h.clone())), PointerUse::NoPointer);
    };
    match (head, records.iter().find(|s| s.id == *pointer)) {
        (None, _) => (
            Latest::Unreadable {
                reason: format!("the control plane's latest snapshot {pointer} is not in the store, which holds none"),
                temporary: false,
            },
            PointerUse::PointerMissing,
        ),
        (Some(h), Some(p)) if (h.epoch, h.seq) > (p.epoch, p.seq) => {
            (Latest::Snapshot(h.clone()), PointerUse::StoreAhead)
        }
        (Some(_), Some(p)) => (Latest::Snapshot(p.clone()), PointerUse::Pointer),
        (Some(h), None) => (Latest::Snapshot(h.clone()), PointerUse::PointerMissing),
    }
}

/// What the object store says about this workspace and generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Latest {
    /// No object store is configured: the workspace is ephemeral.
    NoStore,
    /// The store holds no snapshot of this generation: it was never backed up.
    Never,
    /// The latest snapshot record.
    Snapshot(LatestSnapshot),
    /// The store cannot be read.
    Unreadable {
        /// Why.
        reason: String,
        /// Whether the failure looked temporary.
        temporary: bool,
    },
}

/// Why init refuses a directory before it changes anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The directory holds another workspace or another generation of this one.
    OtherWorkspace {
        /// The workspace its marker names.
        workspace: WorkspaceId,
        /// The generation its marker names.
        generation: Generation,
    },
    /// The directory holds files berth did not write, and a snapshot would replace them.
    Foreign,
}

/// What init does about the latest snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestorePlan {
    /// No object store: nothing is restored, and nothing will be saved.
    Ephemeral,
    /// Never backed up: start empty.
    NeverBackedUp,
    /// Restore this snapshot.
    Restore(LatestSnapshot),
    /// The directory is this workspace's own and at least as new as the store: keep it.
    KeepLocal {
        /// The store's latest snapshot, which the directory holds or is newer than.
        snapshot: Option<LatestSnapshot>,
        /// Why the store could not be read, when it could not.
        store_error: Option<String>,
    },
    /// The store cannot be read and the directory holds nothing of this workspace: fail once
    /// the repos are cloned (cloning never needs the store), never start empty over work that
    /// may be saved.
    Fail {
        /// Why the store could not be read.
        reason: String,
        /// Whether the failure looked temporary.
        temporary: bool,
    },
}

/// One repository to put in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoStep {
    /// The spec.
    pub spec: RepoSpec,
    /// Where it goes in the workspace, or why the spec cannot be used.
    pub target: Result<RelPath, RepoError>,
}

/// What the repo's target path holds when init gets to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoPlace {
    /// Nothing, or an empty directory (a mount point).
    Free,
    /// A git checkout (`.git` present).
    Checkout,
    /// Something that is not a git checkout.
    Occupied,
}

/// What init does with one repo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoAction {
    /// Use the checkout that is there.
    Reuse,
    /// Leave it to the restore: the snapshot holds the checkout.
    FromSnapshot,
    /// Clone it.
    Clone,
    /// Refuse: something else is in the way, and a clone would have to replace it.
    Refuse,
}

impl RepoStep {
    /// Decides what to do from what the target holds now and whether the snapshot to be
    /// restored holds its checkout. Called right before acting, so it sees what earlier repos
    /// did.
    pub fn action(place: RepoPlace, in_snapshot: bool) -> RepoAction {
        match (place, in_snapshot) {
            (RepoPlace::Checkout, _) => RepoAction::Reuse,
            (_, true) => RepoAction::FromSnapshot,
            (RepoPlace::Occupied, false) => RepoAction::Refuse,
            (RepoPlace::Free, false) => RepoAction::Clone,
        }
    }
}

/// Returns whether `manifest` holds a git checkout (a `.git` directory) at `target`.
pub fn in_snapshot(manifest: &Manifest, target: &RelPath) -> bool {
    let git_dir = [target.as_bytes(), b"/.git"].concat();
    manifest.entries.iter().any(|e| e.path.as_bytes() == git_dir.as_slice() && matches!(e.kind, EntryKind::Dir))
}

/// What init will do, in order: clone or reuse each repo, restore (or not), mark the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitPlan {
    /// The repos, in the order given.
    pub repos: Vec<RepoStep>,
    /// What to do about the latest snapshot.
    pub restore: RestorePlan,
    /// Whether init marks the directory as this workspace's once ready: it was not (a restore
    /// marks it itself).
    pub mark: bool,
}

/// Plans init for a directory in `dir` state, given what the store says and the repos.
pub fn plan(dir: &DirState, latest: &Latest, repos: &[RepoSpec]) -> Result<InitPlan, Refusal> {
    dir.check()?;
    let restore = match (latest, dir) {
        (Latest::Snapshot(_), DirState::Foreign) => return Err(Refusal::Foreign),
        (Latest::NoStore, _) => RestorePlan::Ephemeral,
        (Latest::Never, _) => RestorePlan::NeverBackedUp,
        (Latest::Snapshot(s), DirState::Ours(m)) if m.holds(s) => {
            RestorePlan::KeepLocal { snapshot: Some(s.clone()), store_error: None }
        }
        (Latest::Snapshot(s), _) => RestorePlan::Restore(s.clone()),
        (Latest::Unreadable { reason, .. }, DirState::Ours(_)) => {
            RestorePlan::KeepLocal { snapshot: None, store_error: Some(reason.clone()) }
        }
        (Latest::Unreadable { reason, temporary }, _) => {
            RestorePlan::Fail { reason: reason.clone(), temporary: *temporary }
        }
    };
    let mark = !matches!(dir, DirState::Ours(_)) && !matches!(restore, RestorePlan::Restore(_));
    let repos = repos.iter().map(|spec| RepoStep { spec: spec.clone(), target: spec.target() }).collect();
    Ok(InitPlan { repos, restore, mark })
}

/// Names and outcomes in init's report: each serialises to the word the report has always
/// used, so `--json` output stays stable.
macro_rules! words {
    ($(#[$doc:meta] $name:ident { $($(#[$vdoc:meta])* $variant:ident = $word:literal,)* })*) => {$(
        #[$doc]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $word)] $variant,)*
        }

        impl $name {
            /// Returns the word for reports and logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    )*};
}

words! {
    /// The phases of init, in order.
    PhaseName {
        /// Per-job leftovers swept.
        Sweep = "sweep",
        /// Git credentials fetched.
        Credentials = "credentials",
        /// Repos cloned or reused.
        Clone = "clone",
        /// The latest snapshot restored (or not).
        Restore = "restore",
        /// Git state and SQLite databases put back.
        Git = "git",
        /// The ready marker written.
        Ready = "ready",
    }
    /// How a phase went.
    PhaseOutcome {
        /// It did its work.
        Ok = "ok",
        /// It failed (init may go on; the report says).
        Failed = "failed",
        /// It had nothing to do.
        Skipped = "skipped",
    }
    /// What became of one repo.
    RepoOutcome {
        /// Cloned now.
        Cloned = "cloned",
        /// A checkout was there.
        Reused = "reused",
        /// The restored snapshot holds it.
        FromSnapshot = "from_snapshot",
        /// Not in place; the report says why.
        Failed = "failed",
    }
    /// What init did about the latest snapshot.
    RestoreOutcome {
        /// The store holds no snapshot of this generation: started empty.
        NeverBackedUp = "never_backed_up",
        /// The latest snapshot was restored.
        Restored = "restored",
        /// The directory held the latest snapshot or newer work, and was kept.
        KeptLocal = "kept_local",
        /// No object store: nothing restored, nothing saved.
        Ephemeral = "ephemeral",
    }
}

impl RestorePlan {
    /// The outcome this plan reports when carried out (`None`: it fails).
    pub fn outcome(&self) -> Option<RestoreOutcome> {
        match self {
            RestorePlan::Ephemeral => Some(RestoreOutcome::Ephemeral),
            RestorePlan::NeverBackedUp => Some(RestoreOutcome::NeverBackedUp),
            RestorePlan::Restore(_) => Some(RestoreOutcome::Restored),
            RestorePlan::KeepLocal { .. } => Some(RestoreOutcome::KeptLocal),
            RestorePlan::Fail { .. } => None,
        }
    }
}

impl RepoAction {
    /// The outcome of this action when it succeeds.
    pub fn outcome(self) -> RepoOutcome {
        match self {
            RepoAction::Reuse => RepoOutcome::Reused,
            RepoAction::FromSnapshot => RepoOutcome::FromSnapshot,
            RepoAction::Clone => RepoOutcome::Cloned,
            RepoAction::Refuse => RepoOutcome::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;
    use crate::manifest::Entry;

    fn ws(s: &str) -> WorkspaceId {
        WorkspaceId::new(s).unwrap()
    }

    fn sid(n: u8) -> SnapshotId {
        SnapshotId::of(&[n])
    }

    /// A marker of `agent:1` at `gen`, holding `seq`, with a publish of `pending` under way.
    fn marker(gen: u64, seq: u64, pending: Option<(u64, &str)>) -> Option<VolumeMarker> {
        let mut m = VolumeMarker::new(ws("agent:1"), Generation(gen));
        m.seq = seq;
        m.pending = pending.map(|(p, h)| (p, h.to_string()));
        Some(m)
    }

    fn record(epoch: u64, seq: u64, host: &str) -> LatestSnapshot {
        let id = sid((epoch * 16 + seq) as u8);
        LatestSnapshot { id, seq, epoch: Epoch(epoch), host: host.into(), contents: Contents::Root(ChunkId::of(&[])) }
    }

    fn snap(seq: u64, host: &str) -> Latest {
        Latest::Snapshot(record(0, seq, host))
    }

    fn unreadable() -> Latest {
        Latest::Unreadable { reason: "timed out".into(), temporary: true }
    }

    fn show(plan: Result<InitPlan, Refusal>) -> String {
        let plan = match plan {
            Err(Refusal::Foreign) => return "refuse: foreign".into(),
            Err(Refusal::OtherWorkspace { workspace, generation }) => {
                return format!("refuse: {workspace} generation {generation}")
            }
            Ok(p) => p,
        };
        let restore = match &plan.restore {
            RestorePlan::Ephemeral => "ephemeral".to_string(),
            RestorePlan::NeverBackedUp => "start empty".to_string(),
            RestorePlan::Restore(s) => format!("restore seq {}", s.seq),
            RestorePlan::KeepLocal { snapshot: Some(s), .. } => format!("keep local (holds seq {})", s.seq),
            RestorePlan::KeepLocal { store_error: Some(e), .. } => format!("keep local (store: {e})"),
            RestorePlan::KeepLocal { .. } => "keep local".to_string(),
            RestorePlan::Fail { reason, .. } => format!("fail after cloning: {reason}"),
        };
        if plan.mark {
            format!("{restore}; mark")
        } else {
            restore
        }
    }

    /// Plans init for `agent:1` generation 1 in a directory with `marker` (and other files
    /// when `files`), given `latest`, and compares the plan with `expect`.
    fn check(marker: Option<VolumeMarker>, files: bool, latest: Latest, expect: &str) {
        let dir = DirState::classify(&ws("agent:1"), Generation(1), marker.clone(), files);
        let got = show(plan(&dir, &latest, &[]));
        assert_eq!(got, expect, "marker {marker:?}, other files {files}, latest {latest:?}");
    }

    #[test]
    fn an_empty_directory_restores_or_starts_empty() {
        check(None, false, Latest::NoStore, "ephemeral; mark");
        check(None, false, Latest::Never, "start empty; mark");
        check(None, false, snap(3, "pod-a"), "restore seq 3");
        check(None, false, unreadable(), "fail after cloning: timed out; mark");
    }

    #[test]
    fn our_own_directory_keeps_newer_work() {
        check(marker(1, 3, None), false, Latest::NoStore, "ephemeral");
        check(marker(1, 3, None), true, Latest::Never, "start empty");
        check(marker(1, 3, None), true, snap(3, "pod-b"), "keep local (holds seq 3)");
        check(marker(1, 3, None), true, snap(2, "pod-b"), "keep local (holds seq 2)");
        check(marker(1, 3, None), true, snap(4, "pod-b"), "restore seq 4");
        check(marker(1, 3, None), true, unreadable(), "keep local (store: timed out)");
        // Our own publish, whose marker update a crash cut off: the directory holds it.
        check(marker(1, 3, Some((4, "pod-a"))), true, snap(4, "pod-a"), "keep local (holds seq 4)");
        // Another writer's snapshot 4, or anything later, is newer than this directory.
        check(marker(1, 3, Some((4, "pod-a"))), true, snap(4, "pod-b"), "restore seq 4");
        check(marker(1, 3, Some((4, "pod-a"))), true, snap(5, "pod-a"), "restore seq 5");
        // A higher epoch supersedes whatever the seqs say: a volume a fenced writer kept
        // writing on holds less than the lease holder's work.
        let mut fenced = marker(1, 9, None).unwrap();
        fenced.epoch = Epoch(1);
        check(Some(fenced.clone()), true, Latest::Snapshot(record(2, 5, "pod-b")), "restore seq 5");
        check(Some(fenced), true, Latest::Snapshot(record(1, 8, "pod-b")), "keep local (holds seq 8)");
    }

    #[test]
    fn init_restores_the_pointer_unless_the_store_holds_later_work_of_a_holder() {
        let (a1, a2, b1) = (record(1, 1, "pod-a"), record(1, 2, "pod-a"), record(2, 3, "pod-b"));
        let zombie = record(1, 4, "pod-a");
        let pick = |records: &[LatestSnapshot], pointer: Option<&LatestSnapshot>| {
            let (latest, how) = choose_latest(records, pointer.map(|p| &p.id));
            match latest {
                Latest::Snapshot(s) => (format!("epoch {} seq {}", s.epoch, s.seq), how),
                other => (format!("{other:?}"), how),
            }
        };
        let all = [a1.clone(), a2.clone(), b1.clone(), zombie.clone()];
        assert_eq!(pick(&all, None), ("epoch 2 seq 3".into(), PointerUse::NoPointer), "(epoch, seq), not seq");
        assert_eq!(pick(&all, Some(&b1)), ("epoch 2 seq 3".into(), PointerUse::Pointer));
        assert_eq!(pick(&[a1.clone(), a2.clone()], Some(&a1)), ("epoch 1 seq 2".into(), PointerUse::StoreAhead));
        assert_eq!(pick(&[a1.clone(), b1.clone()], Some(&a1)), ("epoch 2 seq 3".into(), PointerUse::StoreAhead));
        assert_eq!(pick(&[a2.clone(), b1.clone()], Some(&a1)), ("epoch 2 seq 3".into(), PointerUse::PointerMissing));
        assert_eq!(pick(&[], None), ("Never".into(), PointerUse::NoPointer));
        let (latest, how) = choose_latest(&[], Some(&a1.id));
        assert!(matches!(latest, Latest::Unreadable { temporary: false, .. }) && how == PointerUse::PointerMissing);
    }

    #[test]
    fn another_generation_or_foreign_files_are_refused() {
        for latest in [Latest::NoStore, Latest::Never, snap(1, "pod-a"), unreadable()] {
            check(marker(2, 1, None), true, latest, "refuse: agent:1 generation 2");
        }
        let mut other = marker(1, 1, None).unwrap();
        other.workspace = ws("agent:2");
        check(Some(other), false, Latest::Never, "refuse: agent:2 generation 1");
        // Files berth did not write are replaced only by a restore; anything else proceeds.
        check(None, true, snap(1, "pod-a"), "refuse: foreign");
        check(None, true, Latest::Never, "start empty; mark");
        check(None, true, Latest::NoStore, "ephemeral; mark");
        check(None, true, unreadable(), "fail after cloning: timed out; mark");
    }

    #[test]
    fn repos_are_reused_restored_cloned_or_refused() {
        use RepoAction::*;
        use RepoPlace::*;
        for (place, in_snapshot, expect) in [
            (Checkout, true, Reuse),
            (Checkout, false, Reuse),
            (Free, true, FromSnapshot),
            (Occupied, true, FromSnapshot),
            (Free, false, Clone),
            (Occupied, false, Refuse),
        ] {
            assert_eq!(RepoStep::action(place, in_snapshot), expect, "{place:?}, in snapshot {in_snapshot}");
        }
        let spec = |url: &str, path: Option<&str>| RepoSpec {
            url: url.into(),
            branch: None,
            depth: None,
            path: path.map(Into::into),
        };
        let p =
            plan(&DirState::Empty, &Latest::Never, &[spec("https://h.test/o/app.git", None), spec("x", Some("../up"))])
                .unwrap();
        assert_eq!(p.repos[0].target.as_ref().unwrap().as_bytes(), b"app");
        assert!(p.repos[1].target.as_ref().unwrap_err().to_string().contains("'..'"));
    }

    #[test]
    fn a_snapshot_holds_a_checkout_when_it_has_its_git_dir() {
        let dir = |p: &str| Entry { path: RelPath::new(p).unwrap(), mode: 0o755, mtime_ns: 0, kind: EntryKind::Dir };
        let manifest = Manifest { entries: vec![dir("app"), dir("app/.git"), dir("lib"), dir("libs/lib/.gitx")] };
        let rel = |p: &str| RelPath::new(p).unwrap();
        assert!(in_snapshot(&manifest, &rel("app")));
        assert!(!in_snapshot(&manifest, &rel("lib")));
        assert!(!in_snapshot(&manifest, &rel("libs/lib")));
    }

    #[test]
    fn words_are_the_reports_own() {
        assert_eq!(serde_json::to_string(&RestoreOutcome::NeverBackedUp).unwrap(), "\"never_backed_up\"");
        assert_eq!(serde_json::to_string(&RepoOutcome::FromSnapshot).unwrap(), "\"from_snapshot\"");
        assert_eq!(PhaseName::Credentials.to_string(), "credentials");
        assert_eq!(RestorePlan::Restore(record(1, 1, "h")).outcome(), Some(RestoreOutcome::Restored));
        assert!(is_preexisting(b"lost+found") && !is_preexisting(b"notes.txt"));
    }
}
