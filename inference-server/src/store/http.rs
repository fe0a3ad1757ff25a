//! The `store` role's endpoints: the seed's `POST /api/results/save`, the native
//! `POST /api/v1/results` (idempotent), `GET /api/v1/results` (cursor paging, filters),
//! `GET /api/v1/results/{id}` and `GET /api/v1/images/{id}/results`. Feedback and the live
//! quality are [`super::quality`]'s.
//!
//! What callers save is recorded as [`Provenance::Client`]. The pipeline's own results
//! (`server`) come in through `POST /internal/v1/results`, which the front door never
//! forwards: in a cluster only the front door reaches the store role (its NetworkPolicy),
//! so no caller can make its word the pipeline's.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::json;

use super::checks::{MAX_PREDICTIONS, check};
use super::feedback::{FeedbackError, check_text};
use super::{
    DEFAULT_PAGE, ListQuery, MAX_PAGE, ModelRef, NewResult, Provenance, ResultStore, StoreError,
};
use crate::auth::Caller;
use crate::http::error::{AppError, Json, Query};
use crate::metrics::PipelineMetrics;
use crate::postprocess::Prediction;

/// The store role's state: the results database and where saves are counted.
#[derive(Clone)]
pub struct StoreState {
    pub results: ResultStore,
    pub metrics: PipelineMetrics,
}

pub fn router() -> Router<StoreState> {
    Router::new()
        .route("/api/results/save", post(seed_save))
        .route("/api/v1/results", post(save).get(list))
        .route("/api/v1/results/{id}", get(by_id))
        .route("/api/v1/images/{id}/results", get(by_image))
        .route("/internal/v1/results", post(save_recognized))
        .route(
            "/internal/v1/evaluations/{id}",
            get(evaluation).post(put_evaluation),
        )
}

/// The route the pipeline saves its own results through (never forwarded by the front door).
pub const RECOGNIZED_RESULTS: &str = "/internal/v1/results";

/// Where a front door writes and reads an evaluation's state (`{id}` appended).
pub const EVALUATIONS: &str = "/internal/v1/evaluations/";

/// A front door records evaluation `id`'s view (the JSON object the recognize role shows).
async fn put_evaluation(
    State(state): State<StoreState>,
    Path(id): Path<String>,
    Json(view): Json<serde_json::Value>,
) -> Result<Response, AppError> {
    if !super::evaluations::is_evaluation_id(&id) || view["id"].as_str() != Some(id.as_str()) {
        return Err(AppError::bad_request(
            "an evaluation's view must be a JSON object whose 'id' is the id in the path",
        ));
    }
    let text = serde_json::to_string(&view).map_err(|e| AppError::Internal(e.to_string()))?;
    state.results.put_evaluation(&id, &text).await?;
    Ok(axum::Json(json!({ "id": id })).into_response())
}

/// Evaluation `id` as last recorded (a stale `running` one is `failed`).
async fn evaluation(
    State(state): State<StoreState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let not_found = || AppError::NotFound(format!("no evaluation with id {id:?}"));
    if !super::evaluations::is_evaluation_id(&id) {
        return Err(not_found());
    }
    let (text, age) = state
        .results
        .get_evaluation(&id)
        .await?
        .ok_or_else(not_found)?;
    let view: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| AppError::Internal(format!("stored evaluation {id} is corrupt: {e}")))?;
    Ok(axum::Json(super::evaluations::shown(view, age)).into_response())
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            AppError::Unavailable {
                message: format!("the results database is unavailable: {e}"),
                retry_after: Some(1),
            }
        } else {
            AppError::Internal(e.to_string())
        }
    }
}

/// The answer to feedback the store did not record.
pub fn feedback_refused(e: FeedbackError) -> AppError {
    match e {
        FeedbackError::NoResult(_) => AppError::NotFound(e.to_string()),
        FeedbackError::NotOurs(_) | FeedbackError::NoPrediction(_) => {
            AppError::Conflict(e.to_string())
        }
        FeedbackError::Contradicts { .. } => AppError::BadRequest(e.to_string()),
        FeedbackError::Store(e) => e.into(),
    }
}

