//! What the contract suite does not cover, on the real engine: driver options with the size
//! placeholder, refused drivers and options, the `Referenced` reason naming running and stopped
//! containers, a container that starts between delete's inspect and its removal, unsupported
//! `DOCKER_HOST`s, and an engine that comes and goes behind a socket.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use berth_core::volume::VolumeName;
use berth_core::workspace::{Generation, WorkspaceId};
use berth_docker::testing::{TestRun, LABEL_TEST_RUN};
use berth_docker::{DockerVolumes, Engine};
use berth_substrate::{volume_labels, Removal, VolumeErrorKind, VolumeSpec, Volumes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

fn spec(run: &TestRun, install: &str, owner: &str) -> VolumeSpec {
    let owner = WorkspaceId::new(format!("{owner}:{}", run.id())).unwrap();
    let extra: BTreeMap<String, String> = [(LABEL_TEST_RUN.to_string(), run.id().to_string())].into();
    VolumeSpec {
        name: VolumeName::derive(install, &owner, Generation(1)),
        labels: volume_labels(install, &owner, Generation(1), &extra),
        size_bytes: 64 << 20,
        storage_class: None,
        access_mode: Default::default(),
    }
}

fn volumes(install: &str, opts: &[(&str, &str)]) -> DockerVolumes {
    let opts = opts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    DockerVolumes::new(Engine::from_env().unwrap(), install, opts).unwrap()
}

#[tokio::test]
async fn driver_options_carry_the_workspace_size() {
    let run = TestRun::new();
    let install = format!("opts-{}", run.id());
    let vols = volumes(&install, &[("type", "tmpfs"), ("device", "tmpfs"), ("o", "size={size}")]);
    let s = spec(&run, &install, "opts");
    vols.ensure(&s).await.unwrap();
    let json = run.volume_json(s.name.as_str());
    assert!(json.contains(r#""o": "size=67108864""#), "{json}");
    assert!(json.contains(r#""type": "tmpfs""#), "{json}");
    // A tmpfs volume really mounts with that size.
    let image = berth_docker::testing::image();
    let mount = format!("{}:/workspace", s.name);
    let df = run.docker(&["run", "--rm", "--label", &run.label(), "-v", &mount, &image, "df", "-k", "/workspace"]);
    assert!(df.contains("65536"), "{df}");
    assert_eq!(vols.delete(&s.name).await.unwrap(), Removal::Removed);
}

#[tokio::test]
async fn refused_drivers_and_options_are_permanent_errors_that_say_why() {
    let run = TestRun::new();
    let install = format!("refused-{}", run.id());
    let mut s = spec(&run, &install, "refused");
    s.storage_class = Some("no-such-driver".into());
    let e = volumes(&install, &[]).ensure(&s).await.unwrap_err();
    eprintln!("unknown driver: {e}");
    assert_eq!(e.kind, VolumeErrorKind::Permanent, "{e}");
    assert!(e.message.contains("no-such-driver"), "{e}");

    let s = spec(&run, &install, "refused-opt");
    let e = volumes(&install, &[("bogus", "1")]).ensure(&s).await.unwrap_err();
    eprintln!("bad option: {e}");
    assert_eq!(e.kind, VolumeErrorKind::Permanent, "{e}");
    assert!(e.message.contains("bogus"), "{e}");
    assert!(!run.volume_exists(s.name.as_str()));

    let e =
        DockerVolumes::new(Engine::from_env().unwrap(), "x", [("".to_string(), "v".to_string())].into()).unwrap_err();
    assert!(e.message.contains("--volume-opt"), "{e}");
}

#[tokio::test]
async fn referenced_names_running_and_stopped_containers() {
    let run = TestRun::new();
    let install = format!("users-{}", run.id());
    let vols = volumes(&install, &[]);
    let s = spec(&run, &install, "users");
    vols.ensure(&s).await.unwrap();
    let running = run.hold(s.name.as_str());
    let mount = format!("{}:/workspace", s.name);
    let image = berth_docker::testing::image();
    let stopped = run.docker(&[
        "create",
        "--label",
        &run.label(),
        "--name",
        &format!("stopped-{}", run.id()),
        "-v",
        &mount,
        &image,
        "true",
    ]);
    let Removal::Referenced { by } = vols.delete(&s.name).await.unwrap() else { panic!("referenced") };
    eprintln!("referenced: {by}");
    assert!(by.contains(&running[..12]) && by.contains("running"), "{by}");
    assert!(by.contains(&stopped[..12]) && by.contains("created") && by.contains("stopped-"), "{by}");
    run.docker(&["rm", "-f", &running]);
    assert!(matches!(vols.delete(&s.name).await.unwrap(), Removal::Referenced { .. }));
    run.docker(&["rm", "-f", &stopped]);
    assert_eq!(vols.delete(&s.name).await.unwrap(), Removal::Removed);
}

#[test]
fn unsupported_hosts_are_refused_at_the_start() {
    for host in ["ssh://user@host", "https://host:2376", "npipe:////./pipe/docker_engine", "/var/run/docker.sock"] {
        let e = Engine::new(host).unwrap_err();
        assert_eq!(e.kind, VolumeErrorKind::Permanent);
        assert!(e.message.contains("DOCKER_HOST") && e.message.contains("unix://"), "{e}");
    }
    // Each test runs in its own process (nextest), so the variable cannot leak.
    std::env::set_var("DOCKER_TLS_VERIFY", "1");
    let e = Engine::new("tcp://127.0.0.1:2376").unwrap_err();
    assert!(e.message.contains("DOCKER_TLS_VERIFY"), "{e}");
    Engine::new("unix:///var/run/docker.sock").expect("a unix socket URL is accepted");
}

/// Forwards connections on `path` to the engine's own socket until aborted.
fn proxy(path: &Path) -> JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let Ok(mut engine) = UnixStream::connect("/var/run/docker.sock").await else { return };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_comes_and_goes_is_unhealthy_then_healthy_without_a_restart() {
    let run = TestRun::new();
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("engine.sock");
    let engine = Engine::new(&format!("unix://{}", sock.display())).unwrap();
    let install = format!("comes-{}", run.id());
    let vols: Arc<dyn Volumes> = Arc::new(DockerVolumes::new(engine, &install, BTreeMap::new()).unwrap());

    // No socket yet: unhealthy, temporary, naming the socket.
    let e = vols.health().await.unwrap_err();
    eprintln!("no socket: {e}");
    assert!(e.is_temporary() && e.message.contains("engine.sock"), "{e}");

    // A socket file nobody serves (connection refused).
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let e = vols.health().await.unwrap_err();
    eprintln!("refused: {e}");
    assert!(e.is_temporary(), "{e}");
    std::fs::remove_file(&sock).unwrap();

    // The engine appears behind the socket: the same adapter connects.
    let serving = proxy(&sock);
    vols.health().await.unwrap();
    let s = spec(&run, &install, "comes");
    vols.ensure(&s).await.unwrap();

    // It goes away again: calls fail as temporary, and never read as "not found".
    serving.abort();
    let _ = serving.await;
    std::fs::remove_file(&sock).unwrap();
    let e = vols.delete(&s.name).await.unwrap_err();
    assert!(e.is_temporary(), "{e}");
    let e = vols.health().await.expect_err("health fails while the engine is away");
    assert!(e.is_temporary(), "an engine away is a temporary failure: {e}");
    assert!(run.volume_exists(s.name.as_str()));

    let serving = proxy(&sock);
    vols.health().await.unwrap();
    assert_eq!(vols.delete(&s.name).await.unwrap(), Removal::Removed);
    serving.abort();
}

/// Forwards connections on `path` to the engine's own socket; before it passes on the first
/// request that removes volume `name`, it runs `racer` to completion.
fn racing_proxy(path: &Path, name: String, racer: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    let racer = Arc::new(std::sync::Mutex::new(Some(racer)));
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { return };
            let (name, racer) = (name.clone(), racer.clone());
            tokio::spawn(async move {
                let Ok(engine) = UnixStream::connect("/var/run/docker.sock").await else { return };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut engine_rx, mut engine_tx) = engine.into_split();
                let back = tokio::spawn(async move { tokio::io::copy(&mut engine_rx, &mut client_tx).await });
                let path = format!("/volumes/{name}");
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let first = text.lines().next().unwrap_or_default();
                    let removes = first.starts_with("DELETE ") && first.contains(&path);
                    let racer = if removes { racer.lock().unwrap().take() } else { None };
                    if let Some(racer) = racer {
                        tokio::task::spawn_blocking(racer).await.unwrap();
                    }
                    if engine_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = back.await;
            });
        }
    })
}

/// A container that starts using the volume after delete's inspect and before its removal: the
/// engine refuses the removal, and the outcome is `Referenced` naming it, never `Removed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_starting_between_inspect_and_removal_keeps_the_volume() {
    let run = TestRun::new();
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("engine.sock");
    let install = format!("race-{}", run.id());
    let s = spec(&run, &install, "race");
    volumes(&install, &[]).ensure(&s).await.unwrap();
    let raced = Arc::new(std::sync::Mutex::new(String::new()));
    let (label, image, mount) = (run.label(), berth_docker::testing::image(), format!("{}:/workspace", s.name));
    let out = raced.clone();
    let serving = racing_proxy(&sock, s.name.to_string(), move || {
        let started = std::process::Command::new("docker")
            .args(["run", "-d", "--label", &label, "-v", &mount, &image, "sleep", "600"])
            .output()
            .unwrap();
        assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
        *out.lock().unwrap() = String::from_utf8_lossy(&started.stdout).trim().to_string();
    });
    let engine = Engine::new(&format!("unix://{}", sock.display())).unwrap();
    let vols = DockerVolumes::new(engine, &install, BTreeMap::new()).unwrap();
    let removal = vols.delete(&s.name).await.unwrap();
    let racer = raced.lock().unwrap().clone();
    assert!(!racer.is_empty(), "the racer never ran: delete sent no removal");
    let Removal::Referenced { by } = removal else { panic!("expected referenced, got {removal:?}") };
    assert!(by.contains(&racer[..12]), "{by}");
    assert!(run.volume_exists(s.name.as_str()), "a volume in use was removed");
    let state = run.docker(&["inspect", "-f", "{{.State.Running}}", &racer]);
    assert_eq!(state, "true");
    serving.abort();
    run.docker(&["rm", "-f", &racer]);
    assert_eq!(volumes(&install, &[]).delete(&s.name).await.unwrap(), Removal::Removed);
}
