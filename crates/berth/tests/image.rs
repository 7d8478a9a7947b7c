//! The berth image recipe (`deploy/image/build`) on the machine's Docker Engine: the image made
//! from this build's berth binary runs `berth --version`, and `berth serve` (its default
//! command) answers `/healthz` and `/readyz` as the image's own user. The image and container
//! carry the run's label and are removed when the test ends.

mod util;

use std::process::Command;
use std::time::{Duration, Instant};

use berth_docker::testing::{TestRun, LABEL_TEST_RUN};

const BUILD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/image/build");

/// Removes the image when dropped (the run's own drop removes its containers first).
struct Image<'a> {
    run: &'a TestRun,
    reference: String,
}

impl Drop for Image<'_> {
    fn drop(&mut self) {
        self.run.clean();
        let _ = Command::new("docker").args(["image", "rm", "-f", &self.reference]).output();
    }
}

fn build<'a>(run: &'a TestRun) -> Image<'a> {
    let tag = format!("berth-image-test:{}", run.id());
    let label = format!("{LABEL_TEST_RUN}={}", run.id());
    let out = Command::new(BUILD)
        .args(["--berth", env!("CARGO_BIN_EXE_berth"), "--tag", &tag, "--label", &label])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BUILD}: {e}"));
    assert!(out.status.success(), "{BUILD} failed: {}", String::from_utf8_lossy(&out.stderr));
    let reference = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(reference, tag);
    Image { run, reference }
}

fn get(url: &str) -> Option<(u16, String)> {
    let rt = util::serve::rt();
    rt.block_on(async {
        let r = reqwest::get(url).await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.unwrap_or_default()))
    })
}

#[test]
fn the_image_runs_berth_and_serves_health() {
    let run = TestRun::new();
    let image = build(&run);
    let labels = run.docker(&["image", "inspect", "-f", "{{json .Config.Labels}}", &image.reference]);
    assert!(labels.contains(&format!("\"{LABEL_TEST_RUN}\":\"{}\"", run.id())), "{labels}");

    let version = run.docker(&["run", "--rm", "--label", &run.label(), &image.reference, "--version"]);
    assert_eq!(version, format!("berth {}", env!("CARGO_PKG_VERSION")));
    let user = run.docker(&["image", "inspect", "-f", "{{.Config.User}}", &image.reference]);
    assert_eq!(user, "10001:10001", "berth runs as its own user, not root");

    // The default command is `berth serve`: on the host's network, on a loopback port it binds
    // itself (port 0) and names in its `serve_started` line.
    let listen = "BERTH_LISTEN=127.0.0.1:0";
    let id = run.docker(&[
        "run",
        "-d",
        "--label",
        &run.label(),
        "--network",
        "host",
        "-e",
        listen,
        "-e",
        "BERTH_LOG_FORMAT=json",
        &image.reference,
    ]);
    let logs = || {
        let out = Command::new("docker").args(["logs", &id]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        if let Some(addr) = logs().lines().find_map(util::serve::started_at) {
            break addr;
        }
        assert!(Instant::now() < deadline, "berth serve in the image never said where it listens: {}", logs());
        std::thread::sleep(Duration::from_millis(100));
    };
    let healthz = format!("http://{addr}/healthz");
    let answer =
        get(&healthz).unwrap_or_else(|| panic!("berth serve in the image did not answer {healthz}: {}", logs()));
    assert_eq!(answer.0, 200, "{answer:?}");
    let ready = get(&format!("http://{addr}/readyz")).unwrap();
    assert_eq!(ready.0, 200, "{ready:?}");
    // Its state is in the image's data dir, written as the berth user.
    let files = run.docker(&["exec", &id, "ls", "/var/lib/berth"]);
    assert!(files.contains("berth.db"), "{files}");
}
