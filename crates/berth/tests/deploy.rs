//! The Kubernetes manifests in `deploy/kubernetes`: every document parses into its k8s-openapi
//! type with nothing left over (a misspelt or misplaced field fails), the kustomization lists
//! every manifest, the Role (namespaced resources) and the ClusterRole (nodes) grant exactly the
//! calls the Kubernetes adapter makes (`berth_kube::API_CALLS`) and nothing more, both bound to
//! the service account, and the Deployment, Service and PodDisruptionBudget agree on labels,
//! ports, probes, the service account, and flags that this build's `berth serve` accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// Every document of every manifest (not the kustomization), with its file name.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
            if !value.is_null() {
                out.push((name.clone(), value));
            }
        }
    }
    out
}

/// `value` as a `T`, and `T` written back equals `value`: no field was dropped as unknown.
fn typed<T: DeserializeOwned + Serialize>(file: &str, value: &Value) -> T {
    let kind = value["kind"].as_str().unwrap_or("?");
    let t: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{file}: {kind}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(&back, value, "{file}: {kind} has fields its type does not know (misspelt or misplaced)");
    t
}

/// Each kind's one object.
#[derive(Default)]
struct Manifests {
    namespace: Option<Namespace>,
    account: Option<ServiceAccount>,
    role: Option<Role>,
    binding: Option<RoleBinding>,
    cluster_role: Option<ClusterRole>,
    cluster_binding: Option<ClusterRoleBinding>,
    deployment: Option<Deployment>,
    service: Option<Service>,
    budget: Option<PodDisruptionBudget>,
}

fn once<T>(slot: &mut Option<T>, t: T, kind: &str) {
    assert!(slot.is_none(), "more than one {kind}");
    *slot = Some(t);
}

fn manifests() -> (Manifests, Vec<Value>) {
    let mut m = Manifests::default();
    let mut all = Vec::new();
    for (file, v) in documents() {
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        match (v["apiVersion"].as_str().unwrap_or_default(), kind.as_str()) {
            ("v1", "Namespace") => once(&mut m.namespace, typed(&file, &v), &kind),
            ("v1", "ServiceAccount") => once(&mut m.account, typed(&file, &v), &kind),
            ("rbac.authorization.k8s.io/v1", "Role") => once(&mut m.role, typed(&file, &v), &kind),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => once(&mut m.binding, typed(&file, &v), &kind),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => once(&mut m.cluster_role, typed(&file, &v), &kind),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                once(&mut m.cluster_binding, typed(&file, &v), &kind)
            }
            ("apps/v1", "Deployment") => once(&mut m.deployment, typed(&file, &v), &kind),
            ("v1", "Service") => once(&mut m.service, typed(&file, &v), &kind),
            ("policy/v1", "PodDisruptionBudget") => once(&mut m.budget, typed(&file, &v), &kind),
            (api, kind) => panic!("{file}: unexpected {api} {kind}"),
        }
        all.push(v);
    }
    (m, all)
}

/// The (verb, resource) pairs `rules` grant, all in the core group and without wildcards or
/// resource names.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]), "only the core API group: {rule:?}");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "{rule:?}");
        for resource in rule.resources.iter().flatten() {
            for verb in &rule.verbs {
                assert!(verb != "*" && resource != "*", "no wildcards: {rule:?}");
                assert!(out.insert((verb.clone(), resource.clone())), "granted twice: {verb} {resource}");
            }
        }
    }
    out
}

/// The resources of the calls that are cluster-scoped (a ClusterRole grants them).
const CLUSTER_SCOPED: &[&str] = &["nodes"];

/// Whether `subjects` hold the service account `account`.
fn binds(role_ref: &RoleRef, kind: &str, role: &str, subjects: &[Subject], account: &ServiceAccount) -> bool {
    role_ref.kind == kind
        && role_ref.name == role
        && subjects.iter().any(|s| {
            s.kind == "ServiceAccount"
                && Some(&s.name) == account.metadata.name.as_ref()
                && s.namespace == account.metadata.namespace
        })
}