/// The seed's save request, parsed as it is read: `url` kept only when it is a string,
/// `result` straight into predictions (at most [`MAX_PREDICTIONS`]). No `Value` tree and no
/// copy of it: a 20 MB `{"result": [0, 0, …]}` is refused at its first element, where
/// parsing it into a `Value` and cloning that cost some 32 times its size.
/// A key given twice: the last one wins, as with a `Value` (the seed's Flask did the same).
struct SeedSave {
    url: Option<SeedUrl>,
    result: Option<Vec<Prediction>>,
    /// The image's true label, as the caller declares it (optional; see [`seed_save`]).
    label: Option<serde_json::Value>,
}

impl<'de> Deserialize<'de> for SeedSave {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// `result`, read with [`seed_result`].
        struct Result_;
        impl<'de> serde::de::DeserializeSeed<'de> for Result_ {
            type Value = Option<Vec<Prediction>>;
            fn deserialize<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Self::Value, D::Error> {
                seed_result(d)
            }
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SeedSave;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object with 'url' and 'result'")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<SeedSave, A::Error> {
                let mut save = SeedSave {
                    url: None,
                    result: None,
                    label: None,
                };
                while let Some(key) = a.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "url" => save.url = Some(a.next_value()?),
                        "result" => save.result = a.next_value_seed(Result_)?,
                        "label" => save.label = Some(a.next_value()?),
                        _ => {
                            a.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(save)
            }
        }
        d.deserialize_map(V)
    }
}

/// The seed's `url`: a string, or anything else (refused with its own message, and passed
/// over as it is parsed, never kept).
enum SeedUrl {
    Text(String),
    Other,
}

