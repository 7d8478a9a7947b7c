//! Tree objects: a snapshot's tree stored as one content-addressed object per directory (its
//! entries, with each child directory referenced by the id of its own object), so a directory
//! that did not change between two snapshots is referenced again, not written again.
//!
//! A tree object is stored like a data chunk: as a blob in a pack, found through the index, its
//! id the BLAKE3 digest of its encoding (`TREE_MAGIC | postcard(TreeNode)`), checked when it is
//! read. The root's id names the whole tree (equal trees have equal roots). A directory whose
//! encoding would exceed `MAX_PART` bytes is stored as several parts, each naming the next.
//!
//! **Invariant:** a tree read back is validated as a whole (`flatten` builds the `Manifest`
//! and runs its checks), so a hostile store cannot smuggle anything past what a single-manifest
//! snapshot is checked for; shared subtrees cannot inflate it past `MAX_ENTRIES`.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use serde::{Deserialize, Serialize};

use crate::id::ChunkId;
use crate::manifest::{ChunkRef, Entry, EntryKind, Manifest};
use crate::path::{serde_bytes_vec, RelPath};
use crate::FormatError;

/// The first bytes of every encoded tree object.
pub const TREE_MAGIC: &[u8; 8] = b"berthtr1";
/// A directory's object is split into parts of about this many bytes at most.
pub const MAX_PART: usize = 1024 * 1024;
/// Most entries a tree may hold once flattened.
pub const MAX_ENTRIES: usize = 1 << 25;

/// What a tree entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A directory, and the object listing it.
    Dir {
        /// The directory's tree object.
        tree: ChunkId,
    },
    /// A regular file and its content.
    File {
        /// Size in bytes: the sum of its chunk lengths.
        size: u64,
        /// The content, in order.
        chunks: Vec<ChunkRef>,
    },
    /// A symbolic link, never followed.
    Symlink {
        /// The link target, as raw bytes.
        #[serde(with = "bytes")]
        target: Vec<u8>,
    },
    /// A hard link to a regular file that comes earlier in path order.
    Hardlink {
        /// The first path of the linked file, from the root.
        target: RelPath,
    },
}

/// One name in a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// The name (one path component).
    #[serde(with = "bytes")]
    pub name: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// What it is.
    pub kind: NodeKind,
}

/// One directory's object (or one part of it): entries sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeNode {
    /// Entries, strictly sorted by name bytes.
    pub entries: Vec<TreeEntry>,
    /// The next part of the same directory, for a directory too large for one object.
    pub next: Option<ChunkId>,
}

mod bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        super::serde_bytes_vec(d)
    }
}

impl TreeNode {
    /// Encodes the object; returns its id and its bytes (stored as a blob, compressed by the pack).
    pub fn encode(&self) -> (ChunkId, Vec<u8>) {
        let mut plain = TREE_MAGIC.to_vec();
        // Serializing plain structs into a Vec cannot fail.
        plain.extend(postcard::to_allocvec(self).unwrap_or_default());
        (ChunkId::of(&plain), plain)
    }

    /// Decodes a tree object read as a blob, checking it against its id.
    pub fn decode(id: &ChunkId, plain: &[u8]) -> Result<Self, FormatError> {
        if ChunkId::of(plain) != *id {
            return Err(FormatError::new(format!("tree object {}", id.short()), "content does not match its id"));
        }
        Self::decode_checked(id, plain)
    }

    /// Decodes a tree object whose bytes the caller has already checked against `id` (a blob
    /// read out of a pack is, by `codec::extract`): the same as [`TreeNode::decode`] without
    /// hashing them a second time.
    pub fn decode_checked(id: &ChunkId, plain: &[u8]) -> Result<Self, FormatError> {
        let what = || format!("tree object {}", id.short());
        let Some(body) = plain.strip_prefix(TREE_MAGIC) else {
            return Err(FormatError::new(what(), "not a tree object"));
        };
        postcard::from_bytes(body).map_err(|e| FormatError::new(what(), format!("cannot be decoded: {e}")))
    }

