//! `DockerSandboxes`: each sandbox is a container; its private file (the supervisor's spec,
//! holding the sandbox token) is put into the created container through the engine's archive
//! API before it starts, so it is never in the environment, the command line or a host file.
//!
//! Deaths come from the engine's event stream (`die`), watched again after every break, with
//! the containers that died meanwhile listed first.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use berth_substrate::{Death, Ended, PrivateFile, SandboxInfo, SandboxSpec, Sandboxes, VolumeError, WORKSPACE_PATH};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
    RenameContainerOptions, StopContainerOptions, UploadToContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;

use crate::engine::{status_error, Engine, Failure};

/// Pause between two attempts to watch the engine's events.
const WATCH_RETRY: Duration = Duration::from_secs(1);
/// How often, and how many times, a removal someone else began is checked for its end.
const REMOVAL_POLL: Duration = Duration::from_millis(50);
const REMOVAL_POLLS: u32 = 200;
/// Seconds added to the stop timeout before a stop call gives up waiting.
const STOP_SLACK_SECS: u64 = 30;

/// Sandboxes as Docker containers.
#[derive(Debug, Clone)]
pub struct DockerSandboxes {
    engine: Engine,
}

impl DockerSandboxes {
    /// Sandboxes on `engine`.
    pub fn new(engine: Engine) -> DockerSandboxes {
        DockerSandboxes { engine }
    }

    /// How a container ended, from its inspection; `None` when it is gone.
    async fn ended(&self, id: &str) -> Result<Option<Ended>, VolumeError> {
        let docker = self.engine.client().await?;
        let what = format!("inspecting container {id}");
        match docker.inspect_container(id, None).await {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                Ok(Some(Ended { exit_code: state.exit_code, oom_killed: state.oom_killed.unwrap_or(false) }))
            }
            Err(e) => match self.engine.failure(&what, e) {
                Failure::Status(404, _) => Ok(None),
                other => Err(status_error(&what, other)),
            },
        }
    }

    fn create_body(spec: &SandboxSpec) -> ContainerCreateBody {
        let mut binds: Vec<String> = spec
            .binds
            .iter()
            .map(|(host, inside, ro)| format!("{host}:{inside}{}", if *ro { ":ro" } else { "" }))
            .collect();
        if let Some(v) = &spec.volume {
            binds.push(format!("{v}:{WORKSPACE_PATH}"));
        }
        let host_config = HostConfig {
            binds: Some(binds),
            init: Some(true),
            network_mode: spec.network.clone(),
            memory: spec.memory_bytes.map(|m| m as i64),
            // Swap would let an agent past its memory limit, slowly.
            memory_swap: spec.memory_bytes.map(|m| m as i64),
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(spec.command.clone()),
            cmd: Some(Vec::new()),
            env: Some(spec.env.clone()),
            user: Some(format!("{}:{}", spec.user.0, spec.user.1)),
            labels: Some(spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            stop_timeout: Some(spec.stop_timeout_secs as i64),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    async fn create_and_start(&self, spec: &SandboxSpec) -> Result<String, VolumeError> {
        let docker = self.engine.client().await?;
        let what = format!("creating container {} (image {})", spec.name, spec.image);
        let options = CreateContainerOptions { name: Some(spec.name.clone()), ..Default::default() };
        let created = docker.create_container(Some(options), Self::create_body(spec)).await.map_err(|e| match self
            .engine
            .failure(&what, e)
        {
            Failure::Status(404, message) => VolumeError::permanent(format!(
                "{what}: no such image ({message}): build or load it on the engine (`docker image ls`)"
            )),
            other => status_error(&what, other),
        })?;
        let id = created.id;
        if let Some(file) = &spec.private_file {
            self.put_file(&id, file, spec.user).await?;
        }
        let what = format!("starting container {}", spec.name);
        docker.start_container(&id, None).await.map_err(|e| self.engine.error(&what, e))?;
        Ok(id)
    }

    async fn info(&self, id: &str) -> Result<SandboxInfo, VolumeError> {
        let filters: HashMap<String, Vec<String>> = [("id".to_string(), vec![id.to_string()])].into();
        let found = self.list_filtered(filters).await?;
        found
            .into_iter()
            .next()
            .ok_or_else(|| VolumeError::temporary(format!("container {id} vanished after it started")))
    }

    async fn list_filtered(&self, filters: HashMap<String, Vec<String>>) -> Result<Vec<SandboxInfo>, VolumeError> {
        let docker = self.engine.client().await?;
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let listed =
            docker.list_containers(Some(options)).await.map_err(|e| self.engine.error("listing containers", e))?;
        let mut out: Vec<SandboxInfo> = listed
            .into_iter()
            .map(|c| SandboxInfo {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                image: c.image.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                status: c.status.unwrap_or_default(),
                created_secs: c.created.unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
            })
            .collect();
        out.sort_by(|a, b| (a.created_secs, &a.name).cmp(&(b.created_secs, &b.name)));
        Ok(out)
    }

    /// Sends every death of containers matching `selector` to `tx` until it closes: first those
    /// already dead, then each `die` event.
    async fn watch(self, selector: BTreeMap<String, String>, tx: tokio::sync::mpsc::Sender<Death>) {
        let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        while !tx.is_closed() {
            let since = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let ended = tokio::select! {
                r = self.watch_once(&labels, since, &tx) => r,
                _ = tx.closed() => return,
            };
            if let Err(e) = ended {
                tracing::warn!(event = "sandbox_watch_failed", error = %e, hint = "retrying");
            }
            tokio::time::sleep(WATCH_RETRY).await;
        }
    }

    async fn watch_once(
        &self,
        labels: &[String],
        since: u64,
        tx: &tokio::sync::mpsc::Sender<Death>,
    ) -> Result<(), VolumeError> {
        let docker = self.engine.client().await?;
        let mut filters: HashMap<String, Vec<String>> = [("label".to_string(), labels.to_vec())].into();
        filters.insert("status".into(), vec!["exited".into(), "dead".into()]);
        for c in self.list_filtered(filters).await? {
            let ended = self.ended(&c.id).await?.unwrap_or(Ended { exit_code: None, oom_killed: false });
            let _ = tx.send(Death { id: c.id, name: c.name, labels: c.labels, ended }).await;
        }
        let mut filters: HashMap<String, Vec<String>> = [("label".to_string(), labels.to_vec())].into();
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert("event".into(), vec!["die".into()]);
        let options = EventsOptions { since: Some(since.to_string()), until: None, filters: Some(filters) };
        let mut events = docker.events(Some(options));
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| self.engine.error("watching the engine's events", e))?;
            let actor = event.actor.unwrap_or_default();
            let (Some(id), attributes) = (actor.id, actor.attributes.unwrap_or_default()) else { continue };
            let exit_code = attributes.get("exitCode").and_then(|c| c.parse().ok());
            let ended = match self.ended(&id).await {
                Ok(Some(e)) => e,
                _ => Ended { exit_code, oom_killed: false },
            };
            // The event's attributes carry the container's labels (and its name and image).
            let name = attributes.get("name").cloned().unwrap_or_default();
            let labels = attributes.into_iter().collect();
            if tx.send(Death { id, name, labels, ended }).await.is_err() {
                return Ok(());
            }
        }
        Err(VolumeError::temporary(format!("the docker engine at {} ended the event stream", self.engine.host())))
    }
}

