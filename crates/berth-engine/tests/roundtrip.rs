//! Snapshot → restore round trips on real trees in temporary directories: random trees (nested
//! and empty directories, files of many sizes, modes, ns mtimes, every kind of symlink, hard
//! links, unicode and non-UTF-8 names) come back byte for byte, into a fresh directory and over
//! a directory full of conflicting entries; the file cache makes unchanged trees cost no reads.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_engine::restore::RestoreOptions;
use common::{
    assert_same, differences, join, memory_repo, noise, restore, runtime, set_mode, set_mtime, snapshot, text, Kind,
    TreeImage,
};
use proptest::prelude::*;
use proptest::sample::Index;

const LONG_NAME: [u8; 255] = [b'n'; 255];

/// Names generated trees draw from: plain, unicode, control characters, invalid UTF-8, 255 bytes.
const NAMES: &[&[u8]] = &[
    b"a",
    b"b",
    b"src",
    b"file.txt",
    "caf\u{e9}".as_bytes(),
    "\u{65e5}\u{672c}\u{8a9e}".as_bytes(),
    "\u{1f389} party".as_bytes(),
    b"space name",
    b"new\nline",
    b"\xff\xfe",
    b"bad\xc3(",
    b".hidden",
    b"-dash",
    &LONG_NAME,
];

/// What a generated file holds.
#[derive(Debug, Clone)]
enum Content {
    Noise(u64, usize),
    Text(u64, usize),
}

impl Content {
    fn bytes(&self) -> Vec<u8> {
        match *self {
            Content::Noise(seed, len) => noise(seed, len),
            Content::Text(seed, len) => text(seed, len),
        }
    }
}

/// Where a generated symlink points; none of them is ever followed.
#[derive(Debug, Clone)]
enum LinkTo {
    /// A relative name that may or may not exist next to the link.
    Sibling(usize),
    /// Up one level.
    Parent,
    /// The absolute path of a directory outside the tree.
    OutsideAbsolute,
    /// A file outside the tree, by absolute path.
    OutsideFile,
    /// Out of the tree by `..`.
    OutsideRelative,
    /// Nothing.
    Dangling,
    /// Bytes that are not UTF-8.
    NonUtf8,
}

#[derive(Debug, Clone)]
enum Spec {
    Dir { mode: u32, mtime_ns: i64, children: Vec<(usize, Spec)> },
    File { mode: u32, mtime_ns: i64, content: Content },
    Symlink { to: LinkTo, mtime_ns: i64 },
}

/// A generated tree: the root's children and hard links to add (file, directory to put it in).
#[derive(Debug, Clone)]
struct TreeSpec {
    children: Vec<(usize, Spec)>,
    hard_links: Vec<(Index, Index)>,
}

fn mtime() -> impl Strategy<Value = i64> {
    // Before the epoch too, with nanoseconds.
    (-1_000_000_000i64..4_000_000_000, 0i64..1_000_000_000).prop_map(|(s, ns)| s * 1_000_000_000 + ns)
}

fn file_mode() -> impl Strategy<Value = u32> {
    prop_oneof![6 => 0o600u32..=0o777, 1 => Just(0o444), 1 => Just(0o400), 1 => Just(0o755)]
}

fn dir_mode() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0o700u32, 0o755, 0o750, 0o775, 0o711, 0o2755, 0o1777])
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        2 => Just(Content::Text(0, 0)),
        4 => (any::<u64>(), 1usize..300).prop_map(|(s, n)| Content::Text(s, n)),
        3 => (any::<u64>(), 300usize..40_000).prop_map(|(s, n)| Content::Noise(s, n)),
        2 => (any::<u64>(), 300usize..40_000).prop_map(|(s, n)| Content::Text(s, n)),
        // Several chunks (the chunker's minimum is 256 KiB), read whole and written positionally.
        1 => (any::<u64>(), 600_000usize..1_500_000).prop_map(|(s, n)| Content::Noise(s, n)),
    ]
}

