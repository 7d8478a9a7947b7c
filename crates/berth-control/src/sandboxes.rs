//! Sandboxes on the substrate: the settings, [`open`] (Docker only: the local substrate runs
//! no sandboxes), and the death watcher that ends the session of every sandbox that dies.
//!
//! A sandbox's session ends when its container dies: cleanly when the supervisor published
//! its final snapshot and detached first, otherwise uncleanly (the workspace is then at risk
//! until a later session ends clean or a rescue succeeds).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use berth_core::session::SessionId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{now, App, Config};
use crate::error::{Error, Result};
use crate::volumes::{Death, Sandboxes, Substrate, LABEL_INSTALL, LABEL_MANAGED, LABEL_SANDBOX, LABEL_SESSION};

/// The UID:GID sandboxes run as unless configured.
pub const DEFAULT_USER: (u32, u32) = (1000, 1000);
/// Label holding a sandbox's stop timeout in seconds.
pub const LABEL_STOP_TIMEOUT: &str = "berth.stop-timeout";

/// How `berth serve` runs sandboxes.
#[derive(Clone, Debug, Default)]
pub struct SandboxConfig {
    /// The network sandboxes join (`host`, `bridge`, a network's name); `None`: the engine's
    /// default.
    pub network: Option<String>,
    /// The control plane's URL as sandboxes reach it; `None`: `http://` + the listen address.
    pub server_url: Option<String>,
    /// UID:GID sandboxes run as; `None`: [`DEFAULT_USER`].
    pub user: Option<(u32, u32)>,
    /// The berth binary bind-mounted into sandboxes; `None`: this process's executable.
    pub berth_binary: Option<PathBuf>,
}

impl SandboxConfig {
    /// The URL sandboxes reach the control plane at.
    pub fn server_url(&self, config: &Config) -> String {
        self.server_url.clone().unwrap_or_else(|| format!("http://{}", config.listen))
    }

    /// The user sandboxes run as.
    pub fn user(&self) -> (u32, u32) {
        self.user.unwrap_or(DEFAULT_USER)
    }

    /// The berth binary for sandboxes.
    pub fn berth_binary(&self) -> Result<PathBuf> {
        match &self.berth_binary {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe()
                .map_err(|e| Error::Config(format!("cannot find berth's own executable for sandboxes: {e}"))),
        }
    }
}

/// Opens the sandbox substrate `config` names: Docker's, or none on the local substrate.
pub fn open(config: &Config) -> Result<Option<Arc<dyn Sandboxes>>> {
    match config.substrate {
        Substrate::Local => Ok(None),
        Substrate::Docker => docker(),
    }
}

#[cfg(feature = "docker")]
fn docker() -> Result<Option<Arc<dyn Sandboxes>>> {
    let engine = berth_docker::Engine::from_env().map_err(|e| Error::Config(e.to_string()))?;
    Ok(Some(Arc::new(berth_docker::DockerSandboxes::new(engine))))
}

#[cfg(not(feature = "docker"))]
fn docker() -> Result<Option<Arc<dyn Sandboxes>>> {
    Err(Error::Config("this berth was built without the docker substrate (cargo feature `docker`)".into()))
}

/// The substrate's sandboxes, or the error that says there are none here.
pub fn of(app: &App) -> Result<&Arc<dyn Sandboxes>> {
    app.sandboxes.as_ref().ok_or_else(|| {
        Error::WrongState(format!(
            "the {} substrate runs no sandboxes: start berth serve with --substrate docker",
            app.volumes.kind()
        ))
    })
}

/// The labels of every sandbox of this installation.
pub fn install_labels(app: &App) -> BTreeMap<String, String> {
    [(LABEL_MANAGED.to_string(), "true".to_string()), (LABEL_INSTALL.to_string(), app.install.clone())].into()
}

/// Starts the death watcher: every sandbox of this installation that dies ends its session
/// and is removed.
pub fn spawn(app: &Arc<App>, tracker: &TaskTracker, shutdown: CancellationToken) {
    let Some(sandboxes) = app.sandboxes.clone() else { return };
    let app = app.clone();
    tracker.spawn(async move {
        let mut deaths = sandboxes.deaths(install_labels(&app));
        loop {
            let death = tokio::select! {
                _ = shutdown.cancelled() => return,
                d = deaths.recv() => match d {
                    Some(d) => d,
                    None => return,
                },
            };
            if let Err(e) = on_death(&app, sandboxes.as_ref(), &death).await {
                tracing::warn!(event = "sandbox_death_failed", container = %death.id, error = %e);
            }
        }
    });
}

/// Ends the dead sandbox's session (a no-op when it detached already) and removes it.
async fn on_death(app: &App, sandboxes: &dyn Sandboxes, death: &Death) -> Result<()> {
    let session = death.labels.get(LABEL_SESSION).and_then(|s| SessionId::new(s.clone()).ok());
    tracing::info!(
        event = "sandbox_died",
        container = %death.id,
        kind = death.labels.get(LABEL_SANDBOX).map(String::as_str).unwrap_or(""),
        session = session.as_ref().map(|s| s.as_str()).unwrap_or(""),
        exit_code = death.ended.exit_code.unwrap_or(-1),
        oom_killed = death.ended.oom_killed,
    );
    if let Some(session) = &session {
        match app.meta.detach(session, now()).await {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    sandboxes.remove(&death.id).await?;
    Ok(())
}