#[async_trait]
impl Sandboxes for DockerSandboxes {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<SandboxInfo, VolumeError> {
        match self.create_and_start(spec).await {
            Ok(id) => self.info(&id).await,
            Err(e) => {
                // Nothing half-made stays behind (a created container holds its volume).
                let _ = self.remove(&spec.name).await;
                Err(e)
            }
        }
    }

    async fn stop(&self, id: &str, timeout_secs: u64) -> Result<Option<Ended>, VolumeError> {
        let docker = self.engine.client().await?;
        let what = format!("stopping container {id}");
        // Waiting starts before the stop, so the exit code is seen even if someone removes
        // the container right after it exits.
        let wait_options = WaitContainerOptions { condition: "not-running".into() };
        let mut wait = Box::pin(docker.wait_container(id, Some(wait_options)));
        let options = StopContainerOptions { t: Some(timeout_secs.min(i32::MAX as u64) as i32), signal: None };
        let bound = Duration::from_secs(timeout_secs + STOP_SLACK_SECS);
        let stopped = tokio::time::timeout(bound, docker.stop_container(id, Some(options))).await;
        match stopped {
            Err(_) => return Err(VolumeError::temporary(format!("{what}: no answer within {} s", bound.as_secs()))),
            Ok(Ok(())) => {}
            Ok(Err(e)) => match self.engine.failure(&what, e) {
                Failure::Status(404, _) => return Ok(None),
                // 304: it was not running.
                Failure::Status(304, _) => {}
                other => return Err(status_error(&what, other)),
            },
        }
        let waited = tokio::time::timeout(Duration::from_secs(STOP_SLACK_SECS), wait.next()).await;
        let code = match waited {
            Ok(Some(Ok(r))) => Some(r.status_code),
            // A non-zero exit arrives as an error carrying the code.
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => Some(code),
            _ => None,
        };
        let inspected = self.ended(id).await?;
        let ended = Ended {
            exit_code: code.or(inspected.as_ref().and_then(|e| e.exit_code)),
            oom_killed: inspected.is_some_and(|e| e.oom_killed),
        };
        self.remove(id).await?;
        Ok(Some(ended))
    }

