//! `/healthz` (the process is up), `/readyz` (it can serve: the model is loaded, validated
//! and warmed up), `/metrics` (Prometheus text format) and `/` (what this server offers).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::AppState;
use crate::serving::ModelStatus;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(index))
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.model.get() {
        ModelStatus::Ready(model) => axum::Json(json!({
            "status": "ready",
            "model": {
                "name": model.name,
                "sha256": model.info.sha256,
                "device": model.info.device.as_str(),
                "classes": model.info.classes,
                "load_seconds": model.info.load_seconds,
            }
        }))
        .into_response(),
        ModelStatus::None => axum::Json(json!({ "status": "ready" })).into_response(),
        ModelStatus::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not ready", "reason": "ModelLoading", "message": "the model is loading" })),
        )
            .into_response(),
        ModelStatus::Failed { reason, message } => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not ready", "reason": reason, "message": message })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}
