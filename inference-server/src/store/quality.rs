//! The store role's feedback and live quality endpoints:
//!
//! - `POST /api/v1/results/{id}/feedback` (`{"label": "tabby"}`, or `{"correct": true}`
//!   when the answer was right): the caller is the one the API-key middleware found
//!   ([`Caller`]: the key's name, `anonymous` without keys). Served by `all` and by the
//!   store role; in a cluster, callers reach it only through the front door.
//! - `POST /internal/v1/results/{id}/feedback`: the same, as the front door forwards it,
//!   with the caller the front door found in [`CALLER_HEADER`]. Only the store role serves
//!   it (never `all`, where callers would reach it directly), and the front door never
//!   forwards it: like `/internal/v1/results`, in a cluster only the front door reaches the
//!   store role (its NetworkPolicy), so no caller can speak for another. The front door
//!   builds the header itself; a caller's own is never passed on.
//! - `GET /api/v1/results/{id}/feedback`: the result's feedback — each caller's current
//!   answer and the history of every answer (replaced ones included), newest
//!   [`MAX_HISTORY`] — and whether it counts in the live quality (`server` results only).
//! - `GET /api/v1/quality?model=&window=1h|24h|7d&digest=`: the seed's figures over the
//!   answers given in the window, per model digest ([`ResultStore::quality`]).
//!
//! Bodies are small JSON objects, limited to [`MAX_FEEDBACK_BYTES`].

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::json;
use sightline_quality::Window;

use super::feedback::{HistoryEntry, MAX_HISTORY, TrueAnswer, check_text};
use super::http::StoreState;
use super::{Provenance, rfc3339};
use crate::auth::Caller;
use crate::http::error::{AppError, Json, Query};

/// The header a front door names the caller in (its API key's name, form-urlencoded).
pub const CALLER_HEADER: HeaderName = HeaderName::from_static("x-sightline-caller");
/// Largest feedback body accepted.
pub const MAX_FEEDBACK_BYTES: usize = 16 * 1024;

pub fn router() -> Router<StoreState> {
    Router::new()
        .route(
            "/api/v1/results/{id}/feedback",
            post(feedback)
                .get(feedback_of)
                .layer(DefaultBodyLimit::max(MAX_FEEDBACK_BYTES)),
        )
        .route("/api/v1/quality", get(quality))
}

/// The route a front door forwards feedback to (the store role only).
pub fn internal_router() -> Router<StoreState> {
    Router::new().route(
        "/internal/v1/results/{id}/feedback",
        post(forwarded_feedback).layer(DefaultBodyLimit::max(MAX_FEEDBACK_BYTES)),
    )
}

/// Where a front door posts result `id`'s feedback.
pub fn internal_path(id: &str) -> String {
    format!("/internal/v1/results/{id}/feedback")
}

/// The caller's name as [`CALLER_HEADER`] carries it (any text, as a header can hold it).
pub fn encode_caller(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes()).collect()
}

/// The caller's name from [`CALLER_HEADER`]; `None` when absent or not form-urlencoded.
pub fn decode_caller(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(&CALLER_HEADER)?.to_str().ok()?;
    if value.contains(['=', '&']) {
        return None;
    }
    url::form_urlencoded::parse(value.as_bytes())
        .next()
        .map(|(name, _)| name.into_owned())
}

/// A feedback body: the true label, and/or whether the answer was right.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    label: Option<String>,
    correct: Option<bool>,
}

async fn feedback(
    State(state): State<StoreState>,
    Path(id): Path<String>,
    caller: Option<Extension<Caller>>,
    Json(body): Json<FeedbackRequest>,
) -> Result<Response, AppError> {
    record(&state, &id, &Caller::of(caller).0, body).await
}

async fn forwarded_feedback(
    State(state): State<StoreState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<FeedbackRequest>,
) -> Result<Response, AppError> {
    let caller = decode_caller(&headers).ok_or_else(|| {
        AppError::bad_request(format!(
            "a front door names the caller in {CALLER_HEADER}; callers post feedback to \
             /api/v1/results/{{id}}/feedback"
        ))
    })?;
    record(&state, &id, &caller, body).await
}

