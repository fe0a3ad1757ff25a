//! The `upload` role's endpoints: the seed's `POST /api/images/upload` (multipart `image` →
//! `201 {"url"}`, the URL absolute and fetchable), `POST /api/v1/images` (multipart or raw
//! body → `{id, url, sha256, width, height, format, bytes}`), and the bytes at
//! `GET /api/v1/images/{id}` and the seed-style `GET /uploads/{id}[.ext]` with the content
//! type, a strong `ETag`, `If-None-Match` and single byte ranges.

use axum::Router;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Serialize;
use tracing::Instrument;

use super::{ImageInfo, ImageStore, UploadError, is_image_id};
use crate::http::error::AppError;
use crate::metrics::PipelineMetrics;

pub fn router() -> Router<UploadState> {
    Router::new()
        .route("/api/images/upload", post(seed_upload))
        .route("/api/v1/images", post(upload))
        .route("/api/v1/images/{id}", get(image_by_id))
        .route("/uploads/{name}", get(seed_image))
}

/// The upload role's state: its image store and how it names images.
#[derive(Clone)]
pub struct UploadState {
    pub store: ImageStore,
    /// Base of the URLs handed out (`--public-url`; by default the address the server
    /// listens on, as the composer sets it). `None` (a router without a bound address, as
    /// in tests): `http://localhost`. Never the request's `Host`: a stored URL must not be
    /// whatever a caller wrote there.
    pub public_url: Option<String>,
    /// Where stored and refused uploads are counted.
    pub metrics: PipelineMetrics,
}

impl From<UploadError> for AppError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Image(e) => e.into(),
            UploadError::TrailingData(_) | UploadError::Truncated { .. } => {
                AppError::BadRequest(e.to_string())
            }
            UploadError::Io { .. } if e.is_storage_full() => AppError::InsufficientStorage(
                format!("the image store is full; nothing was stored: {e}"),
            ),
            UploadError::Object { .. } => AppError::Unavailable {
                message: format!("the image store is unavailable: {e}"),
                retry_after: Some(1),
            },
            UploadError::Io { .. } | UploadError::Worker(_) | UploadError::StoreUrl(_) => {
                AppError::Internal(e.to_string())
            }
        }
    }
}

/// An uploaded image as the v1 API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StoredImage {
    pub id: String,
    pub url: String,
    #[serde(flatten)]
    pub info: ImageInfo,
}

/// The absolute URL of image `id`.
pub fn image_url(uploads: &UploadState, id: &str) -> String {
    format!("{}/api/v1/images/{id}", image_base(uploads))
}

/// The base of the image URLs this service hands out, without a trailing slash:
/// [`UploadState::public_url`], the same for every request.
pub fn image_base(uploads: &UploadState) -> String {
    uploads
        .public_url
        .as_deref()
        .unwrap_or("http://localhost")
        .trim_end_matches('/')
        .to_string()
}

/// Reads the image: the multipart field `image`, or (when `raw_ok`) the raw body. Errors
/// keep the seed's messages ("No image file", "No selected file").
pub async fn read_image(
    state: &UploadState,
    request: Request,
    raw_ok: bool,
) -> Result<Bytes, AppError> {
    read_body(state, request, raw_ok)
        .await
        .inspect_err(|e| count_rejection(state, e))
}

/// Counts a refused upload by a bounded reason (`sightline_uploads_rejected_total`).
fn count_rejection(state: &UploadState, e: &AppError) {
    let reason = match e {
        AppError::PayloadTooLarge(_) => "too_large",
        AppError::UnsupportedMediaType(_) => "unsupported_format",
        AppError::BadRequest(_) | AppError::Unprocessable(_) => "malformed",
        AppError::Unavailable { .. } => "store_unavailable",
        _ => "internal",
    };
    state.metrics.upload_rejected(reason);
}

async fn read_body(state: &UploadState, request: Request, raw_ok: bool) -> Result<Bytes, AppError> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !is_multipart {
        if !raw_ok {
            return Err(AppError::bad_request(
                "No image file: send multipart/form-data with a field 'image'",
            ));
        }
        let bytes = Bytes::from_request(request, state).await?;
        if bytes.is_empty() {
            return Err(AppError::bad_request(
                "the request body is empty: send the image bytes, or multipart with a field 'image'",
            ));
        }
        return Ok(bytes);
    }
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| AppError::bad_request(format!("invalid multipart body: {}", e.body_text())))?;
    while let Some(field) = multipart.next_field().await? {
        if field.name() != Some("image") {
            continue;
        }
        // The client's file name is never used (not even checked for an extension).
        if field.file_name().is_some_and(str::is_empty) {
            return Err(AppError::bad_request("No selected file"));
        }
        let bytes = field.bytes().await?;
        if bytes.is_empty() {
            return Err(AppError::bad_request("the image field is empty (0 bytes)"));
        }
        return Ok(bytes);
    }
    Err(AppError::bad_request(
        "No image file: the multipart field 'image' is missing",
    ))
}