fn link_to() -> impl Strategy<Value = LinkTo> {
    prop_oneof![
        (0..NAMES.len()).prop_map(LinkTo::Sibling),
        Just(LinkTo::Parent),
        Just(LinkTo::OutsideAbsolute),
        Just(LinkTo::OutsideFile),
        Just(LinkTo::OutsideRelative),
        Just(LinkTo::Dangling),
        Just(LinkTo::NonUtf8),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let leaf = prop_oneof![
        5 => (file_mode(), mtime(), content()).prop_map(|(mode, mtime_ns, content)| Spec::File { mode, mtime_ns, content }),
        2 => (link_to(), mtime()).prop_map(|(to, mtime_ns)| Spec::Symlink { to, mtime_ns }),
        1 => (dir_mode(), mtime()).prop_map(|(mode, mtime_ns)| Spec::Dir { mode, mtime_ns, children: vec![] }),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        (dir_mode(), mtime(), prop::collection::vec((0..NAMES.len(), inner), 0..6))
            .prop_map(|(mode, mtime_ns, children)| Spec::Dir { mode, mtime_ns, children })
    })
}

fn tree_spec() -> impl Strategy<Value = TreeSpec> {
    (prop::collection::vec((0..NAMES.len(), spec()), 1..8), prop::collection::vec(any::<(Index, Index)>(), 0..4))
        .prop_map(|(children, hard_links)| TreeSpec { children, hard_links })
}

/// Where a tree is built, and what must be fixed up once every entry exists.
struct Builder<'a> {
    outside: &'a Path,
    files: Vec<(PathBuf, u32, i64)>,
    links: Vec<(PathBuf, i64)>,
    dirs: Vec<(PathBuf, usize, u32, i64)>,
}

impl Builder<'_> {
    fn children(&mut self, dir: &Path, depth: usize, children: &[(usize, Spec)]) {
        for (name, spec) in children {
            let path = dir.join(std::ffi::OsStr::from_bytes(NAMES[*name]));
            if fs::symlink_metadata(&path).is_ok() {
                continue; // the name is taken in this directory
            }
            match spec {
                Spec::Dir { mode, mtime_ns, children } => {
                    fs::create_dir(&path).unwrap();
                    self.dirs.push((path.clone(), depth, *mode, *mtime_ns));
                    self.children(&path, depth + 1, children);
                }
                Spec::File { mode, mtime_ns, content } => {
                    fs::write(&path, content.bytes()).unwrap();
                    self.files.push((path, *mode, *mtime_ns));
                }
                Spec::Symlink { to, mtime_ns } => {
                    let outside = self.outside.as_os_str().as_bytes();
                    let target: Vec<u8> = match to {
                        LinkTo::Sibling(i) => NAMES[*i].to_vec(),
                        LinkTo::Parent => b"../a".to_vec(),
                        LinkTo::OutsideAbsolute => outside.to_vec(),
                        LinkTo::OutsideFile => [outside, b"/sentinel"].concat(),
                        LinkTo::OutsideRelative => b"../../../../../../outside".to_vec(),
                        LinkTo::Dangling => b"does/not/exist".to_vec(),
                        LinkTo::NonUtf8 => b"\xff\xfe/target".to_vec(),
                    };
                    symlink(std::ffi::OsStr::from_bytes(&target), &path).unwrap();
                    self.links.push((path, *mtime_ns));
                }
            }
        }
    }
}

/// Builds `tree` in `root` (which must exist); symlinks may point into `outside`.
fn build(root: &Path, tree: &TreeSpec, outside: &Path) {
    let mut b = Builder { outside, files: vec![], links: vec![], dirs: vec![] };
    b.children(root, 1, &tree.children);
    if !b.files.is_empty() {
        let mut link_dirs: Vec<PathBuf> = vec![root.to_path_buf()];
        link_dirs.extend(b.dirs.iter().map(|d| d.0.clone()));
        for (n, (file, dir)) in tree.hard_links.iter().enumerate() {
            let original = &b.files[file.index(b.files.len())].0;
            let name = dir.get(&link_dirs).join(format!("hard-link-{n}"));
            fs::hard_link(original, name).unwrap();
        }
    }
    // Metadata last, directories deepest first, so that nothing created later disturbs it.
    for (path, mode, mtime_ns) in &b.files {
        set_mode(path, *mode);
        set_mtime(path, *mtime_ns);
    }
    for (path, mtime_ns) in &b.links {
        set_mtime(path, *mtime_ns);
    }
    b.dirs.sort_by_key(|d| std::cmp::Reverse(d.1));
    for (path, _, mode, mtime_ns) in &b.dirs {
        set_mode(path, *mode);
        set_mtime(path, *mtime_ns);
    }
}

