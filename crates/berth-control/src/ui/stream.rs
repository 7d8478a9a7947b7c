//! `GET /v1/events/stream`: the audit log as Server-Sent Events, for the console and for API
//! clients. Each event's SSE id is its events-table id, so a client resumes after a reconnect
//! with `Last-Event-ID` (or `?after=ID`); without either, the stream starts with the next event.
//! Read by polling the table (every replica sees every replica's events), and ended at shutdown.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_core::workspace::WorkspaceId;
use futures::Stream;
use serde::Deserialize;

use crate::app::{now, App};
use crate::error::Error;
use crate::meta::EventRow;

/// How often the events table is read while nothing is queued.
const POLL: Duration = Duration::from_millis(500);

/// The stream's part of the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(events_stream))]
pub struct StreamDoc;

/// Query of the stream.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Start after this event id (`Last-Event-ID` wins when both are given).
    after: Option<i64>,
    /// Only this owner's events.
    owner: Option<String>,
}

/// Streams audit events as they are recorded (`text/event-stream`; each event's data is the
/// JSON of an `Event` of `/v1/events`). Takes the admin or a viewer token, or a console session.
#[utoipa::path(get, path = "/v1/events/stream", tag = "operations", params(StreamQuery),
    responses((status = 200, description = "text/event-stream of Event JSON, id = event id"),
        (status = 401, body = berth_api::ErrorBody), (status = 403, body = berth_api::ErrorBody)))]
pub async fn events_stream(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match start(app, &headers, query).await {
        Ok(sse) => sse.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn start(
    app: Arc<App>,
    headers: &HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Error> {
    match crate::http::auth::bearer(headers) {
        Some(token) => app.tokens.principal(&app.meta, token).await?.reader()?,
        None if super::session::console_of(&app, headers, now()).is_some() => {}
        None => return Err(Error::Unauthorized),
    }
    let Query(q) = query.map_err(|e| Error::BadRequest(format!("invalid query: {}", e.body_text())))?;
    let owner = q.owner.map(WorkspaceId::new).transpose().map_err(|e| Error::BadRequest(format!("owner: {e}")))?;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
    let after = match resume.or(q.after) {
        Some(id) => id.max(0),
        None => app.meta.last_event_id().await?,
    };
    let feed = Feed { app, after, owner, queue: VecDeque::new() };
    let stream = futures::stream::unfold(feed, next);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct Feed {
    app: Arc<App>,
    after: i64,
    owner: Option<WorkspaceId>,
    queue: VecDeque<EventRow>,
}

/// The next event, reading the table when the queue is empty; `None` at shutdown.
async fn next(mut feed: Feed) -> Option<(Result<Event, Infallible>, Feed)> {
    loop {
        if let Some(row) = feed.queue.pop_front() {
            feed.after = row.id;
            let id = row.id.to_string();
            let data = serde_json::to_string(&crate::http::dto::event(row)).unwrap_or_else(|_| "{}".into());
            return Some((Ok(Event::default().id(id).data(data)), feed));
        }
        if feed.app.streams.is_cancelled() {
            return None;
        }
        let wait = match feed.app.meta.events(feed.after, feed.owner.as_ref(), None, 200).await {
            Ok(rows) if !rows.is_empty() => {
                feed.queue.extend(rows);
                continue;
            }
            Ok(_) => POLL,
            Err(e) => {
                tracing::warn!(event = "event_stream_read_failed", error = %e);
                POLL * 4
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = feed.app.streams.cancelled() => return None,
        }
    }
}
