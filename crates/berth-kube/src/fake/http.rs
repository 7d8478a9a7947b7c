//! The fake API server's HTTP side: paths and verbs as "API Concepts" (*Standard API
//! terminology*, *Efficient detection of changes*) lays them out, `Status` objects for errors,
//! and watches as newline-delimited JSON events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::SinkExt;
use serde_json::{json, Value};

use super::select::{FieldSelector, LabelSelector};
use super::store::{kind_of, namespaced, ApiError, Event, EventType};
use super::{lock, Shared};

/// Longest a watch lasts when the client names no `timeoutSeconds`.
const WATCH_DEFAULT_SECS: u64 = 300;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// A request, as RBAC sees it.
#[derive(Debug)]
struct Target {
    verb: &'static str,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

fn target(method: &Method, path: &str, query: &HashMap<String, String>) -> Option<Target> {
    let rest = path.strip_prefix("/api/v1/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (namespace, resource, name) = match parts.as_slice() {
        ["namespaces", ns, resource] => (Some(ns.to_string()), *resource, None),
        ["namespaces", ns, resource, name] => (Some(ns.to_string()), *resource, Some(name.to_string())),
        ["namespaces", ns, "pods", name, "log"] => (Some(ns.to_string()), "pods/log", Some(name.to_string())),
        [resource] => (None, *resource, None),
        [resource, name] => (None, *resource, Some(name.to_string())),
        _ => return None,
    };
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (method.as_str(), name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some(Target { verb, resource: resource.to_string(), namespace, name })
}

fn status(e: &ApiError, name: &str, resource: &str) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(e.status(name, kind_of(resource).unwrap_or("")))).into_response()
}

fn ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let Some(t) = target(&method, uri.path(), &query) else {
        return status(
            &ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({method} {})", uri.path()),
            ),
            "",
            "",
        );
    };
    lock(&shared.calls).push((t.verb.to_string(), t.resource.clone()));
    let name = t.name.clone().unwrap_or_default();
    if !shared.allowed.iter().any(|c| c.verb == t.verb && c.resource == t.resource) {
        let msg = format!(
            "{} \"{name}\" is forbidden: cannot {} resource \"{}\" in API group \"\"",
            t.resource, t.verb, t.resource
        );
        lock(&shared.violations).push(format!("{} {}", t.verb, t.resource));
        return status(&ApiError::new(403, "Forbidden", msg), &name, &t.resource);
    }
    if let Some(fault) = take_fault(&shared, &t) {
        return fault;
    }
    if t.resource == "pods/log" {
        let tail = query.get("tailLines").and_then(|n| n.parse().ok());
        return match lock(&shared.store).logs(t.namespace.as_deref().unwrap_or(""), &name, tail) {
            Ok(text) => text.into_response(),
            Err(e) => status(&e, &name, "pods"),
        };
    }
    if kind_of(&t.resource).is_none()
        || (namespaced(&t.resource) && t.namespace.is_none() && !matches!(t.verb, "list" | "watch"))
    {
        return status(
            &ApiError::new(404, "NotFound", "the server could not find the requested resource"),
            &name,
            &t.resource,
        );
    }
    let ns = t.namespace.clone().unwrap_or_default();
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return status(
                    &ApiError::new(400, "BadRequest", format!("the body is not JSON: {e}")),
                    &name,
                    &t.resource,
                )
            }
        }
    };
    let (labels, fields) = match selectors(&t.resource, &query) {
        Ok(s) => s,
        Err(e) => return status(&e, &name, &t.resource),
    };
    let result = match t.verb {
        "get" => lock(&shared.store).get(&t.resource, &ns, &name),
        "create" => lock(&shared.store).create(&t.resource, &ns, body),
        "update" => lock(&shared.store).update(&t.resource, &ns, &name, body),
        "delete" => lock(&shared.store).delete(&t.resource, &ns, &name, &body),
        // "API Concepts", *Patch operations*: the content type names the patch's kind; this
        // fake knows JSON merge patches only.
        "patch" if headers.get(header::CONTENT_TYPE).is_some_and(|c| c == "application/merge-patch+json") => {
            lock(&shared.store).patch(&t.resource, &ns, &name, &body)
        }
        "patch" => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the fake serves application/merge-patch+json patches only, not {:?}",
                headers.get(header::CONTENT_TYPE)
            ),
        )),
        "list" => {
            let store = lock(&shared.store);
            let items = store.list(&t.resource, t.namespace.as_deref(), &labels, &fields);
            let kind = format!("{}List", kind_of(&t.resource).unwrap_or_default());
            Ok(
                json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": store.version().to_string()}, "items": items}),
            )
        }
        "watch" => return watch(&shared, &t, &query, labels, fields),
        _ => {
            Err(ApiError::new(405, "MethodNotAllowed", format!("the fake does not serve {} on {}", t.verb, t.resource)))
        }
    };
    match result {
        Ok(v) => ok(v),
        Err(e) => status(&e, &name, &t.resource),
    }
}

