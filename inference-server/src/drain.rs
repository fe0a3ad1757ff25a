//! Shutting down without failing anyone: on SIGTERM the server first *drains* — `/readyz`
//! (and the Open Inference Protocol's `/v2/health/ready`) answer `503 ShuttingDown`, so a
//! Kubernetes Service or any load balancer that follows readiness stops sending new
//! connections, while everything that still arrives is served as usual, each response with
//! `Connection: close` so keep-alive clients move to another instance. After the drain
//! period the listener closes (new connections are refused) and in-flight requests get the
//! grace period to finish.
//!
//! Ctrl-C (an interactive stop) and in-process shutdowns skip the drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// How a shutdown was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Stop accepting at once, finish in-flight requests (Ctrl-C, tests).
    Now,
    /// Fail readiness and keep serving for the drain period first (SIGTERM).
    Drain,
}

impl From<()> for Shutdown {
    fn from((): ()) -> Self {
        Shutdown::Now
    }
}

/// Set once the drain has begun; shared by the middleware and the shutdown sequence.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn begin(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The readiness paths that report the drain.
const READINESS: [&str; 2] = ["/readyz", "/v2/health/ready"];

/// Middleware: while draining, readiness says `503 ShuttingDown` and every other response
/// closes its connection.
pub async fn layer(State(draining): State<Draining>, request: Request, next: Next) -> Response {
    if !draining.is_draining() {
        return next.run(request).await;
    }
    let mut response = if READINESS.contains(&request.uri().path()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "not ready",
                "reason": "ShuttingDown",
                "message": "the server is shutting down; requests still arriving are served",
            })),
        )
            .into_response()
    } else {
        next.run(request).await
    };
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app(draining: &Draining) -> Router {
        Router::new()
            .route("/readyz", get(|| async { "ready" }))
            .route("/work", get(|| async { "done" }))
            .layer(axum::middleware::from_fn_with_state(
                draining.clone(),
                layer,
            ))
    }

    async fn call(app: &Router, path: &str) -> (StatusCode, Option<String>) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let connection = response
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (response.status(), connection)
    }

    #[tokio::test]
    async fn draining_fails_readiness_and_closes_connections_but_keeps_serving() {
        let draining = Draining::default();
        let app = app(&draining);
        assert_eq!(call(&app, "/readyz").await, (StatusCode::OK, None));
        assert_eq!(call(&app, "/work").await, (StatusCode::OK, None));
        draining.begin();
        assert_eq!(
            call(&app, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, Some("close".into()))
        );
        assert_eq!(
            call(&app, "/work").await,
            (StatusCode::OK, Some("close".into()))
        );
    }

    #[test]
    fn only_sigterm_drains() {
        assert_eq!(Shutdown::from(()), Shutdown::Now);
    }
}
