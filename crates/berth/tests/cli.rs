//! End-to-end tests of the `berth` binary against a local file store: what a user sees
//! (exit codes, messages, JSON) and what ends up on disk.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use util::{assert_same_tree, read_tree, s, write_file, write_symlink, Env, Kind, Rng, Run};

/// A tree with what a snapshot must keep: modes, an empty file, empty and nested directories,
/// a multi-chunk file, duplicate content, relative, absolute and dangling symlinks, hard links.
fn sample_tree(root: &Path) {
    write_file(root, "README.md", b"hello\n", 0o644);
    write_file(root, "bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755);
    write_file(root, "secret/key", b"k", 0o600);
    write_file(root, "read-only.txt", b"do not touch", 0o444);
    write_file(root, "empty.txt", b"", 0o644);
    write_file(root, "data/big.bin", &Rng::new(1).bytes(5 << 20), 0o640);
    let dup = Rng::new(2).bytes(70_000);
    write_file(root, "data/dup1", &dup, 0o644);
    write_file(root, "data/dup2", &dup, 0o644);
    write_file(root, "hard/a", b"linked twice", 0o644);
    fs::hard_link(root.join("hard/a"), root.join("hard/b")).unwrap();
    fs::create_dir_all(root.join("empty/nested/deeper")).unwrap();
    write_symlink(root, "link-rel", "README.md");
    write_symlink(root, "data/link-abs-dangling", "/nonexistent/berth/target");
    write_symlink(root, "dirlink", "bin");
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(root.join("bin"), fs::Permissions::from_mode(0o750)).unwrap();
}

/// The paths of a tree.
fn paths(root: &Path) -> BTreeSet<String> {
    read_tree(root).paths().into_iter().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[track_caller]
fn u64_field(v: &Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or_else(|| panic!("field {name} is not a number in {v:#}"))
}

#[track_caller]
fn bool_field(v: &Value, name: &str) -> bool {
    v[name].as_bool().unwrap_or_else(|| panic!("field {name} is not a bool in {v:#}"))
}

#[track_caller]
fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name].as_str().unwrap_or_else(|| panic!("field {name} is not a string in {v:#}"))
}

#[test]
fn create_ls_restore_round_trip() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);

    let c1 = env.run("create", &["--workspace", "agent:1", "--json", s(&src)]).ok().json();
    let id = str_field(&c1, "snapshot").to_string();
    assert_eq!(id.len(), 64, "{c1:#}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{c1:#}");
    assert_eq!(u64_field(&c1, "seq"), 1);
    assert!(!bool_field(&c1, "unchanged"));
    // README, run.sh, key, read-only, empty, big, dup1, dup2, hard/a (hard/b is a link).
    assert_eq!(u64_field(&c1, "files_read"), 9, "{c1:#}");
    let big = 5u64 << 20;
    assert!(u64_field(&c1, "bytes_new") >= big + 70_000, "duplicate content counted once: {c1:#}");
    assert!(u64_field(&c1, "bytes_new") < big + 2 * 70_000, "duplicate content counted once: {c1:#}");
    assert!(u64_field(&c1, "bytes_uploaded") >= big, "random data does not compress: {c1:#}");

    let ls = env.run("ls", &["--json"]).ok().json();
    let rows = ls.as_array().expect("ls --json is an array");
    assert_eq!(rows.len(), 1, "{ls:#}");
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["record"]["seq"], 1);
    assert_eq!(rows[0]["record"]["workspace"], "agent:1");
    let text = env.run("ls", &[]).ok();
    assert!(text.stdout.contains(&id[..12]) && text.stdout.contains("agent:1"), "{text:?}");

    let out = env.path("out");
    let r = env.run("restore", &["--workspace", "agent:1", "--json", s(&out)]).ok().json();
    assert_eq!(str_field(&r, "snapshot"), id);
    assert_same_tree(&read_tree(&src), &read_tree(&out));
    let (a, b) = (fs::metadata(out.join("hard/a")).unwrap(), fs::metadata(out.join("hard/b")).unwrap());
    assert_eq!(a.ino(), b.ino(), "hard links are restored as hard links");

    // Nothing changed: nothing read, nothing published.
    let c2 = env.run("create", &["--workspace", "agent:1", "--json", s(&src)]).ok().json();
    assert!(bool_field(&c2, "unchanged"), "{c2:#}");
    assert_eq!(u64_field(&c2, "files_read"), 0, "{c2:#}");
    assert_eq!(u64_field(&c2, "bytes_new"), 0, "{c2:#}");
    assert_eq!(u64_field(&c2, "bytes_uploaded"), 0, "{c2:#}");
    assert_eq!((str_field(&c2, "snapshot"), u64_field(&c2, "seq")), (id.as_str(), 1));

    // The restored copy is the same snapshot, and the restore seeded the cache for it.
    let c3 = env.run("create", &["--workspace", "agent:1", "--json", s(&out)]).ok().json();
    assert!(bool_field(&c3, "unchanged"), "a restored tree snapshots as the same snapshot: {c3:#}");
    // Restore seeds the file cache, so no content is read again. (Empty files are not seeded
    // and count as one read of 0 bytes.)
    assert_eq!(u64_field(&c3, "bytes_read"), 0, "restore seeds the file cache: {c3:#}");
    assert!(u64_field(&c3, "files_read") <= 1, "restore seeds the file cache: {c3:#}");

    // One file changed: only it is read, and a new snapshot follows.
    write_file(&src, "README.md", b"hello again\n", 0o644);
    let c4 = env.run("create", &["--workspace", "agent:1", "--json", s(&src)]).ok().json();
    assert!(!bool_field(&c4, "unchanged"), "{c4:#}");
    assert_eq!((u64_field(&c4, "seq"), u64_field(&c4, "files_read")), (2, 1), "{c4:#}");
    let r2 = env.run("restore", &["--workspace", "agent:1", "--json", s(&out)]).ok().json();
    assert_eq!(r2["seq"], 2);
    assert_same_tree(&read_tree(&src), &read_tree(&out));
    assert_eq!(env.run("ls", &["--json"]).ok().json().as_array().map(Vec::len), Some(2));
}

