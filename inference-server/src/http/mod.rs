//! The HTTP surface and the composer: `app(state)` merges one router per role, each given
//! its own state made from [`AppState`] (`RecognizeState`, `UploadState`, `StoreState`,
//! `PipelineState`, `EvalState`, `FrontDoorState`), and adds the layers every route shares
//! (metrics, request ids, tracing, timeouts, body limits, API keys, load shedding). This
//! module imports the roles; they never import it (a test below checks).

pub mod cross_site;
pub mod error;
pub mod h2_frames;
pub mod health;
pub mod oip;
pub mod openapi;
pub mod recognize;
pub mod request_id;
pub mod slow_clients;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::auth::{Auth, AuthState};
use crate::eval::api::EvalState;
use crate::front_door::FrontDoorState;
use crate::image_source::ImageSource;
use crate::metrics::Metrics;
use crate::pipeline::Downstreams;
use crate::pipeline::http::PipelineState;
use crate::serving::{ModelSlot, ServingModel};
use crate::store::ResultStore;
use crate::store::http::StoreState;
use crate::upload::http::UploadState;
use error::AppError;
use health::HealthState;
use recognize::RecognizeState;
pub use request_id::REQUEST_ID;

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
    /// `--public-url`'s origin: a browser page there may change things (see [`cross_site`]).
    pub public_origin: cross_site::PublicOrigin,
}

/// The parts of the whole process, as [`crate::server`] set them up for its role; [`app`]
/// hands each role's router its own state made from them. Cheap to clone.
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
    pub uploads: Option<UploadState>,
    /// The results database (store role, `all`).
    pub results: Option<ResultStore>,
    /// The other services the upload role calls (none in `all`).
    pub downstream: Downstreams,
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

    fn health(&self) -> HealthState {
        HealthState {
            model: self.model.clone(),
            results: self.results.clone(),
            metrics: self.metrics.clone(),
            database: Default::default(),
            traffic: self.downstream.recognize.clone(),
        }
    }

    fn recognize(&self) -> RecognizeState {
        RecognizeState {
            model: self.model.clone(),
            images: self.images.clone(),
            model_name: self.settings.model_name.as_str().into(),
        }
    }

    fn eval(&self) -> EvalState {
        EvalState {
            model: self.model.clone(),
            jobs: self.evaluations.clone(),
            max_image_bytes: self.settings.max_body_bytes as u64,
        }
    }

    fn pipeline(&self, upload: &UploadState) -> PipelineState {
        PipelineState {
            upload: upload.clone(),
            model: self.recognizes.then(|| self.model.clone()),
            results: self.results.clone(),
            downstream: self.downstream.clone(),
        }
    }

    fn front_door(&self, upload: &UploadState) -> FrontDoorState {
        FrontDoorState::new(
            upload.clone(),
            self.downstream.recognize.clone(),
            self.downstream.store.clone(),
            self.settings.max_body_bytes,
        )
    }

    fn auth(&self) -> AuthState {
        AuthState {
            auth: self.auth.clone(),
            metrics: self.metrics.pipeline.clone(),
        }
    }
}

