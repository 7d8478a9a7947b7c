//! Serving connections under limits: at most `max_connections` at once, and header-read, body and
//! idle timeouts, so that clients which stall (half a header, half a body, a keep-alive socket
//! left open) cannot hold the server's sockets and file descriptors for ever.
//!
//! Each connection is in one phase, which its watchdog times:
//! - **head**: from the accept, or from the first byte after an idle phase, until hyper hands a
//!   complete request head to the router: at most `header_timeout`;
//! - **busy**: the router has the request; its body must arrive within `body_timeout` (checked
//!   where the body is read), the handler and its answer's body are not timed (an event stream
//!   is busy for as long as it streams);
//! - **idle**: after the answer, until the next byte: at most `idle_timeout`.
//!
//! A connection past its deadline is closed; one the server never accepts (past the cap) waits
//! in the kernel's backlog until a slot frees up.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::HttpLimits as Limits;

/// The most bytes of a request body (axum's own default limit for buffered bodies).
const BODY_MAX: usize = 2 * 1024 * 1024;

/// Serves `router` on `listener` under `limits` until `shutdown`; then asks every connection to
/// finish its request and close, and waits for them.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, shutdown: CancellationToken) {
    let body_timeout = limits.body_timeout;
    let router = router.layer(axum::middleware::from_fn(move |req: Request, next: Next| async move {
        read_body(req, next, body_timeout).await
    }));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let conns = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            // The semaphore is never closed.
            slot = slots.clone().acquire_owned() => match slot { Ok(s) => s, Err(_) => break },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, or a connection reset before the accept: back off a
                    // little rather than spin; the connections being served free theirs.
                    tracing::warn!(event = "accept_failed", error = %e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        open_connections(&slots, &limits);
        let (router, limits, shutdown, slots) = (router.clone(), limits, shutdown.clone(), slots.clone());
        conns.spawn(async move {
            connection(stream, router, limits, shutdown, slot).await;
            open_connections(&slots, &limits);
        });
    }
    conns.close();
    conns.wait().await;
}

fn open_connections(slots: &Semaphore, limits: &Limits) {
    let open = limits.max_connections.max(1).saturating_sub(slots.available_permits());
    metrics::gauge!("berth_http_connections").set(open as f64);
}

/// Buffers the request body within `timeout` (408 past it, 413 past [`BODY_MAX`]), then runs the
/// router with it.
async fn read_body(req: Request, next: Next, timeout: Duration) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, BODY_MAX)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(_)) => too_large_or_broken(),
        Err(_) => {
            metrics::counter!("berth_http_timeouts_total", "phase" => "body").increment(1);
            let message = format!("the request body did not arrive within {} s", timeout.as_secs_f64());
            error_response(StatusCode::REQUEST_TIMEOUT, "body_timeout", &message)
        }
    }
}

fn too_large_or_broken() -> Response {
    let message = format!("the request body could not be read, or is larger than {BODY_MAX} bytes");
    error_response(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", &message)
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = berth_api::ErrorBody {
        error: berth_api::ErrorDetail {
            code: code.into(),
            message: message.into(),
            holder: None,
            current_epoch: None,
            presented_epoch: None,
            retry_after_secs: None,
            scope: None,
        },
    };
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    resp
}

/// Serves one connection until it ends, its phase's deadline passes, or `shutdown`; holds `_slot`
/// meanwhile.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched { inner: stream, activity: activity.clone() });
    let service = Phased { inner: TowerToHyperService::new(router), activity: activity.clone() };
    let mut http = hyper::server::conn::http1::Builder::new();
    // The watchdog times heads; hyper's own header timer would also cut idle keep-alive
    // connections at the header timeout.
    http.header_read_timeout(None);
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(event = "http_connection_error", error = %e);
                }
                return;
            }
            _ = shutdown.cancelled(), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
            phase = activity.expired(&limits) => {
                metrics::counter!("berth_http_timeouts_total", "phase" => phase).increment(1);
                tracing::debug!(event = "http_connection_timed_out", phase);
                return;
            }
        }
    }
}

/// Where a connection stands.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for a complete request head since then.
    Head(Instant),
    /// A request is with the router.
    Busy,
    /// Nothing under way since then.
    Idle(Instant),
}

/// A connection's phase, shared by its reader, its service and its watchdog.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity { phase: Mutex::new(Phase::Head(Instant::now())), changed: Notify::new() }
    }

    fn phase(&self) -> Phase {
        // A poisoned lock only means a panic elsewhere; the phase itself is plain data.
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, to: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        *phase = to(*phase);
        drop(phase);
        self.changed.notify_one();
    }

    /// Resolves with the name of the phase whose deadline passed.
    async fn expired(&self, limits: &Limits) -> &'static str {
        loop {
            let changed = self.changed.notified();
            let (deadline, name) = match self.phase() {
                Phase::Head(since) => (since + limits.header_timeout, "header"),
                Phase::Idle(since) => (since + limits.idle_timeout, "idle"),
                Phase::Busy => {
                    changed.await;
                    continue;
                }
            };
            if Instant::now() >= deadline {
                return name;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = changed => {}
            }
        }
    }
}

/// The socket, noting the first byte of each request.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.set(|p| match p {
                Phase::Idle(_) => Phase::Head(Instant::now()),
                other => other,
            });
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The router as hyper's service, marking the connection busy while it has a request.
struct Phased {
    inner: TowerToHyperService<Router>,
    activity: Arc<Activity>,
}

impl Service<hyper::Request<Incoming>> for Phased {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.activity.set(|_| Phase::Busy);
        let answer = self.inner.call(req);
        let activity = self.activity.clone();
        Box::pin(async move {
            // The request stays under way until its answer's body ends (an event stream's
            // lasts as long as the client listens): only then is the connection idle.
            let resp = answer.await?;
            let (parts, body) = resp.into_parts();
            Ok(Response::from_parts(parts, Body::new(Answering { inner: body, activity: Some(activity) })))
        })
    }
}

/// An answer's body, marking its connection idle once the body has ended (or was dropped).
struct Answering {
    inner: Body,
    activity: Option<Arc<Activity>>,
}

impl Answering {
    fn ended(&mut self) {
        if let Some(activity) = self.activity.take() {
            activity.set(|_| Phase::Idle(Instant::now()));
        }
    }
}

impl axum::body::HttpBody for Answering {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.ended();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.ended();
    }
}