#[test]
fn exit_codes_and_error_messages() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src, "a.txt", b"a", 0o644);
    let out = env.path("out");

    // Usage errors: 2.
    env.run_raw(&["snapshot", "restore", "--workspace", "w", s(&out)]).fails(2).stderr_has(&["--store"]);
    env.run("create", &["--workspace", "w", "--bogus", s(&src)]).fails(2).stderr_has(&["--bogus"]);
    env.run("create", &["--workspace", "w", "--generation", "two", s(&src)]).fails(2).stderr_has(&["two"]);
    env.run_raw(&["snapshot", "frobnicate"]).fails(2).stderr_has(&["frobnicate"]);

    // Failures: 1, with a message naming the object and what to do.
    env.run("restore", &["--workspace", "w", s(&out)]).fails(1).stderr_has(&[
        &env.url,
        "not found",
        "berth snapshot create",
    ]);
    assert!(!out.exists(), "a failed restore does not create its target");
    env.run_raw(&["snapshot", "ls", "--store", "ftp://x"]).fails(1).stderr_has(&[
        "ftp://x",
        "file:///",
        "s3://",
        "memory://",
    ]);
    env.run_raw(&["snapshot", "create", "--store", "file://relative/store", "--workspace", "w", s(&src)])
        .fails(1)
        .stderr_has(&["file://relative/store", "absolute"]);
    env.run("create", &["--workspace", "a/b", s(&src)]).fails(1).stderr_has(&["'a/b'", "workspace id"]);
    assert!(!env.store.exists(), "an invalid workspace id is refused before the store is touched");
    let missing = env.path("no-such-dir");
    env.run("create", &["--workspace", "w", s(&missing)]).fails(1).stderr_has(&[s(&missing)]);
    let file = src.join("a.txt");
    env.run("create", &["--workspace", "w", s(&file)]).fails(1).stderr_has(&[s(&file), "not a directory"]);
    env.run("create", &["--workspace", "w", "--budget", "lots", s(&src)]).fails(2).stderr_has(&["--budget", "lots"]);

    // An initialised store without that workspace.
    env.run("create", &["--workspace", "w1", s(&src)]).ok();
    env.run("restore", &["--workspace", "w2", s(&out)]).fails(1).stderr_has(&[
        "workspace w2",
        "not found",
        "berth snapshot ls",
    ]);
    env.run("restore", &["--workspace", "w1", "--snapshot", "deadbeef", s(&out)])
        .fails(1)
        .stderr_has(&["deadbeef", "not found"]);
    env.run("restore", &["--workspace", "w1", "--snapshot", "xyz", s(&out)]).fails(1).stderr_has(&["'xyz'"]);
    env.run("verify", &["--workspace", "w2"]).fails(1).stderr_has(&["w2"]);
    env.run("ls", &["--generation", "1"]).fails(1).stderr_has(&["--workspace"]);
    assert!(!out.exists(), "a failed restore does not create its target");
}

