//! The `Volumes` contract suite on `LocalVolumes`: directories under a temporary root, a held
//! shared `flock` on the volume's lock file as "in use", a removed root as "unreachable".

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use berth_core::volume::{MountSpec, VolumeName};
use berth_substrate::contract::{Harness, Hold};
use berth_substrate::{LocalVolumes, Volumes, LABEL_INSTALL, LABEL_MANAGED};

struct Local {
    tmp: tempfile::TempDir,
    run: String,
}

impl Local {
    fn root(&self) -> PathBuf {
        self.tmp.path().join("volumes")
    }
}

async fn local() -> Local {
    let tmp = tempfile::tempdir().unwrap();
    let run = format!("r{}", std::process::id());
    Local { tmp, run }
}

struct Flock {
    file: fs::File,
    path: String,
}

#[async_trait]
impl Hold for Flock {
    fn who(&self) -> String {
        self.path.clone()
    }
    async fn release(self: Box<Self>) {
        drop(self.file);
    }
}

#[async_trait]
impl Harness for Local {
    fn run(&self) -> &str {
        &self.run
    }

    async fn volumes(&self, install: &str) -> Arc<dyn Volumes> {
        Arc::new(LocalVolumes::new(self.root(), install, None).unwrap())
    }

    async fn unreachable(&self, install: &str) -> Arc<dyn Volumes> {
        let root = self.tmp.path().join("gone");
        let vols = LocalVolumes::new(&root, install, None).unwrap();
        fs::remove_dir_all(&root).unwrap();
        Arc::new(vols)
    }

    async fn hold(&self, name: &VolumeName) -> Box<dyn Hold> {
        let vols = LocalVolumes::new(self.root(), "any", None).unwrap();
        let MountSpec::Local { lock, .. } = vols.mount(name) else { panic!("a local mount") };
        let file = fs::File::open(&lock).unwrap();
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockShared).unwrap();
        Box::new(Flock { file, path: lock })
    }

    async fn create_foreign(&self, name: &VolumeName, labels: &BTreeMap<String, String>) {
        let root = self.root();
        fs::create_dir_all(root.join(".meta")).unwrap();
        // A directory someone made by hand has no labels file; one with any of berth's labels
        // has one, as another installation sharing the root would write it.
        if labels.contains_key(LABEL_MANAGED) || labels.contains_key(LABEL_INSTALL) {
            fs::write(root.join(".meta").join(format!("{name}.json")), serde_json::to_vec(labels).unwrap()).unwrap();
        }
        fs::create_dir_all(root.join(name.as_str())).unwrap();
        fs::write(root.join(name.as_str()).join("theirs.txt"), b"not berth's").unwrap();
    }

    async fn exists(&self, name: &VolumeName) -> bool {
        self.root().join(name.as_str()).exists() || self.root().join(".meta").join(format!("{name}.json")).exists()
    }
}

berth_substrate::volumes_contract!(local);