/// The whole router for the roles this state serves: each role's router with its own
/// state, then the layers every route shares. In the upload role with downstreams, the
/// front door ([`crate::front_door`]) serves the routes of the roles it forwards to.
pub fn app(state: AppState) -> Router {
    let settings = state.settings.clone();
    let mut router = Router::new()
        .merge(health::router().with_state(state.health()))
        .merge(openapi::router());
    if state.recognizes {
        router = router
            .merge(
                recognize::router()
                    .merge(oip::router())
                    .with_state(state.recognize()),
            )
            .merge(crate::eval::api::router().with_state(state.eval()));
    }
    if let Some(upload) = &state.uploads {
        router = router
            .merge(crate::upload::http::router().with_state(upload.clone()))
            .merge(crate::pipeline::http::router().with_state(state.pipeline(upload)));
        if !state.recognizes && state.downstream.recognize.is_some() {
            router = router
                .merge(crate::front_door::recognize_router().with_state(state.front_door(upload)));
        }
        if state.results.is_none() && state.downstream.store.is_some() {
            router = router
                .merge(crate::front_door::store_router().with_state(state.front_door(upload)));
        }
    }
    if let Some(results) = &state.results {
        let mut store = crate::store::http::router().merge(crate::store::quality::router());
        // Feedback a front door forwards: the store role only, never `all`, where callers
        // would reach it directly and could name another caller.
        if state.uploads.is_none() {
            store = store.merge(crate::store::quality::internal_router());
        }
        router = router.merge(store.with_state(StoreState {
            results: results.clone(),
            metrics: state.metrics.pipeline.clone(),
        }));
    }
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.auth(),
            crate::auth::enforce,
        ))
        .layer(middleware::from_fn_with_state(
            settings.public_origin.clone(),
            cross_site::refuse,
        ))
        .layer(middleware::from_fn_with_state(state, observe))
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
    // A label from a fixed set: a caller may invent any method (RFC 9110 allows extension
    // methods), and it must not become a metric series or an unbounded log field.
    let method = crate::metrics::method_label(request.method().as_str());
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| request_id::usable(v))
        .cloned()
        .unwrap_or_else(request_id::new_request_id);
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
            method,
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
    state.metrics.http.observe(&route, method, status, elapsed);
    tracing::info!(
        request_id = id.to_str().unwrap_or(""),
        method,
        route = %route,
        status,
        ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The modules under `http/` that are no part of the composer (this file): a role's
    /// routes and the shared leaves. Role modules may use these, never `http` itself.
    const LEAVES: [&str; 9] = [
        "cross_site",
        "error",
        "h2_frames",
        "health",
        "oip",
        "openapi",
        "recognize",
        "request_id",
        "slow_clients",
    ];

    fn sources(path: &Path, out: &mut Vec<PathBuf>) {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).expect("read the source directory");
            for entry in entries {
                sources(&entry.expect("a directory entry").path(), out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.to_path_buf());
        }
    }

    /// The identifiers that follow each `prefix` in `text`.
    fn after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.match_indices(prefix)
            .map(|(i, _)| {
                let rest = &text[i + prefix.len()..];
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect()
    }

    /// STYLE 12b: the composer (`http/mod.rs`, with `server.rs` above it) imports the
    /// roles; `upload/`, `store/`, `pipeline/`, `eval/`, `auth`, the front door and the
    /// route modules under `http/` never import it back (no `AppState`, no `crate::http::X`
    /// but a leaf module, no `crate::server`).
    #[test]
    fn roles_never_import_the_composer() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        for part in [
            "upload",
            "store",
            "pipeline",
            "eval",
            "auth",
            "front_door.rs",
        ] {
            sources(&src.join(part), &mut files);
        }
        for leaf in LEAVES {
            files.push(src.join("http").join(format!("{leaf}.rs")));
        }
        let mut offences = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).expect("read a source file");
            let shown = file
                .strip_prefix(&src)
                .unwrap_or(file)
                .display()
                .to_string();
            if text.contains("AppState") || text.contains("crate::server") {
                offences.push(format!("{shown}: names AppState or crate::server"));
            }
            let mut reached = after(&text, "crate::http::");
            if file.parent().is_some_and(|p| p.ends_with("http")) {
                reached.extend(after(&text, "super::"));
            }
            // An empty name is a glob (`use super::*` of a file's own tests) or a group,
            // whose members the `AppState` check above covers.
            for module in reached {
                if !module.is_empty() && !LEAVES.contains(&module) {
                    offences.push(format!("{shown}: reaches http::{module}"));
                }
            }
        }
        assert!(files.len() > 15, "found only {files:?}");
        assert!(offences.is_empty(), "{offences:#?}");
    }
}
