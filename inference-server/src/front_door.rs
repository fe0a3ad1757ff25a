//! The upload role as its pipeline's one front door: in a cluster every public route enters
//! here, where keys and rate limits are checked ([`crate::auth`], layered on every route
//! like on the upload role's own), and what another role serves is forwarded to it inside
//! the cluster:
//!
//! - recognition — the seed's `POST /api/images/recognition`, `POST /api/v1/recognize`, the
//!   evaluations and the Open Inference Protocol's `/v2` — to the recognize service
//!   (`--recognize-url`), or during a canary to its stable and candidate revisions
//!   (`--traffic-file`, see [`crate::pipeline::traffic`]);
//! - results — the seed's `POST /api/results/save`, `/api/v1/results…` (feedback naming the
//!   caller, see [`crate::store::quality`]) and `/api/v1/quality` — to the store service
//!   (`--store-url`).
//!
//! The seed's recognition by URL is resolved here, from this service's own image store: the
//! URL must be one this service handed out, and its bytes are sent to recognize, so the
//! model fetches nothing (no server-side request forgery, no fetch allowlist). Anything
//! else is passed through as it is: the method, path and query, the body (within the body
//! limit), the content type, the caller's key and request id; the answer's status, body and
//! content headers. A service that cannot be reached or does not answer in time is a `503`
//! naming it (with `Retry-After`), a broken or oversized answer a `502`: JSON errors, after
//! bounded retries of requests that got no answer (see [`Downstream::forward`]).
//!
//! Evaluations, with a store: started on recognize and recorded in the store role's
//! database as they run, so any front door answers for any of them
//! ([`crate::eval_relay`]); without a store they are forwarded like the rest.
//!
//! `/v2/health/live` answers for this process; `/v2/health/ready` is the model's readiness,
//! asked of recognize. A canary's traffic split: the recognitions (the seed's, `POST
//! /api/v1/recognize`, `infer`) pick their revision in [`Traffic::forward`], which may mirror
//! them; the other recognize routes (readiness, metadata, evaluations) go to stable.

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRef, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::json;

use crate::auth::Caller;
use crate::eval_relay::Relay;
use crate::http::error::{AppError, Json};
use crate::http::oip::HEADER_LENGTH;
use crate::http::recognize::{Recognition, SEED_TOP_K, UrlRequest};
use crate::pipeline::traffic::Traffic;
use crate::pipeline::traffic::mirror::Compare;
use crate::pipeline::{Answer, Downstream, DownstreamError, FORWARDED};
use crate::store::quality::{CALLER_HEADER, MAX_FEEDBACK_BYTES, encode_caller, internal_path};
use crate::upload::http::{UploadState, image_base};
use crate::upload::is_image_id;

/// Largest answer passed back (results pages, inference outputs), at least.
const MIN_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// The front door's state: the upload role's own (its image store resolves recognition by
/// URL) and the services it forwards to.
#[derive(Clone)]
pub struct FrontDoorState {
    pub upload: UploadState,
    /// The recognize service (`--recognize-url`, and a canary's revisions).
    pub recognize: Option<Arc<Traffic>>,
    /// The store service (`--store-url`).
    pub store: Option<Arc<Downstream>>,
    /// Largest answer passed back; larger is a `502`.
    pub max_answer_bytes: usize,
    /// Evaluations relayed into the store ([`crate::eval_relay`]).
    pub evaluations: Arc<Relay>,
}

impl FrontDoorState {
    pub fn new(
        upload: UploadState,
        recognize: Option<Arc<Traffic>>,
        store: Option<Arc<Downstream>>,
        max_body_bytes: usize,
    ) -> FrontDoorState {
        FrontDoorState {
            upload,
            recognize,
            store,
            max_answer_bytes: max_body_bytes.max(MIN_ANSWER_BYTES),
            evaluations: Arc::default(),
        }
    }
}

impl FromRef<FrontDoorState> for UploadState {
    fn from_ref(state: &FrontDoorState) -> UploadState {
        state.upload.clone()
    }
}