    /// Returns the objects this one references: child directories and the next part.
    pub fn children(&self) -> impl Iterator<Item = &ChunkId> {
        self.entries
            .iter()
            .filter_map(|e| match &e.kind {
                NodeKind::Dir { tree } => Some(tree),
                _ => None,
            })
            .chain(self.next.as_ref())
    }

    /// Returns the chunks of the files this object lists.
    pub fn chunk_ids(&self) -> impl Iterator<Item = &ChunkId> {
        self.entries
            .iter()
            .flat_map(|e| match &e.kind {
                NodeKind::File { chunks, .. } => chunks.as_slice(),
                _ => &[],
            })
            .map(|c| &c.id)
    }
}

/// The object of each directory of a tree (its first part), by path.
pub type DirIds = HashMap<RelPath, ChunkId>;

/// A manifest turned into tree objects.
#[derive(Debug)]
pub struct Trees {
    /// The root directory's object.
    pub root: ChunkId,
    /// Every object built, each once, children before their parents: the whole tree's from
    /// `build`, the re-encoded directories' from `rebuild`.
    pub objects: Vec<(ChunkId, Vec<u8>)>,
    /// The object of every directory of the tree.
    pub dirs: DirIds,
}

/// Builds the tree objects of a valid manifest (sorted, parents listed before children).
pub fn build(manifest: &Manifest) -> Trees {
    // Children of each directory, in name order (the manifest's order among siblings).
    let mut children: HashMap<Option<&RelPath>, Vec<usize>> = HashMap::new();
    let parents: Vec<Option<RelPath>> = manifest.entries.iter().map(|e| e.path.parent()).collect();
    for (i, parent) in parents.iter().enumerate() {
        children.entry(parent.as_ref()).or_default().push(i);
    }
    // Deepest directories first, so every child's id is known before its parent is encoded.
    let mut dirs: Vec<usize> =
        (0..manifest.entries.len()).filter(|i| matches!(manifest.entries[*i].kind, EntryKind::Dir)).collect();
    dirs.sort_by_key(|i| std::cmp::Reverse(manifest.entries[*i].path.depth()));
    let mut ids: HashMap<&RelPath, ChunkId> = HashMap::new();
    let mut out = Trees { root: ChunkId([0; 32]), objects: Vec::new(), dirs: DirIds::new() };
    let mut seen = HashSet::new();
    let mut node_of = |dir: Option<&RelPath>, ids: &HashMap<&RelPath, ChunkId>, out: &mut Trees| {
        let entries = children.get(&dir).map(Vec::as_slice).unwrap_or_default();
        let entries = entries.iter().map(|i| tree_entry(&manifest.entries[*i], |p| ids.get(p).copied())).collect();
        encode_parts(entries, out, &mut seen)
    };
    for i in dirs {
        let path = &manifest.entries[i].path;
        let id = node_of(Some(path), &ids, &mut out);
        ids.insert(path, id);
    }
    out.root = node_of(None, &ids, &mut out);
    out.dirs = ids.into_iter().map(|(p, id)| (p.clone(), id)).collect();
    out
}