#[test]
fn the_roles_grant_exactly_the_calls_the_adapter_makes() {
    let (m, _) = manifests();
    let calls = |cluster: bool| -> BTreeSet<(String, String)> {
        berth_kube::API_CALLS
            .iter()
            .filter(|c| CLUSTER_SCOPED.contains(&c.resource) == cluster)
            .map(|c| (c.verb.to_string(), c.resource.to_string()))
            .collect()
    };
    let role = m.role.expect("a Role");
    let cluster_role = m.cluster_role.expect("a ClusterRole");
    for (what, rules, want) in [
        ("Role", role.rules.as_deref().unwrap_or_default(), calls(false)),
        ("ClusterRole", cluster_role.rules.as_deref().unwrap_or_default(), calls(true)),
    ] {
        let granted = grants(rules);
        let missing: Vec<_> = want.difference(&granted).collect();
        let extra: Vec<_> = granted.difference(&want).collect();
        assert!(missing.is_empty() && extra.is_empty(), "{what}: missing {missing:?}, more than needed {extra:?}");
    }

    let account = m.account.expect("a ServiceAccount");
    let binding = m.binding.expect("a RoleBinding");
    let name = role.metadata.name.as_deref().unwrap();
    assert!(binds(&binding.role_ref, "Role", name, binding.subjects.as_deref().unwrap_or_default(), &account));
    let cluster_binding = m.cluster_binding.expect("a ClusterRoleBinding");
    let name = cluster_role.metadata.name.as_deref().unwrap();
    let subjects = cluster_binding.subjects.as_deref().unwrap_or_default();
    assert!(binds(&cluster_binding.role_ref, "ClusterRole", name, subjects, &account));
}

/// Whether every pair of `selector` is among `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn container(d: &Deployment) -> &Container {
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().expect("a pod spec");
    assert_eq!(pod.containers.len(), 1);
    &pod.containers[0]
}

#[test]
fn the_deployment_service_and_budget_agree() {
    let (m, all) = manifests();
    let ns = m.namespace.expect("a Namespace").metadata.name.unwrap();
    for v in &all {
        if !["Namespace", "ClusterRole", "ClusterRoleBinding"].contains(&v["kind"].as_str().unwrap()) {
            assert_eq!(v["metadata"]["namespace"].as_str(), Some(ns.as_str()), "{} in {ns}", v["kind"]);
        }
    }
    let d = m.deployment.expect("a Deployment");
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod_labels = spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    assert!(selects(spec.selector.match_labels.as_ref().unwrap(), &pod_labels));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, m.account.unwrap().metadata.name);

    let c = container(&d);
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["--substrate", "kubernetes"]), "{args:?}");
    let env: BTreeMap<&str, _> = c.env.iter().flatten().map(|e| (e.name.as_str(), e)).collect();
    let url = env["BERTH_DATABASE_URL"].value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref());
    assert!(url.is_some_and(|s| s.optional != Some(true)), "the database URL comes from a Secret");
    assert!(env["BERTH_ADMIN_TOKEN"].value_from.as_ref().is_some_and(|f| f.secret_key_ref.is_some()));
    let port = c.ports.iter().flatten().next().expect("a container port");
    let port_name = port.name.clone().expect("a named port");
    let listen = env["BERTH_LISTEN"].value.clone().unwrap();
    assert!(listen.ends_with(&format!(":{}", port.container_port)), "{listen} listens on the container port");
    for (probe, path) in [(&c.readiness_probe, "/readyz"), (&c.liveness_probe, "/healthz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("a probe on {path}"));
        assert_eq!((get.path.as_deref(), &get.port), (Some(path), &IntOrString::String(port_name.clone())));
    }

    let service = m.service.expect("a Service").spec.unwrap();
    assert!(selects(service.selector.as_ref().unwrap(), &pod_labels), "the Service selects the pods");
    let sp = &service.ports.as_ref().unwrap()[0];
    assert_eq!(sp.target_port, Some(IntOrString::String(port_name)));
    let budget = m.budget.expect("a PodDisruptionBudget").spec.unwrap();
    assert!(selects(budget.selector.as_ref().unwrap().match_labels.as_ref().unwrap(), &pod_labels));
    assert_eq!(budget.min_available, Some(IntOrString::Int(1)), "one replica stays through a drain");

    // Every flag the Deployment passes is one this build's `berth serve` knows.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_berth")).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag.as_str()), "berth serve has no {flag}");
    }
    // BERTH_LOG_FORMAT is read by every subcommand, so `serve --help` does not name it.
    for var in env.keys().filter(|v| **v != "BERTH_LOG_FORMAT") {
        assert!(help.contains(var), "berth serve reads no {var}");
    }
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let text = std::fs::read_to_string(dir().join("kustomization.yaml")).unwrap();
    let k: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(k["kind"], "Kustomization");
    let listed: BTreeSet<String> =
        k["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    let files: BTreeSet<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files);
    let (m, _) = manifests();
    assert_eq!(k["namespace"].as_str(), m.namespace.unwrap().metadata.name.as_deref());
}
