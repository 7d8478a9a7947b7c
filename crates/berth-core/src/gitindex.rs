//! The git index file (`.git/index`, versions 2-4): read its entries' cached stat data, and
//! refresh that data after a restore without re-reading file contents.
//!
//! A restore gives every file a new inode and ctime, so git would re-hash the whole checkout on
//! the next `git status`. A file whose restored mtime (to the nanosecond) and size equal what the
//! index cached, and that was not racily clean when the index was written, has the content the
//! index names: the snapshot stored it with that mtime, and the restore wrote it back verified
//! against its hash. For those entries the new ctime, device, inode, uid and gid are written
//! into the index; every other entry is left for git to check.

use crate::FormatError;

/// Stat data of a file, as the index caches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Stat {
    /// ctime seconds.
    pub ctime_s: u32,
    /// ctime nanoseconds.
    pub ctime_ns: u32,
    /// mtime seconds.
    pub mtime_s: u32,
    /// mtime nanoseconds.
    pub mtime_ns: u32,
    /// Device.
    pub dev: u32,
    /// Inode.
    pub ino: u32,
    /// Mode (file type and permission bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size, truncated to 32 bits as git does.
    pub size: u32,
}

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Offsets of an entry's fixed fields.
const STAT_LEN: usize = 40;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn read_stat(b: &[u8], at: usize) -> Stat {
    Stat {
        ctime_s: be32(b, at),
        ctime_ns: be32(b, at + 4),
        mtime_s: be32(b, at + 8),
        mtime_ns: be32(b, at + 12),
        dev: be32(b, at + 16),
        ino: be32(b, at + 20),
        mode: be32(b, at + 24),
        uid: be32(b, at + 28),
        gid: be32(b, at + 32),
        size: be32(b, at + 36),
    }
}

/// Decodes git's offset varint (index v4 path prefixes).
fn varint(b: &[u8], at: &mut usize) -> Option<usize> {
    let mut c = *b.get(*at)?;
    *at += 1;
    let mut val = (c & 127) as usize;
    while c & 128 != 0 {
        val = val.checked_add(1)?.checked_mul(128)?;
        c = *b.get(*at)?;
        *at += 1;
        val = val.checked_add((c & 127) as usize)?;
    }
    Some(val)
}

/// What [`refresh`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Entries in the index.
    pub entries: usize,
    /// Entries whose stat data was refreshed.
    pub refreshed: usize,
    /// The new index file, when anything changed.
    pub index: Option<Vec<u8>>,
}

const HASH: usize = 20;

fn bad(why: &str) -> FormatError {
    FormatError::new("git index", why)
}

/// One parsed index entry.
struct IndexEntry {
    /// Offset of the entry's first byte (its cached stat data).
    start: usize,
    stat: Stat,
    flags: u16,
    extended: u16,
    path: Vec<u8>,
    /// Offset of the next entry.
    next: usize,
}

impl IndexEntry {
    /// Whether git would trust this entry's cached stat data for a regular file or a link.
    fn refreshable(&self, index_mtime: (u32, u32)) -> bool {
        let stage = (self.flags >> 12) & 3;
        let assume_valid = self.flags & 0x8000 != 0;
        let skip_worktree_or_ita = self.extended & 0x6000 != 0;
        let kind = self.stat.mode & S_IFMT;
        // Racily clean: changed in the same instant the index was written; git smudges or
        // re-checks these, so must we.
        let racy = (self.stat.mtime_s, self.stat.mtime_ns) >= index_mtime;
        stage == 0 && !assume_valid && !skip_worktree_or_ita && (kind == S_IFREG || kind == S_IFLNK) && !racy
    }
}

