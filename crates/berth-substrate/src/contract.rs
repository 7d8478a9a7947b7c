//! The `Volumes` contract suite: one set of cases that every adapter passes (local
//! directories, Docker, Kubernetes), so the control plane sees the same outcomes on each.
//!
//! An adapter's test file implements [`Harness`] (how to reach the substrate behind berth's
//! back: make a volume busy, create a foreign one, look one up) and expands
//! [`volumes_contract!`](crate::volumes_contract) with an async function returning it; each case
//! becomes one test. Every name and installation a case uses is unique to the harness's run, so
//! cases run in parallel and the harness can remove exactly what its run created.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use berth_core::volume::{MountSpec, VolumeName};
use berth_core::workspace::{Generation, WorkspaceId};

use crate::volumes::{
    install_selector, volume_labels, Removal, VolumeErrorKind, VolumeSpec, Volumes, LABEL_GENERATION, LABEL_INSTALL,
    LABEL_MANAGED, LABEL_OWNER,
};

/// The label every resource of a test run carries, so the run removes exactly its own.
pub const LABEL_TEST_RUN: &str = "berth-test-run";

/// Something that keeps a volume in use the way a sandbox does, until released.
#[async_trait]
pub trait Hold: Send + Sync {
    /// Who holds it, as the adapter's `Referenced` reason must name it (a container id, a pod,
    /// a lock file).
    fn who(&self) -> String;
    /// Stops using the volume and waits until it is no longer in use.
    async fn release(self: Box<Self>);
}

/// How the suite reaches one substrate.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A unique id of this run: a label value on everything the run creates.
    fn run(&self) -> &str;
    /// The adapter under test, acting for installation `install`.
    async fn volumes(&self, install: &str) -> Arc<dyn Volumes>;
    /// The same adapter when its substrate cannot be reached (a dead engine socket, a removed
    /// root directory, an API server that refuses connections).
    async fn unreachable(&self, install: &str) -> Arc<dyn Volumes>;
    /// Keeps `name` in use the way a sandbox does (a running container, a pod, a held lock).
    async fn hold(&self, name: &VolumeName) -> Box<dyn Hold>;
    /// Creates a volume named `name` carrying exactly `labels`, behind berth's back.
    async fn create_foreign(&self, name: &VolumeName, labels: &BTreeMap<String, String>);
    /// Whether the substrate holds a volume named `name`, asked without the adapter.
    async fn exists(&self, name: &VolumeName) -> bool;
}

/// One workspace of a case: its owner, installation and spec.
#[derive(Clone, Debug)]
pub struct Case {
    /// The installation.
    pub install: String,
    /// The owner key.
    pub owner: WorkspaceId,
    /// The spec `ensure` is called with.
    pub spec: VolumeSpec,
}

impl Case {
    /// The workspace of `owner` (made unique to the run) in `generation`, for `install`.
    pub fn new(h: &dyn Harness, install: &str, owner: &str, generation: u64) -> Case {
        let owner = WorkspaceId::new(format!("{owner}:{}", h.run())).unwrap_or_else(|e| panic!("owner: {e}"));
        let generation = Generation(generation);
        let extra: BTreeMap<String, String> = [(LABEL_TEST_RUN.to_string(), h.run().to_string())].into();
        let spec = VolumeSpec {
            name: VolumeName::derive(install, &owner, generation),
            labels: volume_labels(install, &owner, generation, &extra),
            size_bytes: 64 << 20,
            storage_class: None,
            access_mode: Default::default(),
        };
        Case { install: install.to_string(), owner, spec }
    }

    fn name(&self) -> &VolumeName {
        &self.spec.name
    }
}

/// An installation id unique to the run and the case.
pub fn install(h: &dyn Harness, case: &str) -> String {
    format!("{case}-{}", h.run())
}

fn names(list: &[crate::volumes::VolumeInfo]) -> Vec<String> {
    list.iter().map(|v| v.name.to_string()).collect()
}

#[track_caller]
fn expect_err<T: fmt::Debug>(r: Result<T, crate::volumes::VolumeError>, kind: VolumeErrorKind, what: &str) {
    match r {
        Err(e) => assert_eq!(e.kind, kind, "{what}: wrong kind of error: {e}"),
        Ok(v) => panic!("{what}: expected a {kind:?} error, got {v:?}"),
    }
}

/// Ensure twice: one volume, carrying every label of the spec; the second call is success.
pub async fn ensure_is_idempotent(h: &dyn Harness) {
    let install = install(h, "idem");
    let vols = h.volumes(&install).await;
    let ws = Case::new(h, &install, "idem", 1);
    assert!(!h.exists(ws.name()).await, "{} exists before the first ensure", ws.name());
    vols.ensure(&ws.spec).await.expect("first ensure");
    vols.ensure(&ws.spec).await.expect("second ensure of the same spec");
    assert!(h.exists(ws.name()).await, "{} missing after ensure", ws.name());
    let listed = vols.list(&install_selector(&install)).await.expect("list");
    assert_eq!(names(&listed), [ws.name().to_string()]);
    for (k, v) in &ws.spec.labels {
        assert_eq!(listed[0].labels.get(k), Some(v), "label {k} of {}", ws.name());
    }
    // An adapter for the same installation built afresh (a restarted server) sees it as its own.
    let again = h.volumes(&install).await;
    again.ensure(&ws.spec).await.expect("ensure after a restart");
    assert_eq!(again.delete(ws.name()).await.expect("delete"), Removal::Removed);
}

