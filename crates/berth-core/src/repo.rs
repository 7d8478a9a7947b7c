//! Repository specs from input: clone URLs without credentials, target paths that stay inside
//! the workspace.

use crate::path::RelPath;

/// A repository spec that cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("repo {url}: {reason}")]
pub struct RepoError {
    /// The URL, with any credentials removed.
    pub url: String,
    /// What is wrong and what to do.
    pub reason: String,
}

/// One repository to clone into the workspace, as the domain knows it (the API and the agent's
/// flags have their own spellings and convert into this).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RepoSpec {
    /// Clone URL, without credentials.
    pub url: String,
    /// Branch to check out (default: the remote's default branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Shallow clone depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// Target path inside the workspace (default: the URL's basename without `.git`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl RepoSpec {
    /// Validates the spec and returns its target path inside the workspace.
    pub fn target(&self) -> Result<RelPath, RepoError> {
        target(&self.url, self.branch.as_deref(), self.depth, self.path.as_deref())
    }
}

/// Returns `url` with the userinfo part (`user:token@`) of a `scheme://` URL removed.
pub fn strip_credentials(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_string() };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &url[..scheme_end + 3], &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Returns `url` as it may be shown: without any userinfo (`scheme://user:pass@`, or the
/// `user:pass@` of an scp-like `user:pass@host:path`) and without its query.
pub fn shown_url(url: &str) -> String {
    let base = match url.split_once('?') {
        Some((base, _)) => format!("{base}?..."),
        None => url.to_string(),
    };
    if let Some(i) = base.find("://") {
        let stripped = strip_credentials(&base);
        let (scheme, rest) = stripped.split_at(i + 3);
        let end = rest.find(['/', '#']).unwrap_or(rest.len());
        // An encoded '@' hides userinfo in the host: show only what follows it.
        return match rest[..end].to_ascii_lowercase().rfind("%40") {
            Some(at) => format!("{scheme}{}", &rest[at + 3..]),
            None => stripped,
        };
    }
    match base.split_once('@') {
        Some((user, rest)) if user.contains(':') => rest.to_string(),
        _ => base,
    }
}

/// Returns the `host[:port]` git asks a credential helper about for `url` (http and https
/// only: other transports do not use credential helpers); `None` for other URLs or a host
/// with characters a host does not have.
pub fn credential_host(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return None;
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let valid = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    valid.then(|| host.to_string())
}

/// Returns what credential `url` carries, if any: userinfo in a URL with a scheme (only a bare
/// user name is allowed, and only for ssh), a password in an scp-like `user:pass@host:path`,
/// a query string (git URLs have none: it is where tokens hide), or an encoded `@` in the host.
fn credential_in(url: &str) -> Option<&'static str> {
    if url.contains('?') {
        return Some("a query string");
    }
    let Some(i) = url.find("://") else {
        let user = url.split_once('@').map(|(u, _)| u);
        return user.filter(|u| u.contains(':') && !u.contains('/')).map(|_| "a password before '@'");
    };
    let scheme = url[..i].to_ascii_lowercase();
    let rest = &url[i + 3..];
    let authority = &rest[..rest.find(['/', '#']).unwrap_or(rest.len())];
    let ssh = matches!(scheme.as_str(), "ssh" | "git+ssh" | "ssh+git");
    match authority.rfind('@') {
        Some(at) if !ssh || authority[..at].contains(':') => Some("a user name or password before '@'"),
        _ if authority.to_ascii_lowercase().contains("%40") => Some("an encoded '@' in the host"),
        _ => None,
    }
}

/// Validates a repo spec's URL, branch and depth, and returns the target path: `path` if
/// given, else the URL's basename without `.git`. A URL carrying a credential in any form is
/// refused, and the error never repeats the credential.
pub fn target(url: &str, branch: Option<&str>, depth: Option<u32>, path: Option<&str>) -> Result<RelPath, RepoError> {
    let shown = shown_url(url);
    let fail = |reason: &str| RepoError { url: shown.clone(), reason: reason.to_string() };
    if url.is_empty() || url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(fail("the URL must be 1-2048 characters without spaces"));
    }
    if url.starts_with('-') {
        return Err(fail("the URL must not start with '-'"));
    }
    if let Some(what) = credential_in(url) {
        return Err(fail(&format!(
            "credentials in repo URLs are refused (this one has {what}); the credential endpoint or token file supplies them"
        )));
    }
    if let Some(b) = branch {
        let bad = b.is_empty()
            || b.starts_with('-')
            || b.contains("..")
            || b.chars().any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
        if bad {
            return Err(fail("the branch is not a valid git ref name"));
        }
    }
    if depth == Some(0) {
        return Err(fail("depth must be at least 1"));
    }
    let rel = match path {
        Some(p) => p.trim_end_matches('/').to_string(),
        None => {
            let base = url.trim_end_matches('/').rsplit(['/', ':']).next().unwrap_or("");
            base.strip_suffix(".git").unwrap_or(base).to_string()
        }
    };
    RelPath::new(rel.into_bytes()).map_err(|e| fail(&format!("target path: {e}")))
}

/// Why a git operation against a remote failed, as far as its message tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The remote refused the credentials, or none were there: permanent.
    Auth,
    /// The remote or the repository does not exist: permanent.
    NotFound,
    /// The network or the remote failed: worth retrying.
    Network,
    /// Anything else (a local problem): permanent.
    Other,
}

