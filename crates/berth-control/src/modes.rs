//! File modes of what the control plane keeps on disk: the data dir, the SQLite database, the
//! admin token and the local volumes root are private to berth's user (the directories only
//! traversable by the sandbox user when one is set), whether or not berth created them. A mode that
//! is off is changed with a log line (`event=permissions_changed`); one berth cannot change
//! (another user's file) is refused with a message saying what to run.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Makes `path` (a file that exists) no more open than `max`: bits beyond it are taken away.
/// `what` names it in the log and in the error.
pub fn tighten(path: &Path, max: u32, what: &str) -> Result<()> {
    change(path, what, |before| before & max)
}

/// Gives `path` (a directory that exists) exactly `mode`. `what` names it in the log and in the
/// error.
pub fn set(path: &Path, mode: u32, what: &str) -> Result<()> {
    change(path, what, |_| mode)
}

fn change(path: &Path, what: &str, to: impl FnOnce(u32) -> u32) -> Result<()> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", path.display())))?;
    let before = meta.permissions().mode() & 0o7777;
    let after = to(before);
    if before == after {
        return Ok(());
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(after)) {
        Ok(()) => {
            tracing::warn!(
                event = "permissions_changed",
                path = %path.display(),
                what,
                before = format!("{before:04o}"),
                after = format!("{after:04o}"),
            );
            Ok(())
        }
        Err(e) => Err(Error::Config(format!(
            "{what} {} is mode {before:04o} and berth cannot change it ({e}): run `chmod {after:o} {}` as its \
             owner, or point berth at a directory of its own",
            path.display(),
            path.display()
        ))),
    }
}

/// Creates the SQLite database file `path` with mode 0600 if it is missing (SQLite takes an
/// empty file as a new database, and gives its `-wal` and `-shm` files the database's mode),
/// then tightens the database and those files to 0600.
pub fn private_sqlite(path: &Path) -> Result<()> {
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::Config(format!("cannot create the database {}: {e}", path.display()))),
    }
    tighten(path, 0o600, "the database")?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let side = path.with_file_name(format!("{}{suffix}", path.file_name().unwrap_or_default().to_string_lossy()));
        if side.exists() {
            tighten(&side, 0o600, "the database")?;
        }
    }
    Ok(())
}
