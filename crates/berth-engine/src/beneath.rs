//! File operations confined to a root directory: nothing is ever opened, created, linked or
//! removed outside it, and no symlink is followed on the way, even if one is swapped in while
//! the operation runs.
//!
//! Paths resolve with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (Linux 5.6+). Where the
//! kernel or a sandbox lacks `openat2`, each parent component is opened with
//! `O_NOFOLLOW | O_DIRECTORY` instead, which gives the same guarantee one step at a time.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::io::Errno;

static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// A directory that confines every operation to itself.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (b"", rel),
    }
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

impl Root {
    /// Opens `dir`, which the caller chose and resolved: its parents may be symlinks, `dir`
    /// itself may not (a target swapped for a link after the caller's checks is refused).
    pub fn open(dir: &Path) -> io::Result<Root> {
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let fd = rustix::fs::open(dir, flags, Mode::empty())?;
        Ok(Root { fd })
    }

    /// Opens `rel` below the root with `flags`, never through a symlink and never outside.
    pub fn open_at(&self, rel: &[u8], flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        // openat2 rejects a mode without O_CREAT.
        let mode = if flags.contains(OFlags::CREATE) { Mode::from_bits_truncate(mode) } else { Mode::empty() };
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.fd, os(rel), flags, mode, resolve) {
                Err(Errno::NOSYS) | Err(Errno::PERM) if !NO_OPENAT2.load(Ordering::Relaxed) => {
                    // EPERM: some seccomp profiles deny openat2 outright.
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                }
                other => return other.map_err(Into::into),
            }
        }
        let (parent, name) = split(rel);
        if name.is_empty() || name == b"." || name == b".." {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "path component not allowed"));
        }
        let dir = self.dir_walk(parent)?;
        Ok(rustix::fs::openat(&dir, os(name), flags, mode)?)
    }

    fn dir_walk(&self, parent: &[u8]) -> io::Result<OwnedFd> {
        let mut fd =
            rustix::fs::openat(&self.fd, ".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        if parent.is_empty() {
            return Ok(fd);
        }
        for part in parent.split(|b| *b == b'/') {
            if part.is_empty() || part == b"." || part == b".." {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "path component not allowed"));
            }
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            fd = rustix::fs::openat(&fd, os(part), flags, Mode::empty())?;
        }
        Ok(fd)
    }

    /// Opens the parent directory of `rel` (as an `O_PATH` handle) and returns it with the name.
    fn parent<'a>(&self, rel: &'a [u8]) -> io::Result<(OwnedFd, &'a [u8])> {
        let (parent, name) = split(rel);
        let fd = if parent.is_empty() {
            rustix::fs::openat(&self.fd, ".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?
        } else {
            self.open_at(parent, OFlags::PATH | OFlags::DIRECTORY, 0)?
        };
        Ok((fd, name))
    }

    /// Creates a directory; an existing directory is fine.
    pub fn mkdir(&self, rel: &[u8], mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        match rustix::fs::mkdirat(&dir, os(name), Mode::from_bits_truncate(mode)) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => {
                // It must be a real directory, not a link to one.
                self.open_at(rel, OFlags::PATH | OFlags::DIRECTORY, 0).map(drop)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a symlink holding `target` (never followed) and sets its mtime.
    pub fn symlink(&self, target: &[u8], rel: &[u8], mtime_ns: i64) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        rustix::fs::symlinkat(os(target), &dir, os(name))?;
        rustix::fs::utimensat(&dir, os(name), &times(mtime_ns), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    /// Makes `rel` another name of `target`.
    pub fn hard_link(&self, target: &[u8], rel: &[u8]) -> io::Result<()> {
        let (tdir, tname) = self.parent(target)?;
        let (dir, name) = self.parent(rel)?;
        rustix::fs::linkat(&tdir, os(tname), &dir, os(name), AtFlags::empty())?;
        Ok(())
    }

    /// Removes `rel` whatever it is (a directory with everything below it); missing is fine.
    pub fn remove(&self, rel: &[u8]) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        remove_in(&dir, name)
    }
}

fn remove_in(dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, os(name), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = match rustix::fs::openat(
        dir,
        os(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        remove_in(&sub, &n)?;
    }
    match rustix::fs::unlinkat(dir, os(name), AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Returns timestamps that set both atime and mtime to `mtime_ns`.
pub fn times(mtime_ns: i64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    Timestamps { last_access: t, last_modification: t }
}

/// Sets mode and mtime through an open descriptor.
pub fn set_meta(fd: impl AsFd, mode: u32, mtime_ns: i64) -> io::Result<()> {
    rustix::fs::fchmod(&fd, Mode::from_bits_truncate(mode))?;
    rustix::fs::futimens(&fd, &times(mtime_ns))?;
    Ok(())
}

/// Returns whether an error means a symlink or a non-directory stood where a directory should.
pub fn is_link_refusal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == Errno::LOOP.raw_os_error() || code == Errno::XDEV.raw_os_error() || code == Errno::NOTDIR.raw_os_error())
}