/// What the recognize role serves, entered here: the same routes, forwarded.
pub fn recognize_router() -> Router<FrontDoorState> {
    Router::new()
        .route("/api/images/recognition", post(seed_recognition))
        .route("/api/v1/recognize", post(to_recognition))
        .route("/api/v1/evaluations", post(to_evaluations))
        .route("/api/v1/evaluations/{id}", get(evaluation))
        .route("/v2", get(to_recognize))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(to_recognize))
        .route("/v2/repository/index", post(to_recognize))
        .route("/v2/models/{name}", get(to_recognize))
        .route("/v2/models/{name}/versions/{version}", get(to_recognize))
        .route("/v2/models/{name}/ready", get(to_recognize))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(to_recognize),
        )
        .route("/v2/models/{name}/infer", post(to_inference))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(to_inference),
        )
}

/// What the store role serves, entered here: the same routes, forwarded (feedback to the
/// store's internal route, naming the caller).
pub fn store_router() -> Router<FrontDoorState> {
    Router::new()
        .route("/api/results/save", post(to_store))
        .route("/api/v1/results", post(to_store).get(to_store))
        .route("/api/v1/results/{id}", get(to_store))
        .route(
            "/api/v1/results/{id}/feedback",
            post(to_feedback)
                .get(to_store)
                .layer(DefaultBodyLimit::max(MAX_FEEDBACK_BYTES)),
        )
        .route("/api/v1/quality", get(to_store))
        .route("/api/v1/images/{id}/results", get(to_store))
}

/// Request headers passed on, besides the caller's credentials and request id.
const REQUEST_HEADERS: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    HeaderName::from_static(HEADER_LENGTH),
];

/// Answer headers passed back (the body's own and the retry hints).
const ANSWER_HEADERS: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::RETRY_AFTER,
    header::LOCATION,
    header::CACHE_CONTROL,
    header::WWW_AUTHENTICATE,
    HeaderName::from_static(HEADER_LENGTH),
];

async fn live() -> Response {
    axum::Json(json!({ "live": true })).into_response()
}

/// What the recognize role serves besides recognitions: to stable.
async fn to_recognize(State(door): State<FrontDoorState>, request: Request) -> Response {
    let Some(traffic) = door.recognize.clone() else {
        return not_configured("recognize").into_response();
    };
    forward(&door, Backend::One(&traffic.stable()), request).await
}

/// `POST /api/v1/recognize`: split, and mirrored on its labels.
async fn to_recognition(State(door): State<FrontDoorState>, request: Request) -> Response {
    let Some(traffic) = door.recognize.clone() else {
        return not_configured("recognize").into_response();
    };
    forward(&door, Backend::Split(&traffic, Compare::Labels), request).await
}

/// The Open Inference Protocol's `infer`: split, and mirrored on its top class.
async fn to_inference(State(door): State<FrontDoorState>, request: Request) -> Response {
    let Some(traffic) = door.recognize.clone() else {
        return not_configured("recognize").into_response();
    };
    forward(&door, Backend::Split(&traffic, Compare::Oip), request).await
}

/// `POST /api/v1/evaluations`: with a store, run on recognize and recorded in the store
/// so every front door answers for it ([`crate::eval_relay`]); without one, forwarded.
async fn to_evaluations(State(door): State<FrontDoorState>, request: Request) -> Response {
    let (Some(traffic), Some(store)) = (door.recognize.clone(), door.store.clone()) else {
        return to_recognize(State(door), request).await;
    };
    let headers = passed_on(request.headers(), &[header::CONTENT_TYPE]);
    let body = match Bytes::from_request(request, &door).await {
        Ok(body) => body,
        Err(rejection) => return AppError::from(rejection).into_response(),
    };
    crate::eval_relay::start(&door.evaluations, &traffic.stable(), store, headers, body).await
}

/// `GET /api/v1/evaluations/{id}`: from the store when there is one, else from recognize.
async fn evaluation(
    State(door): State<FrontDoorState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    request: Request,
) -> Response {
    let Some(store) = door.store.clone() else {
        return to_recognize(State(door), request).await;
    };
    if !crate::store::evaluations::is_evaluation_id(&id) {
        return AppError::NotFound(format!("no evaluation with id {id:?}")).into_response();
    }
    let headers = passed_on(request.headers(), &[header::ACCEPT]);
    let path = format!("{}{id}", crate::store::http::EVALUATIONS);
    match store
        .forward(
            Method::GET,
            &path,
            headers,
            Bytes::new(),
            door.max_answer_bytes,
        )
        .await
    {
        Ok(answer) => passed_back(answer),
        Err(e) => downstream_error(e).into_response(),
    }
}

