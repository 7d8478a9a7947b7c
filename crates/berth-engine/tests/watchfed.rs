//! Watch-fed snapshots equal full-scan snapshots: random sequences of creates, writes, renames,
//! deletes, chmods, symlink swaps, hard links and new directories are applied to a tree; after some of them
//! a snapshot is taken from the paths a watcher would have reported (`create_warm` with the
//! changed paths), and one of the same tree by a full scan into another store. Both must have the
//! same tree id. A lost watcher (overflow) falls back to a full scan and loses nothing, and a
//! change nobody reported is found by a checked run.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use berth_core::changes::ChangedPaths;
use berth_core::path::RelPath;
use berth_engine::create::{create, create_warm};
use berth_engine::progress::Progress;
use berth_engine::snapshot_store::SnapshotStore;
use berth_engine::warm::Warm;
use common::{create_opts, memory_repo, runtime};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Write {
        slot: u8,
        len: u16,
    },
    Rename {
        from: u8,
        to: u8,
    },
    Delete {
        slot: u8,
    },
    Chmod {
        slot: u8,
        mode: u16,
    },
    SymlinkSwap {
        slot: u8,
    },
    NewDir {
        slot: u8,
        files: u8,
    },
    /// The watcher overflowed: the change is made and the set says only that track was lost.
    Overflow {
        slot: u8,
    },
    /// A second name for a file (inotify reports the new name, and the old one's link count
    /// as an attribute change).
    HardLink {
        from: u8,
        to: u8,
    },
    Snapshot,
}

/// Where slot `n` lives: a few directories, two levels deep, so parents change too.
fn slot_path(n: u8) -> String {
    let dirs = ["", "a/", "a/b/", "c/"];
    format!("{}f{}", dirs[(n % 4) as usize], n % 7)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), 0u16..3000).prop_map(|(slot, len)| Op::Write { slot, len }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(from, to)| Op::Rename { from, to }),
        2 => any::<u8>().prop_map(|slot| Op::Delete { slot }),
        2 => (any::<u8>(), 0o400u16..0o777).prop_map(|(slot, mode)| Op::Chmod { slot, mode }),
        2 => any::<u8>().prop_map(|slot| Op::SymlinkSwap { slot }),
        1 => (any::<u8>(), 0u8..4).prop_map(|(slot, files)| Op::NewDir { slot, files }),
        1 => any::<u8>().prop_map(|slot| Op::Overflow { slot }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(from, to)| Op::HardLink { from, to }),
        3 => Just(Op::Snapshot),
    ]
}

fn rel(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).expect("valid path")
}

/// Applies `op` to `root`; returns the paths a watcher reports for it.
/// The other names of the files at `paths` (slot paths only): unlinking, replacing or
/// chmodding one name changes the inode's link count or mode, which inotify reports for
/// every name as an attribute change.
fn other_names(root: &Path, paths: &[String]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let file = |p: &str| root.join(p).symlink_metadata().ok().filter(|m| m.is_file());
    let all: Vec<String> = (0..28).map(slot_path).collect();
    let mut out = Vec::new();
    for p in paths {
        let Some(m) = file(p).filter(|m| m.nlink() > 1) else { continue };
        out.extend(all.iter().filter(|q| *q != p && file(q).is_some_and(|o| o.ino() == m.ino())).cloned());
    }
    out
}

