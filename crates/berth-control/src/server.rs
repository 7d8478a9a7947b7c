//! `run(config, shutdown)`: builds the `App`, starts the reconcilers and serves the API until
//! shutdown. The only module that knows the HTTP API, the console and the reconcilers.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, Config};
use crate::error::{Error, Result};
use crate::meta::redact_url;
use crate::reconcile;

/// Runs the control plane until `shutdown` is cancelled: serves the API on `config.listen` and
/// runs the reconcilers (deletion, volume GC, orphan sweep, lease and drain expiry).
pub async fn run(mut config: Config, shutdown: CancellationToken) -> Result<()> {
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    // With port 0 the system picks the port: the log and the URL sandboxes are given name the
    // one bound.
    config.listen = listener.local_addr().map_err(|e| Error::Config(format!("listener: {e}")))?;
    let app = App::new(config).await?;
    serve(app, listener, shutdown).await
}

/// Serves `app` on `listener` with the reconcilers until `shutdown` is cancelled.
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener, shutdown: CancellationToken) -> Result<()> {
    let addr = listener.local_addr().map_err(|e| Error::Config(format!("listener: {e}")))?;
    let tracker = TaskTracker::new();
    reconcile::spawn(&app, &tracker, shutdown.clone());
    crate::retention::spawn(&app, &tracker, shutdown.clone());
    crate::sandboxes::spawn(&app, &tracker, shutdown.clone());
    crate::nodes::spawn(&app, &tracker, shutdown.clone());
    tracing::info!(
        event = "serve_started",
        listen = %addr,
        database = %redact_url(&app.config.database_url()),
        substrate = app.volumes.kind(),
        install = %app.install,
        replica = %app.replica,
        max_connections = app.config.http.max_connections,
    );
    let router = crate::http::router(app.clone()).merge(crate::ui::router(app.clone()));
    // Event streams end at shutdown, so their connections can finish.
    let (stop, streams) = (shutdown.clone(), app.streams.clone());
    tokio::spawn(async move {
        stop.cancelled().await;
        streams.cancel();
    });
    crate::http::conn::serve(listener, router, app.config.http, shutdown.clone()).await;
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    tracing::info!(event = "serve_stopped");
    Ok(())
}
