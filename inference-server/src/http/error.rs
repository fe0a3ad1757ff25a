//! One error type that is the response: JSON `{"error": "..."}` with a 4xx/5xx status.
//! Client mistakes say what was wrong; internal failures are logged once and answered with
//! a generic message.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::batching::InferError;
use crate::preprocess::PreprocessError;
use crate::serving::RecognizeError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request contradicts the state of what it names (409).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    /// The service cannot answer now; `retry_after` seconds is a hint for the client.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Option<u32>,
    },
    #[error("{0}")]
    BadGateway(String),
    /// The server's own storage is full (507): nothing was kept, retry once space is freed.
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        AppError::BadRequest(message.into())
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        AppError::Unavailable {
            message: message.into(),
            retry_after: Some(1),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            AppError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            AppError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error; see the server log".to_string()
            }
            other => other.to_string(),
        };
        let mut response = (status, axum::Json(json!({ "error": message }))).into_response();
        if let AppError::Unavailable {
            retry_after: Some(seconds),
            ..
        } = self
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<PreprocessError> for AppError {
    fn from(e: PreprocessError) -> Self {
        match e {
            PreprocessError::UnsupportedFormat => AppError::UnsupportedMediaType(e.to_string()),
            PreprocessError::TooLarge { .. } => AppError::PayloadTooLarge(e.to_string()),
            PreprocessError::Empty | PreprocessError::ZeroSized | PreprocessError::Decode(_) => {
                AppError::BadRequest(e.to_string())
            }
        }
    }
}

impl From<InferError> for AppError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::QueueFull { .. } => AppError::Unavailable {
                message: e.to_string(),
                retry_after: Some(1),
            },
            InferError::TooManyRows { .. } => AppError::BadRequest(e.to_string()),
            InferError::Stopped => AppError::unavailable(e.to_string()),
            InferError::Failed(detail) => AppError::Internal(detail),
            InferError::Image(e) => e.into(),
        }
    }
}

impl From<RecognizeError> for AppError {
    fn from(e: RecognizeError) -> Self {
        match e {
            RecognizeError::Image(e) => e.into(),
            RecognizeError::Infer(e) => e.into(),
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => AppError::UnsupportedMediaType(
                "expected a JSON body with Content-Type: application/json".into(),
            ),
            JsonRejection::BytesRejection(b) => bytes_rejection(b),
            other => AppError::BadRequest(format!("invalid JSON body: {}", other.body_text())),
        }
    }
}

impl From<BytesRejection> for AppError {
    fn from(rejection: BytesRejection) -> Self {
        bytes_rejection(rejection)
    }
}

fn bytes_rejection(rejection: BytesRejection) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::PayloadTooLarge("the request body is larger than the limit".into())
    } else {
        AppError::BadRequest(format!(
            "could not read the request body: {}",
            rejection.body_text()
        ))
    }
}

impl From<QueryRejection> for AppError {
    fn from(rejection: QueryRejection) -> Self {
        AppError::BadRequest(format!("invalid query string: {}", rejection.body_text()))
    }
}

impl From<axum::extract::multipart::MultipartError> for AppError {
    fn from(e: axum::extract::multipart::MultipartError) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge("the upload is larger than the limit".into())
        } else {
            AppError::BadRequest(format!("invalid multipart body: {}", e.body_text()))
        }
    }
}

/// `axum::Json` whose rejections are [`AppError`]s (so they use the same JSON shape).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` whose rejections are [`AppError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct Query<T>(pub T);
