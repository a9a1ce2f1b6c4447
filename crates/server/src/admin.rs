//! The admin HTTP endpoint: `GET /api/health` for load balancers and
//! orchestrators, `GET /metrics` for Prometheus; the management API
//! (`crate::mgmt`) is merged in beside them.
//!
//! Owns the HTTP routes and their serving loop only; what the numbers are
//! comes from the caller through [`AdminState`], so this module depends on
//! neither the core nor the store.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::{MetricsSnapshot, render};

/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin routes read.
#[derive(Clone)]
pub struct AdminState {
    /// True once the broker has recovered its store and opened its
    /// listeners, false again when shutdown begins: `/api/health` answers
    /// 503 while it is false so traffic is only sent to a working broker.
    pub ready: Arc<AtomicBool>,
    /// Takes a metrics snapshot; called on every `/metrics` request, on a
    /// runtime worker, so it must be quick and must not block (read
    /// counters, do not wait on locks held across I/O).
    pub snapshot: Arc<dyn Fn() -> MetricsSnapshot + Send + Sync>,
    /// Why the broker cannot take persistent messages (its store failed),
    /// if it cannot: `/api/health` then answers 503 too.
    pub failure: Arc<dyn Fn() -> Option<String> + Send + Sync>,
}

impl AdminState {
    /// Builds the state from a readiness flag and a snapshot function.
    pub fn new(
        ready: Arc<AtomicBool>,
        snapshot: impl Fn() -> MetricsSnapshot + Send + Sync + 'static,
    ) -> AdminState {
        AdminState {
            ready,
            snapshot: Arc::new(snapshot),
            failure: Arc::new(|| None),
        }
    }

    /// Sets the check `/api/health` asks for a failure.
    pub fn with_failure(
        mut self,
        failure: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> AdminState {
        self.failure = Arc::new(failure);
        self
    }
}

impl fmt::Debug for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminState")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The routes that answer without credentials: `GET /api/health` and
/// `GET /metrics` (everything else is the management API, `crate::mgmt`).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// [`router`] without `/metrics`, for when the management API serves it
/// behind credentials (`[admin] metrics_need_credentials`).
pub fn health_only(state: AdminState) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .with_state(state)
}

/// Serves `app` (this module's [`router`], merged with the management
/// API's) on `listener` until `shutdown` is cancelled, then lets requests
/// in flight finish and returns. Handlers see the client's address as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve<L>(listener: L, app: Router, shutdown: CancellationToken) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    use axum::serve::ListenerExt;
    // `tap_io` gives any listener with a socket address the connection
    // info the handlers read (axum has it built in for TcpListener only).
    axum::serve(
        listener.tap_io(|_| {}),
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

/// `GET /api/health`: 200 `{"status":"ok"}` when ready, else 503
/// `{"status":"unavailable"}`, or 503 `{"status":"store failed",
/// "reason":...}` once the store refuses writes.
async fn health(State(state): State<AdminState>) -> Response {
    let (status, body) = if let Some(why) = (state.failure)() {
        let body = serde_json::json!({"status": "store failed", "reason": why}).to_string();
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"unavailable"}"#.to_owned(),
        )
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /metrics`: the Prometheus text exposition of a fresh snapshot.
async fn metrics(State(state): State<AdminState>) -> Response {
    let text = render(&(state.snapshot)());
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::QueueMetrics;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A parsed HTTP/1.1 response: status line, headers (names lowercased),
    /// body.
    struct Reply {
        status_line: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Sends `GET path` over a plain TCP stream and reads until the server
    /// closes (the request asks it to).
    async fn get(addr: SocketAddr, path: &str) -> Reply {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        let text = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("header end");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line").to_owned();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        Reply {
            status_line,
            headers,
            body: body.to_owned(),
        }
    }

    /// Serves the admin router on an ephemeral loopback port.
    async fn start(
        state: AdminState,
    ) -> (
        SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, router(state), shutdown.clone()));
        (addr, shutdown, task)
    }

    fn one_queue() -> MetricsSnapshot {
        MetricsSnapshot {
            queues: vec![QueueMetrics {
                vhost: "/".into(),
                name: "q".into(),
                depth: 2,
                unacked: 0,
                consumers: 1,
            }],
            ..MetricsSnapshot::default()
        }
    }

    #[tokio::test]
    async fn health_is_503_until_ready_then_200_ok() {
        let ready = Arc::new(AtomicBool::new(false));
        let (addr, shutdown, task) =
            start(AdminState::new(ready.clone(), MetricsSnapshot::default)).await;

        let reply = get(addr, "/api/health").await;
        assert_eq!(reply.status_line, "HTTP/1.1 503 Service Unavailable");
        assert_eq!(reply.body, r#"{"status":"unavailable"}"#);

        ready.store(true, Ordering::Release);
        let reply = get(addr, "/api/health").await;
        assert_eq!(reply.status_line, "HTTP/1.1 200 OK");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.body, r#"{"status":"ok"}"#);

        shutdown.cancel();
        task.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn metrics_serves_the_rendered_snapshot_as_prometheus_text() {
        let ready = Arc::new(AtomicBool::new(true));
        let (addr, shutdown, task) = start(AdminState::new(ready, one_queue)).await;

        let reply = get(addr, "/metrics").await;
        assert_eq!(reply.status_line, "HTTP/1.1 200 OK");
        assert_eq!(reply.header("content-type"), Some(METRICS_CONTENT_TYPE));
        assert_eq!(reply.body, render(&one_queue()));
        assert!(
            reply
                .body
                .contains("\njunction_queue_messages{vhost=\"/\",queue=\"q\"} 2\n")
        );

        shutdown.cancel();
        task.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn unknown_path_is_404() {
        let ready = Arc::new(AtomicBool::new(true));
        let (addr, shutdown, task) = start(AdminState::new(ready, MetricsSnapshot::default)).await;
        let reply = get(addr, "/api/nope").await;
        assert_eq!(reply.status_line, "HTTP/1.1 404 Not Found");
        shutdown.cancel();
        task.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn cancelling_shutdown_stops_serving() {
        let ready = Arc::new(AtomicBool::new(true));
        let (addr, shutdown, task) = start(AdminState::new(ready, MetricsSnapshot::default)).await;
        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("serve returns after cancel")
            .expect("join")
            .expect("serve");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
