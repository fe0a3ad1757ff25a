//! Recognition endpoints: the seed's `POST /api/images/recognition` (by URL, top 3) and
//! `POST /api/v1/recognize` (image bytes or multipart, `?top_k=`).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header;
use axum::routing::post;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{AppError, Json, Query};
use crate::image_source::{ImageSource, SourceError};
use crate::postprocess::Prediction;
use crate::serving::{ModelSlot, ServingModel};

/// The seed returns the three most likely labels.
pub const SEED_TOP_K: usize = 3;

/// The recognize role's state (its routes here and the Open Inference Protocol's): the
/// served model and where images may be fetched from by URL.
#[derive(Clone)]
pub struct RecognizeState {
    pub model: ModelSlot,
    pub images: ImageSource,
    /// The model's name in URLs and responses.
    pub model_name: Arc<str>,
}

impl RecognizeState {
    /// The ready model, or a 503 that says why there is none.
    pub fn model(&self) -> Result<Arc<ServingModel>, AppError> {
        self.model.ready().map_err(AppError::unavailable)
    }

    pub fn model_name(&self) -> &str {
        &self.model_name
    }
}

pub fn router() -> Router<RecognizeState> {
    Router::new()
        .route("/api/images/recognition", post(recognize_by_url))
        .route("/api/v1/recognize", post(recognize_bytes))
}

/// The seed's recognition request.
#[derive(Debug, Deserialize)]
pub struct UrlRequest {
    pub url: Option<String>,
}

impl UrlRequest {
    /// The URL, or the seed's 400 when there is none.
    pub fn url(self) -> Result<String, AppError> {
        self.url
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| AppError::bad_request("No image url"))
    }
}

/// Seed contract: `{"url": ...}` → `200 [{"label", "probability"}, ...]` (top 3).
async fn recognize_by_url(
    State(state): State<RecognizeState>,
    Json(body): Json<UrlRequest>,
) -> Result<Json<Vec<Prediction>>, AppError> {
    let url = body.url()?;
    // The URL is checked before anything else, so a refused URL is a 403 in every state.
    state.images.check(&url).map_err(source_error)?;
    let model = state.model()?;
    let bytes = state.images.fetch(&url).await.map_err(source_error)?;
    Ok(Json(model.classify(bytes, SEED_TOP_K).await?))
}

fn source_error(e: SourceError) -> AppError {
    match e {
        SourceError::InvalidUrl(_) => AppError::BadRequest(e.to_string()),
        SourceError::NotAllowed | SourceError::Address(_) => AppError::Forbidden(e.to_string()),
        SourceError::Status { status: 404 } => AppError::NotFound("no image at this URL".into()),
        SourceError::Status { .. } => AppError::BadGateway(e.to_string()),
        SourceError::TooLarge { .. } => AppError::PayloadTooLarge(e.to_string()),
        SourceError::Unreachable(_) => AppError::unavailable(e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub struct TopK {
    pub top_k: Option<u64>,
}

/// The answer of `POST /api/v1/recognize`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Recognition {
    pub model: ModelRef,
    pub predictions: Vec<Prediction>,
    /// Server-side time for this request, in milliseconds.
    pub latency_ms: f64,
}

/// The model that answered: its digest and its preprocessing's, which together say whose
/// answer it is (a recognize service of an older release sends no `preprocess_sha256`).
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub sha256: String,
    #[serde(default)]
    pub preprocess_sha256: String,
}

impl ModelRef {
    pub fn of(model: &ServingModel) -> ModelRef {
        ModelRef {
            name: model.name.clone(),
            sha256: model.info.sha256.clone(),
            preprocess_sha256: model.preprocess_sha256.clone(),
        }
    }
}

/// Checks `top_k` against the label count; absent means 5.
pub fn top_k(requested: Option<u64>, classes: usize) -> Result<usize, AppError> {
    match requested {
        None => Ok(5.min(classes)),
        Some(k) if k >= 1 && k <= classes as u64 => Ok(k as usize),
        Some(k) => Err(AppError::bad_request(format!(
            "top_k must be between 1 and {classes}, got {k}"
        ))),
    }
}

async fn recognize_bytes(
    State(state): State<RecognizeState>,
    Query(query): Query<TopK>,
    request: Request,
) -> Result<Json<Recognition>, AppError> {
    let started = Instant::now();
    let model = state.model()?;
    let k = top_k(query.top_k, model.info.classes)?;
    let bytes = image_from_body(&state, request).await?;
    let predictions = model.classify(bytes, k).await?;
    Ok(Json(Recognition {
        model: ModelRef::of(&model),
        predictions,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
    }))
}

/// The image of a request: the multipart field `image`, or the raw body.
pub async fn image_from_body<S: Send + Sync>(
    state: &S,
    request: Request,
) -> Result<Bytes, AppError> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if is_multipart {
        let mut multipart = Multipart::from_request(request, state).await.map_err(|e| {
            AppError::bad_request(format!("invalid multipart request: {}", e.body_text()))
        })?;
        while let Some(field) = multipart.next_field().await? {
            if field.name() == Some("image") {
                let bytes = field.bytes().await?;
                if bytes.is_empty() {
                    return Err(AppError::bad_request("the image field is empty (0 bytes)"));
                }
                return Ok(bytes);
            }
        }
        Err(AppError::bad_request("multipart field 'image' is missing"))
    } else {
        let bytes = Bytes::from_request(request, state).await?;
        if bytes.is_empty() {
            return Err(AppError::bad_request(
                "the request body is empty: send the image bytes, or multipart with a field 'image'",
            ));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_bounded_by_the_labels() {
        assert_eq!(top_k(None, 1000).expect("default"), 5);
        assert_eq!(top_k(None, 3).expect("default clamps"), 3);
        assert_eq!(top_k(Some(10), 1000).expect("ok"), 10);
        assert!(top_k(Some(0), 1000).is_err());
        assert!(top_k(Some(1_000_000_000), 1000).is_err());
        assert!(top_k(Some(1001), 1000).is_err());
    }
}