/// A temporary directory laid out as `src/`, `outside/` (with `sentinel` and `secret`), and
/// room for `dst/` and `cache/`.
struct Scene {
    tmp: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("src")).unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("sentinel"), b"outside, do not touch").unwrap();
        fs::write(outside.join("secret"), b"secret, do not touch").unwrap();
        Scene { tmp }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Everything in the temporary directory except the restore target and the cache.
    fn around(&self, target: &str) -> TreeImage {
        TreeImage::read_except(self.tmp.path(), &[target.as_bytes(), b"cache"])
    }
}

fn config() -> ProptestConfig {
    berth_testkit::prop::persisted(24, concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proptest-regressions/roundtrip.txt"))
}

proptest! {
    #![proptest_config(config())]

    /// A random tree snapshots and restores into a fresh directory byte for byte; snapshots of
    /// the unchanged tree and of the restored tree read nothing and publish nothing.
    #[test]
    fn random_trees_round_trip(tree in tree_spec()) {
        let scene = Scene::new();
        let (src, dst, cache) = (scene.path("src"), scene.path("dst"), scene.path("cache"));
        build(&src, &tree, &scene.path("outside"));
        let before = TreeImage::read(&src);
        let around = scene.around("dst");
        runtime().block_on(async {
            let snapshots = memory_repo().await;
            let first = snapshot(&snapshots, &src, Some(&cache)).await;
            prop_assert!(!first.unchanged);
            let n_files = before.files() as u64;
            prop_assert_eq!(first.files_scanned, n_files);
            prop_assert!(first.skipped_unreadable.is_empty(), "{:?}", first.skipped_unreadable);

            let again = snapshot(&snapshots, &src, Some(&cache)).await;
            prop_assert!(again.unchanged);
            prop_assert_eq!(again.snapshot, first.snapshot);
            prop_assert_eq!(again.files_read, 0);
            prop_assert_eq!(again.bytes_uploaded, 0);

            let summary = restore(&snapshots, &dst, Some(&cache)).await;
            let summary = summary.map_err(|e| TestCaseError::fail(format!("restore failed: {e}")))?;
            prop_assert_eq!(summary.removed, 0);
            let diff = differences(&before, &TreeImage::read(&dst));
            prop_assert!(diff.is_empty(), "restored tree differs:\n{}", diff);

            // The restore seeded the cache: the restored tree is the same snapshot, read for free.
            let of_restored = snapshot(&snapshots, &dst, Some(&cache)).await;
            prop_assert_eq!(of_restored.files_read, 0, "files were read again after a restore");
            prop_assert!(of_restored.unchanged);
            prop_assert_eq!(of_restored.snapshot, first.snapshot);
            Ok::<(), TestCaseError>(())
        })?;
        assert_same(&before, &TreeImage::read(&src), "the snapshotted tree changed");
        assert_same(&around, &scene.around("dst"), "something outside the target changed");
    }

    /// Restoring over a target full of junk and of entries of the wrong type (directories
    /// where files go, files, hard links to outside files and symlinks to outside directories
    /// where directories go) leaves exactly the snapshot, and nothing outside changes.
    #[test]
    fn restore_over_conflicting_targets(tree in tree_spec(), junk in tree_spec(), picks in prop::collection::vec(0u8..4, 64)) {
        let scene = Scene::new();
        let (src, dst) = (scene.path("src"), scene.path("dst"));
        let outside = scene.path("outside");
        build(&src, &tree, &outside);
        fs::create_dir(&dst).unwrap();
        build(&dst, &junk, &outside);
        let before = TreeImage::read(&src);
        for (i, (rel, node)) in before.nodes.iter().enumerate() {
            plant_conflict(&dst, rel, &node.kind, picks[i % picks.len()], &outside);
        }
        let around = scene.around("dst");
        runtime().block_on(async {
            let snapshots = memory_repo().await;
            snapshot(&snapshots, &src, None).await;
            // The target holds entries of its own: only an explicit delete lets a restore clear them.
            let summary = common::restore_with(&snapshots, &RestoreOptions { delete: true, ..common::restore_opts(&dst, None) }).await;
            summary.map_err(|e| TestCaseError::fail(format!("restore failed: {e}")))?;
            Ok::<(), TestCaseError>(())
        })?;
        assert_same(&before, &TreeImage::read(&dst), "restore over an existing target");
        assert_same(&around, &scene.around("dst"), "something outside the target changed");
    }
}

/// Puts an entry of the wrong type at `rel` in `dst`, choosing with `pick`; only where every
/// ancestor is a real directory, so that building the scene never follows a link itself.
fn plant_conflict(dst: &Path, rel: &[u8], want: &Kind, pick: u8, outside: &Path) {
    if pick == 0 {
        return;
    }
    let mut at = dst.to_path_buf();
    let parts: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
    for part in &parts[..parts.len() - 1] {
        at = at.join(std::ffi::OsStr::from_bytes(part));
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return,
            Err(_) => fs::create_dir(&at).unwrap(),
        }
    }
    let path = join(dst, rel);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&path).unwrap(),
        Ok(_) => fs::remove_file(&path).unwrap(),
        Err(_) => {}
    }
    match (want, pick) {
        // A directory is wanted: a symlink to an outside directory, or a file, stands there.
        (Kind::Dir, 1) => symlink(outside, &path).unwrap(),
        (Kind::Dir, 2) => fs::write(&path, b"a file where a directory belongs").unwrap(),
        (Kind::Dir, _) => symlink("../../../../../outside", &path).unwrap(),
        // A file is wanted: a directory with content, a hard link to an outside file, a symlink to one.
        (_, 1) => {
            fs::create_dir(&path).unwrap();
            fs::write(path.join("inner"), b"junk").unwrap();
        }
        (_, 2) => fs::hard_link(outside.join("secret"), &path).unwrap(),
        (_, _) => symlink(outside.join("sentinel"), &path).unwrap(),
    }
}

