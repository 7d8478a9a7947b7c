//! An `LD_PRELOAD` shim, compiled by the test with the machine's C compiler, that records every
//! `fsync`, `fdatasync`, `link`, `linkat`, `mkdir`, `mkdirat` and `rename*` a process makes
//! (with the synced file's path, read from `/proc/self/fd`), so a test can check the order in
//! which the real binary makes store objects durable.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

static int log_fd = -1;

__attribute__((constructor)) static void open_log(void) {
    const char *p = getenv("FSYNC_SHIM_LOG");
    if (p) log_fd = open(p, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
}

/* One write per line, O_APPEND: lines of concurrent threads never interleave. */
static void record(const char *what, const char *a, const char *b) {
    char buf[8400];
    int n;
    if (log_fd < 0) return;
    n = snprintf(buf, sizeof buf, "%s\t%s\t%s\n", what, a, b ? b : "");
    if (n > 0 && n < (int)sizeof buf) (void)!write(log_fd, buf, n);
}

static void record_fd(const char *what, int fd) {
    char link[64], path[4096];
    ssize_t len;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    len = readlink(link, path, sizeof path - 1);
    path[len < 0 ? 0 : len] = 0;
    record(what, path, NULL);
}

#define REAL(name) static __typeof__(&name) real_##name; \
    if (!real_##name) real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

/* Syncs are recorded once they returned, links and directories once they exist. */
int fsync(int fd) {
    REAL(fsync);
    int r = real_fsync(fd);
    if (r == 0) record_fd("fsync", fd);
    return r;
}

int fdatasync(int fd) {
    REAL(fdatasync);
    int r = real_fdatasync(fd);
    if (r == 0) record_fd("fdatasync", fd);
    return r;
}

int link(const char *old, const char *new) {
    REAL(link);
    int r = real_link(old, new);
    if (r == 0) record("link", old, new);
    return r;
}

int linkat(int olddirfd, const char *old, int newdirfd, const char *new, int flags) {
    REAL(linkat);
    int r = real_linkat(olddirfd, old, newdirfd, new, flags);
    if (r == 0) record("link", old, new);
    return r;
}

int mkdir(const char *path, mode_t mode) {
    REAL(mkdir);
    int r = real_mkdir(path, mode);
    if (r == 0) record("mkdir", path, NULL);
    return r;
}

int mkdirat(int dirfd, const char *path, mode_t mode) {
    REAL(mkdirat);
    int r = real_mkdirat(dirfd, path, mode);
    if (r == 0) record("mkdir", path, NULL);
    return r;
}

int rename(const char *old, const char *new) {
    REAL(rename);
    int r = real_rename(old, new);
    if (r == 0) record("rename", old, new);
    return r;
}

int renameat(int olddirfd, const char *old, int newdirfd, const char *new) {
    REAL(renameat);
    int r = real_renameat(olddirfd, old, newdirfd, new);
    if (r == 0) record("rename", old, new);
    return r;
}

int renameat2(int olddirfd, const char *old, int newdirfd, const char *new, unsigned int flags) {
    REAL(renameat2);
    int r = real_renameat2(olddirfd, old, newdirfd, new, flags);
    if (r == 0) record("rename", old, new);
    return r;
}
"#;

/// Compiles the shim into `dir` and returns the shared object's path.
pub fn build_shim(dir: &Path) -> PathBuf {
    let src = dir.join("fsync-shim.c");
    let so = dir.join("fsync-shim.so");
    fs::write(&src, SHIM).expect("writing the shim's source");
    let out = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc to build the fsync shim ({e}): install gcc"));
    assert!(out.status.success(), "gcc failed on the fsync shim: {}", String::from_utf8_lossy(&out.stderr));
    so
}

/// Points `cmd` at the shim, logging to `log`.
pub fn preload(cmd: &mut Command, so: &Path, log: &Path) {
    cmd.env("LD_PRELOAD", so).env("FSYNC_SHIM_LOG", log);
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `fsync` or `fdatasync` of a file or directory that returned.
    Sync(PathBuf),
    /// A hard link `old` → `new` that was made.
    Link(PathBuf, PathBuf),
    /// A directory that was made.
    Mkdir(PathBuf),
    /// A rename `old` → `new` that was made.
    Rename(PathBuf, PathBuf),
}

/// Reads the calls a shimmed process recorded, in order.
pub fn calls(log: &Path) -> Vec<Call> {
    let text = fs::read_to_string(log).unwrap_or_else(|e| panic!("reading the shim's log {}: {e}", log.display()));
    text.lines()
        .map(|l| {
            let mut f = l.split('\t');
            let (what, a, b) = (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""));
            match what {
                "fsync" | "fdatasync" => Call::Sync(a.into()),
                "link" => Call::Link(a.into(), b.into()),
                "mkdir" => Call::Mkdir(a.into()),
                "rename" => Call::Rename(a.into(), b.into()),
                _ => panic!("unexpected line in the shim's log: {l:?}"),
            }
        })
        .collect()
}