fn apply(root: &Path, op: &Op, n: &mut u64, changed: &mut ChangedPaths) {
    *n += 1;
    let touched = match op {
        Op::Write { slot, .. } | Op::Delete { slot } | Op::Chmod { slot, .. } | Op::SymlinkSwap { slot } => {
            vec![slot_path(*slot)]
        }
        Op::Rename { from, to } | Op::HardLink { from, to } => vec![slot_path(*from), slot_path(*to)],
        Op::NewDir { .. } | Op::Overflow { .. } | Op::Snapshot => Vec::new(),
    };
    for p in other_names(root, &touched) {
        changed.insert(rel(&p));
    }
    let at = |s: &str| root.join(s);
    let ensure_parent = |s: &str| std::fs::create_dir_all(at(s).parent().expect("a parent")).expect("mkdir");
    let mut report = |s: &str| changed.insert(rel(s));
    match op {
        Op::Write { slot, len } => {
            let p = slot_path(*slot);
            // Parents made now are reported as created, as a watcher reports them.
            let new_dirs: Vec<&str> =
                ["a", "a/b", "c"].into_iter().filter(|d| p.starts_with(&format!("{d}/")) && !at(d).is_dir()).collect();
            for d in &new_dirs {
                let _ = std::fs::remove_file(at(d));
            }
            ensure_parent(&p);
            // Whatever is there (a directory made by NewDir, a link) is replaced by a file.
            let _ = std::fs::remove_dir_all(at(&p));
            let _ = std::fs::remove_file(at(&p));
            std::fs::write(at(&p), format!("{n}:{}", "x".repeat(*len as usize))).expect("write");
            report(&p);
            for d in new_dirs {
                report(d);
            }
        }
        Op::Rename { from, to } => {
            let (from, to) = (slot_path(*from), slot_path(*to));
            if from == to || at(&from).symlink_metadata().is_err() || !at(&to).parent().is_some_and(Path::is_dir) {
                return;
            }
            let _ = std::fs::remove_dir_all(at(&to));
            if std::fs::rename(at(&from), at(&to)).is_ok() {
                report(&from);
                report(&to);
            }
        }
        Op::Delete { slot } => {
            let p = slot_path(*slot);
            let _ = std::fs::remove_dir_all(at(&p));
            let _ = std::fs::remove_file(at(&p));
            report(&p);
        }
        Op::Chmod { slot, mode } => {
            let p = slot_path(*slot);
            if at(&p).symlink_metadata().is_ok_and(|m| m.is_file()) {
                std::fs::set_permissions(at(&p), std::fs::Permissions::from_mode(*mode as u32)).expect("chmod");
                report(&p);
            }
        }
        Op::SymlinkSwap { slot } => {
            let p = slot_path(*slot);
            if !at(&p).parent().is_some_and(Path::is_dir) || at(&p).is_dir() {
                return;
            }
            let was_link = at(&p).symlink_metadata().is_ok_and(|m| m.file_type().is_symlink());
            let _ = std::fs::remove_file(at(&p));
            if was_link {
                std::fs::write(at(&p), b"was a link").expect("write");
            } else {
                std::os::unix::fs::symlink(format!("target-{n}"), at(&p)).expect("symlink");
            }
            report(&p);
        }
        Op::NewDir { slot, files } => {
            let p = slot_path(*slot);
            if !at(&p).parent().is_some_and(Path::is_dir) || at(&p).symlink_metadata().is_ok() {
                return;
            }
            // Files made inside before any watch on it could exist: only the directory is reported.
            std::fs::create_dir_all(at(&format!("{p}/inner"))).expect("mkdir");
            for i in 0..*files {
                std::fs::write(at(&format!("{p}/inner/g{i}")), format!("{n}-{i}")).expect("write");
            }
            report(&p);
        }
        Op::Overflow { slot } => {
            let p = slot_path(*slot);
            ensure_parent(&p);
            let _ = std::fs::remove_dir_all(at(&p));
            let _ = std::fs::remove_file(at(&p));
            std::fs::write(at(&p), format!("unreported {n}")).expect("write");
            changed.lose_track();
        }
        Op::HardLink { from, to } => {
            let (from, to) = (slot_path(*from), slot_path(*to));
            let is_file = |p: &str| at(p).symlink_metadata().is_ok_and(|m| m.is_file());
            if from == to || !is_file(&from) || !at(&to).parent().is_some_and(Path::is_dir) {
                return;
            }
            let _ = std::fs::remove_dir_all(at(&to));
            let _ = std::fs::remove_file(at(&to));
            std::fs::hard_link(at(&from), at(&to)).expect("link");
            report(&from);
            report(&to);
        }
        Op::Snapshot => {}
    }
}