/// Writes `bytes` to `rel` below `root` with a fixed mode and mtime.
fn put(root: &Path, rel: &str, bytes: &[u8], mode: u32, mtime_ns: i64) -> PathBuf {
    let path = root.join(rel);
    fs::write(&path, bytes).unwrap();
    set_mode(&path, mode);
    set_mtime(&path, mtime_ns);
    path
}

/// One of everything, named: the cases the random trees hit by chance, hit every time.
fn fixed_tree(root: &Path, outside: &Path) {
    let d = |rel: &str| {
        fs::create_dir(root.join(rel)).unwrap();
    };
    d("empty");
    d("nested");
    d("nested/deeper");
    d("nested/deeper/empty-too");
    put(root, "empty-file", b"", 0o640, 1_000_000_001);
    put(root, "read-only", b"read only", 0o444, 1_600_000_000_123_456_789);
    put(root, "script.sh", b"#!/bin/sh\necho hi\n", 0o755, 1_700_000_000_000_000_007);
    put(root, "nested/deeper/multi-chunk", &noise(7, 3 << 20), 0o600, 1_650_000_000_999_999_999);
    put(root, "nested/text", &text(3, 100_000), 0o644, -86_400_000_000_001);
    let odd = root.join(std::ffi::OsStr::from_bytes(b"nested/\xff\xfe-not-utf8"));
    fs::write(&odd, b"odd name").unwrap();
    set_mtime(&odd, 5);
    put(root, "caf\u{e9} \u{1f389}", b"unicode", 0o600, 42);
    fs::hard_link(root.join("script.sh"), root.join("nested/hard-link")).unwrap();
    fs::hard_link(root.join("empty-file"), root.join("empty/empty-link")).unwrap();
    for (name, target) in [
        ("link-relative", b"nested/text".as_slice()),
        ("link-dangling", b"no/such/file"),
        ("link-up", b"../../../etc/passwd"),
        ("link-non-utf8", b"\xff\xfe"),
        ("link-dir", b"nested"),
    ] {
        let path = root.join(name);
        symlink(std::ffi::OsStr::from_bytes(target), &path).unwrap();
        set_mtime(&path, 123_456_789);
    }
    let abs = root.join("link-outside");
    symlink(outside, &abs).unwrap();
    set_mtime(&abs, 9);
    for (rel, mode, mtime_ns) in [
        ("nested/deeper/empty-too", 0o700, 11),
        ("nested/deeper", 0o750, 1_500_000_000_000_000_001),
        ("nested", 0o2755, 22),
        ("empty", 0o1777, 33),
    ] {
        set_mode(&root.join(rel), mode);
        set_mtime(&root.join(rel), mtime_ns);
    }
}