async fn to_store(State(door): State<FrontDoorState>, request: Request) -> Response {
    let Some(store) = door.store.clone() else {
        return not_configured("store").into_response();
    };
    forward(&door, Backend::One(&store), request).await
}

/// `POST /api/v1/results/{id}/feedback`: to the store's internal route, with the caller
/// this front door identified by its key (a caller's own [`CALLER_HEADER`] is never passed
/// on: only the headers [`passed_on`] names are).
async fn to_feedback(
    State(door): State<FrontDoorState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    caller: Option<Extension<Caller>>,
    request: Request,
) -> Response {
    let Some(store) = door.store.clone() else {
        return not_configured("store").into_response();
    };
    if !crate::store::is_record_id(&id) {
        return AppError::NotFound(format!("no result with id {id:?}")).into_response();
    }
    let mut headers = passed_on(request.headers(), &REQUEST_HEADERS);
    let name = encode_caller(&Caller::of(caller).0);
    match HeaderValue::from_str(&name) {
        Ok(value) => headers.insert(CALLER_HEADER, value),
        Err(e) => return AppError::Internal(format!("caller header: {e}")).into_response(),
    };
    let body = match Bytes::from_request(request, &door).await {
        Ok(body) => body,
        Err(rejection) => return AppError::from(rejection).into_response(),
    };
    match store
        .forward(
            Method::POST,
            &internal_path(&id),
            headers,
            body,
            door.max_answer_bytes,
        )
        .await
    {
        Ok(answer) => passed_back(answer),
        Err(e) => downstream_error(e).into_response(),
    }
}