/// Snapshots `dir` from the watcher's report and by a full scan; returns both tree ids.
async fn both(warm_store: &SnapshotStore, warm: &mut Warm, changed: &ChangedPaths, dir: &Path) -> (String, String) {
    let progress = Arc::new(Progress::default());
    let opts = create_opts(dir, None);
    create_warm(warm_store, &opts, &progress, warm, Some(changed)).await.expect("watch-fed snapshot");
    let cold = memory_repo().await;
    create(&cold, &opts, &progress).await.expect("full-scan snapshot");
    let tree = |s: &SnapshotStore| {
        let s = s.clone();
        async move { s.latest(&common::workspace(), berth_core::workspace::Generation(1)).await.unwrap() }
    };
    let (a, b) = (tree(warm_store).await.expect("a snapshot"), tree(&cold).await.expect("a snapshot"));
    (a.record.tree.to_hex(), b.record.tree.to_hex())
}

proptest! {
    #![proptest_config(berth_testkit::prop::persisted(
        24,
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proptest-regressions/watchfed.txt")
    ))]

    #[test]
    fn watch_fed_snapshots_equal_full_scans(ops in prop::collection::vec(op(), 1..24)) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ws");
        std::fs::create_dir_all(dir.join("a/b")).expect("mkdir");
        std::fs::write(dir.join("a/b/seed"), b"seed").expect("write");
        runtime().block_on(async {
            let store = memory_repo().await;
            let mut warm = Warm::default();
            // The first run scans everything (no previous scan).
            let (w, c) = both(&store, &mut warm, &ChangedPaths::new(), &dir).await;
            assert_eq!(w, c);
            assert!(warm.full_scan);
            let (mut changed, mut n) = (ChangedPaths::new(), 0);
            for op in ops.iter().chain([&Op::Snapshot]) {
                apply(&dir, op, &mut n, &mut changed);
                if matches!(op, Op::Snapshot) {
                    let lost = changed.lost_track();
                    let (w, c) = both(&store, &mut warm, &changed, &dir).await;
                    assert_eq!(w, c, "after {ops:?}");
                    assert_eq!(warm.full_scan, lost, "a full scan exactly when track was lost");
                    // Without hard links, a watch-fed run plans and encodes only what changed.
                    let linked = ops.iter().any(|o| matches!(o, Op::HardLink { .. }));
                    assert!(!lost || !warm.incremental, "a lost watcher plans everything");
                    assert!(lost || linked || warm.incremental, "a watch-fed run builds on the last tree");
                    changed = ChangedPaths::new();
                }
            }
        });
    }
}

/// A change no watcher reported is found by a checked run, which scans everything and says
/// where the watcher-fed view was wrong; the snapshot holds the change.
#[test]
fn a_checked_run_finds_what_the_watcher_missed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ws");
    std::fs::create_dir_all(dir.join("d")).expect("mkdir");
    std::fs::write(dir.join("d/seen"), b"1").expect("write");
    runtime().block_on(async {
        let store = memory_repo().await;
        let mut warm = Warm::default();
        both(&store, &mut warm, &ChangedPaths::new(), &dir).await;
        std::fs::write(dir.join("d/missed"), b"nobody said").expect("write");
        std::fs::write(dir.join("d/seen"), b"22").expect("write");
        let mut changed = ChangedPaths::new();
        changed.insert(rel("d/seen"));
        warm.check_next();
        let (w, c) = both(&store, &mut warm, &changed, &dir).await;
        assert_eq!(w, c);
        assert!(warm.full_scan);
        let missed: Vec<String> = warm.differences.iter().map(|p| p.to_string()).collect();
        assert_eq!(missed, ["d/missed"], "the file nobody reported");
        // The next run is watch-fed again.
        let (w, c) = both(&store, &mut warm, &ChangedPaths::new(), &dir).await;
        assert_eq!(w, c);
        assert!(!warm.full_scan && warm.differences.is_empty());
    });
}
