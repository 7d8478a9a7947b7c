//! Test harness: a real `berth serve` (in process, on a loopback port) over a real SQLite file
//! or a fresh database in the PostgreSQL test cluster, driven through the real HTTP client.

#![allow(dead_code)]
// Likewise for what it re-exports from berth-testkit.
#![allow(unused_imports)]

use std::path::PathBuf;
use std::sync::Arc;

use berth_api::{Attach, Client, EnsureWorkspace, Session};
use berth_control::{App, Config};
use tokio_util::sync::CancellationToken;

/// The admin token every test server uses.
pub const ADMIN: &str = "test-admin-token-0123456789";

/// Which metadata store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    /// A SQLite file in the server's data dir.
    Sqlite,
    /// A fresh database in the PostgreSQL test cluster.
    Postgres,
}

/// Generates `<name>_sqlite` and `<name>_postgres` tests from `async fn name(db: Db)`.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::Db::Postgres).await
                }
            )*
        }
    };
}

pub use berth_testkit::services::pg_database;

/// A running control plane.
pub struct TestServer {
    /// Its base URL.
    pub url: String,
    /// A client with the admin token.
    pub admin: Client,
    /// Its state (for direct checks on the store and substrate).
    pub app: Arc<App>,
    /// Its data dir.
    pub data_dir: PathBuf,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server on `db` with test-friendly settings, adjusted by `tweak`.
    pub async fn start(db: Db, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::new(tmp.path().join("data"));
        if db == Db::Postgres {
            config.database_url = Some(pg_database().await);
        }
        config.admin_token = Some(ADMIN.into());
        // Reconcilers run only when a test asks for them, unless it tweaks these.
        config.gc.interval_secs = 3600;
        config.gc.orphan_interval_secs = 3600;
        config.gc.cooldown_secs = 0;
        config.gc.claim_ttl_secs = 30;
        tweak(&mut config);
        TestServer::start_with(config, Some(tmp)).await
    }

    /// Starts a server with exactly `config`.
    pub async fn start_with(config: Config, tmp: Option<tempfile::TempDir>) -> TestServer {
        let app = App::new(config).await.expect("start the control plane");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let (a, s) = (app.clone(), stop.clone());
        let task = tokio::spawn(async move {
            // A server that fails or stops on its own fails the test at once: each test is its
            // own process under nextest, and a panic here would only end this task.
            // (serve cancels the token it is given when it returns, so it gets a child token.)
            let result = berth_control::serve(a, listener, s.child_token()).await;
            if result.is_err() || !s.is_cancelled() {
                eprintln!("the test server stopped on its own: {result:?}");
                std::process::abort();
            }
        });
        TestServer {
            admin: Client::new(&url, ADMIN).unwrap(),
            data_dir: app.config.data_dir.clone(),
            url,
            app,
            stop,
            task: Some(task),
            _tmp: tmp,
        }
    }

    /// A client acting with `token`.
    pub fn client(&self, token: &str) -> Client {
        Client::new(&self.url, token).unwrap()
    }

    /// Ensures `owner` with default options.
    pub async fn ensure(&self, owner: &str) -> berth_api::Workspace {
        self.admin.ensure(owner, &EnsureWorkspace::default()).await.expect("ensure").0
    }

    /// Ensures `owner` and attaches `instance`.
    pub async fn attach(&self, owner: &str, instance: &str) -> Session {
        self.admin
            .attach(owner, &Attach { instance_id: instance.into(), node: None, pool: None })
            .await
            .expect("attach")
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub use berth_testkit::eventually_async as eventually;
