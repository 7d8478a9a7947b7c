//! Repository hygiene checks that run with the tests: every Rust file says what it is for.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crates dir").to_path_buf();
    let mut files = Vec::new();
    rust_files(&crates, &mut files);
    assert!(files.len() > 20, "found only {} Rust files under {}", files.len(), crates.display());
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !fs::read_to_string(f).expect("readable file").starts_with("//!"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(missing.is_empty(), "these files do not start with a `//!` line saying what they are for: {missing:#?}");
}

/// Each library crate, the berth crates it may depend on, and heavy crates it must not pull in
/// (the "architecture invariant" lines of ARCHITECTURE.md).
const LAYERS: &[(&str, &[&str], &[&str])] = &[
    ("berth-core", &[], &["tokio", "sqlx", "axum", "reqwest", "object_store", "bollard"]),
    ("berth-api", &["berth-core"], &["sqlx", "axum", "object_store", "bollard"]),
    ("berth-substrate", &["berth-core"], &["sqlx", "axum", "reqwest", "object_store"]),
    ("berth-engine", &["berth-core"], &["sqlx", "axum", "bollard"]),
    ("berth-docker", &["berth-core", "berth-substrate"], &["sqlx", "axum", "object_store"]),
    ("berth-kube", &["berth-core", "berth-substrate"], &["sqlx", "object_store", "bollard"]),
    (
        "berth-control",
        &["berth-core", "berth-api", "berth-engine", "berth-substrate", "berth-docker", "berth-kube"],
        &[],
    ),
    ("berth-agent", &["berth-core", "berth-api", "berth-engine"], &["bollard"]),
    // Test support only (a dev-dependency): no berth crate, so every crate's tests can use it.
    ("berth-testkit", &[], &["axum", "bollard", "object_store", "reqwest"]),
];

#[test]
fn crates_depend_only_on_what_their_invariant_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(&root)
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let mut broken = Vec::new();
    for package in meta["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().unwrap_or_default();
        if name == "berth" {
            continue;
        }
        let Some((_, allowed, forbidden)) = LAYERS.iter().find(|(n, _, _)| *n == name) else {
            broken.push(format!("{name} is not in tidy.rs LAYERS: add it with the crates it may depend on"));
            continue;
        };
        let deps = package["dependencies"].as_array().expect("dependencies");
        // Normal dependencies only: tests may use anything.
        for dep in deps.iter().filter(|d| d["kind"].is_null()) {
            let dep = dep["name"].as_str().unwrap_or_default();
            if (dep.starts_with("berth") && !allowed.contains(&dep)) || forbidden.contains(&dep) {
                broken.push(format!("{name} depends on {dep}"));
            }
        }
    }
    assert!(broken.is_empty(), "crate layering broken (see ARCHITECTURE.md): {broken:#?}");
}

/// Functions in library and binary sources stay short enough to read at once; a longer one says
/// why on the line above it with a `// long:` comment.
const MAX_FN_LINES: usize = 80;

/// The functions of one rustfmt-formatted file longer than `MAX_FN_LINES`, as `name (lines)`.
/// A function runs from its `fn` line to the first line that closes it at the same indent.
fn long_functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut long = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let Some(name) = fn_name(body) else { continue };
        if !line.trim_end().ends_with('{') || (i > 0 && lines[i - 1].trim_start().starts_with("// long:")) {
            continue;
        }
        let close = format!("{indent}}}");
        let Some(end) = lines[i + 1..].iter().position(|l| *l == close) else { continue };
        if end + 2 > MAX_FN_LINES {
            long.push((name, end + 2));
        }
    }
    long
}

/// The name in a line that starts a function item (`pub async fn name(...`), if it does.
fn fn_name(line: &str) -> Option<String> {
    let mut rest = line;
    for prefix in ["pub(crate) ", "pub(super) ", "pub ", "const ", "async ", "unsafe ", "extern \"C\" "] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("fn ")?;
    Some(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
}

#[test]
fn no_function_in_sources_is_over_80_lines_without_a_reason() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crates dir").to_path_buf();
    let mut files = Vec::new();
    rust_files(&crates, &mut files);
    let mut found = Vec::new();
    for file in files.iter().filter(|f| f.components().any(|c| c.as_os_str() == "src")) {
        let text = fs::read_to_string(file).expect("readable file");
        // Unit tests inside a source file are tests, not sources.
        let text = text.split("\n#[cfg(test)]").next().unwrap_or_default();
        for (name, n_lines) in long_functions(text) {
            found.push(format!("{}: fn {name} is {n_lines} lines", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them, or say why above the fn with `// long: REASON`): {found:#?}"
    );
}

#[test]
fn long_functions_are_found_and_a_reason_excuses_them() {
    let body = "    x();\n".repeat(MAX_FN_LINES);
    let long = format!("pub async fn big(a: u8) -> u8 {{\n{body}}}\nfn small() {{\n}}\n");
    assert_eq!(long_functions(&long), vec![("big".to_string(), MAX_FN_LINES + 2)]);
    let excused = format!("// long: one match over every variant\n{long}");
    assert!(long_functions(&excused).is_empty());
    let nested = format!("impl A {{\n    fn inner() {{\n{body}    }}\n}}\n");
    assert_eq!(long_functions(&nested), vec![("inner".to_string(), MAX_FN_LINES + 2)]);
}
