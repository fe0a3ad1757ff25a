//! `/healthz` (the process is up), `/readyz` (it can serve: the model is loaded, validated
//! and warmed up), `/metrics` (Prometheus text format) and `/` (what this server offers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use sightline_api::readiness::{self, Readiness, ReadyModel};

use crate::metrics::Metrics;
use crate::serving::{ModelSlot, ModelStatus};
use crate::store::ResultStore;

/// What health, readiness and metrics look at: the model (a slot that stays
/// [`ModelStatus::None`] in roles without one), the results database (store, all) and the
/// process's metrics registry.
#[derive(Clone)]
pub struct HealthState {
    pub model: ModelSlot,
    pub results: Option<ResultStore>,
    pub metrics: Metrics,
    /// The database's last answer to readiness (shared by every clone of this state).
    pub database: DatabaseCheck,
    /// The front door's traffic file (upload role): `/readyz` names the one it applies.
    pub traffic: Option<std::sync::Arc<crate::pipeline::traffic::Traffic>>,
}

/// How long a readiness answer about the database is reused: `/readyz` is open and never
/// shed, so without this every call would be a database round trip.
pub const DATABASE_CACHE: Duration = Duration::from_secs(1);

/// The database's answer to readiness, asked at most once per [`DATABASE_CACHE`]; callers
/// arriving while it is asked wait for that one answer.
#[derive(Clone, Default)]
pub struct DatabaseCheck(Arc<tokio::sync::Mutex<Option<(Instant, bool)>>>);

impl DatabaseCheck {
    /// True when the database answered within [`DATABASE_CHECK`], now or less than
    /// [`DATABASE_CACHE`] ago. Why it did not is logged (once per check), never answered.
    async fn reachable(&self, results: &ResultStore) -> bool {
        let mut last = self.0.lock().await;
        if let Some((at, reachable)) = *last
            && at.elapsed() < DATABASE_CACHE
        {
            return reachable;
        }
        let reachable = match tokio::time::timeout(DATABASE_CHECK, results.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: the results database does not answer");
                false
            }
            Err(_) => {
                tracing::warn!(?DATABASE_CHECK, "readiness: the results database timed out");
                false
            }
        };
        *last = Some((Instant::now(), reachable));
        reachable
    }
}

pub fn router() -> Router<HealthState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(index))
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// Ready when every part this role serves can serve: the model loaded, validated and
/// warmed up (recognize, all) and the results database answering (store, all; asked at
/// most once a second). A 503 names the first part that cannot, with a stable reason; the
/// database's own error goes to the log, not to whoever asks.
async fn readyz(State(state): State<HealthState>) -> Response {
    if let Some(results) = &state.results
        && !state.database.reachable(results).await
    {
        return not_ready(
            "DatabaseUnreachable",
            "the results database does not answer; see the server log",
        );
    }
    match state.model.get() {
        ModelStatus::Ready(model) => axum::Json(Readiness {
            model: Some(ReadyModel {
                name: model.name.clone(),
                sha256: model.info.sha256.clone(),
                preprocess_sha256: model.preprocess_sha256.clone(),
                device: model.info.device.as_str().to_string(),
                classes: model.info.classes as u64,
                input_shape: model.info.input_shape.clone(),
                load_seconds: model.info.load_seconds,
                batching: serde_json::to_value(&model.info.batching).unwrap_or_default(),
                instances: model.instances as u64,
                layout: serde_json::to_value(&model.layout).unwrap_or_default(),
            }),
            ..Readiness::ready()
        })
        .into_response(),
        ModelStatus::None => axum::Json(ready_without_model(&state)).into_response(),
        ModelStatus::Loading => not_ready(readiness::MODEL_LOADING, "the model is loading"),
        ModelStatus::Failed { reason, message } => not_ready(reason, &message),
    }
}

/// A role without a model is ready once its database answers; a front door also says
/// which traffic file it applies (the operator reads its `generation`).
fn ready_without_model(state: &HealthState) -> Readiness {
    Readiness {
        traffic: state.traffic.as_ref().map(|traffic| traffic.applied()),
        ..Readiness::ready()
    }
}

/// How long readiness waits for the database (probes have short timeouts).
const DATABASE_CHECK: Duration = Duration::from_secs(2);

fn not_ready(reason: &str, message: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(Readiness::not_ready(reason, message)),
    )
        .into_response()
}

/// OpenMetrics when the scraper asks for it (Prometheus does), the classic text format
/// otherwise (curl, `promtool check metrics`).
async fn metrics(State(state): State<HealthState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = crate::exposition::negotiate(accept, state.metrics.encode());
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}
