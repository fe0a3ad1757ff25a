//! The HTTP surface: `app(state)` merges one router per module and adds the layers every
//! route shares (metrics, request ids, tracing, timeouts, body limits, load shedding).

pub mod error;
pub mod health;
pub mod oip;
pub mod openapi;
pub mod recognize;
pub mod slow_clients;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::auth::Auth;
use crate::image_source::ImageSource;
use crate::metrics::Metrics;
use crate::pipeline::http::Pipeline;
use crate::serving::{ModelSlot, ServingModel};
use crate::store::ResultStore;
use crate::upload::http::Uploads;
use error::AppError;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Limits and names the handlers need.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The model's name in URLs and responses.
    pub model_name: String,
    /// Largest request body accepted (images, OIP tensors).
    pub max_body_bytes: usize,
    /// Requests in flight at once; more are answered 503 at once instead of queueing.
    pub max_in_flight: usize,
    /// A request taking longer is answered 503.
    pub request_timeout: Duration,
    /// A connection must send each request's headers within this (see [`slow_clients`]).
    pub header_read_timeout: Duration,
}

/// Everything a handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub model: ModelSlot,
    pub metrics: Metrics,
    pub images: ImageSource,
    pub settings: Arc<HttpSettings>,
    /// Requests being handled now (for load shedding).
    pub in_flight: Arc<AtomicUsize>,
    /// Whether this process serves recognition (the recognize routes and the v2 API).
    pub recognizes: bool,
    /// The image store (upload role, `all`).
    pub uploads: Option<Uploads>,
    /// The results database (store role, `all`).
    pub results: Option<ResultStore>,
    /// The other services the pipeline calls (upload role).
    pub pipeline: Option<Arc<Pipeline>>,
    /// API keys and rate limits.
    pub auth: Arc<Auth>,
    /// The evaluations (`/api/v1/evaluations`, and `--evaluate-on-start`'s `startup`).
    pub evaluations: crate::eval::api::Jobs,
}

impl AppState {
    /// The ready model, or a 503 that says why there is none.
    pub fn model(&self) -> Result<Arc<ServingModel>, AppError> {
        self.model.ready().map_err(AppError::unavailable)
    }

    pub fn model_name(&self) -> &str {
        &self.settings.model_name
    }
}

/// The whole router for the roles this state serves.
pub fn app(state: AppState) -> Router {
    let settings = state.settings.clone();
    let mut router = Router::new()
        .merge(health::router())
        .merge(openapi::router());
    if state.recognizes {
        router = router
            .merge(recognize::router())
            .merge(oip::router())
            .merge(crate::eval::api::router());
    }
    if state.uploads.is_some() {
        router = router
            .merge(crate::upload::http::router())
            .merge(crate::pipeline::http::router());
    }
    if state.results.is_some() {
        router = router.merge(crate::store::http::router());
    }
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::enforce,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn not_found() -> AppError {
    AppError::NotFound("no such endpoint; see / for the API".into())
}

/// Counts a request as in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts the request in; true when it is within `limit`.
    fn enter(counter: &Arc<AtomicUsize>, limit: usize) -> (InFlight, bool) {
        let before = counter.fetch_add(1, Ordering::SeqCst);
        (InFlight(counter.clone()), before < limit)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Per request: id (kept from the caller or made), load shedding, timeout, one log line and
/// the HTTP metrics by route template.
async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().clone();
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| {
            v.len() <= 128
                && v.to_str()
                    .is_ok_and(|s| s.chars().all(|c| c.is_ascii_graphic()))
        })
        .cloned()
        .unwrap_or_else(new_request_id);
    request.headers_mut().insert(REQUEST_ID, id.clone());

    let open = matches!(
        route.as_str(),
        "/healthz" | "/readyz" | "/metrics" | "/v2/health/live" | "/v2/health/ready"
    );
    let (_in_flight, admitted) = InFlight::enter(&state.in_flight, state.settings.max_in_flight);
    let mut response = if !admitted && !open {
        AppError::Unavailable {
            message: "the server is at its request limit; retry shortly".into(),
            retry_after: Some(1),
        }
        .into_response()
    } else {
        // Every event and span while handling the request carries its id.
        let span = tracing::info_span!(
            "request",
            request_id = id.to_str().unwrap_or(""),
            method = %method,
            route = %route,
        );
        let handled = next.run(request).instrument(span);
        match tokio::time::timeout(state.settings.request_timeout, handled).await {
            Ok(response) => response,
            Err(_) => AppError::Unavailable {
                message: format!(
                    "the request took longer than {:?}",
                    state.settings.request_timeout
                ),
                retry_after: Some(1),
            }
            .into_response(),
        }
    };
    response.headers_mut().insert(REQUEST_ID, id.clone());
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .metrics
        .http
        .observe(&route, method.as_str(), status, elapsed);
    tracing::info!(
        request_id = id.to_str().unwrap_or(""),
        method = %method,
        route = %route,
        status,
        ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

fn new_request_id() -> HeaderValue {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    HeaderValue::from_str(&format!(
        "{:x}-{n:x}",
        nanos ^ u64::from(std::process::id())
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}