#[test]
fn fixed_tree_round_trips_and_restore_seeds_the_cache() {
    let scene = Scene::new();
    let (src, dst, cache) = (scene.path("src"), scene.path("dst"), scene.path("cache"));
    fixed_tree(&src, &scene.path("outside"));
    let before = TreeImage::read(&src);
    assert_eq!(before.links.len(), 2, "the scene has two hard-link pairs: {before:?}");
    let around = scene.around("dst");
    runtime().block_on(async {
        let snapshots = memory_repo().await;
        let first = snapshot(&snapshots, &src, Some(&cache)).await;
        assert_eq!((first.files_scanned, first.dirs), (9, 4), "{first:?}");
        let again = snapshot(&snapshots, &src, Some(&cache)).await;
        assert!(again.unchanged && again.files_read == 0, "{again:?}");

        let restored = restore(&snapshots, &dst, Some(&cache)).await.unwrap();
        assert_eq!((restored.files, restored.hardlinks, restored.symlinks, restored.dirs), (7, 2, 6, 4));
        assert_same(&before, &TreeImage::read(&dst), "fresh restore");
        let of_restored = snapshot(&snapshots, &dst, Some(&cache)).await;
        assert_eq!(of_restored.files_read, 0, "a snapshot right after a restore read files: {of_restored:?}");
        assert!(of_restored.unchanged);

        // Restoring again over the restored tree changes nothing and removes nothing.
        let again = restore(&snapshots, &dst, Some(&cache)).await.unwrap();
        assert_eq!(again.removed, 0);
        assert_same(&before, &TreeImage::read(&dst), "restore over itself");
    });
    assert_same(&around, &scene.around("dst"), "something outside the target changed");
}

#[test]
fn restore_replaces_wrong_types_and_removes_extras() {
    let scene = Scene::new();
    let (src, dst, outside) = (scene.path("src"), scene.path("dst"), scene.path("outside"));
    fs::create_dir_all(src.join("d/sub")).unwrap();
    fs::write(src.join("d/sub/file"), b"deep").unwrap();
    fs::write(src.join("f"), b"a file").unwrap();
    fs::create_dir(src.join("was-file")).unwrap();
    fs::write(src.join("was-dir"), b"now a file").unwrap();
    fs::write(src.join("was-link"), b"now a file").unwrap();
    symlink("f", src.join("link")).unwrap();
    let before = TreeImage::read(&src);

    // The target: extras at every level, and every path of the snapshot holding the wrong type.
    fs::create_dir(&dst).unwrap();
    symlink(&outside, dst.join("d")).unwrap(); // a symlink to outside where a directory goes
    fs::create_dir_all(dst.join("was-dir/inner")).unwrap();
    fs::write(dst.join("was-dir/inner/x"), b"junk").unwrap();
    fs::write(dst.join("was-file"), b"a file where a directory goes").unwrap();
    symlink(outside.join("secret"), dst.join("was-link")).unwrap();
    fs::hard_link(outside.join("sentinel"), dst.join("f")).unwrap();
    fs::create_dir(dst.join("link")).unwrap();
    fs::create_dir_all(dst.join("extra-dir/a/b")).unwrap();
    fs::write(dst.join("extra-dir/a/b/c"), b"junk").unwrap();
    fs::write(dst.join("extra-file"), b"junk").unwrap();
    symlink("/", dst.join("extra-link")).unwrap();
    let around = scene.around("dst");

    runtime().block_on(async {
        let snapshots = memory_repo().await;
        snapshot(&snapshots, &src, None).await;
        let refused = restore(&snapshots, &dst, None).await.expect_err("a foreign non-empty target needs delete");
        assert!(matches!(refused, berth_engine::EngineError::Target(_)), "{refused:?}");
        assert_same(&around, &scene.around("dst"), "a refused restore changed the target's surroundings");
        let opts = RestoreOptions { delete: true, ..common::restore_opts(&dst, None) };
        let summary = common::restore_with(&snapshots, &opts).await.unwrap();
        assert_eq!(summary.removed, 3, "extra-dir, extra-file and extra-link: {summary:?}");
    });
    assert_same(&before, &TreeImage::read(&dst), "restore over wrong types");
    assert_same(&around, &scene.around("dst"), "something outside the target changed");
    assert!(fs::symlink_metadata(dst.join("d")).unwrap().is_dir());
    assert_ne!(fs::metadata(dst.join("f")).unwrap().ino(), fs::metadata(outside.join("sentinel")).unwrap().ino());
}