/// Where a forwarded request goes.
enum Backend<'a> {
    One(&'a Downstream),
    /// A recognition: the revision the traffic split picks.
    Split(&'a Traffic, Compare),
}

/// Passes `request` on to `backend` and its answer back.
async fn forward(door: &FrontDoorState, backend: Backend<'_>, request: Request) -> Response {
    let method = request.method().clone();
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    let headers = passed_on(request.headers(), &REQUEST_HEADERS);
    // Within the body limit (`DefaultBodyLimit`): a larger body is a 413 here.
    let body = match Bytes::from_request(request, door).await {
        Ok(body) => body,
        Err(rejection) => return AppError::from(rejection).into_response(),
    };
    let max = door.max_answer_bytes;
    let answer = match backend {
        Backend::One(downstream) => {
            downstream
                .forward(method, &target, headers, body, max)
                .await
        }
        Backend::Split(traffic, compare) => {
            traffic
                .forward(compare, method, &target, headers, body, max)
                .await
        }
    };
    match answer {
        Ok(answer) => passed_back(answer),
        Err(e) => downstream_error(e).into_response(),
    }
}

/// Seed contract, answered by the front door: `{"url": ...}` of an image this service
/// handed out → `200 [{"label", "probability"}, ...]` (top 3), the bytes read from this
/// service's image store and recognised by the recognize service. Any other URL is a 400:
/// nothing is fetched.
async fn seed_recognition(
    State(door): State<FrontDoorState>,
    State(upload): State<UploadState>,
    headers: HeaderMap,
    Json(body): Json<UrlRequest>,
) -> Result<Response, AppError> {
    let url = body.url()?;
    let base = image_base(&upload);
    let id = own_image_id(&base, &url).ok_or_else(|| {
        AppError::bad_request(format!(
            "the URL is not an image uploaded to this service: recognition by URL takes the \
             URL the upload answered (under {base}/api/v1/images/); nothing else is fetched"
        ))
    })?;
    let bytes = upload
        .store
        .get(&id)
        .await?
        .ok_or_else(|| AppError::NotFound("no image at this URL".into()))?;
    let traffic = door
        .recognize
        .as_deref()
        .ok_or_else(|| not_configured("recognize"))?;
    let mut forwarded = passed_on(&headers, &[]);
    forwarded.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    // The default top k (5, or every class of a smaller model), cut to the seed's 3: the
    // same labels as `classify(.., 3)` for any number of classes.
    let answer = traffic
        .forward(
            Compare::Labels,
            Method::POST,
            "/api/v1/recognize",
            forwarded,
            bytes,
            door.max_answer_bytes,
        )
        .await
        .map_err(downstream_error)?;
    if !answer.status.is_success() {
        return Ok(passed_back(answer));
    }
    let recognition: Recognition = serde_json::from_slice(&answer.body).map_err(|e| {
        AppError::BadGateway(format!(
            "the recognize service answered something unexpected: {e}"
        ))
    })?;
    let mut predictions = recognition.predictions;
    predictions.truncate(SEED_TOP_K);
    Ok(Json(predictions).into_response())
}

/// The content id of `url` when it names an image under `base` (this service's image URLs:
/// `{base}/api/v1/images/{id}` or the seed's `{base}/uploads/{id}[.ext]`); the same scheme,
/// host and port, no user info. Query and fragment are ignored.
pub fn own_image_id(base: &str, url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    let mut base = url::Url::parse(base).ok()?;
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    let same_origin = matches!(url.scheme(), "http" | "https")
        && url.scheme() == base.scheme()
        && url.username().is_empty()
        && url.password().is_none()
        && url.host_str().is_some()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default();
    if !same_origin {
        return None;
    }
    let rest = url.path().strip_prefix(base.path())?;
    let id = match rest.split_once('/') {
        Some(("api", rest)) => rest.strip_prefix("v1/images/")?,
        Some(("uploads", name)) => name.split_once('.').map_or(name, |(stem, _)| stem),
        _ => return None,
    };
    is_image_id(id).then(|| id.to_string())
}

/// The `names` of `headers` plus the caller's credentials and request id.
fn passed_on(headers: &HeaderMap, names: &[HeaderName]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in names.iter().chain(FORWARDED.iter()) {
        for value in headers.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// A downstream's answer as this service's response.
fn passed_back(answer: Answer) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = answer.status;
    for name in &ANSWER_HEADERS {
        if let Some(value) = answer.headers.get(name) {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response
}

fn not_configured(component: &str) -> AppError {
    AppError::unavailable(format!(
        "no {component} service is configured (--{component}-url)"
    ))
}

fn downstream_error(e: DownstreamError) -> AppError {
    match e {
        DownstreamError::Unavailable { retry_after, .. } => AppError::Unavailable {
            message: e.to_string(),
            retry_after: Some(u32::try_from(retry_after).unwrap_or(u32::MAX).max(1)),
        },
        DownstreamError::BadAnswer { .. } => AppError::BadGateway(e.to_string()),
        // Forwarded calls pass refusals back as answers; kept for completeness.
        DownstreamError::Refused {
            status, message, ..
        } => match status {
            StatusCode::NOT_FOUND => AppError::NotFound(message),
            _ => AppError::BadGateway(message),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn only_this_services_image_urls_name_an_image() {
        let base = "http://upload:8080";
        for good in [
            format!("{base}/api/v1/images/{ID}"),
            format!("{base}/uploads/{ID}.png"),
            format!("{base}/uploads/{ID}"),
            format!("http://UPLOAD:8080/api/v1/images/{ID}?x=1"),
            format!("{base}/api/v1/images/x/../{ID}"),
        ] {
            assert_eq!(own_image_id(base, &good).as_deref(), Some(ID), "{good}");
        }
        let prefixed = "https://example.com/team/a";
        assert_eq!(
            own_image_id(prefixed, &format!("{prefixed}/api/v1/images/{ID}")).as_deref(),
            Some(ID)
        );
        for bad in [
            format!("http://upload:8081/api/v1/images/{ID}"),
            format!("https://upload:8080/api/v1/images/{ID}"),
            format!("http://other:8080/api/v1/images/{ID}"),
            format!("http://user:pw@upload:8080/api/v1/images/{ID}"),
            format!("{base}/api/v1/images/{ID}/results"),
            format!("{base}/api/v1/images/{}", &ID[1..]),
            format!("{base}/api/v2/images/{ID}"),
            format!("{base}/elsewhere/{ID}"),
            format!("https://example.com/team/b/api/v1/images/{ID}"),
            format!("file:///api/v1/images/{ID}"),
            "http://127.0.0.1:1/x".to_string(),
            "http://169.254.169.254/latest/meta-data".to_string(),
            format!("/api/v1/images/{ID}"),
            "not a url".to_string(),
        ] {
            let base = if bad.starts_with("https://example.com") {
                prefixed
            } else {
                base
            };
            assert_eq!(own_image_id(base, &bad), None, "{bad}");
        }
    }
}