/// Builds the tree objects of `manifest` from those of an earlier tree, re-encoding only the
/// directories on the way from a `changed` path up to the root; every other directory keeps
/// its object from `dirs` (the earlier tree's, as `build` or `rebuild` returned them).
///
/// `changed` names every path whose entry differs from the earlier tree's manifest (added,
/// removed or modified); the root is the same as `build(manifest)`'s whenever it does.
pub fn rebuild(manifest: &Manifest, mut dirs: DirIds, changed: &[RelPath]) -> Trees {
    let entries = &manifest.entries;
    let is_dir = |p: &RelPath| {
        entries.binary_search_by(|e| e.path.cmp(p)).is_ok_and(|i| matches!(entries[i].kind, EntryKind::Dir))
    };
    let mut dirty: HashSet<RelPath> = HashSet::new();
    for path in changed {
        if is_dir(path) {
            dirty.insert(path.clone());
        } else {
            dirs.remove(path);
        }
        // Every ancestor of a dirty directory is dirty: stop at the first one already known.
        let mut up = path.parent();
        while let Some(dir) = up {
            up = dir.parent();
            if !dirty.insert(dir) {
                break;
            }
        }
    }
    // A removed directory's parent may be gone too; deepest first, so children come first.
    let mut order: Vec<RelPath> = dirty.into_iter().filter(|d| is_dir(d)).collect();
    order.sort_by(|a, b| b.depth().cmp(&a.depth()).then_with(|| a.cmp(b)));
    let mut out = Trees { root: ChunkId([0; 32]), objects: Vec::new(), dirs: DirIds::new() };
    let mut seen = HashSet::new();
    for dir in order {
        let listed = children_of(entries, Some(&dir));
        let node = listed.iter().map(|i| tree_entry(&entries[*i], |p| dirs.get(p).copied())).collect();
        let id = encode_parts(node, &mut out, &mut seen);
        dirs.insert(dir, id);
    }
    let listed = children_of(entries, None);
    let node = listed.iter().map(|i| tree_entry(&entries[*i], |p| dirs.get(p).copied())).collect();
    out.root = encode_parts(node, &mut out, &mut seen);
    out.dirs = dirs;
    out
}

/// Returns the positions of the entries directly inside `dir` (`None`: the root) in a sorted
/// manifest, jumping over the contents of subdirectories.
fn children_of(entries: &[Entry], dir: Option<&RelPath>) -> Vec<usize> {
    let prefix: Vec<u8> = dir.map(|d| [d.as_bytes(), b"/"].concat()).unwrap_or_default();
    let mut i = entries.partition_point(|e| e.path.as_bytes() < prefix.as_slice());
    let mut out = Vec::new();
    while let Some(e) = entries.get(i) {
        let Some(rest) = e.path.as_bytes().strip_prefix(prefix.as_slice()) else { break };
        match rest.iter().position(|b| *b == b'/') {
            None => {
                out.push(i);
                i += 1;
            }
            Some(k) => {
                // Below the child `rest[..k]`: its contents sort between "child/" and "child0".
                let end = [&prefix[..], &rest[..k], b"0"].concat();
                i += entries[i..].partition_point(|e| e.path.as_bytes() < end.as_slice());
            }
        }
    }
    out
}

fn tree_entry(e: &Entry, id_of: impl Fn(&RelPath) -> Option<ChunkId>) -> TreeEntry {
    let kind = match &e.kind {
        // Directories are encoded deepest first, so the child's id is there.
        EntryKind::Dir => NodeKind::Dir { tree: id_of(&e.path).unwrap_or(ChunkId([0; 32])) },
        EntryKind::File { size, chunks } => NodeKind::File { size: *size, chunks: chunks.clone() },
        EntryKind::Symlink { target } => NodeKind::Symlink { target: target.clone() },
        EntryKind::Hardlink { target } => NodeKind::Hardlink { target: target.clone() },
    };
    TreeEntry { name: e.path.file_name().to_vec(), mode: e.mode, mtime_ns: e.mtime_ns, kind }
}