#[test]
fn default_and_user_excludes() {
    let env = Env::new();
    let src = env.path("src");
    for (rel, data) in [
        ("src/main.rs", "fn main() {}"),
        ("node_modules/pkg/index.js", "module.exports = 1"),
        ("web/node_modules/x.js", "x"),
        ("target/debug/app", "elf"),
        ("app.log", "log"),
        ("logs/b.log", "log"),
        (".git-credentials", "https://user:token@example.com"),
        ("sub/.git-credentials", "https://user:token@example.com"),
        ("keep.txt", "keep"),
    ] {
        write_file(&src, rel, data.as_bytes(), 0o644);
    }
    let restored = |ws: &str, extra: &[&str]| {
        let mut args = vec!["--workspace", ws];
        args.extend_from_slice(extra);
        args.push(s(&src));
        env.run("create", &args).ok();
        let out = env.path(&format!("out-{ws}"));
        env.run("restore", &["--workspace", ws, s(&out)]).ok();
        paths(&out)
    };
    let kept = ["src", "src/main.rs", "web", "sub", "keep.txt"];

    let mut expected = set(&kept);
    expected.extend(set(&["app.log", "logs", "logs/b.log"]));
    assert_eq!(restored("defaults", &[]), expected, "node_modules/ and target/ are left out by default");

    let mut expected = expected.clone();
    expected.extend(set(&[
        "node_modules",
        "node_modules/pkg",
        "node_modules/pkg/index.js",
        "web/node_modules",
        "web/node_modules/x.js",
        "target",
        "target/debug",
        "target/debug/app",
    ]));
    assert_eq!(
        restored("everything", &["--no-default-excludes"]),
        expected,
        "--no-default-excludes keeps caches, never .git-credentials"
    );
    assert_eq!(
        restored("everything-else", &["--no-default-excludes", "--exclude", "!.git-credentials"]),
        expected,
        ".git-credentials cannot be re-included"
    );

    let mut expected = set(&kept);
    expected.insert("logs".into());
    assert_eq!(restored("nologs", &["--exclude", "*.log"]), expected, "--exclude '*.log'");
}

#[test]
fn budget_leaves_out_the_largest_file() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src, "big.bin", &Rng::new(3).bytes(2048), 0o644);
    for name in ["a.txt", "b.txt", "dir/c.txt"] {
        write_file(&src, name, &[b'x'; 100], 0o644);
    }
    let run = env.run("create", &["--workspace", "w", "--budget", "1KiB", "--json", s(&src)]).ok();
    let c = run.json();
    assert_eq!(c["skipped_for_budget"], serde_json::json!(["big.bin"]), "{c:#}");
    assert_eq!(u64_field(&c, "files_scanned"), 3, "{c:#}");
    assert!(
        run.stderr.contains("warning:") && run.stderr.contains("big.bin") && run.stderr.contains("--budget"),
        "the left-out file is listed on stderr: {run:?}"
    );
    let ls = env.run("ls", &["--json"]).ok().json();
    assert_eq!(ls[0]["record"]["skipped_for_budget"], serde_json::json!(["big.bin"]), "{ls:#}");

    let out = env.path("out");
    env.run("restore", &["--workspace", "w", s(&out)]).ok();
    assert_eq!(paths(&out), set(&["a.txt", "b.txt", "dir", "dir/c.txt"]));
    assert_same_tree(&read_tree(&src).without("big.bin"), &read_tree(&out));

    // Without a budget problem nothing is left out or warned about.
    let run = env.run("create", &["--workspace", "w", "--budget", "unlimited", "--json", s(&src)]).ok();
    assert_eq!(run.json()["skipped_for_budget"], serde_json::json!([]));
    assert!(!run.stderr.contains("warning"), "{run:?}");
}