/// Eight concurrent first ensures of one name all succeed and leave one volume.
pub async fn concurrent_ensures_make_one_volume(h: &dyn Harness) {
    let install = install(h, "conc");
    let vols = h.volumes(&install).await;
    let ws = Case::new(h, &install, "conc", 1);
    // Spawned first, awaited after: the eight calls race each other.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (vols, spec) = (vols.clone(), ws.spec.clone());
            tokio::spawn(async move { vols.ensure(&spec).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("ensure task").expect("a concurrent ensure failed");
    }
    let listed = vols.list(&install_selector(&install)).await.expect("list");
    assert_eq!(names(&listed), [ws.name().to_string()]);
    assert_eq!(vols.delete(ws.name()).await.expect("delete"), Removal::Removed);
}

/// Listing by selector returns exactly the volumes carrying every label asked for.
pub async fn list_by_selector(h: &dyn Harness) {
    let (a, b) = (install(h, "lista"), install(h, "listb"));
    let (va, vb) = (h.volumes(&a).await, h.volumes(&b).await);
    let a1 = Case::new(h, &a, "list-one", 1);
    let a2 = Case::new(h, &a, "list-two", 1);
    // Names derive from owner and generation only: two installations on one substrate with
    // the same owner key would meet under one name (and the second would get `Foreign`).
    let b1 = Case::new(h, &b, "list-three", 1);
    for (v, ws) in [(&va, &a1), (&va, &a2), (&vb, &b1)] {
        v.ensure(&ws.spec).await.expect("ensure");
    }
    let mut want = vec![a1.name().to_string(), a2.name().to_string()];
    want.sort();
    assert_eq!(names(&va.list(&install_selector(&a)).await.expect("list a")), want);
    assert_eq!(names(&va.list(&install_selector(&b)).await.expect("list b")), [b1.name().to_string()]);
    let mut by_owner = install_selector(&a);
    by_owner.insert(LABEL_OWNER.into(), a2.owner.to_string());
    assert_eq!(names(&va.list(&by_owner).await.expect("list by owner")), [a2.name().to_string()]);
    let mut none = install_selector(&a);
    none.insert(LABEL_GENERATION.into(), "99".into());
    assert!(va.list(&none).await.expect("list none").is_empty());
    // Every volume of the run, whoever's, through the run label alone.
    let run: BTreeMap<String, String> = [(LABEL_TEST_RUN.to_string(), h.run().to_string())].into();
    let all = names(&va.list(&run).await.expect("list run"));
    for ws in [&a1, &a2, &b1] {
        assert!(all.contains(&ws.name().to_string()), "{} missing from {all:?}", ws.name());
    }
    for (v, ws) in [(&va, &a1), (&va, &a2), (&vb, &b1)] {
        assert_eq!(v.delete(ws.name()).await.expect("delete"), Removal::Removed);
    }
}

/// Delete answers removed, then not found; a name never created is not found; ensure after a
/// delete creates the volume again.
pub async fn delete_outcomes(h: &dyn Harness) {
    let install = install(h, "del");
    let vols = h.volumes(&install).await;
    let ws = Case::new(h, &install, "del", 1);
    vols.ensure(&ws.spec).await.expect("ensure");
    assert_eq!(vols.delete(ws.name()).await.expect("delete"), Removal::Removed);
    assert!(!h.exists(ws.name()).await, "{} still exists after removed", ws.name());
    assert_eq!(vols.delete(ws.name()).await.expect("delete again"), Removal::NotFound);
    let never = Case::new(h, &install, "never", 1);
    assert_eq!(vols.delete(never.name()).await.expect("delete unknown"), Removal::NotFound);
    vols.ensure(&ws.spec).await.expect("ensure after delete");
    assert!(h.exists(ws.name()).await);
    assert!(vols.list(&install_selector(&install)).await.expect("list").len() == 1);
    assert_eq!(vols.delete(ws.name()).await.expect("delete"), Removal::Removed);
}

/// A volume in use is referenced, naming who uses it, and nothing is removed; once released,
/// it is removed.
pub async fn referenced_while_in_use(h: &dyn Harness) {
    let install = install(h, "ref");
    let vols = h.volumes(&install).await;
    let ws = Case::new(h, &install, "ref", 1);
    vols.ensure(&ws.spec).await.expect("ensure");
    let hold = h.hold(ws.name()).await;
    let who = hold.who();
    for _ in 0..2 {
        match vols.delete(ws.name()).await.expect("delete while held") {
            Removal::Referenced { by } => assert!(by.contains(&who), "the reason {by:?} does not name {who:?}"),
            other => panic!("delete of a volume in use by {who} answered {other:?}"),
        }
        assert!(h.exists(ws.name()).await, "a referenced volume was removed");
    }
    hold.release().await;
    assert_eq!(vols.delete(ws.name()).await.expect("delete after release"), Removal::Removed);
    assert!(!h.exists(ws.name()).await);
}

/// A volume under berth's name that berth did not create, or that another installation, owner
/// or generation did, is never adopted by ensure nor removed by delete or listed as ours.
pub async fn foreign_volumes_are_never_adopted(h: &dyn Harness) {
    let install = install(h, "foreign");
    let vols = h.volumes(&install).await;
    let run: BTreeMap<String, String> = [(LABEL_TEST_RUN.to_string(), h.run().to_string())].into();

    // No berth labels at all.
    let bare = Case::new(h, &install, "foreign-bare", 1);
    h.create_foreign(bare.name(), &run).await;
    // berth's labels, of another installation.
    let other = Case::new(h, &install, "foreign-install", 1);
    let mut labels = other.spec.labels.clone();
    labels.insert(LABEL_INSTALL.into(), format!("other-{}", h.run()));
    h.create_foreign(other.name(), &labels).await;
    // This installation, another generation's labels under this generation's name.
    let gen = Case::new(h, &install, "foreign-generation", 1);
    let mut labels = gen.spec.labels.clone();
    labels.insert(LABEL_GENERATION.into(), "7".into());
    h.create_foreign(gen.name(), &labels).await;
    // Managed label absent but everything else berth's.
    let unmanaged = Case::new(h, &install, "foreign-unmanaged", 1);
    let mut labels = unmanaged.spec.labels.clone();
    labels.remove(LABEL_MANAGED);
    h.create_foreign(unmanaged.name(), &labels).await;

    for ws in [&bare, &other, &gen, &unmanaged] {
        expect_err(vols.ensure(&ws.spec).await, VolumeErrorKind::Foreign, &format!("ensure over {}", ws.name()));
        assert!(h.exists(ws.name()).await, "{} was removed by ensure", ws.name());
    }
    // Delete of a name held by someone else: berth's volume is not there; theirs stays.
    for ws in [&bare, &other, &unmanaged] {
        assert_eq!(vols.delete(ws.name()).await.expect("delete foreign"), Removal::NotFound, "{}", ws.name());
        assert!(h.exists(ws.name()).await, "{} (not berth's) was removed by delete", ws.name());
    }
    let listed = names(&vols.list(&install_selector(&install)).await.expect("list"));
    for ws in [&bare, &other, &unmanaged] {
        assert!(!listed.contains(&ws.name().to_string()), "{} listed as this installation's", ws.name());
    }
}

/// A live substrate is healthy; an unreachable one fails health, ensure, list and delete with
/// temporary errors, and never answers "not found".
pub async fn health_and_unreachable(h: &dyn Harness) {
    let install = install(h, "health");
    h.volumes(&install).await.health().await.expect("a live substrate is healthy");
    let dead = h.unreachable(&install).await;
    let ws = Case::new(h, &install, "health", 1);
    expect_err(dead.health().await, VolumeErrorKind::Temporary, "health of an unreachable substrate");
    expect_err(dead.ensure(&ws.spec).await, VolumeErrorKind::Temporary, "ensure on an unreachable substrate");
    expect_err(dead.delete(ws.name()).await, VolumeErrorKind::Temporary, "delete on an unreachable substrate");
    expect_err(
        dead.list(&install_selector(&install)).await,
        VolumeErrorKind::Temporary,
        "list on an unreachable substrate",
    );
}

/// The mount spec names the volume on its substrate.
pub async fn mount_spec_names_the_volume(h: &dyn Harness) {
    let install = install(h, "mount");
    let vols = h.volumes(&install).await;
    let ws = Case::new(h, &install, "mount", 1);
    let name = ws.name().to_string();
    match vols.mount(ws.name()) {
        MountSpec::Local { path, lock } => {
            assert!(path.ends_with(&format!("/{name}")), "{path}");
            assert!(lock.contains(&name), "{lock}");
        }
        MountSpec::Docker { volume } => assert_eq!(volume.as_str(), name),
        MountSpec::Kubernetes { claim_name } => assert_eq!(claim_name.as_str(), name),
    }
}

/// Expands to one `#[tokio::test]` per contract case, each on the harness `$make().await`.
#[macro_export]
macro_rules! volumes_contract {
    ($make:path) => {
        $crate::volumes_contract!(@cases $make;
            ensure_is_idempotent,
            concurrent_ensures_make_one_volume,
            list_by_selector,
            delete_outcomes,
            referenced_while_in_use,
            foreign_volumes_are_never_adopted,
            health_and_unreachable,
            mount_spec_names_the_volume);
    };
    (@cases $make:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $make().await;
                $crate::contract::$case(&harness).await;
            }
        )*
    };
}