/// Parses the entry at `start`; `prev_path` is the previous entry's path (v4 prefix compression).
fn parse_entry(
    index: &[u8],
    version: u32,
    start: usize,
    body_end: usize,
    prev_path: &[u8],
) -> Result<IndexEntry, FormatError> {
    let fixed = STAT_LEN + HASH + 2;
    if start + fixed > body_end {
        return Err(bad("truncated entry"));
    }
    let stat = read_stat(index, start);
    let flags = u16::from_be_bytes([index[start + STAT_LEN + HASH], index[start + STAT_LEN + HASH + 1]]);
    let mut name_at = start + fixed;
    let mut extended = 0u16;
    if flags & 0x4000 != 0 {
        if version < 3 || name_at + 2 > body_end {
            return Err(bad("extended flags in a version 2 index"));
        }
        extended = u16::from_be_bytes([index[name_at], index[name_at + 1]]);
        name_at += 2;
    }
    let (path, next) = if version == 4 {
        let mut p = name_at;
        let strip = varint(index, &mut p).ok_or_else(|| bad("bad path prefix"))?;
        let nul = index[p..body_end].iter().position(|b| *b == 0).ok_or_else(|| bad("unterminated path"))?;
        let keep = prev_path.len().checked_sub(strip).ok_or_else(|| bad("bad path prefix"))?;
        let mut path = prev_path[..keep].to_vec();
        path.extend_from_slice(&index[p..p + nul]);
        (path, p + nul + 1)
    } else {
        let nul = index[name_at..body_end].iter().position(|b| *b == 0).ok_or_else(|| bad("unterminated path"))?;
        // Entries are padded with 1-8 NULs to a multiple of 8 bytes.
        (index[name_at..name_at + nul].to_vec(), start + ((name_at - start + nul + 8) & !7))
    };
    if next > body_end {
        return Err(bad("truncated entry"));
    }
    Ok(IndexEntry { start, stat, flags, extended, path, next })
}

/// The refreshed stat data for an entry whose file now has stat `now`: `Some` when the file
/// kept its kind, executable bit, mtime and size but moved (new inode, ctime, owner).
fn refreshed_stat(cached: &Stat, now: &Stat) -> Option<Stat> {
    let kind = cached.mode & S_IFMT;
    let same_kind = now.mode & S_IFMT == kind;
    let same_exec = kind != S_IFREG || (now.mode & 0o100 != 0) == (cached.mode & 0o100 != 0);
    let same = now.mtime_s == cached.mtime_s && now.mtime_ns == cached.mtime_ns && now.size == cached.size;
    let differs = (now.ctime_s, now.ctime_ns, now.dev, now.ino, now.uid, now.gid)
        != (cached.ctime_s, cached.ctime_ns, cached.dev, cached.ino, cached.uid, cached.gid);
    (same_kind && same_exec && same && differs).then_some(*now)
}

/// Walks the extensions from `at` to the checksum; true when the index is split (a `link`
/// extension keeps entries elsewhere, which is left to git).
fn is_split(index: &[u8], mut at: usize, body_end: usize) -> Result<bool, FormatError> {
    while at + 8 <= body_end {
        if &index[at..at + 4] == b"link" {
            return Ok(true);
        }
        let len = be32(index, at + 4) as usize;
        at = at.checked_add(8 + len).ok_or_else(|| bad("bad extension length"))?;
    }
    if at != body_end {
        return Err(bad("extensions overrun the checksum"));
    }
    Ok(false)
}

/// Checks the header and the checksum; returns the version, the entry count and where the
/// checksum starts.
fn header(index: &[u8]) -> Result<(u32, usize, usize), FormatError> {
    if index.len() < 12 + HASH || &index[..4] != b"DIRC" {
        return Err(bad("no DIRC header"));
    }
    let version = be32(index, 4);
    if !(2..=4).contains(&version) {
        return Err(bad(&format!("version {version} is not 2, 3 or 4")));
    }
    let body_end = index.len() - HASH;
    let checksum = sha1_smol::Sha1::from(&index[..body_end]).digest().bytes();
    if checksum[..] != index[body_end..] {
        return Err(bad("checksum mismatch"));
    }
    Ok((version, be32(index, 8) as usize, body_end))
}