#[test]
fn diff_lists_added_removed_and_modified_paths() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src, "a.txt", b"one", 0o644);
    write_file(&src, "b.txt", b"bee", 0o644);
    write_file(&src, "d/same.txt", b"same", 0o644);
    write_file(&src, "d/mode.sh", b"echo", 0o644);
    let id1 =
        str_field(&env.run("create", &["--workspace", "w", "--json", s(&src)]).ok().json(), "snapshot").to_string();

    write_file(&src, "a.txt", b"ONE!", 0o644);
    fs::remove_file(src.join("b.txt")).unwrap();
    write_file(&src, "new.txt", b"new", 0o644);
    fs::set_permissions(src.join("d/mode.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    // An mtime-only change is not a change.
    let f = fs::File::options().write(true).open(src.join("d/same.txt")).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
    let id2 =
        str_field(&env.run("create", &["--workspace", "w", "--json", s(&src)]).ok().json(), "snapshot").to_string();
    assert_ne!(id1, id2);

    let text = env.run("diff", &["--workspace", "w", &id1[..12], &id2[..12]]).ok();
    for line in ["M a.txt", "- b.txt", "+ new.txt", "M d/mode.sh", "4 change(s)"] {
        assert!(text.stdout.lines().any(|l| l.starts_with(line)), "diff output lacks {line:?}: {text:?}");
    }
    assert!(!text.stdout.contains("same.txt"), "{text:?}");

    let json = env.run("diff", &["--workspace", "w", "--json", &id1[..8], "latest"]).ok().json();
    let got: BTreeMap<String, (String, u64, u64)> = json
        .as_array()
        .expect("diff --json is an array")
        .iter()
        .map(|c| {
            let kind = str_field(c, "kind").to_string();
            (str_field(c, "path").to_string(), (kind, u64_field(c, "size_before"), u64_field(c, "size_after")))
        })
        .collect();
    let expected: BTreeMap<String, (String, u64, u64)> = [
        ("a.txt", ("modified", 3, 4)),
        ("b.txt", ("removed", 3, 0)),
        ("d/mode.sh", ("modified", 4, 4)),
        ("new.txt", ("added", 0, 3)),
    ]
    .into_iter()
    .map(|(p, (k, b, a))| (p.to_string(), (k.to_string(), b, a)))
    .collect();
    assert_eq!(got, expected);

    // Reversed, additions become removals; a snapshot against itself has no changes.
    let rev = env.run("diff", &["--workspace", "w", "--json", &id2[..12], &id1[..12]]).ok().json();
    assert!(rev.as_array().unwrap().iter().any(|c| c["path"] == "new.txt" && c["kind"] == "removed"), "{rev:#}");
    let none = env.run("diff", &["--workspace", "w", "--json", "latest", "latest"]).ok().json();
    assert_eq!(none, serde_json::json!([]));
}

#[test]
fn verify_read_data_finds_a_corrupt_pack() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src, "data.bin", &Rng::new(4).bytes(300_000), 0o644);
    write_file(&src, "small.txt", b"small", 0o644);
    env.run("create", &["--workspace", "w", s(&src)]).ok();
    let v = env.run("verify", &["--workspace", "w"]).ok();
    assert!(v.stdout.contains("ok"), "{v:?}");
    let v = env.run("verify", &["--workspace", "w", "--read-data", "--json"]).ok().json();
    assert_eq!(v["errors"], serde_json::json!([]), "{v:#}");
    assert!(u64_field(&v, "packs_read") >= 1, "{v:#}");

    // Corrupt the pack holding data.bin (the largest), in its middle: blob data.
    let pack = env.packs().into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).expect("a pack");
    let pack = &pack;
    let mut bytes = fs::read(pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(pack, &bytes).unwrap();
    let short = &pack.file_name().unwrap().to_str().unwrap()[..12];

    // Same size: only reading the data finds it.
    env.run("verify", &["--workspace", "w"]).ok();
    let bad = env.run("verify", &["--workspace", "w", "--read-data"]).fails(1);
    assert!(bad.stdout.contains(short) || bad.stderr.contains(short), "the message names pack {short}: {bad:?}");
    let bad = env.run("verify", &["--workspace", "w", "--read-data", "--json"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let errors = bad.json()["errors"].as_array().cloned().unwrap_or_default();
    assert!(errors.iter().any(|e| e.as_str().is_some_and(|e| e.contains(short))), "{bad:?}");

    // A restore checks every chunk: it fails instead of writing corrupt data.
    let out = env.path("out");
    env.run("restore", &["--workspace", "w", s(&out)]).fails(1).stderr_has(&["corrupt"]);
}

#[test]
fn forget_then_prune_twice_reclaims_space() {
    let env = Env::new();
    let src = env.path("src");
    let mut ids = Vec::new();
    // Each snapshot holds only its own file, so each older pack becomes wholly unreferenced.
    for i in 1..=3u64 {
        if i > 1 {
            fs::remove_file(src.join(format!("x{}", i - 1))).unwrap();
        }
        write_file(&src, &format!("x{i}"), &Rng::new(10 + i).bytes(200_000), 0o644);
        let c = env.run("create", &["--workspace", "w", "--json", s(&src)]).ok().json();
        assert_eq!(u64_field(&c, "seq"), i);
        ids.push(str_field(&c, "snapshot").to_string());
    }
    // Each snapshot wrote a data pack and a pack of tree objects (its root directory).
    let packs_before = env.packs();
    assert_eq!(packs_before.len(), 6, "{packs_before:?}");
    let keep =
        ["--keep-last", "1", "--keep-hourly", "0", "--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0"];
    let count = || env.run("ls", &["--json"]).ok().json().as_array().map_or(0, Vec::len);

    let mut args = keep.to_vec();
    args.extend(["--dry-run", "--json"]);
    let dry = env.run("forget", &args).ok().json();
    assert_eq!((dry["dry_run"].as_bool(), u64_field(&dry, "forgotten")), (Some(true), 0), "{dry:#}");
    let decisions = dry["plan"][0]["decisions"].as_array().expect("decisions").clone();
    assert_eq!(decisions.len(), 3, "{dry:#}");
    let kept: Vec<&Value> = decisions.iter().filter(|d| d["keep"] == true).collect();
    assert_eq!(kept.len(), 1, "{dry:#}");
    assert_eq!(kept[0]["seq"], 3, "{dry:#}");
    assert_eq!(count(), 3, "a dry run forgets nothing");
    let text = env.run("forget", &[&keep[..], &["--dry-run"]].concat()).ok();
    assert!(text.stdout.contains("would forget 2"), "{text:?}");
    assert_eq!(count(), 3, "a dry run forgets nothing");

    let real = env.run("forget", &[&keep[..], &["--json"]].concat()).ok().json();
    assert_eq!(u64_field(&real, "forgotten"), 2, "{real:#}");
    let ls = env.run("ls", &["--json"]).ok().json();
    assert_eq!(ls.as_array().map(Vec::len), Some(1), "{ls:#}");
    assert_eq!(ls[0]["id"], ids[2].as_str());

    let dry = env.run("prune", &["--grace", "0s", "--dry-run", "--json"]).ok().json();
    assert!(dry["outcome"].is_null(), "{dry:#}");
    let p1 = env.run("prune", &["--grace", "0s", "--json"]).ok().json();
    assert_eq!(u64_field(&p1["outcome"], "packs_deleted"), 0, "the first run only marks: {p1:#}");
    assert_eq!(u64_field(&p1["outcome"], "marked"), 4, "two data packs and two tree packs: {p1:#}");
    assert_eq!(env.packs(), packs_before, "the first prune deletes nothing");

    let p2 = env.run("prune", &["--grace", "0s", "--json"]).ok().json();
    assert_eq!(u64_field(&p2["outcome"], "packs_deleted"), 4, "{p2:#}");
    assert_eq!(u64_field(&p2["outcome"], "manifests_deleted"), 0, "{p2:#}");
    let after = env.packs();
    assert_eq!(after.len(), 2, "the second prune deletes the marked packs: {after:?}");
    assert!(after.iter().all(|p| packs_before.contains(p)));

    let out = env.path("out");
    env.run("restore", &["--workspace", "w", s(&out)]).ok();
    assert_same_tree(&read_tree(&src), &read_tree(&out));
    env.run("verify", &["--workspace", "w", "--read-data"]).ok();
    // Nothing is left to do.
    let p3 = env.run("prune", &["--grace", "0s", "--json"]).ok().json();
    assert_eq!(u64_field(&p3["outcome"], "packs_deleted"), 0, "{p3:#}");
    assert_eq!(u64_field(&p3["outcome"], "marked"), 0, "{p3:#}");
}

#[test]
fn a_new_generation_sees_nothing_of_the_old_one() {
    let env = Env::new();
    let (old, new) = (env.path("old"), env.path("new"));
    write_file(&old, "memory.txt", b"what the first owner knew", 0o644);
    write_file(&new, "fresh.txt", b"a new start", 0o644);
    env.run("create", &["--workspace", "owner", s(&old)]).ok();

    let out = env.path("out");
    env.run("restore", &["--workspace", "owner", "--generation", "2", s(&out)]).fails(1).stderr_has(&[
        "owner",
        "generation 2",
        "not found",
    ]);
    assert!(!out.exists(), "nothing of generation 1 is restored");

    env.run("create", &["--workspace", "owner", "--generation", "2", s(&new)]).ok();
    env.run("restore", &["--workspace", "owner", "--generation", "2", s(&out)]).ok();
    assert_same_tree(&read_tree(&new), &read_tree(&out));
    let out1 = env.path("out1");
    env.run("restore", &["--workspace", "owner", s(&out1)]).ok();
    assert_same_tree(&read_tree(&old), &read_tree(&out1));

    let ls = env.run("ls", &["--workspace", "owner", "--generation", "2", "--json"]).ok().json();
    let rows = ls.as_array().expect("array");
    assert_eq!(rows.len(), 1, "{ls:#}");
    assert_eq!((rows[0]["record"]["generation"].as_u64(), rows[0]["record"]["seq"].as_u64()), (Some(2), Some(1)));
}

#[test]
fn restore_into_an_existing_directory() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src, "keep.txt", b"snapshot content", 0o644);
    write_file(&src, "dir/a.txt", b"a", 0o600);
    write_file(&src, "dir/sub/b.txt", b"b", 0o644);
    write_file(&src, "web/app.js", b"app()", 0o644);
    fs::create_dir_all(src.join("empty")).unwrap();
    write_symlink(&src, "link", "keep.txt");
    env.run("create", &["--workspace", "w", s(&src)]).ok();

    let out = env.path("out");
    let outside = env.path("outside");
    write_file(&outside, "victim.txt", b"outside the target", 0o644);
    write_file(&out, "keep.txt", b"local edits", 0o755);
    write_file(&out, "extra.txt", b"extra", 0o644);
    write_file(&out, "extra_dir/deep/file", b"deep", 0o644);
    write_file(&out, "dir/sub", b"a file where the snapshot has a directory", 0o644);
    write_file(&out, "empty/stale", b"stale", 0o644);
    symlink(&outside, out.join("web")).unwrap();
    write_symlink(&out, "link", "/etc/passwd");
    let excluded = [
        ("node_modules/pkg/index.js", "module.exports = 1"),
        ("dir/node_modules/lib.js", "lib"),
        ("target/out.o", "obj"),
        ("build/x", "artifact"),
    ];
    for (rel, data) in excluded {
        write_file(&out, rel, data.as_bytes(), 0o644);
    }

    // A directory berth did not restore into is not cleared without --delete.
    let before = read_tree(&out);
    env.run("restore", &["--workspace", "w", s(&out)]).fails(1).stderr_has(&["not empty", "--delete"]);
    assert_same_tree(&before, &read_tree(&out));
    let r = env.run("restore", &["--workspace", "w", "--delete", "--json", s(&out)]).ok().json();
    assert!(u64_field(&r, "removed") >= 3, "{r:#}");

    let mut restored = read_tree(&out);
    for (rel, data) in excluded {
        let want = berth_testkit::tree::content_digest(data.as_bytes());
        match restored.get(rel).map(|n| &n.kind) {
            Some(Kind::File { digest, .. }) => assert_eq!(*digest, want, "{rel} is left alone"),
            other => panic!("excluded {rel} must be left alone, found {other:?}"),
        }
    }
    for x in ["node_modules", "dir/node_modules", "target", "build"] {
        restored = restored.without(x);
    }
    assert_same_tree(&read_tree(&src), &restored);
    assert_eq!(fs::read(outside.join("victim.txt")).unwrap(), b"outside the target", "no write through a symlink");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1, "nothing written outside the target");
}

