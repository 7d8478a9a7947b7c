//! The one tree image and comparison: a directory tree as `lstat` and the content show it
//! (every path below the root with its kind, bytes, permission bits and ns mtime, symlink
//! targets, empty directories, and which files share an inode), compared path by path.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What one path is, as `lstat` and the content show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file: its length and the BLAKE3 digest of its bytes.
    File { len: u64, digest: String },
    /// A symlink and its raw target.
    Symlink(Vec<u8>),
    /// A FIFO, socket or device.
    Special,
}

/// One path of a tree image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Modification time in ns (of the link itself for symlinks).
    pub mtime_ns: i64,
}

/// A directory tree as it is on disk, never following a link.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TreeImage {
    /// Every path (relative, raw bytes) below the root.
    pub nodes: BTreeMap<Vec<u8>, Node>,
    /// Groups of two or more paths that are the same inode.
    pub links: BTreeSet<Vec<Vec<u8>>>,
}

/// The digest a [`Kind::File`] holds for `bytes`.
pub fn content_digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// A path for messages: as text when it is UTF-8, else escaped bytes.
pub fn show(path: &[u8]) -> String {
    match std::str::from_utf8(path) {
        Ok(s) => s.escape_debug().to_string(),
        Err(_) => path.escape_ascii().to_string(),
    }
}

impl TreeImage {
    /// Reads the tree below `root` (the root itself is not part of the image), leaving out, as
    /// a snapshot does, `.berth/run/` (where a restore leaves its marker) and a `.berth` that
    /// holds nothing else.
    pub fn read(root: &Path) -> TreeImage {
        Self::read_except(root, &[])
    }

    /// [`TreeImage::read`], also leaving out the top-level names in `skip` and all below them.
    pub fn read_except(root: &Path, skip: &[&[u8]]) -> TreeImage {
        let mut image = TreeImage::default();
        let mut inodes: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
        let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
            for entry in entries {
                let entry = entry.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
                let name = entry.file_name();
                if rel.is_empty() && skip.contains(&name.as_bytes()) {
                    continue;
                }
                let mut child = rel.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(name.as_bytes());
                if child == b".berth/run" {
                    continue;
                }
                let path = entry.path();
                let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
                let ft = meta.file_type();
                let kind = if ft.is_dir() {
                    stack.push((path.clone(), child.clone()));
                    Kind::Dir
                } else if ft.is_symlink() {
                    let target = fs::read_link(&path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()));
                    Kind::Symlink(target.as_os_str().as_bytes().to_vec())
                } else if ft.is_file() {
                    inodes.entry((meta.dev(), meta.ino())).or_default().push(child.clone());
                    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                    Kind::File { len: bytes.len() as u64, digest: content_digest(&bytes) }
                } else {
                    Kind::Special
                };
                let node = Node {
                    kind,
                    mode: meta.mode() & 0o7777,
                    mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                };
                image.nodes.insert(child, node);
            }
        }
        if !image.nodes.keys().any(|k| k.starts_with(b".berth/")) {
            image.nodes.remove(b".berth".as_slice());
        }
        for (_, mut paths) in inodes {
            if paths.len() > 1 {
                paths.sort();
                image.links.insert(paths);
            }
        }
        image
    }

    /// Keeps only the paths for which `keep` is true (in the nodes and the hard-link groups).
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        self.nodes.retain(|p, _| keep(p));
        self.links = std::mem::take(&mut self.links)
            .into_iter()
            .map(|g| g.into_iter().filter(|p| keep(p)).collect::<Vec<_>>())
            .filter(|g| g.len() > 1)
            .collect();
    }

    /// Leaves out the path `top` and everything below it.
    pub fn without(mut self, top: &str) -> TreeImage {
        let top = top.as_bytes();
        self.retain(|p| !(p == top || (p.starts_with(top) && p.get(top.len()) == Some(&b'/'))));
        self
    }

    /// Returns the node at `rel` (a UTF-8 relative path).
    pub fn get(&self, rel: &str) -> Option<&Node> {
        self.nodes.get(rel.as_bytes())
    }

    /// Returns the content digest of a regular file at `rel`.
    pub fn digest(&self, rel: &[u8]) -> Option<&str> {
        match &self.nodes.get(rel)?.kind {
            Kind::File { digest, .. } => Some(digest),
            _ => None,
        }
    }

    /// Returns whether `rel` is in a hard-link group (with another path of the image).
    pub fn is_linked(&self, rel: &[u8]) -> bool {
        self.links.iter().any(|group| group.iter().any(|p| p == rel))
    }

    /// Returns the number of regular files (counting each hard-link name).
    pub fn files(&self) -> usize {
        self.nodes.values().filter(|n| matches!(n.kind, Kind::File { .. })).count()
    }

    /// Returns the relative paths, as text (lossy for non-UTF-8 names).
    pub fn paths(&self) -> Vec<String> {
        self.nodes.keys().map(|p| String::from_utf8_lossy(p).into_owned()).collect()
    }

    /// A digest of the whole image (paths, kinds, content, modes, mtimes and hard links): two
    /// trees have the same fingerprint exactly when their images are equal (up to BLAKE3).
    pub fn fingerprint(&self) -> String {
        blake3::hash(format!("{self:?}").as_bytes()).to_hex().to_string()
    }
}