    async fn wait(&self, id: &str, timeout_secs: u64) -> Result<Option<Ended>, VolumeError> {
        let docker = self.engine.client().await?;
        let what = format!("waiting for container {id}");
        let options = WaitContainerOptions { condition: "not-running".into() };
        let mut wait = Box::pin(docker.wait_container(id, Some(options)));
        let code = match tokio::time::timeout(Duration::from_secs(timeout_secs), wait.next()).await {
            Err(_) => return Err(VolumeError::temporary(format!("{what}: still running after {timeout_secs} s"))),
            Ok(None) => None,
            Ok(Some(Ok(r))) => Some(r.status_code),
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => Some(code),
            Ok(Some(Err(e))) => match self.engine.failure(&what, e) {
                Failure::Status(404, _) => return Ok(None),
                other => return Err(status_error(&what, other)),
            },
        };
        let inspected = self.ended(id).await?;
        Ok(Some(Ended {
            exit_code: code.or(inspected.as_ref().and_then(|e| e.exit_code)),
            oom_killed: inspected.is_some_and(|e| e.oom_killed),
        }))
    }

    async fn remove(&self, id: &str) -> Result<(), VolumeError> {
        let docker = self.engine.client().await?;
        let what = format!("removing container {id}");
        let options = RemoveContainerOptions { force: true, v: false, link: false };
        match docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match self.engine.failure(&what, e) {
                Failure::Status(404, _) => Ok(()),
                // Its removal is under way (the death watcher's): done when it is gone.
                Failure::Status(409, message) => {
                    for _ in 0..REMOVAL_POLLS {
                        if self.ended(id).await?.is_none() {
                            return Ok(());
                        }
                        tokio::time::sleep(REMOVAL_POLL).await;
                    }
                    Err(VolumeError::temporary(format!("{what}: still there after its removal began: {message}")))
                }
                other => Err(status_error(&what, other)),
            },
        }
    }

    async fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<SandboxInfo>, VolumeError> {
        let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let found = self.list_filtered([("label".to_string(), labels)].into()).await?;
        Ok(found.into_iter().filter(|c| selector.iter().all(|(k, v)| c.labels.get(k) == Some(v))).collect())
    }

    async fn logs(&self, id: &str, tail: usize) -> Result<String, VolumeError> {
        let docker = self.engine.client().await?;
        let what = format!("reading the logs of container {id}");
        let options = LogsOptions { stdout: true, stderr: true, tail: tail.to_string(), ..Default::default() };
        let mut stream = docker.logs(id, Some(options));
        let mut out = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => out.push_str(&String::from_utf8_lossy(&c.into_bytes())),
                Err(e) => return Err(self.engine.error(&what, e)),
            }
        }
        Ok(out)
    }

    async fn put_file(&self, id: &str, file: &PrivateFile, user: (u32, u32)) -> Result<(), VolumeError> {
        self.put_files(id, std::slice::from_ref(file), user).await
    }

    /// One archive upload for all of them: the engine unpacks its entries in order.
    async fn put_files(&self, id: &str, files: &[PrivateFile], user: (u32, u32)) -> Result<(), VolumeError> {
        let docker = self.engine.client().await?;
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        let what = format!("putting {} into container {id}", paths.join(", "));
        let entries: Vec<(&str, &[u8])> = files.iter().map(|f| (f.path.as_str(), f.content.as_slice())).collect();
        let tar =
            crate::tar::private_files(&entries, user).map_err(|e| VolumeError::permanent(format!("{what}: {e}")))?;
        let options = UploadToContainerOptions { path: "/".into(), ..Default::default() };
        docker
            .upload_to_container(id, Some(options), bollard::body_full(bytes::Bytes::from(tar)))
            .await
            .map_err(|e| self.engine.error(&what, e))
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), VolumeError> {
        let docker = self.engine.client().await?;
        let what = format!("renaming container {id} to {name}");
        let options = RenameContainerOptions { name: name.to_string() };
        docker.rename_container(id, options).await.map_err(|e| self.engine.error(&what, e))
    }

    fn deaths(&self, selector: BTreeMap<String, String>) -> tokio::sync::mpsc::Receiver<Death> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(self.clone().watch(selector, tx));
        rx
    }
}