/// `201` with the answer recorded, `200` when it replaced the caller's earlier one.
async fn record(
    state: &StoreState,
    id: &str,
    caller: &str,
    body: FeedbackRequest,
) -> Result<Response, AppError> {
    if !super::is_record_id(id) {
        return Err(AppError::NotFound(format!("no result with id {id:?}")));
    }
    check_text("caller", caller).map_err(AppError::BadRequest)?;
    let answer = TrueAnswer::from_parts(body.label, body.correct).map_err(AppError::BadRequest)?;
    let recorded = state
        .results
        .record_feedback(id, caller, answer)
        .await
        .map_err(super::http::feedback_refused)?;
    let status = if recorded.replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(recorded)).into_response())
}

/// Result `id`'s feedback: each caller's current answer, and every answer given (the
/// newest [`MAX_HISTORY`]), oldest first.
async fn feedback_of(
    State(state): State<StoreState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let not_found = || AppError::NotFound(format!("no result with id {id:?}"));
    if !super::is_record_id(&id) {
        return Err(not_found());
    }
    let result = state.results.get(&id).await?.ok_or_else(not_found)?;
    let current = state.results.current_feedback(&id).await?;
    let mut history = state.results.feedback_history(&id).await?;
    let truncated = history.len() > MAX_HISTORY;
    if truncated {
        history.remove(0);
    }
    let view = |answers: &[HistoryEntry]| {
        answers
            .iter()
            .take(MAX_HISTORY)
            .map(|a| {
                json!({
                    "caller": a.caller,
                    "label": a.label,
                    "correct": a.correct,
                    "created_at": rfc3339(a.created_at_ms),
                })
            })
            .collect::<Vec<_>>()
    };
    Ok(axum::Json(json!({
        "result_id": result.id,
        "predicted": result.top_label,
        "model": result.model,
        "provenance": result.provenance,
        "counted": result.provenance == Provenance::Server,
        "current": view(&current),
        "history": view(&history),
        "history_truncated": truncated,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct QualityParams {
    model: Option<String>,
    window: Option<String>,
    digest: Option<String>,
}

/// The live figures of a model, per digest, over a window ending now.
async fn quality(
    State(state): State<StoreState>,
    Query(params): Query<QualityParams>,
) -> Result<Response, AppError> {
    let model = params.model.filter(|m| !m.is_empty()).ok_or_else(|| {
        AppError::bad_request("'model' is required: the model's name, as its results carry it")
    })?;
    if model.len() > 255 {
        return Err(AppError::bad_request("'model' is at most 255 bytes"));
    }
    let window = match params.window.as_deref() {
        None | Some("") => Window::default(),
        Some(text) => Window::parse(text).ok_or_else(|| {
            AppError::bad_request(format!("window must be 1h, 24h or 7d, got {text:?}"))
        })?,
    };
    let digest = params.digest.filter(|d| !d.is_empty());
    if digest.as_ref().is_some_and(|d| d.len() > 64) {
        return Err(AppError::bad_request(
            "'digest' is a model's SHA-256 (at most 64 characters)",
        ));
    }
    let until = super::now_ms();
    let since = until - window.millis();
    let digests = state
        .results
        .quality(&model, digest.as_deref(), since)
        .await?;
    Ok(axum::Json(json!({
        "model": model,
        "window": window.as_str(),
        "since": super::rfc3339(since),
        "until": super::rfc3339(until),
        "digests": digests,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_names_cross_the_header_intact() {
        for name in ["alice", "file:3", "env:2", "Zoë & co=1", "anonymous"] {
            let mut headers = HeaderMap::new();
            let value = axum::http::HeaderValue::from_str(&encode_caller(name)).expect("ascii");
            headers.insert(CALLER_HEADER, value);
            assert_eq!(decode_caller(&headers).as_deref(), Some(name));
        }
        assert_eq!(decode_caller(&HeaderMap::new()), None);
        let mut forged = HeaderMap::new();
        forged.insert(CALLER_HEADER, axum::http::HeaderValue::from_static("a=b"));
        assert_eq!(decode_caller(&forged), None);
    }
}