impl FailureKind {
    /// Returns whether a retry may succeed.
    pub fn is_transient(self) -> bool {
        self == FailureKind::Network
    }
}

/// Classifies a failed git command by its (redacted) stderr.
pub fn classify_failure(stderr: &str) -> FailureKind {
    let s = stderr.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
    if any(&[
        "authentication failed",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "permission denied (publickey",
        "returned error: 401",
        "returned error: 403",
        "invalid username or password",
        "access denied",
    ]) {
        FailureKind::Auth
    } else if any(&[
        "repository not found",
        "does not appear to be a git repository",
        "returned error: 404",
        "not found",
        "remote branch",
    ]) {
        FailureKind::NotFound
    } else if any(&[
        "could not resolve host",
        "connection refused",
        "connection reset",
        "connection timed out",
        "timed out",
        "early eof",
        "rpc failed",
        "returned error: 5",
        "unable to access",
        "network is unreachable",
        "the remote end hung up",
        "failed to connect",
    ]) {
        FailureKind::Network
    } else {
        FailureKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, path: Option<&str>, expect: Result<&str, &str>) {
        let got = target(url, None, None, path);
        match (got, expect) {
            (Ok(p), Ok(e)) => assert_eq!(p.as_bytes(), e.as_bytes(), "{url}"),
            (Err(err), Err(e)) => assert!(err.to_string().contains(e), "{url}: {err} lacks {e}"),
            (got, expect) => panic!("{url}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn targets() {
        check("https://example.test/org/app.git", None, Ok("app"));
        check("git@example.test:org/app.git", None, Ok("app"));
        check("file:///srv/git/tool/", None, Ok("tool"));
        check("https://example.test/org/app.git", Some("src/app"), Ok("src/app"));
        check("https://example.test/org/app.git", Some("../escape"), Err("'..'"));
        check("https://example.test/org/app.git", Some("/abs"), Err("absolute"));
        check("https://user:tok3n@example.test/org/app.git", None, Err("credentials"));
        check("ssh://git@example.test/org/app.git", None, Ok("app"));
        check("https://example.test:8443/org/app.git", None, Ok("app"));
        check("", None, Err("1-2048"));
        check("--upload-pack=evil", None, Err("'-'"));
        assert!(target("https://x.test/a", Some("-x"), None, None).is_err());
        assert!(target("https://x.test/a", None, Some(0), None).is_err());
    }

    #[test]
    fn credentials_are_refused_in_every_form_and_never_echoed() {
        const SECRET: &str = "ghp_S3cretT0ken";
        for url in [
            format!("https://{SECRET}@example.test/org/app.git"),
            format!("https://x-access-token:{SECRET}@example.test:8443/org/app.git"),
            format!("HTTPS://{SECRET}@example.test/org/app.git"),
            format!("http://{SECRET}:x-oauth-basic@127.0.0.1:9418/app"),
            format!("https://example.test/org/app.git?access_token={SECRET}"),
            format!("https://example.test/org/app.git?private_token={SECRET}&x=1"),
            format!("ssh://git:{SECRET}@example.test/org/app.git"),
            format!("git:{SECRET}@example.test:org/app.git"),
            format!("https://{}@example.test/org/app.git", SECRET.replace('_', "%5F")),
            format!("https://{SECRET}%40example.test/org/app.git"),
        ] {
            let err = target(&url, None, None, None).expect_err(&url).to_string();
            assert!(err.contains("credentials in repo URLs are refused"), "{url}: {err}");
            assert!(
                !err.contains("S3cret") && !err.contains("S3cretT0ken"),
                "{url}: the error echoes the token: {err}"
            );
        }
    }

    #[test]
    fn classifies_failures() {
        use FailureKind::*;
        for (msg, kind) in [
            ("fatal: Authentication failed for 'https://h/x.git/'", Auth),
            ("fatal: could not read Username for 'https://h': terminal prompts disabled", Auth),
            ("remote: Repository not found.\nfatal: repository 'https://h/x' not found", NotFound),
            ("fatal: '/srv/none' does not appear to be a git repository", NotFound),
            ("fatal: unable to access 'https://h/': Could not resolve host: h", Network),
            ("fatal: unable to access 'http://127.0.0.1:1/x/': Failed to connect to 127.0.0.1 port 1", Network),
            ("error: RPC failed; HTTP 502 curl 22 The requested URL returned error: 502", Network),
            ("fatal: destination path 'x' already exists and is not an empty directory", Other),
        ] {
            assert_eq!(classify_failure(msg), kind, "{msg}");
        }
        assert!(Network.is_transient() && !Auth.is_transient());
    }

    #[test]
    fn credential_hosts() {
        assert_eq!(credential_host("https://git.example.test/o/a.git").as_deref(), Some("git.example.test"));
        assert_eq!(credential_host("http://127.0.0.1:8080/a.git").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(credential_host("ssh://git@h.test/a.git"), None);
        assert_eq!(credential_host("file:///srv/a.git"), None);
        assert_eq!(credential_host("https://h.test';rm -rf /'/a"), None);
    }

    #[test]
    fn strips_credentials() {
        assert_eq!(strip_credentials("https://u:t@host/x.git"), "https://host/x.git");
        assert_eq!(strip_credentials("https://host/a@b"), "https://host/a@b");
        assert_eq!(strip_credentials("git@host:x.git"), "git@host:x.git");
    }
}