/// Encodes one directory, split into parts when large; returns the id of its first part.
fn encode_parts(entries: Vec<TreeEntry>, out: &mut Trees, seen: &mut HashSet<ChunkId>) -> ChunkId {
    let mut push = |node: TreeNode, out: &mut Trees| {
        let (id, plain) = node.encode();
        if seen.insert(id) {
            out.objects.push((id, plain));
        }
        id
    };
    let whole = TreeNode { entries, next: None };
    if whole.encode().1.len() <= MAX_PART {
        return push(whole, out);
    }
    // Parts of at most MAX_PART bytes (at least one entry each), written last part first.
    let mut parts: Vec<Vec<TreeEntry>> = vec![Vec::new()];
    let mut bytes = 0;
    for e in whole.entries {
        let n = postcard::to_allocvec(&e).map_or(0, |v| v.len());
        if bytes + n > MAX_PART && parts.last().is_some_and(|p| !p.is_empty()) {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += n;
        if let Some(part) = parts.last_mut() {
            part.push(e);
        }
    }
    let mut next = None;
    for entries in parts.into_iter().rev() {
        next = Some(push(TreeNode { entries, next }, out));
    }
    next.unwrap_or(ChunkId([0; 32]))
}

/// Rebuilds the manifest of the tree under `root` from its objects (`nodes`, every object
/// reachable from `root`), and validates it as a manifest is validated.
///
/// Entries come out in path order as they are listed, with no sort: a directory's contents
/// sort as `name/`, so they follow the siblings that extend its name with a byte below '/'
/// (`name-x`, `name.x`) and precede the rest (`name0`).
pub fn flatten<S: BuildHasher>(root: &ChunkId, nodes: &HashMap<ChunkId, TreeNode, S>) -> Result<Manifest, FormatError> {
    let what = format!("tree {}", root.short());
    let fail = |reason: String| FormatError::new(&what, reason);
    // As many entries as the objects hold, at most (fewer when some are another tree's).
    let mut manifest = Manifest { entries: Vec::with_capacity(nodes.values().map(|n| n.entries.len()).sum()) };
    let mut stack = vec![Listing::open(None, root, nodes).map_err(fail)?];
    while let Some(top) = stack.last_mut() {
        let Some(&(i, contents)) = top.order.get(top.next) else {
            stack.pop();
            continue;
        };
        top.next += 1;
        let e = top.entries[i];
        let path = RelPath::child(top.dir.as_ref(), &e.name).map_err(|err| fail(err.to_string()))?;
        if contents {
            if let NodeKind::Dir { tree } = &e.kind {
                let listing = Listing::open(Some(path), tree, nodes).map_err(fail)?;
                stack.push(listing);
            }
            continue;
        }
        let kind = match &e.kind {
            NodeKind::Dir { .. } => EntryKind::Dir,
            NodeKind::File { size, chunks } => EntryKind::File { size: *size, chunks: chunks.clone() },
            NodeKind::Symlink { target } => EntryKind::Symlink { target: target.clone() },
            NodeKind::Hardlink { target } => EntryKind::Hardlink { target: target.clone() },
        };
        manifest.entries.push(Entry { path, mode: e.mode, mtime_ns: e.mtime_ns, kind });
        if manifest.entries.len() > MAX_ENTRIES {
            return Err(fail(format!("holds more than {MAX_ENTRIES} entries")));
        }
    }
    // `nodes` may hold other trees too (verify reads every snapshot's at once): give back
    // what the estimate reserved beyond this tree.
    if manifest.entries.capacity() > 2 * manifest.entries.len() {
        manifest.entries.shrink_to_fit();
    }
    // The order is checked here with everything else a restore relies on.
    manifest.validate().map_err(fail)?;
    Ok(manifest)
}

/// The entries of the directory whose first object is `first`, every part's, checked to be in
/// strict name order.
pub fn listing<'a, S: BuildHasher>(
    first: &ChunkId,
    nodes: &'a HashMap<ChunkId, TreeNode, S>,
) -> Result<Vec<&'a TreeEntry>, String> {
    let mut entries: Vec<&TreeEntry> = Vec::new();
    let mut id = first;
    loop {
        let node = nodes.get(id).ok_or_else(|| format!("tree object {} is missing", id.short()))?;
        for e in &node.entries {
            if entries.last().is_some_and(|p| p.name >= e.name) {
                return Err(format!("names are not sorted or repeat in tree object {}", id.short()));
            }
            entries.push(e);
        }
        match &node.next {
            Some(next) => id = next,
            None => return Ok(entries),
        }
    }
}

/// One directory `flatten` is listing: its entries (every part's) and the order in which they
/// and their directories' contents come in path order.
struct Listing<'a> {
    dir: Option<RelPath>,
    entries: Vec<&'a TreeEntry>,
    /// Indexes into `entries`; `(i, true)` stands for the contents of directory `i`.
    order: Vec<(usize, bool)>,
    next: usize,
}