fn selectors(resource: &str, query: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(|m| ApiError::new(400, "BadRequest", format!("unable to parse requirement: {m}")))?;
    let fields = FieldSelector::parse(resource, query.get("fieldSelector").map_or("", String::as_str))
        .map_err(|m| ApiError::new(400, "BadRequest", m))?;
    Ok((labels, fields))
}

fn take_fault(shared: &Shared, t: &Target) -> Option<Response> {
    let mut faults = lock(&shared.faults);
    let i = faults.iter().position(|f| {
        f.times > 0
            && f.verb.as_deref().is_none_or(|v| v == t.verb)
            && f.resource.as_deref().is_none_or(|r| r == t.resource)
    })?;
    faults[i].times -= 1;
    let f = faults[i].clone();
    let reason = match f.code {
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    let mut body = ApiError::new(f.code, reason, "injected by the test").status(t.name.as_deref().unwrap_or(""), "");
    if let Some(after) = f.retry_after {
        body["details"]["retryAfterSeconds"] = json!(after);
    }
    let code = StatusCode::from_u16(f.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (code, axum::Json(body)).into_response();
    if let Some(after) = f.retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, after.into());
    }
    Some(response)
}

/// A watch: `ADDED` for every matching object when no `resourceVersion` (or `0`) is given, then
/// the changes after that version; an `ERROR` event with `410 Expired` when the version is older
/// than the history; `BOOKMARK`s when `allowWatchBookmarks` is set; the stream ends after
/// `timeoutSeconds`.
fn watch(
    shared: &Shared,
    t: &Target,
    query: &HashMap<String, String>,
    labels: LabelSelector,
    fields: FieldSelector,
) -> Response {
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = query.get("timeoutSeconds").and_then(|s| s.parse().ok()).unwrap_or(WATCH_DEFAULT_SECS);
    let from = query.get("resourceVersion").filter(|v| !v.is_empty() && *v != "0");
    let mut store = lock(&shared.store);
    let (mut first, rx) = match from {
        None => {
            let items = store.list(&t.resource, t.namespace.as_deref(), &labels, &fields);
            let now = store.version();
            let added = items.into_iter().map(|o| Event {
                rv: now,
                resource: t.resource.clone(),
                namespace: String::new(),
                kind: EventType::Added,
                object: o,
            });
            (added.map(|e| e.line()).collect::<Vec<_>>(), store.subscribe())
        }
        Some(v) => {
            let Some(rv) = v.parse::<u64>().ok() else {
                return status(
                    &ApiError::new(400, "BadRequest", format!("invalid resource version: {v}")),
                    "",
                    &t.resource,
                );
            };
            match store.watch_from(&t.resource, rv) {
                Some((backlog, rx)) => {
                    let lines = backlog.iter().filter(|e| wanted(e, t, &labels, &fields)).map(Event::line).collect();
                    (lines, rx)
                }
                None => {
                    let gone =
                        ApiError::new(410, "Expired", format!("too old resource version: {rv} ({})", store.version()));
                    let line = json!({"type": "ERROR", "object": gone.status("", "")});
                    return Response::new(Body::from(format!("{line}\n")));
                }
            }
        }
    };
    drop(store);
    let (mut tx, out) = futures::channel::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let (t_resource, t_namespace) = (t.resource.clone(), t.namespace.clone());
    let last_sent = from.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    tokio::spawn(async move {
        let mut rx = rx;
        let mut last = last_sent;
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        for line in first.drain(..) {
            if tx.send(Ok(Bytes::from(format!("{line}\n")))).await.is_err() {
                return;
            }
        }
        let target = Target { verb: "watch", resource: t_resource, namespace: t_namespace, name: None };
        loop {
            let event = tokio::select! {
                _ = &mut deadline => return,
                e = rx.recv() => match e { Ok(e) => e, Err(_) => return },
            };
            let send = match event.kind {
                EventType::Bookmark => bookmarks && event.resource == target.resource,
                _ => event.rv > last && wanted(&event, &target, &labels, &fields),
            };
            if !send {
                continue;
            }
            last = last.max(event.rv);
            if tx.send(Ok(Bytes::from(format!("{}\n", event.line())))).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(out))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn wanted(e: &Event, t: &Target, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    let object_labels =
        e.object.pointer("/metadata/labels").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default();
    e.resource == t.resource
        && t.namespace.as_deref().is_none_or(|ns| ns == e.namespace)
        && labels.matches(&object_labels)
        && fields.matches(&t.resource, &e.object)
}