/// A restore never clears what berth did not write: a foreign non-empty directory needs
/// --delete; `/`, the home directory, a directory holding the store or the cache, and a symlinked
/// target are refused whatever is asked. A directory berth restored into (its marker) is made to
/// match the snapshot again without --delete.
#[test]
fn restore_refuses_targets_it_must_not_clear() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src, "a.txt", b"snapshot", 0o644);
    env.run("create", &["--workspace", "w", s(&src)]).ok();
    let store_before = read_tree(&env.store);

    // `/`: refused before anything is read (the workspace has no snapshot, so even a restore
    // without the check stops at "not found" before touching `/`).
    env.run("restore", &["--workspace", "none", "--delete", "/"]).fails(1).stderr_has(&["root directory"]);

    // The home directory (and a directory holding it), even with --delete.
    let home = env.path("home");
    write_file(&home, "precious.txt", b"mine", 0o644);
    for target in [home.clone(), env.path("")] {
        let mut c = env.command("restore", &["--workspace", "w", "--delete", s(&target)]);
        c.env("HOME", &home);
        util::Run::of(c).fails(1).stderr_has(&["home directory"]);
    }
    assert_eq!(fs::read(home.join("precious.txt")).unwrap(), b"mine");

    // A directory holding the store, or the cache, or inside the store.
    let holder = env.path("holder");
    write_file(&holder, "own.txt", b"mine", 0o644);
    let store_url = format!("file://{}", holder.join("store").display());
    let holder_store = holder.join("store");
    fs::create_dir_all(&holder_store).unwrap();
    let mut c = env.raw();
    c.args(["snapshot", "create", "--store", &store_url, "--no-cache", "--workspace", "w", s(&src)]);
    util::Run::of(c).ok();
    let mut c = env.raw();
    c.args(["snapshot", "restore", "--store", &store_url, "--no-cache", "--workspace", "w", "--delete", s(&holder)]);
    util::Run::of(c).fails(1).stderr_has(&["holds the store"]);
    assert_eq!(fs::read(holder.join("own.txt")).unwrap(), b"mine");
    let inside = env.store.join("sub");
    env.run("restore", &["--workspace", "w", "--delete", s(&inside)]).fails(1).stderr_has(&["inside the store"]);
    let with_cache = env.path("with-cache");
    write_file(&with_cache, "own.txt", b"mine", 0o644);
    let mut c = env.raw();
    let cache = with_cache.join("cache");
    c.args(["snapshot", "restore", "--store", &env.url, "--cache-dir", s(&cache), "--workspace", "w"]);
    c.args(["--delete", s(&with_cache)]);
    util::Run::of(c).fails(1).stderr_has(&["holds the cache"]);
    assert_eq!(fs::read(with_cache.join("own.txt")).unwrap(), b"mine");
    assert_same_tree(&store_before, &read_tree(&env.store));

    // A symlinked target: refused, and the directory it points to is left alone.
    let pointed = env.path("pointed");
    write_file(&pointed, "victim.txt", b"not berth's", 0o644);
    let link = env.path("link");
    symlink(&pointed, &link).unwrap();
    env.run("restore", &["--workspace", "w", "--delete", s(&link)]).fails(1).stderr_has(&["symlink"]);
    assert_eq!(paths(&pointed), set(&["victim.txt"]));

    // A foreign non-empty directory: refused without --delete, untouched.
    let foreign = env.path("foreign");
    write_file(&foreign, "theirs.txt", b"not berth's", 0o644);
    env.run("restore", &["--workspace", "w", s(&foreign)]).fails(1).stderr_has(&["not empty", "--delete"]);
    assert_eq!(paths(&foreign), set(&["theirs.txt"]));

    // A new directory gets the marker; berth may then clear it again without --delete.
    let out = env.path("out");
    env.run("restore", &["--workspace", "w", s(&out)]).ok();
    assert!(out.join(".berth/run/restored").is_file(), "the restore leaves its marker");
    write_file(&out, "extra.txt", b"added later", 0o644);
    env.run("restore", &["--workspace", "w", s(&out)]).ok();
    assert_eq!(paths(&out), set(&["a.txt"]));
}

