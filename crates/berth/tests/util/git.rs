//! Git fixtures for end-to-end tests: bare remotes with a first commit, and a loopback
//! smart-HTTP server that requires a token (`git_http_server.py`, started and stopped here).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Runs `git ARGS` in `dir` (no prompts, a fixed identity) and returns stdout; panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.test")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.test")
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?} in {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Creates the bare repository `<root>/<name>.git` whose `main` has one commit with README.md.
pub fn bare_repo(root: &Path, name: &str) -> PathBuf {
    let bare = root.join(format!("{name}.git"));
    fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let seed = root.join(format!("{name}-seed"));
    fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q", "-b", "main"]);
    fs::write(seed.join("README.md"), format!("# {name}\n")).unwrap();
    git(&seed, &["add", "README.md"]);
    git(&seed, &["commit", "-q", "-m", "first"]);
    git(&seed, &["push", "-q", bare.to_str().unwrap(), "main"]);
    fs::remove_dir_all(&seed).unwrap();
    bare
}

/// The loopback smart-HTTP git server.
pub struct GitHttp {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The token its repositories require (as the Basic auth password).
    pub token: String,
    /// The workload identity its `/token` endpoint exchanges for the token.
    pub identity_file: PathBuf,
    port_file: PathBuf,
}

impl GitHttp {
    /// Serves the bare repositories under `root`; state files go to `work`.
    pub fn start(root: &Path, work: &Path, token: &str) -> GitHttp {
        GitHttp::start_with(root, work, token, None)
    }

    /// Like [`GitHttp::start`], but each token from `/token` is valid for `ttl_secs` only
    /// (the repositories refuse it after that); `/token` calls are logged in `exchanges`.
    pub fn start_expiring(root: &Path, work: &Path, token: &str, ttl_secs: u64) -> GitHttp {
        GitHttp::start_with(root, work, token, Some(ttl_secs))
    }

    /// When each `/token` exchange happened (seconds since the epoch), first to last.
    pub fn exchanges(&self) -> Vec<f64> {
        let text = fs::read_to_string(self.port_file.with_extension("exchanges")).unwrap_or_default();
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    fn start_with(root: &Path, work: &Path, token: &str, ttl_secs: Option<u64>) -> GitHttp {
        fs::create_dir_all(work).unwrap();
        let token_file = work.join("server-token");
        fs::write(&token_file, token).unwrap();
        let identity_file = work.join("identity");
        fs::write(&identity_file, "workload-identity-jwt").unwrap();
        let port_file = work.join("port");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/git_http_server.py");
        let child = Command::new("python3")
            .arg(script)
            .args([root, &token_file, &identity_file, &port_file])
            .args(ttl_secs.map(|t| t.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the git HTTP server (python3)");
        let port =
            berth_testkit::eventually(20, "the git HTTP server's port file", || fs::read_to_string(&port_file).ok());
        let url = format!("http://127.0.0.1:{}", port.trim());
        GitHttp { child, url, token: token.to_string(), identity_file, port_file }
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
