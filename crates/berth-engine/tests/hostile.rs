//! Restores from hostile or corrupt stores (DESIGN invariant 7): store content is crafted with
//! the core encoders and put through the `Store` port, then restored into `target/` inside a
//! temporary directory. Each case must fail with an error that names the problem, never panic,
//! and never write outside the target; `verify --read-data` must see the corrupt data too.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

use berth_core::chunker::MAX_CHUNK;
use berth_core::codec::{self, Codec, Codecs};
use berth_core::excludes::Excludes;
use berth_core::id::{ChunkId, IndexId, ManifestId, TreeId};
use berth_core::index::{IndexFile, IndexedPack};
use berth_core::layout;
use berth_core::manifest::{ChunkRef, Entry, EntryKind, Manifest, Totals};
use berth_core::pack::{BlobEntry, PackBuilder, SealedPack};
use berth_core::path::RelPath;
use berth_core::snapshot::{Contents, SnapshotRecord, RECORD_VERSION, RECORD_VERSION_MANIFEST};
use berth_core::time::Timestamp;
use berth_core::tree::{NodeKind, TreeEntry, TreeNode};
use berth_core::workspace::{Generation, WorkspaceId};
use berth_engine::beneath::{self, Root};
use berth_engine::maintain::{self, VerifyReport};
use berth_engine::restore::RestoreSummary;
use berth_engine::snapshot_store::SnapshotStore;
use berth_engine::store::{self, DynStore, Put};
use bytes::Bytes;
use common::{assert_same, chain, noise, restore_opts, restore_with, runtime, workspace, TreeImage};
use rustix::fs::OFlags;
use serde::Serialize;

/// A memory store to fill with hostile objects, and a temporary directory holding the restore
/// target next to things that must never change: `outside/` and a `neighbour` file.
struct Hostile {
    rt: tokio::runtime::Runtime,
    store: DynStore,
    snapshots: SnapshotStore,
    tmp: tempfile::TempDir,
}

impl Hostile {
    fn new() -> Hostile {
        let rt = runtime();
        let store = store::memory();
        let snapshots = rt.block_on(SnapshotStore::open_or_init(store.clone())).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        fs::write(tmp.path().join("outside/sentinel"), b"outside, do not touch").unwrap();
        fs::write(tmp.path().join("neighbour"), b"next to the target, do not touch").unwrap();
        Hostile { rt, store, snapshots, tmp }
    }