/// An S3 store without credentials fails at once with a permanent error that says what to set,
/// and never waits on an instance metadata endpoint (which berth calls only when
/// `BERTH_S3_IMDS=1`).
#[test]
fn s3_without_credentials_fails_at_once_naming_the_variables() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src, "a.txt", b"a", 0o644);
    for (sub, args) in [("ls", vec![]), ("create", vec!["--workspace", "w", s(&src)])] {
        let mut c = env.raw();
        c.args(["snapshot", sub, "--store", "s3://no-such-bucket/berth"]).args(&args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                c.env_remove(&k);
            }
        }
        // An unroutable metadata endpoint: any attempt to use it would hang until its timeout.
        c.env("AWS_METADATA_ENDPOINT", "http://10.255.255.1").env("AWS_PROFILE", "dev").env_remove("BERTH_S3_IMDS");
        let started = std::time::Instant::now();
        let run = util::Run::of(c).fails(1).stderr_has(&[
            "no S3 credentials",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "BERTH_S3_IMDS=1",
            "AWS_PROFILE is set",
        ]);
        assert!(!run.stderr.contains("temporary"), "a missing credential is permanent: {run:?}");
        // Generous for a loaded machine; a metadata timeout plus retries takes far longer.
        assert!(started.elapsed() < Duration::from_secs(20), "took {:?}: {run:?}", started.elapsed());
    }
}