/// Checks and stores an image; the answer of the v1 API and whether it was new.
pub async fn store_image(
    state: &UploadState,
    bytes: Bytes,
) -> Result<(StoredImage, bool), AppError> {
    let len = bytes.len();
    let (info, created) = state
        .store
        .put(bytes)
        .instrument(tracing::debug_span!("store_image", bytes = len))
        .await
        .map_err(AppError::from)
        .inspect_err(|e| count_rejection(state, e))?;
    state.metrics.image_stored(created, len);
    Ok((
        StoredImage {
            id: info.sha256.clone(),
            url: image_url(state, &info.sha256),
            info,
        },
        created,
    ))
}

/// Seed contract: multipart `image` → `201 {"url": "<absolute URL>"}`.
async fn seed_upload(
    State(state): State<UploadState>,
    request: Request,
) -> Result<Response, AppError> {
    let bytes = read_image(&state, request, false).await?;
    let (image, _) = store_image(&state, bytes).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "url": image.url })),
    )
        .into_response())
}

/// `201` with the image for new content, `200` when the same bytes were stored before.
async fn upload(State(state): State<UploadState>, request: Request) -> Result<Response, AppError> {
    let bytes = read_image(&state, request, true).await?;
    let (image, created) = store_image(&state, bytes).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(image)).into_response())
}

async fn image_by_id(
    State(state): State<UploadState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    serve(&state, &id, &headers).await
}

async fn seed_image(
    State(state): State<UploadState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let id = name.split('.').next().unwrap_or_default();
    serve(&state, id, &headers).await
}

async fn serve(uploads: &UploadState, id: &str, headers: &HeaderMap) -> Result<Response, AppError> {
    let not_found = || AppError::NotFound("no image with this id".into());
    if !is_image_id(id) {
        return Err(not_found());
    }
    let etag = format!("\"{id}\"");
    let etag_value = HeaderValue::from_str(&etag).map_err(|e| AppError::Internal(e.to_string()))?;
    let matches_etag = |value: &HeaderValue| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t == etag)
        })
    };
    if let Some(inm) = headers.get(header::IF_NONE_MATCH)
        && matches_etag(inm)
    {
        // Content-addressed: a matching tag is the same bytes, no need to read them.
        if uploads.store.get(id).await?.is_some() {
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
        }
    }
    let bytes = uploads.store.get(id).await?.ok_or_else(not_found)?;
    let content_type = crate::preprocess::sniff(&bytes)
        .map(|f| super::content_type(super::format_name(f)))
        .unwrap_or("application/octet-stream");
    let common = [
        (header::ETAG, etag_value),
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    let range_applies = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.to_str().is_ok_and(|v| v.trim() == etag));
    let range = headers
        .get(header::RANGE)
        .filter(|_| range_applies)
        .and_then(|v| v.to_str().ok());
    let len = bytes.len() as u64;
    match range.map(|r| parse_range(r, len)) {
        None | Some(RangeRequest::Ignored) => Ok((common, bytes).into_response()),
        Some(RangeRequest::Unsatisfiable) => Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            axum::Json(serde_json::json!({"error": format!("the range is outside the image ({len} bytes)")})),
        )
            .into_response()),
        Some(RangeRequest::Range(start, end)) => Ok((
            StatusCode::PARTIAL_CONTENT,
            common,
            [(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))],
            bytes.slice(start as usize..=end as usize),
        )
            .into_response()),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// Inclusive byte positions.
    Range(u64, u64),
    Unsatisfiable,
    /// Not a single `bytes=` range we serve: answer with the whole image.
    Ignored,
}

fn parse_range(header: &str, len: u64) -> RangeRequest {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignored;
    };
    if spec.contains(',') {
        return RangeRequest::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Ignored;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => match parse(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if len > 0 => RangeRequest::Range(len.saturating_sub(n), len - 1),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Ignored,
        },
        (false, _) => {
            let Some(start) = parse(first) else {
                return RangeRequest::Ignored;
            };
            let end = if last.trim().is_empty() {
                Some(len.saturating_sub(1))
            } else {
                parse(last)
            };
            match end {
                None => RangeRequest::Ignored,
                Some(_) if start >= len => RangeRequest::Unsatisfiable,
                Some(end) if end < start => RangeRequest::Ignored,
                Some(end) => RangeRequest::Range(start, end.min(len - 1)),
            }
        }
        (true, true) => RangeRequest::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeRequest::Range(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeRequest::Range(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeRequest::Range(90, 99));
        assert_eq!(
            parse_range("bytes=50-500", 100),
            RangeRequest::Range(50, 99)
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeRequest::Ignored);
        assert_eq!(parse_range("items=0-1", 100), RangeRequest::Ignored);
        assert_eq!(parse_range("bytes=9-1", 100), RangeRequest::Ignored);
    }
}
