//! A real `berth serve` process for end-to-end tests, on a free loopback port.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use berth_api::Client;

/// The admin token of test servers.
pub const ADMIN: &str = "serve-test-admin-token-42";

/// Returns a free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `berth serve`.
pub struct Server {
    child: Child,
    /// Its URL.
    pub url: String,
    /// Its log (JSON lines).
    pub log: PathBuf,
}

impl Server {
    /// Starts `berth serve` in `cwd` with `args`, logging JSON to `log`.
    pub fn start(cwd: &Path, log: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = super::berth_command();
        cmd.current_dir(cwd)
            .arg("serve")
            .args(["--listen", &listen])
            .args(args)
            .env("BERTH_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::OpenOptions::new().create(true).append(true).open(log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn berth serve");
        let server = Server { child, url: format!("http://{listen}"), log: log.to_path_buf() };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = self.url.trim_start_matches("http://").to_string();
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "berth serve did not come up at {}; log:\n{}",
            self.url,
            fs::read_to_string(&self.log).unwrap_or_default()
        );
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