/// Input echoed in an error is cut: a 100 kB workspace id, snapshot selector or store URL does
/// not come back whole.
#[test]
fn error_messages_are_bounded() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src, "a.txt", b"a", 0o644);
    env.run("create", &["--workspace", "w", s(&src)]).ok();
    let huge = "x".repeat(100_000);
    let out = env.path("out");
    for run in [
        env.run("ls", &["--workspace", &huge]),
        env.run("restore", &["--workspace", "w", "--snapshot", &huge, s(&out)]),
        env.run_raw(&["snapshot", "ls", "--store", &format!("ftp://{huge}")]),
    ] {
        let run = run.fails(1);
        assert!(
            run.stderr.contains("xxxx") && run.stderr.len() < 4096,
            "{} bytes: {}",
            run.stderr.len(),
            &run.stderr[..200]
        );
    }
}

#[test]
fn one_prune_at_a_time() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src, "a", b"data", 0o644);
    env.run("create", &["--workspace", "w", s(&src)]).ok();
    let lock = env.store.join("prune/lock");
    fs::create_dir_all(lock.parent().unwrap()).unwrap();
    // A live lock held by another prune: refused, naming the lock and its holder.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    fs::write(&lock, format!(r#"{{"host":"other-host","pid":4242,"time":{now}}}"#)).unwrap();
    env.run("prune", &["--grace", "0s"]).fails(1).stderr_has(&["prune/lock", "other-host", "4242"]);
    assert!(lock.exists(), "a refused prune leaves the other prune's lock alone");
    // A dry run needs no lock.
    env.run("prune", &["--grace", "0s", "--dry-run"]).ok();
    // A lock left by a prune that died long ago is taken over, and released afterwards.
    fs::write(&lock, r#"{"host":"gone","pid":1,"time":0}"#).unwrap();
    env.run("prune", &["--grace", "0s"]).ok();
    assert!(!lock.exists(), "the lock is released when the prune ends");
}