    fn target(&self) -> PathBuf {
        self.tmp.path().join("target")
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    /// Everything in the temporary directory but the target.
    fn around(&self) -> TreeImage {
        TreeImage::read_except(self.tmp.path(), &[b"target"])
    }

    fn put(&self, key: &str, bytes: Vec<u8>) {
        let put = self.rt.block_on(self.store.put_if_absent(key, Bytes::from(bytes))).unwrap();
        assert_eq!(put, Put::Created, "{key} was already stored");
    }

    /// Stores a pack and an index object that lists `blobs` as its content.
    fn put_pack(&self, pack: &SealedPack, blobs: Vec<BlobEntry>) {
        self.put(&layout::pack(&pack.id), pack.bytes.clone());
        self.put_index(IndexFile { packs: vec![IndexedPack { id: pack.id, size: pack.bytes.len() as u64, blobs }] });
    }

    fn put_index(&self, file: IndexFile) {
        let (id, bytes) = file.encode();
        self.put(&layout::index(&id), bytes);
    }

    /// Stores `data` honestly as one chunk (in its own pack and index) and returns its reference.
    fn chunk(&self, data: &[u8]) -> ChunkRef {
        let id = ChunkId::of(data);
        let mut codecs = Codecs::new();
        let mut b = PackBuilder::default();
        b.add_chunk(&mut codecs, id, data);
        let pack = b.seal(&mut codecs);
        self.put_pack(&pack, pack.entries.clone());
        ChunkRef { id, len: data.len() as u32 }
    }

    /// Stores a manifest as the encoder writes it (no validation on the way in).
    fn put_manifest(&self, manifest: &Manifest) -> ManifestId {
        let (id, bytes) = manifest.encode();
        self.put(&layout::manifest(&id), bytes);
        id
    }

    /// Stores a postcard-encoded manifest look-alike, bypassing `RelPath`.
    fn put_raw_manifest(&self, raw: &RawManifest) -> ManifestId {
        // The plain encoding is a 16-byte nonce, then the entries.
        let mut plain = vec![0u8; 16];
        plain.extend(postcard::to_allocvec(raw).unwrap());
        let id = ManifestId::of(&plain);
        self.put(&layout::manifest(&id), codec::compress_object(&plain));
        id
    }

    /// Publishes seq 1 of the test workspace pointing at `manifest`.
    fn publish(&self, manifest: ManifestId) {
        let (_, bytes) = record(workspace(), 1, manifest).encode();
        self.put(&layout::snapshot(&workspace(), Generation(1), 1), bytes);
    }

    fn restore(&self, excludes: &[&str]) -> berth_engine::Result<RestoreSummary> {
        let mut opts = restore_opts(&self.target(), None);
        // Several cases prepare the target with entries of their own.
        opts.delete = true;
        opts.excludes = Excludes::new(&excludes.iter().map(|s| s.to_string()).collect::<Vec<_>>(), false).unwrap();
        self.rt.block_on(restore_with(&self.snapshots, &opts))
    }

    /// Restores, expecting a failure: returns its text after checking that it is no panic and
    /// that nothing outside the target changed.
    #[track_caller]
    fn restore_fails(&self) -> String {
        let around = self.around();
        let result = self.restore(&[]);
        assert_same(&around, &self.around(), "a failed restore wrote outside its target");
        let err = match result {
            Ok(summary) => panic!("a hostile store restored: {summary:?}"),
            Err(e) => chain(&e),
        };
        assert!(!err.contains("panic") && !err.contains("task failed"), "the restore crashed: {err}");
        err
    }

    /// Verifies every snapshot with `--read-data`; a store too broken to list is an error too.
    fn verify(&self) -> Result<VerifyReport, String> {
        self.rt.block_on(async {
            let snapshots = self.snapshots.list(None, None).await.map_err(|e| chain(&e))?;
            maintain::verify(&self.snapshots, &snapshots, true).await.map_err(|e| chain(&e))
        })
    }

    /// Expects `verify` to report a problem mentioning `keyword`.
    #[track_caller]
    fn verify_finds(&self, keyword: &str) {
        match self.verify() {
            Ok(report) => assert!(
                report.errors.iter().any(|e| e.contains(keyword)),
                "verify --read-data missed the damage (wanted '{keyword}'): {:?}",
                report.errors
            ),
            Err(e) => assert!(e.contains(keyword), "verify failed without naming '{keyword}': {e}"),
        }
    }
}

fn record(workspace: WorkspaceId, seq: u64, manifest: ManifestId) -> SnapshotRecord {
    SnapshotRecord {
        version: RECORD_VERSION_MANIFEST,
        workspace,
        generation: Generation(1),
        seq,
        epoch: berth_core::lease::Epoch::ZERO,
        time: Timestamp(1_700_000_000_000_000_000),
        contents: Contents::Manifest(manifest),
        tree: TreeId::of(manifest.0.as_slice()),
        parent: None,
        host: "hostile".into(),
        totals: Totals::default(),
        skipped_for_budget: vec![],
    }
}

/// Seals `data` as the one raw blob of a pack; returns its chunk id and the pack.
fn raw_pack(data: &[u8]) -> (ChunkId, SealedPack) {
    let id = ChunkId::of(data);
    let mut b = PackBuilder::default();
    b.add(id, Codec::Raw, data, data.len() as u32);
    (id, b.seal(&mut Codecs::new()))
}

fn rel(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

fn dir(path: &str) -> Entry {
    Entry { path: rel(path), mode: 0o755, mtime_ns: 0, kind: EntryKind::Dir }
}

fn file(path: &str, chunks: Vec<ChunkRef>) -> Entry {
    let size = chunks.iter().map(|c| c.len as u64).sum();
    Entry { path: rel(path), mode: 0o644, mtime_ns: 0, kind: EntryKind::File { size, chunks } }
}

fn link(path: &str, target: &[u8]) -> Entry {
    Entry { path: rel(path), mode: 0o777, mtime_ns: 0, kind: EntryKind::Symlink { target: target.to_vec() } }
}

fn hard(path: &str, target: &str) -> Entry {
    Entry { path: rel(path), mode: 0o644, mtime_ns: 0, kind: EntryKind::Hardlink { target: rel(target) } }
}

/// Builds a manifest's entries, storing the chunks they need.
type Entries = Box<dyn Fn(&Hostile) -> Vec<Entry>>;

#[track_caller]
fn assert_mentions(err: &str, keywords: &[&str]) {
    for k in keywords {
        assert!(err.contains(k), "the error does not say '{k}': {err}");
    }
}

/// Byte strings serialized as postcard byte strings, like `RelPath` and symlink targets.
struct RawBytes(Vec<u8>);

impl Serialize for RawBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

/// `EntryKind` with unvalidated paths; variants in the same order, so the encoding matches.
#[derive(Serialize)]
#[allow(dead_code)] // only some variants are built, but all fix the variant indices
enum RawKind {
    Dir,
    File { size: u64, chunks: Vec<ChunkRef> },
    Symlink { target: RawBytes },
    Hardlink { target: RawBytes },
}

#[derive(Serialize)]
struct RawEntry {
    path: RawBytes,
    mode: u32,
    mtime_ns: i64,
    kind: RawKind,
}

#[derive(Serialize)]
struct RawManifest {
    entries: Vec<RawEntry>,
}

fn raw(path: &[u8], kind: RawKind) -> RawEntry {
    RawEntry { path: RawBytes(path.to_vec()), mode: 0o644, mtime_ns: 0, kind }
}

#[test]
fn manifest_paths_that_escape_the_target_are_refused() {
    let probe = Hostile::new();
    let outside_file = probe.outside().join("evil");
    let absolute = outside_file.as_os_str().as_encoded_bytes().to_vec();
    let cases: Vec<Vec<RawEntry>> = vec![
        vec![raw(b"../escape", RawKind::File { size: 0, chunks: vec![] })],
        vec![raw(b"../outside", RawKind::Dir), raw(b"../outside/evil", RawKind::File { size: 0, chunks: vec![] })],
        vec![raw(&absolute, RawKind::File { size: 0, chunks: vec![] })],
        vec![raw(b"/tmp", RawKind::Dir)],
        vec![raw(b"a", RawKind::Dir), raw(b"a/../../escape", RawKind::Symlink { target: RawBytes(b"/".to_vec()) })],
        vec![raw(b"a/./b", RawKind::Dir)],
        vec![raw(b"", RawKind::Dir)],
        vec![raw(b"nul\0byte", RawKind::Dir)],
        vec![
            raw(b"f", RawKind::File { size: 0, chunks: vec![] }),
            raw(b"h", RawKind::Hardlink { target: RawBytes(b"../outside/sentinel".to_vec()) }),
        ],
        vec![raw(b"h", RawKind::Hardlink { target: RawBytes(absolute.clone()) })],
    ];
    for entries in cases {
        let h = Hostile::new();
        let id = h.put_raw_manifest(&RawManifest { entries });
        h.publish(id);
        let err = h.restore_fails();
        assert_mentions(&err, &["manifest", "escapes the root"]);
        assert!(!h.target().exists(), "the target was touched before the manifest was checked");
        h.verify_finds("escapes the root");
    }
    assert!(!outside_file.exists());
}

#[test]
fn entries_below_a_non_directory_are_refused() {
    let cases: Vec<(Entries, &str)> = vec![
        // A symlink to outside, then a file "inside" it.
        (
            Box::new(|h| {
                let c = h.chunk(b"payload");
                vec![link("a", h.outside().as_os_str().as_encoded_bytes()), file("a/x", vec![c])]
            }),
            "not a directory",
        ),
        (
            Box::new(|h| vec![file("a", vec![h.chunk(b"payload")]), file("a/x", vec![h.chunk(b"more")])]),
            "not a directory",
        ),
        (Box::new(|_| vec![file("a/x", vec![])]), "not a directory"),
        // A directory, its file, then the same path again as a symlink to outside.
        (
            Box::new(|h| {
                vec![
                    dir("d"),
                    file("d/x", vec![h.chunk(b"payload")]),
                    link("d", h.outside().as_os_str().as_encoded_bytes()),
                ]
            }),
            "repeat",
        ),
        (Box::new(|_| vec![file("b", vec![]), file("a", vec![])]), "sorted"),
    ];
    for (entries, keyword) in cases {
        let h = Hostile::new();
        let id = h.put_manifest(&Manifest { entries: entries(&h) });
        h.publish(id);
        let err = h.restore_fails();
        assert_mentions(&err, &["manifest", keyword]);
        assert!(!h.target().exists());
        h.verify_finds(keyword);
    }
}

#[test]
fn hard_links_to_anything_but_an_earlier_file_of_the_snapshot_are_refused() {
    let cases: Vec<Entries> = vec![
        Box::new(|_| vec![hard("h", "missing")]),
        Box::new(|_| vec![dir("d"), hard("h", "d")]),
        Box::new(|h| vec![hard("h", "s"), link("s", h.outside().join("sentinel").as_os_str().as_encoded_bytes())]),
        Box::new(|h| vec![link("a", h.outside().join("sentinel").as_os_str().as_encoded_bytes()), hard("h", "a")]),
        Box::new(|h| vec![hard("a", "b"), file("b", vec![h.chunk(b"later")])]),
    ];
    for entries in cases {
        let h = Hostile::new();
        let id = h.put_manifest(&Manifest { entries: entries(&h) });
        h.publish(id);
        assert_mentions(&h.restore_fails(), &["manifest", "links to"]);
        assert!(!h.target().exists());
    }
}

#[test]
fn bad_modes_and_link_targets_are_refused() {
    let h = Hostile::new();
    let mut setuid_plus = file("f", vec![]);
    setuid_plus.mode = 0o170_755;
    let id = h.put_manifest(&Manifest { entries: vec![setuid_plus] });
    h.publish(id);
    assert_mentions(&h.restore_fails(), &["mode"]);

    for target in [&b""[..], b"a\0b", &[b'x'; 5000]] {
        let h = Hostile::new();
        let id = h.put_manifest(&Manifest { entries: vec![link("l", target)] });
        h.publish(id);
        assert_mentions(&h.restore_fails(), &["invalid link target"]);
    }
}

#[test]
fn absurd_sizes_are_refused_before_anything_is_written() {
    // A size the chunks do not add up to.
    let h = Hostile::new();
    let c = h.chunk(b"payload");
    let lie = Entry { kind: EntryKind::File { size: 1 << 50, chunks: vec![c] }, ..file("f", vec![]) };
    h.publish(h.put_manifest(&Manifest { entries: vec![lie] }));
    assert_mentions(&h.restore_fails(), &["claims", "bytes"]);
    assert!(!h.target().exists());

    // A chunk longer than any chunk berth makes.
    let h = Hostile::new();
    let huge = ChunkRef { id: ChunkId::of(b"x"), len: u32::MAX };
    h.publish(h.put_manifest(&Manifest { entries: vec![file("f", vec![huge])] }));
    assert_mentions(&h.restore_fails(), &["chunk of"]);

    // Consistent in itself (4 × 16 MiB), but the index knows the chunk as 7 bytes.
    let h = Hostile::new();
    let c = h.chunk(b"payload");
    let big = ChunkRef { id: c.id, len: MAX_CHUNK };
    h.publish(h.put_manifest(&Manifest { entries: vec![file("f", vec![big; 4])] }));
    assert_mentions(&h.restore_fails(), &["disagree", "length"]);
    assert!(!h.target().exists(), "the target was touched before every chunk was located");

    // The index agrees with the manifest (16 MiB) but the blob holds 7 bytes.
    let h = Hostile::new();
    let id = ChunkId::of(b"what the manifest promised");
    let mut b = PackBuilder::default();
    b.add(id, Codec::Raw, b"payload", MAX_CHUNK);
    let pack = b.seal(&mut Codecs::new());
    h.put_pack(&pack, pack.entries.clone());
    h.publish(h.put_manifest(&Manifest { entries: vec![file("f", vec![ChunkRef { id, len: MAX_CHUNK }; 2])] }));
    assert_mentions(&h.restore_fails(), &["instead of"]);
    h.verify_finds("instead of");
}

#[test]
fn an_index_entry_past_the_pack_end_is_refused() {
    let h = Hostile::new();
    let data = noise(1, 1000);
    let (id, pack) = raw_pack(&data);
    let past = BlobEntry::single(id, pack.bytes.len() as u32 + 100, 1000, 1000, Codec::Raw);
    h.put_pack(&pack, vec![past]);
    h.publish(h.put_manifest(&Manifest { entries: vec![file("f", vec![ChunkRef { id, len: 1000 }])] }));
    assert_mentions(&h.restore_fails(), &["past its end"]);
    h.verify_finds("past");

    // The last 1000 bytes instead: inside the object, overlapping the trailer, not the chunk.
    let h = Hostile::new();
    let skewed = BlobEntry::single(id, pack.bytes.len() as u32 - 1000, 1000, 1000, Codec::Raw);
    h.put_pack(&pack, vec![skewed]);
    h.publish(h.put_manifest(&Manifest { entries: vec![file("f", vec![ChunkRef { id, len: 1000 }])] }));
    assert_mentions(&h.restore_fails(), &["does not match its hash"]);
    h.verify_finds("does not match its hash");
}

#[test]
fn a_blob_that_does_not_match_its_hash_is_refused() {
    let promised = b"the content the manifest promised".to_vec();
    let forged = noise(5, promised.len());
    let id = ChunkId::of(&promised);
    for codec in [Codec::Raw, Codec::Zstd] {
        let h = Hostile::new();
        let mut b = PackBuilder::default();
        let stored = if codec == Codec::Zstd { zstd_frame(&forged) } else { forged.clone() };
        b.add(id, codec, &stored, forged.len() as u32);
        let pack = b.seal(&mut Codecs::new());
        h.put_pack(&pack, pack.entries.clone());
        h.publish(
            h.put_manifest(&Manifest { entries: vec![file("f", vec![ChunkRef { id, len: promised.len() as u32 }])] }),
        );
        assert_mentions(&h.restore_fails(), &["does not match its hash"]);
        let written = fs::read(h.target().join("f")).unwrap_or_default();
        assert!(written.is_empty(), "forged bytes reached the file: {written:?}");
        h.verify_finds("does not match its hash");
    }
}

#[test]
fn blobs_placed_wrongly_in_a_shared_frame_are_refused() {
    // Two small chunks of one length share a zstd frame.
    let (first, second) = (noise(20, 64).repeat(8), noise(21, 64).repeat(8));
    let (a, c) = (ChunkId::of(&first), ChunkId::of(&second));
    let mut codecs = Codecs::new();
    let mut b = PackBuilder::default();
    b.add_chunk(&mut codecs, a, &first);
    b.add_chunk(&mut codecs, c, &second);
    let pack = b.seal(&mut codecs);
    let honest = *pack.entries.iter().find(|e| e.id == a).unwrap();
    assert_eq!(pack.entries.len(), 2);
    assert!(pack.entries.iter().all(|e| e.offset == honest.offset), "the chunks should share a frame");
    let lies: Vec<(BlobEntry, &str)> = vec![
        (BlobEntry { inner: honest.frame_raw_len - 2, ..honest }, "outside its frame"),
        (BlobEntry { inner: second.len() as u32, ..honest }, "does not match its hash"),
        (BlobEntry { frame_raw_len: u32::MAX, ..honest }, "limit"),
        (BlobEntry { frame_raw_len: 10, ..honest }, "zstd"),
        (BlobEntry { codec: Codec::Raw, ..honest }, "instead of"),
    ];
    for (lie, keyword) in lies {
        let h = Hostile::new();
        h.put_pack(&pack, vec![lie]);
        h.publish(
            h.put_manifest(&Manifest { entries: vec![file("f", vec![ChunkRef { id: a, len: first.len() as u32 }])] }),
        );
        assert_mentions(&h.restore_fails(), &[keyword]);
        let written = fs::read(h.target().join("f")).unwrap_or_default();
        assert!(written.is_empty(), "bytes from a lying index reached the file");
        h.verify_finds(keyword);
    }
}

fn zstd_frame(data: &[u8]) -> Vec<u8> {
    // compress_object is plain zstd; use it to get a valid frame of arbitrary bytes.
    codec::compress_object(data)
}

#[test]
fn a_truncated_pack_is_refused() {
    let h = Hostile::new();
    let data = noise(2, 50_000);
    let (id, mut pack) = raw_pack(&data);
    let entries = pack.entries.clone();
    let full_len = pack.bytes.len() as u64;
    pack.bytes.truncate(pack.bytes.len() / 2);
    h.put(&layout::pack(&pack.id), pack.bytes.clone());
    h.put_index(IndexFile { packs: vec![IndexedPack { id: pack.id, size: full_len, blobs: entries }] });
    h.publish(h.put_manifest(&Manifest { entries: vec![file("f", vec![ChunkRef { id, len: data.len() as u32 }])] }));
    assert_mentions(&h.restore_fails(), &["past its end"]);
    h.verify_finds("the index says");
    h.verify_finds("does not match its id");
}

#[test]
fn a_missing_chunk_or_manifest_is_refused() {
    let h = Hostile::new();
    let missing = ChunkRef { id: ChunkId::of(b"never stored"), len: 12 };
    h.publish(h.put_manifest(&Manifest { entries: vec![file("f", vec![missing])] }));
    assert_mentions(&h.restore_fails(), &["not found", "damaged"]);
    assert!(!h.target().exists());
    h.verify_finds("in no index");

    let h = Hostile::new();
    h.publish(ManifestId::of(b"never stored"));
    assert_mentions(&h.restore_fails(), &["not found", "manifests/"]);
    h.verify_finds("not found");
}

impl Hostile {
    /// Stores tree objects as blobs of one pack (with its index) and publishes seq 1 of the
    /// test workspace with `root` as its tree, in the tree-object form.
    fn publish_tree(&self, objects: &[&TreeNode], root: ChunkId) {
        let mut codecs = Codecs::new();
        let mut b = PackBuilder::default();
        for node in objects {
            let (id, plain) = node.encode();
            b.add_chunk(&mut codecs, id, &plain);
        }
        let pack = b.seal(&mut codecs);
        self.put_pack(&pack, pack.entries.clone());
        let mut r = record(workspace(), 1, ManifestId::of(b"none"));
        (r.version, r.contents, r.tree) = (RECORD_VERSION, Contents::Root(root), TreeId(root.0));
        self.put(&layout::snapshot(&workspace(), Generation(1), 1), r.encode().1);
    }
}

fn tree_entry(name: &[u8], kind: NodeKind) -> TreeEntry {
    TreeEntry { name: name.to_vec(), mode: 0o644, mtime_ns: 0, kind }
}

#[test]
fn hostile_tree_objects_are_refused() {
    let sym = |t: &[u8]| NodeKind::Symlink { target: t.to_vec() };
    // Names that escape or are not one component, at the top and below.
    for evil in [&b".."[..], b"a/../../x", b"/etc", b"."] {
        let h = Hostile::new();
        let node = TreeNode { entries: vec![tree_entry(evil, sym(b"x"))], next: None };
        let (id, _) = node.encode();
        let sub = TreeNode { entries: vec![tree_entry(b"d", NodeKind::Dir { tree: id })], next: None };
        let (sub_id, _) = sub.encode();
        h.publish_tree(&[&node, &sub], sub_id);
        assert_mentions(&h.restore_fails(), &["not allowed"]);
        h.verify_finds("tree");
    }
    // A child directory the store does not have.
    let h = Hostile::new();
    let lost = NodeKind::Dir { tree: ChunkId::of(b"never stored") };
    let node = TreeNode { entries: vec![tree_entry(b"d", lost)], next: None };
    h.publish_tree(&[&node], node.encode().0);
    assert_mentions(&h.restore_fails(), &["in no index"]);
    h.verify_finds("in no index");
    // A root the store does not have, and a tree object stored under another id.
    let h = Hostile::new();
    let honest = TreeNode { entries: vec![tree_entry(b"f", sym(b"x"))], next: None };
    h.publish_tree(&[&honest], ChunkId::of(b"a different tree"));
    assert_mentions(&h.restore_fails(), &["in no index"]);
    let h = Hostile::new();
    let (_, plain) = honest.encode();
    let claimed = ChunkId::of(b"claimed");
    let mut codecs = Codecs::new();
    let mut b = PackBuilder::default();
    b.add_chunk(&mut codecs, claimed, &plain);
    let pack = b.seal(&mut codecs);
    h.put_pack(&pack, pack.entries.clone());
    let mut r = record(workspace(), 1, ManifestId::of(b"none"));
    (r.version, r.contents, r.tree) = (RECORD_VERSION, Contents::Root(claimed), TreeId(claimed.0));
    h.put(&layout::snapshot(&workspace(), Generation(1), 1), r.encode().1);
    assert_mentions(&h.restore_fails(), &["does not match"]);
    h.verify_finds("match");
    assert!(!h.target().exists());
}

/// A store written before tree objects (records of version 1, one manifest per snapshot) still
/// restores, verifies and diffs; a new snapshot on top of it is written as tree objects, and a
/// prune keeps what both forms reference.
#[test]
fn a_store_of_single_manifests_still_restores_and_takes_tree_snapshots() {
    let h = Hostile::new();
    let a = h.chunk(b"written by an older berth");
    let old = Manifest { entries: vec![dir("d"), file("d/a", vec![a]), link("l", b"d/a")] };
    h.publish(h.put_manifest(&old));
    h.restore(&[]).expect("the old snapshot restores");
    assert_eq!(fs::read(h.target().join("d/a")).unwrap(), b"written by an older berth");
    assert!(h.verify().unwrap().errors.is_empty());

    // A new snapshot of the restored tree plus one file: tree objects, parent the old record.
    fs::write(h.target().join("d/b"), b"new").unwrap();
    let summary = h.rt.block_on(common::snapshot(&h.snapshots, &h.target(), None));
    assert_eq!(summary.seq, 2);
    let snaps = h.rt.block_on(h.snapshots.list(None, None)).unwrap();
    assert!(matches!(snaps[0].record.contents, Contents::Manifest(_)));
    assert!(matches!(snaps[1].record.contents, Contents::Root(_)));
    assert_eq!(snaps[1].record.version, RECORD_VERSION);
    let changes = h.rt.block_on(maintain::diff(&h.snapshots, &snaps[0], &snaps[1])).unwrap();
    assert_eq!(changes.len(), 1, "d/b added: {changes:?}");
    let report = h.verify().unwrap();
    assert!(report.errors.is_empty() && report.snapshots == 2, "{report:?}");
    let prune = h.rt.block_on(maintain::prune_plan(&h.snapshots, 0)).unwrap();
    assert!(prune.plan.new_mark.is_none(), "nothing is garbage: {:?}", prune.plan);
}

#[test]
fn random_bytes_as_a_manifest_are_refused() {
    // Not even zstd.
    let h = Hostile::new();
    let junk = noise(3, 4096);
    let id = ManifestId::of(&junk);
    h.put(&layout::manifest(&id), junk);
    h.publish(id);
    assert_mentions(&h.restore_fails(), &["manifest", "corrupt", "zstd"]);
    h.verify_finds("corrupt");

    // Valid zstd of random bytes under its right id: postcard must refuse it.
    let h = Hostile::new();
    let plain = noise(4, 4096);
    let id = ManifestId::of(&plain);
    h.put(&layout::manifest(&id), codec::compress_object(&plain));
    h.publish(id);
    assert_mentions(&h.restore_fails(), &["manifest", "corrupt"]);
    h.verify_finds("corrupt");
}

#[test]
fn a_manifest_under_another_id_is_refused() {
    let h = Hostile::new();
    let honest = Manifest { entries: vec![file("f", vec![h.chunk(b"honest")])] };
    let (_, bytes) = honest.encode();
    let claimed = ManifestId::of(b"a different manifest");
    h.put(&layout::manifest(&claimed), bytes);
    h.publish(claimed);
    assert_mentions(&h.restore_fails(), &["manifest", "does not match its id"]);
    h.verify_finds("does not match its id");
}

#[test]
fn random_bytes_as_a_pack_are_refused() {
    let h = Hostile::new();
    let data = noise(6, 100);
    let (id, pack) = raw_pack(&data);
    h.put(&layout::pack(&pack.id), noise(7, pack.bytes.len()));
    h.put_index(IndexFile {
        packs: vec![IndexedPack { id: pack.id, size: pack.bytes.len() as u64, blobs: pack.entries }],
    });
    h.publish(h.put_manifest(&Manifest { entries: vec![file("f", vec![ChunkRef { id, len: 100 }])] }));
    assert_mentions(&h.restore_fails(), &["does not match its hash"]);
    h.verify_finds("does not match its id");
}

#[test]
fn random_bytes_as_an_index_are_refused() {
    // Under its own digest, so only decoding can catch it.
    let h = Hostile::new();
    h.publish(h.put_manifest(&Manifest { entries: vec![file("f", vec![h.chunk(b"fine")])] }));
    let junk = noise(8, 2048);
    h.put(&layout::index(&IndexId::of(&junk)), junk);
    assert_mentions(&h.restore_fails(), &["index", "corrupt"]);
    h.verify_finds("index");

    // Under another id.
    let h = Hostile::new();
    h.publish(h.put_manifest(&Manifest { entries: vec![file("f", vec![h.chunk(b"fine")])] }));
    h.put(&layout::index(&IndexId::of(b"other")), noise(9, 2048));
    assert_mentions(&h.restore_fails(), &["index", "does not match its id"]);

    // Valid zstd, not an index.
    let h = Hostile::new();
    h.publish(h.put_manifest(&Manifest { entries: vec![file("f", vec![h.chunk(b"fine")])] }));
    let stored = codec::compress_object(&noise(10, 2048));
    h.put(&layout::index(&IndexId::of(&stored)), stored);
    assert_mentions(&h.restore_fails(), &["index", "corrupt"]);

    // A key that is no index id at all.
    let h = Hostile::new();
    h.publish(h.put_manifest(&Manifest { entries: vec![file("f", vec![h.chunk(b"fine")])] }));
    h.put("index/not-an-id", b"{}".to_vec());
    assert_mentions(&h.restore_fails(), &["not an index key"]);
}

#[test]
fn random_bytes_as_a_snapshot_record_are_refused() {
    for junk in [noise(11, 300), b"{}".to_vec(), b"[1,2,3]".to_vec(), vec![0xff; 10]] {
        let h = Hostile::new();
        h.put(&layout::snapshot(&workspace(), Generation(1), 1), junk);
        assert_mentions(&h.restore_fails(), &["snapshot record", "corrupt"]);
        h.verify_finds("snapshot record");
    }
    // A record from a newer berth.
    let h = Hostile::new();
    let mut newer = record(workspace(), 1, ManifestId::of(b"m"));
    newer.version = 99;
    h.put(&layout::snapshot(&workspace(), Generation(1), 1), newer.encode().1);
    assert_mentions(&h.restore_fails(), &["format version 99"]);
}

#[test]
fn a_record_naming_another_key_is_refused() {
    let other = WorkspaceId::new("agent:other").unwrap();
    for r in [record(workspace(), 7, ManifestId::of(b"m")), record(other, 1, ManifestId::of(b"m"))] {
        let h = Hostile::new();
        h.put(&layout::snapshot(&workspace(), Generation(1), 1), r.encode().1);
        assert_mentions(&h.restore_fails(), &["names another key"]);
        h.verify_finds("names another key");
    }
}

#[test]
fn random_bytes_as_the_config_are_refused() {
    let rt = runtime();
    for junk in [
        noise(12, 100),
        b"{\"version\": 2}".to_vec(),
        b"{\"version\":1,\"chunker\":{\"min\":1,\"avg\":1,\"max\":1}}".to_vec(),
    ] {
        let store = store::memory();
        rt.block_on(store.put_if_absent(layout::CONFIG, Bytes::from(junk))).unwrap();
        let err = chain(&rt.block_on(SnapshotStore::open(store.clone())).unwrap_err());
        assert_mentions(&err, &["store config"]);
        // Never "repaired" by initialising over it.
        let err = chain(&rt.block_on(SnapshotStore::open_or_init(store)).unwrap_err());
        assert_mentions(&err, &["store config"]);
    }
}

#[test]
fn a_symlink_in_the_target_is_replaced_not_followed() {
    let h = Hostile::new();
    fs::create_dir_all(h.target().join("real")).unwrap();
    symlink(h.outside(), h.target().join("d")).unwrap();
    symlink("../../outside", h.target().join("real/e")).unwrap();
    symlink(h.outside().join("sentinel"), h.target().join("f")).unwrap();
    let entries = vec![
        dir("d"),
        file("d/x", vec![h.chunk(b"into d")]),
        file("f", vec![h.chunk(b"into f")]),
        dir("real"),
        dir("real/e"),
        file("real/e/y", vec![h.chunk(b"into e")]),
    ];
    h.publish(h.put_manifest(&Manifest { entries }));
    let around = h.around();
    h.restore(&[]).unwrap();
    assert_same(&around, &h.around(), "the restore wrote through a symlink");
    for (rel, content) in [("d/x", &b"into d"[..]), ("f", b"into f"), ("real/e/y", b"into e")] {
        assert_eq!(fs::read(h.target().join(rel)).unwrap(), content);
    }
    assert!(fs::symlink_metadata(h.target().join("d")).unwrap().is_dir());
    assert!(fs::symlink_metadata(h.target().join("real/e")).unwrap().is_dir());
}

#[test]
fn an_excluded_symlink_in_the_target_is_refused_not_followed() {
    let h = Hostile::new();
    fs::create_dir(h.target()).unwrap();
    symlink(h.outside(), h.target().join("d")).unwrap();
    h.publish(h.put_manifest(&Manifest { entries: vec![dir("d"), file("d/x", vec![h.chunk(b"into d")])] }));
    let around = h.around();
    let err = chain(&h.restore(&["d"]).unwrap_err());
    assert_same(&around, &h.around(), "the restore wrote through an excluded symlink");
    assert_mentions(&err, &["refusing to restore d", "symlink"]);
    assert!(fs::symlink_metadata(h.target().join("d")).unwrap().is_symlink(), "an excluded path was removed");
}

/// A root with `link -> outside` (absolute), `rel -> ../outside`, a real directory and a file.
fn beneath_scene() -> (tempfile::TempDir, PathBuf, PathBuf, Root) {
    let tmp = tempfile::tempdir().unwrap();
    let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
    fs::create_dir_all(root.join("real/deeper")).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("sentinel"), b"outside").unwrap();
    fs::write(root.join("file"), b"inside").unwrap();
    symlink(&outside, root.join("link")).unwrap();
    symlink("../outside", root.join("rel")).unwrap();
    symlink(&outside, root.join("real/deeper/link")).unwrap();
    let r = Root::open(&root).unwrap();
    (tmp, root, outside, r)
}

#[track_caller]
fn refused<T: std::fmt::Debug>(what: &str, result: std::io::Result<T>) {
    match result {
        Ok(v) => panic!("{what} went through a symlink or out of the root: {v:?}"),
        Err(e) => assert!(
            beneath::is_link_refusal(&e) || e.kind() == std::io::ErrorKind::InvalidInput,
            "{what} failed, but not as a refusal: {e}"
        ),
    }
}

#[test]
fn beneath_never_goes_through_a_symlink_or_out_of_the_root() {
    let (tmp, root, outside, r) = beneath_scene();
    let before = TreeImage::read(&outside);
    let create = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC;
    for via in ["link", "rel", "real/deeper/link"] {
        let p = |name: &str| format!("{via}/{name}").into_bytes();
        refused("open to create", r.open_at(&p("new"), create, 0o644));
        refused("open to read", r.open_at(&p("sentinel"), OFlags::RDONLY, 0));
        refused("open to truncate", r.open_at(&p("sentinel"), create, 0o644));
        refused("mkdir", r.mkdir(&p("dir"), 0o755));
        refused("symlink", r.symlink(b"/", &p("s"), 0));
        refused("hard link into", r.hard_link(b"file", &p("h")));
        refused("hard link from", r.hard_link(&p("sentinel"), b"h"));
        refused("remove", r.remove(&p("sentinel")));
        // The link itself is the last component: never opened, never a directory.
        refused("open the link", r.open_at(via.as_bytes(), OFlags::RDONLY, 0));
        refused("mkdir over the link", r.mkdir(via.as_bytes(), 0o755));
    }
    refused("dot-dot", r.open_at(b"../outside/sentinel", OFlags::RDONLY, 0));
    refused("dot-dot create", r.open_at(b"real/../../outside/new", create, 0o644));
    refused("absolute", r.open_at(outside.join("sentinel").as_os_str().as_encoded_bytes(), OFlags::RDONLY, 0));
    refused("absolute mkdir", r.mkdir(outside.join("dir").as_os_str().as_encoded_bytes(), 0o755));
    assert!(!root.join("h").exists());
    // Removing a link removes the link, not what it points to.
    r.remove(b"link").unwrap();
    r.remove(b"real").unwrap();
    let link = fs::symlink_metadata(root.join("link")).map(|_| ()).map_err(|e| e.kind());
    assert_eq!(link, Err(std::io::ErrorKind::NotFound), "the link is gone");
    assert!(root.join("real").symlink_metadata().is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound));
    assert_same(&before, &TreeImage::read(&outside), "beneath touched the outside directory");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2, "something appeared next to the root");
}

