//! Test support for tests on the real Docker Engine (feature `testing`): a [`TestRun`] whose
//! label goes on every container and volume a test creates, and which removes exactly those
//! when dropped; and the test image, built from this machine's binaries.

use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

pub use berth_substrate::contract::LABEL_TEST_RUN;

/// The script that builds the test image and prints its reference.
pub const IMAGE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../images/test-image");

/// One test's resources on the engine.
#[derive(Debug)]
pub struct TestRun {
    id: String,
}

impl TestRun {
    /// A run with a fresh id; panics with a clear message when the engine is not reachable.
    pub fn new() -> TestRun {
        let out = Command::new("docker").arg("info").output();
        match out {
            Ok(o) if o.status.success() => {}
            _ => panic!(
                "these tests need the Docker Engine: `docker info` failed (start the engine, or set DOCKER_HOST)"
            ),
        }
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        TestRun { id: format!("t{:x}{:x}", std::process::id(), nanos & 0xffff_ffff_ffff) }
    }

    /// The run's id (the value of its label).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The run's label as `KEY=VALUE`.
    pub fn label(&self) -> String {
        format!("{LABEL_TEST_RUN}={}", self.id)
    }

    /// Runs `docker ARGS`, panicking with its output when it fails.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = docker(args);
        assert!(
            out.status.success(),
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts a container of the test image that mounts `volume` at `/workspace` and sleeps;
    /// returns its id.
    pub fn hold(&self, volume: &str) -> String {
        let image = image();
        let mount = format!("{volume}:/workspace");
        self.docker(&["run", "-d", "--label", &self.label(), "-v", &mount, &image, "sleep", "600"])
    }

    /// Creates a volume with exactly `labels` (plus the run's), as another tool would.
    pub fn create_volume(&self, name: &str, labels: &[(&str, &str)]) {
        let mut args = vec!["volume".to_string(), "create".into(), "--label".into(), self.label()];
        for (k, v) in labels {
            args.extend(["--label".to_string(), format!("{k}={v}")]);
        }
        args.push(name.to_string());
        self.docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// Whether the engine has a volume named `name`.
    pub fn volume_exists(&self, name: &str) -> bool {
        docker(&["volume", "inspect", name]).status.success()
    }

    /// The labels of volume `name`, as `docker volume inspect` shows them (JSON).
    pub fn volume_json(&self, name: &str) -> String {
        self.docker(&["volume", "inspect", name])
    }

    /// Names of the volumes carrying the run's label.
    pub fn volumes(&self) -> Vec<String> {
        let filter = format!("label={}", self.label());
        let out = self.docker(&["volume", "ls", "-q", "--filter", &filter]);
        out.lines().map(str::to_string).collect()
    }

    /// Removes every container and volume carrying the run's label, and nothing else.
    pub fn clean(&self) {
        let filter = format!("label={}", self.label());
        let containers = docker(&["ps", "-aq", "--filter", &filter]);
        let ids: Vec<String> = String::from_utf8_lossy(&containers.stdout).lines().map(str::to_string).collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.iter().map(String::as_str));
            let _ = docker(&args);
        }
        let volumes = docker(&["volume", "ls", "-q", "--filter", &filter]);
        let names: Vec<String> = String::from_utf8_lossy(&volumes.stdout).lines().map(str::to_string).collect();
        if !names.is_empty() {
            let mut args = vec!["volume", "rm"];
            args.extend(names.iter().map(String::as_str));
            let _ = docker(&args);
        }
    }
}

impl Default for TestRun {
    fn default() -> Self {
        TestRun::new()
    }
}

impl Drop for TestRun {
    fn drop(&mut self) {
        self.clean();
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap_or_else(|e| panic!("cannot run docker: {e}"))
}

/// The test image's reference: `BERTH_TEST_IMAGE` when set (`./dev test` builds it once),
/// otherwise built (or found in the cache) by `images/test-image`.
pub fn image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if let Some(image) = std::env::var("BERTH_TEST_IMAGE").ok().filter(|s| !s.is_empty()) {
                return image;
            }
            let out = Command::new(IMAGE_SCRIPT).output().unwrap_or_else(|e| panic!("cannot run {IMAGE_SCRIPT}: {e}"));
            assert!(out.status.success(), "{IMAGE_SCRIPT} failed: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .clone()
}