/// A prune killed (SIGKILL) while it holds the lock stops the next prune only until it misses
/// its heartbeats (6 of its periods), not for hours; while it beats, it is never taken over.
#[test]
fn a_killed_prune_is_taken_over_after_its_heartbeats() {
    let env = Env::new();
    let src = env.path("src");
    for i in 1..=2u64 {
        let _ = fs::remove_file(src.join(format!("x{}", i - 1)));
        write_file(&src, &format!("x{i}"), &Rng::new(40 + i).bytes(100_000), 0o644);
        env.run("create", &["--workspace", "w", s(&src)]).ok();
    }
    let keep = ["--keep-last", "1", "--keep-hourly", "0", "--keep-daily", "0", "--keep-weekly", "0"];
    env.run("forget", &[&["--workspace", "w"][..], &keep].concat()).ok();
    // The pruner beats every 2 s (a loaded machine never delays a beat by 6 of them) and,
    // through the test hook, stops for good once it holds the lock and has planned: the sync
    // point is its first beat.
    let mut cmd = env.command("prune", &["--grace", "0s", "--lock-heartbeat", "2s"]);
    cmd.env("BERTH_TEST_PAUSE_PRUNE", "1").stdout(std::process::Stdio::null());
    cmd.stderr(fs::File::create(env.path("pruner.log")).unwrap());
    let mut pruner = cmd.spawn().expect("spawn the pruner");
    let beats = env.store.join("prune/lock-beats");
    let newest_beat = || -> Option<u64> {
        let dir = fs::read_dir(&beats).ok()?.next()?.ok()?.path();
        let newest = fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).max()?;
        let beat: Value = serde_json::from_slice(&fs::read(newest).ok()?).ok()?;
        beat["time"].as_u64()
    };
    let first = berth_testkit::eventually(60, "the pruner's first beat", newest_beat);
    // Alive and beating: refused, also past 6 of its periods.
    let alive_until = Duration::from_secs(14);
    let started = std::time::Instant::now();
    while started.elapsed() < alive_until {
        env.run("prune", &["--grace", "0s"]).fails(1).stderr_has(&["prune/lock", "wait for it"]);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(newest_beat().unwrap() > first, "the paused pruner kept beating");
    pruner.kill().expect("SIGKILL the pruner");
    pruner.wait().unwrap();
    let last_beat = newest_beat().expect("the dead pruner's last beat");
    // The next prune runs once the lock missed 6 beats: never before, and promptly after.
    let killed = std::time::Instant::now();
    let taken = loop {
        let run = env.run("prune", &["--grace", "0s", "--json"]);
        let ended = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64;
        if run.status.code() == Some(0) {
            break ended;
        }
        assert!(run.stderr.contains("prune/lock"), "refused for the lock, not else: {run:?}");
        assert!(killed.elapsed() < Duration::from_secs(60), "the lock was not taken over within 60 s: {run:?}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(taken >= last_beat + 12_000_000_000, "taken over before 6 missed beats: {taken} vs {last_beat}");
    // The prune that took over did the dead one's work: a second run deletes the marked packs.
    let second = env.run("prune", &["--grace", "0s", "--json"]).ok().json();
    assert!(second["outcome"]["packs_deleted"].as_u64().unwrap() >= 1, "{second:#}");
    env.run("verify", &["--workspace", "w", "--read-data"]).ok();
    let out = env.path("out");
    env.run("restore", &["--workspace", "w", s(&out)]).ok();
    assert_same_tree(&read_tree(&src), &read_tree(&out));
    assert!(!env.store.join("prune/lock").exists(), "released");
    let left: Vec<_> = fs::read_dir(&beats).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.iter().all(|d| fs::read_dir(d).map_or(true, |mut e| e.next().is_none())), "beats left: {left:?}");
}

/// Checks, from the calls a shimmed `berth snapshot create` made, that everything it made in
/// `store` (objects by hard link, their directories) was durable before the snapshot record
/// that makes it visible: an object's data synced before its name exists, and each new name
/// synced through its directory before the record's link; the record's own name synced before
/// exit. Returns the objects the run linked.
fn assert_synced_before_the_record(store: &Path, calls: &[util::fsync::Call]) -> BTreeSet<std::path::PathBuf> {
    use util::fsync::Call;
    let record = calls
        .iter()
        .rposition(|c| matches!(c, Call::Link(_, new) if new.starts_with(store.join("snapshots"))))
        .unwrap_or_else(|| panic!("no snapshot record was linked: {calls:#?}"));
    let mut made = Vec::new();
    let mut linked = BTreeSet::new();
    for (i, call) in calls.iter().enumerate() {
        match call {
            Call::Link(old, new) if new.starts_with(store) => {
                let synced = calls[..i].iter().any(|c| *c == Call::Sync(old.clone()));
                assert!(synced, "{} got its name before its data was synced", new.display());
                made.push((i, new.clone()));
                linked.insert(new.clone());
            }
            Call::Mkdir(dir) if dir.starts_with(store) => made.push((i, dir.clone())),
            Call::Rename(_, new) if new.starts_with(store) => {
                panic!("{} was renamed into place; objects are linked, so nothing is ever replaced", new.display())
            }
            _ => {}
        }
    }
    for (i, path) in made {
        let dir = path.parent().expect("a parent").to_path_buf();
        let synced = calls[i + 1..].iter().position(|c| *c == Call::Sync(dir.clone())).map(|j| i + 1 + j);
        let Some(at) = synced else { panic!("{} was never made durable (no sync of its directory)", path.display()) };
        if i < record {
            assert!(at < record, "{} was made durable only after the snapshot record", path.display());
        }
    }
    linked
}

/// Every file in the store (temporary files of interrupted writes excluded).
fn store_objects(store: &Path) -> BTreeSet<std::path::PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![store.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if !e.file_name().to_string_lossy().starts_with(".berth-tmp.") {
                out.insert(e.path());
            }
        }
    }
    out
}

/// The directory store's durability, observed on the real binary: an `LD_PRELOAD` shim records
/// every sync, link and mkdir of `berth snapshot create` (a first snapshot that initialises the
/// store, then an incremental one), and every object the record makes visible was synced, name
/// included, before the record was linked. (SIGKILL tests cannot see this: the page cache
/// survives a killed process, not a power loss.)
#[test]
fn every_object_is_synced_before_the_record_that_makes_it_visible() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let so = util::fsync::build_shim(&env.path(""));
    let mut before = BTreeSet::new();
    for round in 0..2 {
        let log = env.path(&format!("fsync-{round}.log"));
        let mut c = env.command("create", &["--workspace", "w", "--json", s(&src)]);
        util::fsync::preload(&mut c, &so, &log);
        let out = Run::of(c).ok().json();
        assert_eq!(out["unchanged"], false, "round {round}: {out:#}");
        let linked = assert_synced_before_the_record(&env.store, &util::fsync::calls(&log));
        let after = store_objects(&env.store);
        let new: BTreeSet<_> = after.difference(&before).cloned().collect();
        assert!(new.len() >= 3, "round {round}: a pack, an index and a record at least: {new:#?}");
        assert_eq!(new, linked, "round {round}: every new object came through a synced link");
        before = after;
        write_file(&src, "changed.txt", format!("round {round}").as_bytes(), 0o644);
    }
}