impl<'de> Deserialize<'de> for SeedUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SeedUrl;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a URL")
            }
            fn visit_str<E>(self, v: &str) -> Result<SeedUrl, E> {
                Ok(SeedUrl::Text(v.to_string()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<SeedUrl, E> {
                Ok(SeedUrl::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<SeedUrl, E> {
                Ok(SeedUrl::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<SeedUrl, E> {
                Ok(SeedUrl::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<SeedUrl, E> {
                Ok(SeedUrl::Other)
            }
            fn visit_unit<E>(self) -> Result<SeedUrl, E> {
                Ok(SeedUrl::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<SeedUrl, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(SeedUrl::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<SeedUrl, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(SeedUrl::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// The seed's `result`: a list of `{label, probability}`, at most [`MAX_PREDICTIONS`].
fn seed_result<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Prediction>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Vec<Prediction>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("'result' as a list of {\"label\": string, \"probability\": number}")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(p) = a.next_element::<Prediction>()? {
                if out.len() == MAX_PREDICTIONS {
                    return Err(serde::de::Error::custom(format!(
                        "'result' holds more than {MAX_PREDICTIONS} predictions"
                    )));
                }
                out.push(p);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_any(V)
}

/// Seed contract: `{"url": "...", "result": [...]}` → `201 {"message": ...}`. An optional
/// `"label"` is the image's true label as the caller declares it: recorded with the
/// result's feedback (the caller's answer, `label` in the reply), never counted in the live
/// quality — the record is the caller's (`client`), not the model's answer.
async fn seed_save(
    State(state): State<StoreState>,
    caller: Option<Extension<Caller>>,
    Json(body): Json<SeedSave>,
) -> Result<Response, AppError> {
    let store = &state.results;
    let (Some(url), Some(predictions)) = (body.url, body.result) else {
        return Err(AppError::bad_request("Missing parameters"));
    };
    let label = match body.label {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(label)) => {
            check_text("label", &label).map_err(AppError::BadRequest)?;
            Some(label)
        }
        Some(_) => return Err(AppError::bad_request("'label' must be a string")),
    };
    if label.is_some() && predictions.is_empty() {
        return Err(AppError::bad_request(
            "a 'label' needs a 'result' with at least one prediction to label",
        ));
    }
    let url = match url {
        SeedUrl::Text(url) if !url.trim().is_empty() => url,
        _ => return Err(AppError::bad_request("'url' must be a non-empty string")),
    };
    let new = NewResult {
        image_id: image_id_of(&url),
        image_url: url,
        model: ModelRef {
            name: String::new(),
            sha256: String::new(),
            preprocess_sha256: String::new(),
        },
        predictions,
        latency_ms: None,
        job: None,
        provenance: Provenance::Client,
    };
    check(&new)?;
    let (record, created) = store.save(&new).await?;
    state.metrics.result_saved(created);
    let mut reply = json!({"message": "Result saved successfully", "id": record.id});
    if let Some(label) = label {
        let declared = store
            .record_declared_label(record, &Caller::of(caller).0, label)
            .await
            .map_err(feedback_refused)?;
        reply["label"] = json!(declared.label);
    }
    Ok((StatusCode::CREATED, axum::Json(reply)).into_response())
}

/// The content id inside one of our image URLs (`.../images/<sha256>` or
/// `.../uploads/<sha256>[.ext]`), so seed records link to their image.
pub fn image_id_of(url: &str) -> Option<String> {
    let last = url.trim_end_matches('/').rsplit('/').next()?;
    let stem = last.split('.').next()?;
    crate::upload::is_image_id(stem).then(|| stem.to_string())
}

/// Native save: a [`NewResult`] → `201` with the record, or `200` with the one that
/// already holds this (image, model). A caller's result: `client`.
async fn save(state: State<StoreState>, Json(new): Json<NewResult>) -> Result<Response, AppError> {
    save_as(state, new, Provenance::Client).await
}

/// The pipeline's save: the same, recorded as `server`.
async fn save_recognized(
    state: State<StoreState>,
    Json(new): Json<NewResult>,
) -> Result<Response, AppError> {
    save_as(state, new, Provenance::Server).await
}

async fn save_as(
    State(state): State<StoreState>,
    mut new: NewResult,
    provenance: Provenance,
) -> Result<Response, AppError> {
    new.provenance = provenance;
    // A caller's word is no job's: only the server's own results name one.
    if provenance == Provenance::Client {
        new.job = None;
    }
    let store = &state.results;
    if new.image_url.trim().is_empty() {
        return Err(AppError::bad_request("'image_url' must not be empty"));
    }
    check(&new)?;
    let (record, created) = store.save(&new).await?;
    state.metrics.result_saved(created);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(record)).into_response())
}

#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<i64>,
    cursor: Option<String>,
    label: Option<String>,
    model: Option<String>,
    since: Option<String>,
    until: Option<String>,
    provenance: Option<Provenance>,
    job: Option<String>,
}

fn list_query(p: ListParams) -> Result<ListQuery, AppError> {
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(AppError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}, got {limit}"
        )));
    }
    if let Some(c) = &p.cursor
        && !super::is_record_id(c)
    {
        return Err(AppError::bad_request(
            "invalid cursor: pass the next_cursor of the previous page",
        ));
    }
    let time = |name: &str, v: Option<String>| -> Result<Option<i64>, AppError> {
        v.map(|t| {
            super::parse_time(&t).ok_or_else(|| {
                AppError::bad_request(format!(
                    "{name} must be an RFC 3339 time (2026-01-31T12:00:00Z) or milliseconds since the epoch"
                ))
            })
        })
        .transpose()
    };
    Ok(ListQuery {
        limit,
        cursor: p.cursor,
        label: p.label.filter(|s| !s.is_empty()),
        model: p.model.filter(|s| !s.is_empty()),
        image_id: None,
        provenance: p.provenance,
        job: p.job.filter(|s| !s.is_empty()),
        since_ms: time("since", p.since)?,
        until_ms: time("until", p.until)?,
    })
}

async fn list(
    State(state): State<StoreState>,
    Query(params): Query<ListParams>,
) -> Result<Response, AppError> {
    let store = &state.results;
    let query = list_query(params)?;
    Ok(axum::Json(store.list(&query).await?).into_response())
}

async fn by_id(
    State(state): State<StoreState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let store = &state.results;
    let not_found = || AppError::NotFound(format!("no result with id {id:?}"));
    if !super::is_record_id(&id) {
        return Err(not_found());
    }
    match store.get(&id).await? {
        Some(record) => Ok(axum::Json(record).into_response()),
        None => Err(not_found()),
    }
}

async fn by_image(
    State(state): State<StoreState>,
    Path(id): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Response, AppError> {
    let store = &state.results;
    if !crate::upload::is_image_id(&id) {
        return Err(AppError::NotFound(format!(
            "no image with id {id:?} (ids are 64 lowercase hex digits)"
        )));
    }
    let mut query = list_query(params)?;
    query.image_id = Some(id);
    Ok(axum::Json(store.list(&query).await?).into_response())
}
