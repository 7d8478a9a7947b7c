//! A real `berth serve` process for end-to-end tests, on a loopback port it picks itself.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use berth_api::client::EventQuery;
use berth_api::Client;

/// The admin token of test servers.
pub const ADMIN: &str = "serve-test-admin-token-42";

/// A running `berth serve`.
pub struct Server {
    child: Child,
    /// Its URL.
    pub url: String,
    /// Its log (JSON lines).
    pub log: PathBuf,
}

/// The flags that let GC act at once in a test: no cooldown, a 1 s removal timeout, 2 s claims.
const FAST_GC: [&str; 6] = ["--gc-cooldown", "0s", "--gc-timeout", "1s", "--claim-ttl", "2s"];

impl Server {
    /// Starts `berth serve` as [`Server::start`] does, with the admin token [`ADMIN`], its data
    /// in `data`, GC flags that act at once, then `args`; it logs to `cwd/log`.
    pub fn start_admin(cwd: &Path, data: &Path, log: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut all = vec!["--data-dir", data.to_str().expect("a UTF-8 data dir")];
        all.extend(FAST_GC);
        all.extend(args);
        let mut env = env.to_vec();
        env.push(("BERTH_ADMIN_TOKEN", ADMIN));
        Server::start(cwd, &cwd.join(log), &all, &env)
    }

    /// Starts `berth serve` in `cwd` with `args`, logging JSON to `log` (appended to), and waits
    /// until it is ready: it binds port 0 itself, its `serve_started` line names the address,
    /// and `/healthz` there answers 200.
    pub fn start(cwd: &Path, log: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = super::berth_command();
        cmd.current_dir(cwd)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("BERTH_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::OpenOptions::new().create(true).append(true).open(log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Lines of an earlier server in the same log are not this one's.
        let from = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let mut child = cmd.spawn().expect("spawn berth serve");
        let listen =
            berth_testkit::eventually(60, &format!("berth serve's serve_started line in {}", log.display()), || {
                if let Some(status) = child.try_wait().expect("wait for berth serve") {
                    panic!("berth serve exited with {status} before it was ready; log:\n{}", read_from(log, from));
                }
                read_from(log, from).lines().find_map(started_at)
            });
        let server = Server { child, url: format!("http://{listen}"), log: log.to_path_buf() };
        let status = http_status(&listen, "/healthz");
        assert_eq!(status, Some(200), "berth serve at {listen} is not healthy; log:\n{}", read_from(log, from));
        server
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client acting with `token`.
    pub fn client(&self, token: &str) -> Client {
        Client::new(&self.url, token).unwrap()
    }

    /// SIGKILL, and wait.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then asserts a clean exit within `secs`.
    pub fn terminate(mut self, secs: u64) {
        terminate(&mut self.child, secs, "berth serve");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to `child` and asserts it exits 0 within `secs`; returns how long it took.
pub fn terminate(child: &mut Child, secs: u64, what: &str) -> Duration {
    let started = Instant::now();
    signal(child, rustix::process::Signal::TERM);
    let deadline = started + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{what} exited with {status} on SIGTERM");
            return started.elapsed();
        }
        assert!(Instant::now() < deadline, "{what} did not exit within {secs} s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` to `child`.
pub fn signal(child: &Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, sig).unwrap();
}

/// A multi-threaded runtime for driving async clients from synchronous tests.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Reads one metric from a server's `/metrics` (0 when absent).
pub async fn metric(url: &str, name: &str) -> f64 {
    let body = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    body.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// [`metric`] for synchronous tests, on a throwaway runtime.
pub fn metric_blocking(url: &str, name: &str) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(metric(url, name))
}

/// The log from byte `from` on.
fn read_from(log: &Path, from: u64) -> String {
    let bytes = fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default()).into_owned()
}

/// The address in a `serve_started` JSON log line.
pub fn started_at(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields").unwrap_or(&v);
    if fields.get("event")?.as_str()? != "serve_started" {
        return None;
    }
    Some(fields.get("listen")?.as_str()?.to_string())
}

/// The status of `GET path` at `addr` (one HTTP/1.1 request), `None` when nothing answers.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response).ok()?;
    let line = String::from_utf8_lossy(&response);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Every event of `kind`, oldest first.
pub async fn events(c: &Client, kind: &str) -> Vec<berth_api::Event> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let q = EventQuery { kind: Some(kind.into()), after: Some(after), limit: Some(1000), ..Default::default() };
        let page = c.events(&q).await.unwrap().items;
        let Some(last) = page.last() else { return out };
        after = last.id;
        out.extend(page);
    }
}

/// How many volumes are marked removed (by removed or not_found), per owner.
pub async fn marks(c: &Client) -> BTreeMap<String, usize> {
    let mut marks = BTreeMap::new();
    for kind in ["volume_removed", "volume_not_found"] {
        for e in events(c, kind).await {
            *marks.entry(e.owner.unwrap()).or_default() += 1;
        }
    }
    marks
}

/// Waits until `check` holds, for at most `secs` seconds, failing the test naming `what`.
pub async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, secs: u64, mut check: impl FnMut() -> F) {
    berth_testkit::eventually_async(secs, what, || {
        let held = check();
        async move { held.await.then_some(()) }
    })
    .await
}
