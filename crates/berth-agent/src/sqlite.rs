//! Consistent capture of SQLite databases in the workspace: before a
//! snapshot, each database is copied with `VACUUM INTO` (a consistent, single-file copy made
//! inside one read transaction, whatever the writers do) to `.berth/state/sqlite/<path>`; the
//! live file and its `-wal`, `-shm` and `-journal` are left out of the snapshot. Init puts the
//! copies back in place.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::str::FromStr;

use berth_core::excludes::Excludes;
use berth_core::path::RelPath;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::layout;

const MAGIC: &[u8; 16] = b"SQLite format 3\0";
const SUFFIXES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Returns whether `name` looks like a database file name.
fn db_name(name: &[u8]) -> bool {
    [&b".db"[..], b".sqlite", b".sqlite3", b".db3"].iter().any(|s| name.ends_with(s))
}

fn has_magic(path: &Path) -> bool {
    let mut head = [0u8; 16];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == MAGIC
}

/// Finds SQLite databases under `dir` (by name and header), skipping excluded paths and
/// berth's own directory.
pub fn discover(dir: &Path, excludes: &Excludes) -> Vec<RelPath> {
    let mut out = Vec::new();
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let abs = if rel.is_empty() { dir.to_path_buf() } else { dir.join(std::ffi::OsStr::from_bytes(&rel)) };
        let Ok(entries) = std::fs::read_dir(&abs) else { continue };
        for e in entries.flatten() {
            let name = e.file_name();
            let mut child = rel.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(name.as_bytes());
            let Ok(t) = e.file_type() else { continue };
            if rel.is_empty() && name == ".berth" {
                continue;
            }
            if excludes.is_excluded(&child, t.is_dir()) {
                continue;
            }
            if t.is_dir() {
                if name != ".git" {
                    stack.push(child);
                }
            } else if t.is_file() && db_name(name.as_bytes()) && has_magic(&e.path()) {
                if let Ok(p) = RelPath::new(child) {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

/// Escapes a path for a `.gitignore` pattern anchored at the root.
fn pattern(rel: &[u8], suffix: &str) -> String {
    let mut p = String::from("/");
    for c in String::from_utf8_lossy(rel).chars() {
        if "*?[]\\!# ".contains(c) {
            p.push('\\');
        }
        p.push(c);
    }
    p.push_str(suffix);
    p
}

/// The exclude patterns that leave the live files of `dbs` out of a snapshot.
pub fn exclude_patterns(dbs: &[RelPath]) -> Vec<String> {
    dbs.iter().flat_map(|db| std::iter::once("").chain(SUFFIXES).map(move |s| pattern(db.as_bytes(), s))).collect()
}

/// A database's state, to skip copies of databases that did not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint([(i64, i64, u64); 2]);

fn fingerprint(path: &Path) -> Fingerprint {
    let of = |p: &Path| std::fs::metadata(p).map(|m| (m.mtime(), m.mtime_nsec(), m.size())).unwrap_or_default();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    Fingerprint([of(path), of(Path::new(&wal))])
}

/// Copies databases consistently, remembering what it copied.
#[derive(Debug, Default)]
pub struct Capturer {
    seen: BTreeMap<RelPath, Fingerprint>,
}

impl Capturer {
    /// Copies each of `dbs` that changed since its last copy (or whose copy is missing) to its
    /// place under `.berth/state/sqlite/`. Returns the databases that have a current copy; a
    /// database that cannot be copied is logged and left in the snapshot as a plain file.
    pub async fn capture(&mut self, dir: &Path, dbs: &[RelPath]) -> Vec<RelPath> {
        let mut ok = Vec::new();
        for db in dbs {
            let live = dir.join(std::ffi::OsStr::from_bytes(db.as_bytes()));
            let copy = layout::sqlite_copy(dir, db);
            let fp = fingerprint(&live);
            if self.seen.get(db) == Some(&fp) && copy.exists() {
                ok.push(db.clone());
                continue;
            }
            match copy_consistent(&live, &copy).await {
                Ok(()) => {
                    self.seen.insert(db.clone(), fp);
                    ok.push(db.clone());
                }
                Err(e) => {
                    tracing::warn!(event = "sqlite_capture_failed", db = %live.display(), error = %e);
                    self.seen.remove(db);
                }
            }
        }
        // Copies of databases that went away go too.
        let live: std::collections::BTreeSet<_> = dbs.iter().collect();
        self.seen.retain(|db, _| live.contains(db));
        ok
    }
}

async fn copy_consistent(live: &Path, copy: &Path) -> Result<(), String> {
    let parent = copy.parent().ok_or("no parent")?;
    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    let tmp =
        parent.join(format!(".{}.tmp", copy.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    let _ = std::fs::remove_file(&tmp);
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", live.display()))
        .map_err(|e| e.to_string())?
        .create_if_missing(false)
        .busy_timeout(std::time::Duration::from_secs(5));
    let mut conn = opts.connect().await.map_err(|e| e.to_string())?;
    let result = sqlx::query("VACUUM INTO $1").bind(tmp.display().to_string()).execute(&mut conn).await;
    let _ = conn.close().await;
    result.map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, copy).map_err(|e| e.to_string())
}

/// Puts the captured copies back at their paths after a restore; returns the databases.
pub fn restore(dir: &Path) -> Vec<RelPath> {
    let root = layout::state_dir(dir).join("sqlite");
    let mut out = Vec::new();
    for path in layout::files_under(&root) {
        let Ok(rel) = path.strip_prefix(&root) else { continue };
        let Ok(rel) = RelPath::new(rel.as_os_str().as_bytes().to_vec()) else { continue };
        if rel.file_name().starts_with(b".") && rel.file_name().ends_with(b".tmp") {
            continue;
        }
        let live = dir.join(std::ffi::OsStr::from_bytes(rel.as_bytes()));
        let placed = live.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|_| {
            for s in SUFFIXES {
                let mut side = live.as_os_str().to_owned();
                side.push(s);
                let _ = std::fs::remove_file(Path::new(&side));
            }
            std::fs::copy(&path, &live).map(drop)
        });
        match placed {
            Ok(()) => out.push(rel),
            Err(e) => tracing::warn!(event = "sqlite_restore_failed", db = %live.display(), error = %e),
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_anchored_and_escaped() {
        let db = RelPath::new(b"data/my [x].db".to_vec()).unwrap();
        assert_eq!(
            exclude_patterns(&[db]),
            [
                "/data/my\\ \\[x\\].db",
                "/data/my\\ \\[x\\].db-wal",
                "/data/my\\ \\[x\\].db-shm",
                "/data/my\\ \\[x\\].db-journal"
            ]
        );
        let ex = Excludes::new(&exclude_patterns(&[RelPath::new(b"a/b.db".to_vec()).unwrap()]), false).unwrap();
        assert!(ex.is_excluded(b"a/b.db", false) && ex.is_excluded(b"a/b.db-wal", false));
        assert!(!ex.is_excluded(b"c/a/b.db", false));
    }

    #[tokio::test]
    async fn copies_are_consistent_and_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("mem")).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("mem/notes.db").display());
        let mut conn = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .connect()
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (v TEXT)").execute(&mut conn).await.unwrap();
        sqlx::query("INSERT INTO t VALUES ('kept')").execute(&mut conn).await.unwrap();
        let dbs = discover(dir, &Excludes::new(&[], true).unwrap());
        assert_eq!(dbs.iter().map(|d| d.as_bytes().to_vec()).collect::<Vec<_>>(), [b"mem/notes.db".to_vec()]);
        let mut cap = Capturer::default();
        assert_eq!(cap.capture(dir, &dbs).await.len(), 1);
        // The writer keeps its connection open (WAL not checkpointed); the copy still has the row.
        let restored = tempfile::tempdir().unwrap();
        let state = layout::state_dir(restored.path());
        std::fs::create_dir_all(&state).unwrap();
        std::fs::rename(layout::state_dir(dir).join("sqlite"), state.join("sqlite")).unwrap();
        assert_eq!(restore(restored.path()).len(), 1);
        let url = format!("sqlite://{}", restored.path().join("mem/notes.db").display());
        let mut c2 = SqliteConnectOptions::from_str(&url).unwrap().connect().await.unwrap();
        let v: (String,) = sqlx::query_as("SELECT v FROM t").fetch_one(&mut c2).await.unwrap();
        assert_eq!(v.0, "kept");
        drop(conn);
    }
}
