//! The `Volumes` contract suite on `DockerVolumes`, against the real Docker Engine: a running
//! container of the test image as "in use", a socket nobody serves as "unreachable". Every
//! container and volume carries the run's label and is removed when the test ends.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use berth_core::volume::VolumeName;
use berth_docker::testing::TestRun;
use berth_docker::{DockerVolumes, Engine};
use berth_substrate::contract::{Harness, Hold};
use berth_substrate::Volumes;

struct Docker {
    run: Arc<TestRun>,
    tmp: tempfile::TempDir,
}

async fn docker() -> Docker {
    Docker { run: Arc::new(TestRun::new()), tmp: tempfile::tempdir().unwrap() }
}

struct Container {
    run: Arc<TestRun>,
    id: String,
}

#[async_trait]
impl Hold for Container {
    fn who(&self) -> String {
        self.id.chars().take(12).collect()
    }
    async fn release(self: Box<Self>) {
        let run = self.run.clone();
        let id = self.id.clone();
        tokio::task::spawn_blocking(move || run.docker(&["rm", "-f", &id])).await.unwrap();
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[async_trait]
impl Harness for Docker {
    fn run(&self) -> &str {
        self.run.id()
    }

    async fn volumes(&self, install: &str) -> Arc<dyn Volumes> {
        Arc::new(DockerVolumes::new(Engine::from_env().unwrap(), install, BTreeMap::new()).unwrap())
    }

    async fn unreachable(&self, install: &str) -> Arc<dyn Volumes> {
        let host = format!("unix://{}/dead.sock", self.tmp.path().display());
        Arc::new(DockerVolumes::new(Engine::new(&host).unwrap(), install, BTreeMap::new()).unwrap())
    }

    async fn hold(&self, name: &VolumeName) -> Box<dyn Hold> {
        let (run, name) = (self.run.clone(), name.to_string());
        let id = blocking(move || run.hold(&name)).await;
        Box::new(Container { run: self.run.clone(), id })
    }

    async fn create_foreign(&self, name: &VolumeName, labels: &BTreeMap<String, String>) {
        let (run, name, labels) = (self.run.clone(), name.to_string(), labels.clone());
        blocking(move || {
            let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run.create_volume(&name, &pairs)
        })
        .await
    }

    async fn exists(&self, name: &VolumeName) -> bool {
        let (run, name) = (self.run.clone(), name.to_string());
        blocking(move || run.volume_exists(&name)).await
    }
}

berth_substrate::volumes_contract!(docker);