/// Refreshes the cached stat data of `index` (a SHA-1 repository's index file whose own mtime
/// was `index_mtime` = (seconds, nanoseconds)). `lstat` returns the current stat of a path
/// relative to the work tree, or `None` when it is missing. Returns `Ok` with `index: None` when
/// there is nothing to change or the index uses a feature this does not handle (a split index),
/// in which case git does the work itself.
pub fn refresh(
    index: &[u8],
    index_mtime: (u32, u32),
    mut lstat: impl FnMut(&[u8]) -> Option<Stat>,
) -> Result<Refreshed, FormatError> {
    let (version, n, body_end) = header(index)?;
    let mut out = index.to_vec();
    let mut at = 12;
    let mut prev_path: Vec<u8> = Vec::new();
    let mut refreshed = 0;
    for _ in 0..n {
        let entry = parse_entry(index, version, at, body_end, &prev_path)?;
        if entry.refreshable(index_mtime) {
            if let Some(now) = lstat(&entry.path).and_then(|now| refreshed_stat(&entry.stat, &now)) {
                let start = entry.start;
                for (offset, value) in
                    [(0, now.ctime_s), (4, now.ctime_ns), (16, now.dev), (20, now.ino), (28, now.uid), (32, now.gid)]
                {
                    put32(&mut out, start + offset, value);
                }
                refreshed += 1;
            }
        }
        at = entry.next;
        prev_path = entry.path;
    }
    if is_split(index, at, body_end)? {
        return Ok(Refreshed { entries: n, refreshed: 0, index: None });
    }
    if refreshed == 0 {
        return Ok(Refreshed { entries: n, refreshed, index: None });
    }
    let sum = sha1_smol::Sha1::from(&out[..body_end]).digest().bytes();
    out[body_end..].copy_from_slice(&sum);
    Ok(Refreshed { entries: n, refreshed, index: Some(out) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a version-2 or -4 index of `(path, stat)` entries.
    fn index(version: u32, entries: &[(&str, Stat)]) -> Vec<u8> {
        let mut b = b"DIRC".to_vec();
        b.extend(version.to_be_bytes());
        b.extend((entries.len() as u32).to_be_bytes());
        let mut prev = String::new();
        for (path, s) in entries {
            let start = b.len();
            for v in [s.ctime_s, s.ctime_ns, s.mtime_s, s.mtime_ns, s.dev, s.ino, s.mode, s.uid, s.gid, s.size] {
                b.extend(v.to_be_bytes());
            }
            b.extend([0xab; 20]);
            b.extend((path.len() as u16).to_be_bytes());
            if version == 4 {
                let common = prev.bytes().zip(path.bytes()).take_while(|(a, c)| a == c).count();
                b.push((prev.len() - common) as u8);
                b.extend(&path.as_bytes()[common..]);
                b.push(0);
            } else {
                b.extend(path.as_bytes());
                let len = b.len() - start;
                b.resize(start + ((len + 8) & !7), 0);
            }
            prev = path.to_string();
        }
        b.extend(b"TREE");
        b.extend(3u32.to_be_bytes());
        b.extend([1, 2, 3]);
        let sum = sha1_smol::Sha1::from(&b).digest().bytes();
        b.extend(sum);
        b
    }

    fn stat(mtime: u32, ino: u32, size: u32) -> Stat {
        Stat { ctime_s: 5, mtime_s: mtime, mtime_ns: 7, dev: 1, ino, mode: S_IFREG | 0o644, size, ..Default::default() }
    }

    fn check(version: u32) {
        let old = [
            ("a.txt", stat(100, 1, 3)),
            ("dir/b.txt", stat(100, 2, 4)),
            ("dir/c.txt", stat(100, 3, 5)),
            ("racy", stat(500, 4, 1)),
        ];
        let bytes = index(version, &old);
        let restored = |p: &[u8]| -> Option<Stat> {
            match p {
                // Content as cached: new inode and ctime.
                b"a.txt" => Some(Stat { ctime_s: 900, ino: 11, ..stat(100, 1, 3) }),
                // Modified after the index was written: different mtime.
                b"dir/b.txt" => Some(Stat { ctime_s: 900, ino: 12, ..stat(101, 2, 4) }),
                b"dir/c.txt" => Some(Stat { ctime_s: 900, ino: 13, ..stat(100, 3, 5) }),
                b"racy" => Some(Stat { ctime_s: 900, ino: 14, ..stat(500, 4, 1) }),
                _ => None,
            }
        };
        let r = refresh(&bytes, (500, 0), restored).unwrap();
        assert_eq!((r.entries, r.refreshed), (4, 2));
        let new = r.index.unwrap();
        // The result is a valid index that refreshes to nothing more.
        let again = refresh(&new, (500, 0), restored).unwrap();
        assert_eq!((again.refreshed, again.index), (0, None));
        // Only stat fields changed; the rest is byte for byte the same length.
        assert_eq!(new.len(), bytes.len());
    }

    #[test]
    fn refreshes_v2_and_v4() {
        check(2);
        check(4);
    }

    #[test]
    fn refuses_corruption() {
        let mut bytes = index(2, &[("a", stat(1, 1, 1))]);
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        assert!(refresh(&bytes, (9, 0), |_| None).is_err());
        assert!(refresh(b"nope", (9, 0), |_| None).is_err());
    }
}