impl<'a> Listing<'a> {
    fn open<S: BuildHasher>(
        dir: Option<RelPath>,
        first: &ChunkId,
        nodes: &'a HashMap<ChunkId, TreeNode, S>,
    ) -> Result<Self, String> {
        let entries = listing(first, nodes)?;
        let mut order: Vec<(usize, bool)> = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            order.push((i, false));
            if matches!(e.kind, NodeKind::Dir { .. }) {
                order.push((i, true));
            }
        }
        // Names are sorted: only the contents need moving, past the names that extend theirs
        // with a byte below '/' (a stable sort of nearly sorted keys).
        let key = |&(i, contents): &(usize, bool)| entries[i].name.iter().chain(contents.then_some(&b'/'));
        order.sort_by(|a, b| key(a).cmp(key(b)));
        Ok(Self { dir, entries, order, next: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry { path: p(path), mode: 0o644, mtime_ns: 7, kind }
    }

    fn file(path: &str, data: &[u8]) -> Entry {
        let chunks = vec![ChunkRef { id: ChunkId::of(data), len: data.len() as u32 }];
        entry(path, EntryKind::File { size: data.len() as u64, chunks })
    }

    fn nodes(trees: &Trees) -> HashMap<ChunkId, TreeNode> {
        trees.objects.iter().map(|(id, plain)| (*id, TreeNode::decode(id, plain).unwrap())).collect()
    }

    fn sample() -> Manifest {
        let mut m = Manifest {
            entries: vec![
                entry("a", EntryKind::Dir),
                file("a/x", b"x"),
                entry("a/b", EntryKind::Dir),
                file("a/b/y", b"y"),
                file("a.txt", b"top"),
                entry("e", EntryKind::Dir),
                entry("l", EntryKind::Symlink { target: b"a/x".to_vec() }),
                entry("h", EntryKind::Hardlink { target: p("a.txt") }),
                entry("same1", EntryKind::Dir),
                file("same1/f", b"s"),
                entry("same2", EntryKind::Dir),
                file("same2/f", b"s"),
            ],
        };
        m.sort();
        m.validate().unwrap();
        m
    }

    #[test]
    fn contents_follow_names_that_extend_their_directory_below_slash() {
        let mut m = Manifest {
            entries: vec![
                entry("a", EntryKind::Dir),
                file("a/1", b"1"),
                entry("a-b", EntryKind::Dir),
                entry("a-b/c", EntryKind::Dir),
                file("a-b/c/3", b"3"),
                entry("a-b/c-d", EntryKind::Dir),
                file("a-b/c-d/2", b"2"),
                file("a-b/c.e", b"e"),
                file("a!", b"!"),
                file("a.x", b"x"),
                entry("a0", EntryKind::Dir),
                file("a0/4", b"4"),
                entry("a-", EntryKind::Dir),
                entry("a-/a", EntryKind::Dir),
            ],
        };
        m.sort();
        m.validate().unwrap();
        let trees = build(&m);
        assert_eq!(flatten(&trees.root, &nodes(&trees)).unwrap(), m);
    }

    #[test]
    fn round_trip_and_sharing() {
        let m = sample();
        let trees = build(&m);
        assert_eq!(flatten(&trees.root, &nodes(&trees)).unwrap(), m);
        // Root, a, a/b, e (empty), and one object for the two equal directories.
        assert_eq!(trees.objects.len(), 5);
        assert_eq!(trees.objects.last().unwrap().0, trees.root, "the root comes last");

        // A change deep down changes only the objects on its path.
        let mut changed = m.clone();
        let at = changed.entries.iter().position(|e| e.path == p("a/b/y")).unwrap();
        changed.entries[at] = file("a/b/y", b"yy");
        let after = build(&changed);
        let before: HashSet<ChunkId> = trees.objects.iter().map(|o| o.0).collect();
        let new: Vec<_> = after.objects.iter().filter(|o| !before.contains(&o.0)).collect();
        assert_eq!(new.len(), 3, "a/b, a and the root");
        assert_eq!(build(&Manifest::default()).objects.len(), 1, "an empty tree is one empty root");
    }

    #[test]
    fn large_directories_are_split_into_parts() {
        let mut m = Manifest { entries: vec![entry("big", EntryKind::Dir)] };
        for i in 0..40_000 {
            m.entries.push(file(&format!("big/file-{i:06}-with-a-long-name"), format!("{i}").as_bytes()));
        }
        m.sort();
        let trees = build(&m);
        assert!(trees.objects.len() > 3, "{} objects", trees.objects.len());
        assert!(trees.objects.iter().all(|(_, plain)| plain.len() <= MAX_PART + 1024));
        assert_eq!(flatten(&trees.root, &nodes(&trees)).unwrap(), m);
    }

    #[test]
    fn hostile_trees_are_rejected() {
        let trees = build(&sample());
        let (id, plain) = &trees.objects[0];
        assert!(TreeNode::decode(&ChunkId::of(b"other"), plain).unwrap_err().reason.contains("match"));
        assert!(TreeNode::decode(&ChunkId::of(b"xx"), b"xx").is_err());
        assert!(TreeNode::decode(id, plain).is_ok());

        let check = |node: TreeNode| {
            let (id, _) = node.encode();
            flatten(&id, &HashMap::from([(id, node)])).unwrap_err().reason
        };
        let e = |name: &[u8], kind: NodeKind| TreeEntry { name: name.to_vec(), mode: 0o644, mtime_ns: 0, kind };
        let sym = |t: &[u8]| NodeKind::Symlink { target: t.to_vec() };
        for evil in [&b".."[..], b"a/b", b"", b"."] {
            let reason = check(TreeNode { entries: vec![e(evil, sym(b"x"))], next: None });
            assert!(reason.contains("not allowed") || reason.contains("'/'"), "{reason}");
        }
        let reason = check(TreeNode { entries: vec![e(b"b", sym(b"x")), e(b"a", sym(b"x"))], next: None });
        assert!(reason.contains("sorted"), "{reason}");
        let reason =
            check(TreeNode { entries: vec![e(b"d", NodeKind::Dir { tree: ChunkId::of(b"gone") })], next: None });
        assert!(reason.contains("missing"), "{reason}");
        let link = NodeKind::Hardlink { target: p("nothing") };
        assert!(check(TreeNode { entries: vec![e(b"h", link)], next: None }).contains("links to"));

        // A directory shared 2^k times cannot inflate past the entry limit unnoticed: the
        // tree is flattened (and counted), never trusted by its size on the store.
        let leaf = TreeNode { entries: vec![e(b"f", sym(b"x"))], next: None };
        let (mut id, _) = leaf.encode();
        let mut all = HashMap::from([(id, leaf)]);
        for _ in 0..4 {
            let node = TreeNode {
                entries: vec![e(b"a", NodeKind::Dir { tree: id }), e(b"b", NodeKind::Dir { tree: id })],
                next: None,
            };
            id = node.encode().0;
            all.insert(id, node);
        }
        assert_eq!(flatten(&id, &all).unwrap().entries.len(), (2 + 4 + 8 + 16) + 16);
    }

    /// A valid manifest from path specs: `(path, is_dir, content)`; every ancestor becomes a
    /// directory, and a path that is also an ancestor stays a directory.
    fn manifest_of(specs: &[(String, bool, u8)]) -> Manifest {
        let mut by_path: std::collections::BTreeMap<String, Entry> = std::collections::BTreeMap::new();
        for (path, is_dir, content) in specs {
            let parts: Vec<&str> = path.split('/').collect();
            for n in 1..parts.len() {
                let dir = parts[..n].join("/");
                by_path.insert(dir.clone(), entry(&dir, EntryKind::Dir));
            }
            if by_path.get(path).is_some_and(|e| matches!(e.kind, EntryKind::Dir)) {
                continue;
            }
            let e = if *is_dir { entry(path, EntryKind::Dir) } else { file(path, &[*content]) };
            by_path.insert(path.clone(), e);
        }
        let mut m = Manifest { entries: by_path.into_values().collect() };
        m.sort();
        m.validate().unwrap();
        m
    }

    fn spec() -> impl proptest::strategy::Strategy<Value = (String, bool, u8)> {
        use proptest::prelude::*;
        let name = prop::sample::select(vec!["a", "b", "a.b", "a0", "c", "a b", "a-"]);
        (prop::collection::vec(name, 1..4), any::<bool>(), 0u8..3).prop_map(|(parts, d, c)| (parts.join("/"), d, c))
    }

    proptest::proptest! {
        /// Rebuilding from an earlier tree's directory ids, told which paths changed, gives the
        /// tree (root, every directory id, every object) that building from scratch gives.
        #[test]
        fn rebuild_equals_build(
            before in proptest::collection::vec(spec(), 0..24),
            after in proptest::collection::vec(spec(), 0..24),
            keep in proptest::collection::vec(proptest::prelude::any::<bool>(), 24),
        ) {
            let old = manifest_of(&before);
            // The new tree keeps some of the old specs and adds others.
            let kept: Vec<_> = before.iter().zip(&keep).filter(|(_, k)| **k).map(|(s, _)| s.clone()).collect();
            let new = manifest_of(&[kept, after].concat());
            let at = |m: &Manifest| -> HashMap<RelPath, Entry> { m.entries.iter().map(|e| (e.path.clone(), e.clone())).collect() };
            let (a, b) = (at(&old), at(&new));
            let mut changed: Vec<RelPath> =
                a.keys().chain(b.keys()).filter(|p| a.get(*p) != b.get(*p)).cloned().collect();
            changed.sort();
            changed.dedup();
            let full = build(&new);
            let inc = rebuild(&new, build(&old).dirs, &changed);
            proptest::prop_assert_eq!(inc.root, full.root);
            proptest::prop_assert_eq!(&inc.dirs, &full.dirs);
            let all: HashSet<ChunkId> = full.objects.iter().map(|o| o.0).collect();
            proptest::prop_assert!(inc.objects.iter().all(|o| all.contains(&o.0)));
        }

        /// A tree read back is the manifest it was built from (entries listed in path order
        /// with no sort), and two trees compared level by level, equal directories skipped,
        /// differ as their manifests do.
        #[test]
        fn flatten_and_tree_diff_agree_with_manifests(
            before in proptest::collection::vec(spec(), 0..24),
            after in proptest::collection::vec(spec(), 0..24),
            keep in proptest::collection::vec(proptest::prelude::any::<bool>(), 24),
            mode in 0u32..2,
        ) {
            let old = manifest_of(&before);
            let kept: Vec<_> = before.iter().zip(&keep).filter(|(_, k)| **k).map(|(s, _)| s.clone()).collect();
            let mut new = manifest_of(&[kept, after].concat());
            // A mode change on some directory, which a diff lists though its contents match.
            if let Some(d) = new.entries.iter_mut().find(|e| matches!(e.kind, EntryKind::Dir)) {
                d.mode += mode;
            }
            let (ta, tb) = (build(&old), build(&new));
            let mut all = nodes(&ta);
            all.extend(nodes(&tb));
            proptest::prop_assert_eq!(&flatten(&ta.root, &all).unwrap(), &old);
            proptest::prop_assert_eq!(&flatten(&tb.root, &all).unwrap(), &new);
            let by_tree = crate::diff::diff_trees(&ta.root, &tb.root, &all).unwrap();
            proptest::prop_assert_eq!(by_tree, crate::diff::diff(&old, &new));
        }
    }

    #[test]
    fn children_jump_over_subtrees() {
        let m = manifest_of(&[
            ("a/x".into(), false, 0),
            ("a.b".into(), false, 0),
            ("a/y/z".into(), false, 0),
            ("a0".into(), true, 0),
            ("b".into(), false, 0),
        ]);
        let names = |d: Option<&str>| -> Vec<String> {
            children_of(&m.entries, d.map(p).as_ref()).iter().map(|i| m.entries[*i].path.to_string()).collect()
        };
        assert_eq!(names(None), ["a", "a.b", "a0", "b"]);
        assert_eq!(names(Some("a")), ["a/x", "a/y"]);
        assert_eq!(names(Some("a/y")), ["a/y/z"]);
        assert!(names(Some("a0")).is_empty());
    }
}