#[test]
fn touch_rereads_the_file_but_uploads_no_chunk() {
    let scene = Scene::new();
    let (src, dst, cache) = (scene.path("src"), scene.path("dst"), scene.path("cache"));
    put(&src, "touched", &noise(1, 300_000), 0o644, 1_000_000_000_000_000_000);
    put(&src, "untouched", &text(2, 5_000), 0o644, 1_000_000_000_000_000_000);
    runtime().block_on(async {
        let snapshots = memory_repo().await;
        let first = snapshot(&snapshots, &src, Some(&cache)).await;
        assert_eq!(first.files_read, 2);
        set_mtime(&src.join("touched"), 1_000_000_000_000_000_777);
        let touched = snapshot(&snapshots, &src, Some(&cache)).await;
        assert!(!touched.unchanged, "an mtime change is a new snapshot");
        assert_eq!(touched.files_read, 1, "{touched:?}");
        // One pack: the root directory's new tree object (the mtime is in it), no data.
        assert_eq!((touched.chunks_new, touched.bytes_new, touched.packs_uploaded), (0, 0, 1), "{touched:?}");
        assert!(touched.bytes_uploaded < 2_000, "{touched:?}");
        restore(&snapshots, &dst, None).await.unwrap();
    });
    assert_same(&TreeImage::read(&src), &TreeImage::read(&dst), "restore after touch");
}

#[test]
fn an_edit_in_a_large_file_uploads_little() {
    const SIZE: usize = 12 << 20;
    let scene = Scene::new();
    let (src, dst, cache) = (scene.path("src"), scene.path("dst"), scene.path("cache"));
    let big = put(&src, "big", &noise(99, SIZE), 0o644, 1_234_567_890_123_456_789);
    put(&src, "small", b"small", 0o600, 5);
    runtime().block_on(async {
        let snapshots = memory_repo().await;
        let first = snapshot(&snapshots, &src, Some(&cache)).await;
        assert!(first.chunks_new >= 4, "12 MiB should make several chunks: {first:?}");
        assert_eq!(first.bytes_new, SIZE as u64 + 5);
        restore(&snapshots, &dst, Some(&cache)).await.unwrap();
        assert_same(&TreeImage::read(&src), &TreeImage::read(&dst), "large file restore");

        let f = fs::OpenOptions::new().write(true).open(&big).unwrap();
        f.write_all_at(b"an edit right in the middle of the file", SIZE as u64 / 2).unwrap();
        drop(f);
        let edited = snapshot(&snapshots, &src, Some(&cache)).await;
        assert_eq!((edited.files_read, edited.bytes_read), (1, SIZE as u64), "{edited:?}");
        assert!(edited.bytes_new > 0 && edited.bytes_new <= 8 << 20, "{edited:?}");
        assert!(edited.chunks_new >= 1 && edited.chunks_new <= 3, "{edited:?}");
        assert!(edited.bytes_uploaded < 9 << 20, "{edited:?}");

        // Over the previous version: the kept multi-chunk file is rewritten in place.
        restore(&snapshots, &dst, Some(&cache)).await.unwrap();
    });
    assert_same(&TreeImage::read(&src), &TreeImage::read(&dst), "restore of the edited file");
}