#[test]
fn beneath_refuses_a_directory_swapped_for_a_symlink() {
    let (_tmp, root, outside, r) = beneath_scene();
    let before = TreeImage::read(&outside);
    let create = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC;
    r.mkdir(b"work", 0o755).unwrap();
    r.mkdir(b"work/sub", 0o755).unwrap();
    drop(r.open_at(b"work/sub/a", create, 0o644).unwrap());
    // What an attacker racing the restore would do: the directory becomes a symlink.
    fs::rename(root.join("work"), root.join("work.old")).unwrap();
    symlink(&outside, root.join("work")).unwrap();
    refused("open after the swap", r.open_at(b"work/sub/b", create, 0o644));
    refused("open after the swap", r.open_at(b"work/b", create, 0o644));
    refused("mkdir after the swap", r.mkdir(b"work/sub", 0o755));
    refused("symlink after the swap", r.symlink(b"x", b"work/l", 0));
    refused("remove after the swap", r.remove(b"work/sentinel"));
    // One level down too.
    fs::rename(root.join("work.old/sub"), root.join("work.old/sub.old")).unwrap();
    symlink(&outside, root.join("work.old/sub")).unwrap();
    refused("open below a swapped subdirectory", r.open_at(b"work.old/sub/c", create, 0o644));
    assert_same(&before, &TreeImage::read(&outside), "a swapped-in symlink redirected a write");
    assert!(root.join("work.old/sub.old/a").exists());
}
