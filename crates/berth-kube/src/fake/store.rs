//! The fake API server's objects and their life cycle, one lock around all of it.
//!
//! What it follows, by the Kubernetes documentation it comes from:
//! - "API Concepts" (*Resource versions*, *Efficient detection of changes*): one
//!   `resourceVersion` counter over every object; every write takes the next value; a watch
//!   from a version older than the retained history ends with a `410 Gone` (`Expired`) error
//!   event; `allowWatchBookmarks` lets the server send `BOOKMARK` events carrying only a version.
//! - API conventions (*Concurrency Control and Consistency*): an update whose
//!   `metadata.resourceVersion` is not the current one is `409 Conflict`; delete
//!   `preconditions` (`uid`, `resourceVersion`) that do not hold are `409 Conflict` too.
//! - "API Concepts" (*Patch operations*) and RFC 7386: a `merge-patch+json` body is merged into
//!   the object (a `null` removes a field); a `metadata.resourceVersion` in it must be the
//!   current one (`409 Conflict` otherwise), and the server-owned metadata stays as it was.
//! - API conventions (*HTTP status codes*, *Response Status Kind*): a create of an existing name
//!   is `409` with reason `AlreadyExists`; a missing object is `404 NotFound`; an invalid object is
//!   `422 Invalid`.
//! - "Finalizers" and "Persistent Volumes" (*Storage Object in Use Protection*): every claim gets
//!   the `kubernetes.io/pvc-protection` finalizer; deleting it sets `deletionTimestamp`, and the
//!   claim goes only when no pod that has not finished (phase neither `Succeeded` nor `Failed`)
//!   mounts it.
//! - "Pod Lifecycle" (*Termination of Pods*): a deleted pod gets `deletionTimestamp` and is gone
//!   once its containers have stopped. Nothing runs containers here: a pod is removed at once,
//!   unless the test holds deletions, in which case it stays terminating until the test finishes
//!   it. Phases change only when the test says so.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::select::{FieldSelector, LabelSelector};
use crate::names::{is_label_key, is_label_value};

/// The claim protection finalizer.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// Events kept for watches that resume from a version.
const HISTORY: usize = 10_000;

/// An answer that is not success, as a `Status` object says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub code: u16,
    /// `reason`: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`, `Expired`, ...
    pub reason: &'static str,
    /// `message`.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into() }
    }

    /// The `Status` object of this error.
    pub fn status(&self, name: &str, kind: &str) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
            "details": {"name": name, "kind": kind},
        })
    }
}

/// What a watch event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
    Bookmark,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
            EventType::Bookmark => "BOOKMARK",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The resource version of the change.
    pub rv: u64,
    pub resource: String,
    pub namespace: String,
    pub kind: EventType,
    pub object: Value,
}

impl Event {
    /// The watch line of this event.
    pub fn line(&self) -> Value {
        json!({"type": self.kind.as_str(), "object": self.object})
    }
}

/// The kind of objects of `resource`, or `None` for a resource the fake does not serve.
pub fn kind_of(resource: &str) -> Option<&'static str> {
    match resource {
        "persistentvolumeclaims" => Some("PersistentVolumeClaim"),
        "pods" => Some("Pod"),
        "secrets" => Some("Secret"),
        "nodes" => Some("Node"),
        _ => None,
    }
}

/// Whether `resource` is namespaced.
pub fn namespaced(resource: &str) -> bool {
    resource != "nodes"
}

type Key = (String, String, String);

/// Every object, the resource version and the history of changes.
#[derive(Debug)]
pub struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    uid: u64,
    history: VecDeque<Event>,
    /// Versions at or below this are no longer in the history.
    compacted: u64,
    tx: broadcast::Sender<Event>,
    /// While set, a deleted pod stays terminating until [`Store::finish_pod`].
    pub hold_pod_deletions: bool,
    /// The next this many watches from a version end at once with `410 Gone`, as after a
    /// compaction that raced them.
    pub expire_watches: u32,
    /// What each pod printed, as the test says.
    logs: BTreeMap<(String, String), String>,
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object.pointer("/metadata/labels").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default()
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn is_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !p.starts_with('-')
                && !p.ends_with('-')
        })
}

/// The claims a pod mounts.
pub fn claims_of(pod: &Value) -> Vec<String> {
    let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array).cloned().unwrap_or_default();
    volumes
        .iter()
        .filter_map(|v| v.pointer("/persistentVolumeClaim/claimName").and_then(Value::as_str).map(String::from))
        .collect()
}