/// The name of a test function, taken from the function itself so a rename cannot desynchronise
/// it (the last path segment of its type name).
fn function_name<F: Fn()>(_: F) -> &'static str {
    std::any::type_name::<F>().rsplit("::").next().expect("a type name")
}

/// Returns whether this process runs as root (which ignores permission bits).
fn running_as_root() -> bool {
    let probe = tempfile::tempdir().unwrap();
    fs::metadata(probe.path()).unwrap().uid() == 0
}

/// Runs one test of this binary again as `nobody` through `setpriv`, and asserts that it ran
/// exactly that one test and passed (a renamed test must not match nothing and exit 0). Fails
/// when privileges cannot be dropped: as root, the test's permission checks would mean nothing.
fn rerun_unprivileged(test: &str) {
    let tmp = tempfile::tempdir().unwrap();
    set_mode(tmp.path(), 0o777);
    // A copy, so that nobody needs no access to the build directory.
    let exe = tmp.path().join("test-binary");
    fs::copy(std::env::current_exe().expect("current exe"), &exe).expect("copying the test binary");
    set_mode(&exe, 0o755);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("TMPDIR", tmp.path())
        .env("BERTH_TEST_UNPRIVILEGED", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot drop root privileges with setpriv ({e}); install setpriv (util-linux) or run as a user")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{test} failed as an unprivileged user: {}\n{stdout}\n{stderr}", out.status);
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the unprivileged rerun did not run exactly {test}: {stdout}\n{stderr}"
    );
}

/// Gives the owner write access to every directory below `root`, so it can be removed.
fn make_removable(root: &Path) {
    for (rel, node) in TreeImage::read(root).nodes {
        if node.kind == Kind::Dir {
            set_mode(&join(root, &rel), 0o755);
        }
    }
}

/// A non-root restore over a target holding read-only files and directories replaces and
/// fills them instead of failing on EACCES (git object files are 0o444, for one).
#[test]
fn restore_over_read_only_entries() {
    if running_as_root() {
        assert!(std::env::var_os("BERTH_TEST_UNPRIVILEGED").is_none(), "setpriv left the rerun as root");
        return rerun_unprivileged(function_name(restore_over_read_only_entries));
    }
    let scene = Scene::new();
    let (src, dst) = (scene.path("src"), scene.path("dst"));
    fs::create_dir_all(src.join("ro/sub")).unwrap();
    put(&src, "frozen", b"read only", 0o444, 7);
    put(&src, "ro/f", b"read only in a read-only dir", 0o444, 8);
    put(&src, "ro/sub/g", &noise(4, 600_000), 0o400, 9);
    let seal = |src: &Path| {
        set_mode(&src.join("ro/sub"), 0o500);
        set_mtime(&src.join("ro/sub"), 10);
        set_mode(&src.join("ro"), 0o555);
        set_mtime(&src.join("ro"), 11);
    };
    seal(&src);
    let rt = runtime();
    let snapshots = rt.block_on(memory_repo());
    rt.block_on(snapshot(&snapshots, &src, None));
    rt.block_on(restore(&snapshots, &dst, None)).unwrap();
    assert_same(&TreeImage::read(&src), &TreeImage::read(&dst), "first restore");

    // The same snapshot over its own read-only restore.
    rt.block_on(restore(&snapshots, &dst, None)).expect("restoring over read-only entries");
    assert_same(&TreeImage::read(&src), &TreeImage::read(&dst), "restore over read-only entries");

    // A newer snapshot that removes and adds entries inside the read-only directories.
    make_removable(&src);
    fs::remove_file(src.join("ro/f")).unwrap();
    fs::remove_file(src.join("frozen")).unwrap();
    put(&src, "ro/sub/new", b"new", 0o444, 12);
    put(&src, "frozen", b"changed", 0o444, 13);
    seal(&src);
    rt.block_on(snapshot(&snapshots, &src, None));
    rt.block_on(restore(&snapshots, &dst, None)).expect("restoring a newer snapshot over read-only entries");
    assert_same(&TreeImage::read(&src), &TreeImage::read(&dst), "newer snapshot over read-only entries");
    make_removable(&src);
    make_removable(&dst);
}
