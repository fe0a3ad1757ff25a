//! `POST /api/v1/pipeline` (an image in, the stored record out) and
//! `POST /api/v1/images/{id}/recognize` (run a stored image through recognition and
//! storage again, e.g. after the recognize service was down).

use std::time::Instant;

use axum::Router;
use axum::extract::{FromRef, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{DownstreamError, Downstreams};
use crate::http::error::{AppError, Query};
use crate::http::recognize::Recognition;
use crate::serving::ModelSlot;
use crate::store::{ModelRef, NewResult, Provenance, ResultRecord, ResultStore};
use crate::upload::http::{StoredImage, UploadState, read_image, store_image};
use crate::upload::is_image_id;

pub fn router() -> Router<PipelineState> {
    Router::new()
        .route("/api/v1/pipeline", post(pipeline))
        .route("/api/v1/images/{id}/recognize", post(rerun))
}

/// The pipeline's state: the image store it keeps images in, and for each later step
/// either the part in this process (`all`) or the service to call (upload role).
#[derive(Clone)]
pub struct PipelineState {
    pub upload: UploadState,
    /// The model, when this process serves one (`all`); else `downstream.recognize`.
    pub model: Option<ModelSlot>,
    /// The results database, when this process keeps one (`all`); else `downstream.store`.
    pub results: Option<ResultStore>,
    pub downstream: Downstreams,
}

/// Handlers that only keep images extract just the upload role's part.
impl FromRef<PipelineState> for UploadState {
    fn from_ref(state: &PipelineState) -> UploadState {
        state.upload.clone()
    }
}

/// The answer: the stored record plus the image it is about.
#[derive(Debug, Serialize, Deserialize)]
pub struct PipelineResult {
    #[serde(flatten)]
    pub record: ResultRecord,
    pub image: StoredImage,
}

#[derive(Debug, Deserialize)]
struct Params {
    top_k: Option<u64>,
}

/// Why a step could not be done.
enum StepError {
    /// The component cannot answer now: `503`, the image kept for a re-run.
    Unavailable {
        component: &'static str,
        message: String,
        retry_after: u64,
    },
    Other(AppError),
}

impl From<DownstreamError> for StepError {
    fn from(e: DownstreamError) -> Self {
        match e {
            DownstreamError::Unavailable {
                component,
                retry_after,
                ..
            } => StepError::Unavailable {
                component,
                message: e.to_string(),
                retry_after,
            },
            DownstreamError::Refused {
                status, message, ..
            } => StepError::Other(match status {
                StatusCode::NOT_FOUND => AppError::NotFound(message),
                StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge(message),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => AppError::UnsupportedMediaType(message),
                StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => AppError::Forbidden(format!(
                    "a downstream service refused this service's credentials: {message}"
                )),
                _ => AppError::BadRequest(message),
            }),
            DownstreamError::BadAnswer { .. } => {
                StepError::Other(AppError::BadGateway(e.to_string()))
            }
        }
    }
}

async fn pipeline(
    State(state): State<PipelineState>,
    State(upload): State<UploadState>,
    Query(params): Query<Params>,
    request: Request,
) -> Result<Response, AppError> {
    let headers = request.headers().clone();
    check_top_k(params.top_k)?;
    let bytes = read_image(&upload, request, true).await?;
    let (image, _) = store_image(&upload, bytes.clone()).await?;
    Ok(run(&state, image, bytes, params.top_k, &headers).await)
}

async fn rerun(
    State(state): State<PipelineState>,
    State(upload): State<UploadState>,
    Path(id): Path<String>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    check_top_k(params.top_k)?;
    let not_found = || AppError::NotFound(format!("no image with id {id:?}"));
    if !is_image_id(&id) {
        return Err(not_found());
    }
    let bytes = upload.store.get(&id).await?.ok_or_else(not_found)?;
    // Stored images passed the checks; this re-derives the answer's fields, writes nothing.
    let (image, _) = store_image(&upload, bytes.clone()).await?;
    Ok(run(&state, image, bytes, params.top_k, &headers).await)
}

fn check_top_k(top_k: Option<u64>) -> Result<(), AppError> {
    match top_k {
        Some(k) if !(1..=1000).contains(&k) => Err(AppError::bad_request(format!(
            "top_k must be between 1 and the number of labels, got {k}"
        ))),
        _ => Ok(()),
    }
}

/// Recognize and store an image that is already kept.
async fn run(
    state: &PipelineState,
    image: StoredImage,
    bytes: Bytes,
    top_k: Option<u64>,
    headers: &HeaderMap,
) -> Response {
    let started = Instant::now();
    let recognition = match recognize(state, bytes, top_k, headers).await {
        Ok(r) => r,
        Err(e) => return step_failed(e, &image),
    };
    let new = NewResult {
        image_id: Some(image.id.clone()),
        image_url: image.url.clone(),
        model: ModelRef {
            name: recognition.model.name,
            sha256: recognition.model.sha256,
            preprocess_sha256: recognition.model.preprocess_sha256,
        },
        predictions: recognition.predictions,
        latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
        job: None,
        // This system's own recognition: only such records answer the pipeline.
        provenance: Provenance::Server,
    };
    let (record, created) = match save(state, &new, headers).await {
        Ok(saved) => saved,
        Err(e) => return step_failed(e, &image),
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, axum::Json(PipelineResult { record, image })).into_response()
}

async fn recognize(
    state: &PipelineState,
    bytes: Bytes,
    top_k: Option<u64>,
    headers: &HeaderMap,
) -> Result<Recognition, StepError> {
    let started = Instant::now();
    if let Some(slot) = &state.model {
        let model = slot.ready().map_err(|message| StepError::Unavailable {
            component: "recognize",
            message: format!("the recognize component is unavailable: {message}"),
            retry_after: 1,
        })?;
        let k =
            crate::http::recognize::top_k(top_k, model.info.classes).map_err(StepError::Other)?;
        let predictions = model.classify(bytes, k).await.map_err(|e| {
            let e = AppError::from(e);
            if e.status() == StatusCode::SERVICE_UNAVAILABLE {
                StepError::Unavailable {
                    component: "recognize",
                    message: format!("the recognize component is unavailable: {e}"),
                    retry_after: 1,
                }
            } else {
                StepError::Other(e)
            }
        })?;
        return Ok(Recognition {
            model: crate::http::recognize::ModelRef::of(&model),
            predictions,
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        });
    }
    let remote = state
        .downstream
        .recognize
        .as_ref()
        .ok_or(StepError::Unavailable {
            component: "recognize",
            message: "no recognize service is configured (--recognize-url)".into(),
            retry_after: 1,
        })?;
    let path = match top_k {
        Some(k) => format!("/api/v1/recognize?top_k={k}"),
        None => "/api/v1/recognize".to_string(),
    };
    let (_, recognition) = remote.recognize(&path, bytes, headers).await?;
    Ok(recognition)
}

async fn save(
    state: &PipelineState,
    new: &NewResult,
    headers: &HeaderMap,
) -> Result<(ResultRecord, bool), StepError> {
    if let Some(store) = &state.results {
        return store
            .save(new)
            .await
            .map(|(record, created)| {
                state.upload.metrics.result_saved(created);
                (record, created)
            })
            .map_err(|e| {
                if e.is_unavailable() {
                    StepError::Unavailable {
                        component: "store",
                        message: format!("the results database is unavailable: {e}"),
                        retry_after: 1,
                    }
                } else {
                    StepError::Other(AppError::Internal(e.to_string()))
                }
            });
    }
    let remote = state
        .downstream
        .store
        .as_ref()
        .ok_or(StepError::Unavailable {
            component: "store",
            message: "no store service is configured (--store-url)".into(),
            retry_after: 1,
        })?;
    let body =
        serde_json::to_vec(new).map_err(|e| StepError::Other(AppError::Internal(e.to_string())))?;
    let (status, record) = remote
        .post(
            crate::store::http::RECOGNIZED_RESULTS,
            "application/json",
            body.into(),
            headers,
        )
        .await?;
    Ok((record, status == StatusCode::CREATED))
}

fn step_failed(e: StepError, image: &StoredImage) -> Response {
    match e {
        StepError::Other(e) => e.into_response(),
        StepError::Unavailable {
            component,
            message,
            retry_after,
        } => {
            tracing::warn!(component, image = %image.id, error = %message, "pipeline step unavailable; image kept");
            let body = serde_json::json!({
                "error": format!(
                    "{message}. The image is kept: re-run it with POST /api/v1/images/{}/recognize",
                    image.id
                ),
                "component": component,
                "image": image,
            });
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            response
        }
    }
}