impl fmt::Debug for TreeImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (path, node) in &self.nodes {
            writeln!(f, "{:?} {:o} {} {:?}", show(path), node.mode, node.mtime_ns, node.kind)?;
        }
        for group in &self.links {
            let names: Vec<String> = group.iter().map(|p| show(p)).collect();
            writeln!(f, "linked: {names:?}")?;
        }
        Ok(())
    }
}

/// Describes how two images differ (empty when they are equal), naming paths, not dumping trees.
pub fn differences(expected: &TreeImage, actual: &TreeImage) -> String {
    let mut out = String::new();
    for (path, want) in &expected.nodes {
        match actual.nodes.get(path) {
            None => writeln!(out, "missing {:?}: want {want:?}", show(path)).unwrap_or(()),
            Some(got) if got != want => {
                writeln!(out, "differs {:?}: want {want:?}, got {got:?}", show(path)).unwrap_or(())
            }
            Some(_) => {}
        }
    }
    for (path, got) in &actual.nodes {
        if !expected.nodes.contains_key(path) {
            writeln!(out, "extra {:?}: {got:?}", show(path)).unwrap_or(());
        }
    }
    if expected.links != actual.links {
        let names = |l: &BTreeSet<Vec<Vec<u8>>>| -> Vec<Vec<String>> {
            l.iter().map(|g| g.iter().map(|p| show(p)).collect()).collect()
        };
        writeln!(out, "hard links differ: want {:?}, got {:?}", names(&expected.links), names(&actual.links))
            .unwrap_or(());
    }
    out
}

/// Fails with a readable list of differences unless the images are equal.
#[track_caller]
pub fn assert_same(expected: &TreeImage, actual: &TreeImage, context: &str) {
    let diff = differences(expected, actual);
    assert!(diff.is_empty(), "{context}: trees differ:\n{diff}");
}

/// Compares the trees under two directories: content, modes, mtimes, symlinks, empty
/// directories and hard links.
#[track_caller]
pub fn assert_same_dirs(expected: &Path, actual: &Path) {
    assert_same(
        &TreeImage::read(expected),
        &TreeImage::read(actual),
        &format!("{} vs {}", expected.display(), actual.display()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_and_mtimes_are_part_of_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for d in [&a, &b] {
            fs::create_dir_all(d.join("sub")).unwrap();
            fs::write(d.join("sub/f"), b"same").unwrap();
            fs::write(d.join("g"), b"same").unwrap();
        }
        fs::hard_link(a.join("sub/f"), a.join("h")).unwrap();
        fs::copy(b.join("sub/f"), b.join("h")).unwrap();
        let diff = differences(&TreeImage::read(&a), &TreeImage::read(&b));
        assert!(diff.contains("hard links differ"), "{diff}");
        let mut image = TreeImage::read(&a);
        image.retain(|p| p != b"h");
        assert!(image.links.is_empty(), "a group of one is no group: {image:?}");
        let before = TreeImage::read(&a).fingerprint();
        let f = fs::File::options().write(true).open(a.join("g")).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_ne!(TreeImage::read(&a).fingerprint(), before, "an mtime change changes the image");
    }
}