/// Whether a pod has finished (phase `Succeeded` or `Failed`).
pub fn finished(pod: &Value) -> bool {
    matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

impl Default for Store {
    fn default() -> Store {
        Store {
            objects: BTreeMap::new(),
            rv: 1,
            uid: 0,
            history: VecDeque::new(),
            compacted: 0,
            tx: broadcast::channel(4096).0,
            hold_pod_deletions: false,
            expire_watches: 0,
            logs: BTreeMap::new(),
        }
    }
}

impl Store {
    /// The current resource version.
    pub fn version(&self) -> u64 {
        self.rv
    }

    fn record(&mut self, resource: &str, namespace: &str, kind: EventType, object: Value) {
        let event = Event { rv: self.rv, resource: resource.into(), namespace: namespace.into(), kind, object };
        self.history.push_back(event.clone());
        if self.history.len() > HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receiver is not an error: nobody watches.
        let _ = self.tx.send(event);
    }

    /// Writes `object` under a new resource version and records the event.
    fn write(&mut self, key: Key, mut object: Value, kind: EventType) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key.clone(), object.clone());
        self.record(&key.0, &key.1, kind, object.clone());
        object
    }

    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(&key.0, &key.1, EventType::Deleted, object.clone());
        Some(object)
    }

    fn validate(resource: &str, object: &Value) -> Result<(), String> {
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        if !is_subdomain(name) {
            return Err(format!("metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"));
        }
        for (k, v) in labels_of(object) {
            if !is_label_key(&k) || !is_label_value(&v) {
                return Err(format!("metadata.labels: Invalid value: \"{k}={v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"));
            }
        }
        if let Some(a) = object.pointer("/metadata/annotations").and_then(Value::as_object) {
            if let Some(k) = a.keys().find(|k| !is_label_key(k)) {
                return Err(format!("metadata.annotations: Invalid value: \"{k}\": not a qualified name"));
            }
        }
        match resource {
            "persistentvolumeclaims" => {
                let modes = object.pointer("/spec/accessModes").and_then(Value::as_array).cloned().unwrap_or_default();
                if modes.is_empty() {
                    return Err("spec.accessModes: Required value: at least 1 access mode is required".into());
                }
                if object.pointer("/spec/resources/requests/storage").is_none() {
                    return Err("spec.resources[storage]: Required value".into());
                }
            }
            "pods" => {
                let containers = object.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
                if containers == 0 {
                    return Err("spec.containers: Required value".into());
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `POST`: creates `object` in `namespace`.
    pub fn create(&mut self, resource: &str, namespace: &str, mut object: Value) -> Result<Value, ApiError> {
        let kind = kind_of(resource)
            .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))?;
        Store::validate(resource, &object)
            .map_err(|m| ApiError::new(422, "Invalid", format!("{kind} is invalid: {m}")))?;
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if let Some(ns) = object.pointer("/metadata/namespace").and_then(Value::as_str) {
            if ns != namespace {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let key = (resource.to_string(), namespace.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(409, "AlreadyExists", format!("{resource} \"{name}\" already exists")));
        }
        self.uid += 1;
        object["apiVersion"] = json!("v1");
        object["kind"] = json!(kind);
        let meta = &mut object["metadata"];
        if namespaced(resource) {
            meta["namespace"] = json!(namespace);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uid));
        meta["creationTimestamp"] = json!(now());
        match resource {
            "persistentvolumeclaims" => {
                let finalizers = meta["finalizers"].as_array().cloned().unwrap_or_default();
                let mut finalizers: Vec<Value> = finalizers.into_iter().filter(|f| f != PVC_PROTECTION).collect();
                finalizers.push(json!(PVC_PROTECTION));
                meta["finalizers"] = json!(finalizers);
                object["status"] = json!({"phase": "Bound"});
            }
            "pods" => object["status"] = json!({"phase": "Pending"}),
            _ => {}
        }
        Ok(self.write(key, object, EventType::Added))
    }

    /// `GET` of one object.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&(resource.into(), namespace.into(), name.into()))
            .cloned()
            .ok_or_else(|| ApiError::new(404, "NotFound", format!("{resource} \"{name}\" not found")))
    }

    /// `GET` of a collection: the objects of `resource` (in `namespace`, or all) that match.
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, ns, _), o)| {
                r == resource
                    && namespace.is_none_or(|n| n == ns)
                    && labels.matches(&labels_of(o))
                    && fields.matches(resource, o)
            })
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// `PUT`: replaces an object whose `resourceVersion` is the current one.
    pub fn update(
        &mut self,
        resource: &str,
        namespace: &str,
        name: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let key = (resource.to_string(), namespace.to_string(), name.to_string());
        let current = self.get(resource, namespace, name)?;
        let want = object.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
        if want != current["metadata"]["resourceVersion"].as_str().unwrap_or_default() {
            return Err(conflict(resource, name));
        }
        Store::validate(resource, &object).map_err(|m| ApiError::new(422, "Invalid", m))?;
        // The server owns these.
        for field in ["uid", "creationTimestamp", "deletionTimestamp", "namespace"] {
            object["metadata"][field] = current["metadata"][field].clone();
        }
        if object["metadata"]["deletionTimestamp"].is_null() {
            if let Some(m) = object["metadata"].as_object_mut() {
                m.remove("deletionTimestamp");
            }
        }
        let gone = !current["metadata"]["deletionTimestamp"].is_null()
            && object["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
        let written = self.write(key.clone(), object, EventType::Modified);
        if gone {
            return Ok(self.remove(&key).unwrap_or(written));
        }
        Ok(written)
    }

    /// `PATCH` with a JSON merge patch (RFC 7386).
    pub fn patch(&mut self, resource: &str, namespace: &str, name: &str, patch: &Value) -> Result<Value, ApiError> {
        let key = (resource.to_string(), namespace.to_string(), name.to_string());
        let current = self.get(resource, namespace, name)?;
        if let Some(want) = patch.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            if Some(want) != current.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
                return Err(conflict(resource, name));
            }
        }
        let mut object = current.clone();
        merge(&mut object, patch);
        // The server owns these.
        for field in ["name", "uid", "creationTimestamp", "deletionTimestamp", "namespace"] {
            object["metadata"][field] = current["metadata"][field].clone();
        }
        if let Some(m) = object["metadata"].as_object_mut() {
            m.retain(|_, v| !v.is_null());
        }
        Store::validate(resource, &object).map_err(|m| ApiError::new(422, "Invalid", m))?;
        Ok(self.write(key, object, EventType::Modified))
    }

    /// `DELETE` with `options` (a `DeleteOptions` object, possibly empty).
    pub fn delete(&mut self, resource: &str, namespace: &str, name: &str, options: &Value) -> Result<Value, ApiError> {
        let key = (resource.to_string(), namespace.to_string(), name.to_string());
        let mut object = self.get(resource, namespace, name)?;
        for (field, pointer) in [("uid", "/metadata/uid"), ("resourceVersion", "/metadata/resourceVersion")] {
            if let Some(want) = options.pointer(&format!("/preconditions/{field}")).and_then(Value::as_str) {
                if object.pointer(pointer).and_then(Value::as_str) != Some(want) {
                    return Err(ApiError::new(
                        409,
                        "Conflict",
                        format!(
                        "Operation cannot be fulfilled on {resource} \"{name}\": Precondition failed: {field}: {want}"
                    ),
                    ));
                }
            }
        }
        let has_finalizers =
            object.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        let hold = resource == "pods" && self.hold_pod_deletions && !finished(&object);
        if !has_finalizers && !hold {
            let removed = self.remove(&key).unwrap_or(object);
            self.protect_claims(namespace);
            return Ok(removed);
        }
        if object["metadata"]["deletionTimestamp"].is_null() {
            object["metadata"]["deletionTimestamp"] = json!(now());
            object = self.write(key, object, EventType::Modified);
        }
        self.protect_claims(namespace);
        Ok(self.objects.get(&(resource.into(), namespace.into(), name.into())).cloned().unwrap_or(object))
    }

    /// The pods (not finished) that mount `claim`.
    pub fn claim_users(&self, namespace: &str, claim: &str) -> Vec<String> {
        self.objects
            .iter()
            .filter(|((r, ns, _), pod)| {
                r == "pods" && ns == namespace && !finished(pod) && claims_of(pod).iter().any(|c| c == claim)
            })
            .map(|((_, _, name), _)| name.clone())
            .collect()
    }

    /// The claim protection controller: a terminating claim no unfinished pod mounts loses its
    /// finalizer, and a terminating object without finalizers goes.
    pub fn protect_claims(&mut self, namespace: &str) {
        let terminating: Vec<Key> = self
            .objects
            .iter()
            .filter(|((r, ns, _), o)| {
                r == "persistentvolumeclaims" && ns == namespace && !o["metadata"]["deletionTimestamp"].is_null()
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in terminating {
            if !self.claim_users(namespace, &key.2).is_empty() {
                continue;
            }
            if let Some(mut claim) = self.objects.get(&key).cloned() {
                let finalizers = claim["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
                let rest: Vec<Value> = finalizers.into_iter().filter(|f| f != PVC_PROTECTION).collect();
                let empty = rest.is_empty();
                claim["metadata"]["finalizers"] = json!(rest);
                self.write(key.clone(), claim, EventType::Modified);
                if empty {
                    self.remove(&key);
                }
            }
        }
    }

    /// Sets a pod's phase (what the kubelet would report), then runs claim protection.
    pub fn set_pod_phase(&mut self, namespace: &str, name: &str, phase: &str) -> Result<(), ApiError> {
        let mut pod = self.get("pods", namespace, name)?;
        pod["status"]["phase"] = json!(phase);
        let key = ("pods".to_string(), namespace.to_string(), name.to_string());
        self.write(key.clone(), pod.clone(), EventType::Modified);
        if !pod["metadata"]["deletionTimestamp"].is_null() && finished(&pod) {
            self.remove(&key);
        }
        self.protect_claims(namespace);
        Ok(())
    }

    /// Ends a terminating pod (its containers stopped), then runs claim protection.
    pub fn finish_pod(&mut self, namespace: &str, name: &str) -> Result<(), ApiError> {
        let key = ("pods".to_string(), namespace.to_string(), name.to_string());
        self.get("pods", namespace, name)?;
        self.remove(&key);
        self.protect_claims(namespace);
        Ok(())
    }

    /// Puts a cluster-scoped or namespaced object as the test gives it (a node, a foreign claim).
    pub fn put(&mut self, resource: &str, namespace: &str, mut object: Value) -> Value {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let key = (resource.to_string(), namespace.to_string(), name);
        let kind = if self.objects.contains_key(&key) { EventType::Modified } else { EventType::Added };
        if let (Some(k), Some(old)) = (kind_of(resource), self.objects.get(&key)) {
            object["kind"] = json!(k);
            object["metadata"]["uid"] = old["metadata"]["uid"].clone();
        }
        self.write(key, object, kind)
    }

    /// Sets what pod `name` printed.
    pub fn set_logs(&mut self, namespace: &str, name: &str, text: &str) {
        self.logs.insert((namespace.into(), name.into()), text.into());
    }

    /// `GET pods/NAME/log`: the last `tail` lines of what the pod printed.
    pub fn logs(&self, namespace: &str, name: &str, tail: Option<usize>) -> Result<String, ApiError> {
        self.get("pods", namespace, name)?;
        let text = self.logs.get(&(namespace.into(), name.into())).cloned().unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = tail.map_or(0, |t| lines.len().saturating_sub(t));
        Ok(lines[from..].iter().map(|l| format!("{l}\n")).collect())
    }

    /// Forgets the history: watches from any version before now get `410 Gone`.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Sends a bookmark at the current version to every watch of `resource` that allows them.
    pub fn bookmark(&mut self, resource: &str) {
        let kind = kind_of(resource).unwrap_or("Unknown");
        let object = json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": self.rv.to_string()}});
        let event = Event {
            rv: self.rv,
            resource: resource.into(),
            namespace: String::new(),
            kind: EventType::Bookmark,
            object,
        };
        let _ = self.tx.send(event);
    }

    /// Starts a watch of `resource` from version `from`: the events after it still in the
    /// history, and a receiver of those to come. `None` when `from` is older than the history.
    pub fn watch_from(&mut self, resource: &str, from: u64) -> Option<(Vec<Event>, broadcast::Receiver<Event>)> {
        if self.expire_watches > 0 {
            self.expire_watches -= 1;
            return None;
        }
        if from < self.compacted {
            return None;
        }
        let backlog = self.history.iter().filter(|e| e.rv > from && e.resource == resource).cloned().collect();
        Some((backlog, self.tx.subscribe()))
    }

    /// Subscribes to changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// Applies a JSON merge patch (RFC 7386, section 2) to `target`.
fn merge(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in fields {
        if v.is_null() {
            if let Some(t) = target.as_object_mut() {
                t.remove(k);
            }
        } else {
            merge(&mut target[k.as_str()], v);
        }
    }
}

/// The `409 Conflict` of a stale `resourceVersion`.
pub fn conflict(resource: &str, name: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
    )
}
