//! The KServe Open Inference Protocol (v2), REST flavour, so KServe and Triton clients work
//! unchanged: server and model metadata, liveness/readiness, and `infer` with JSON tensors
//! (nested or flat `data`) or the binary tensor extension (`Inference-Header-Content-Length`),
//! plus the classification extension (`"parameters": {"classification": k}` on an output)
//! and the index of Triton's model repository extension (`POST /v2/repository/index`, how
//! Triton clients discover models).

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::AppError;
use super::recognize::RecognizeState;
use crate::postprocess::{softmax, top_k_indices};
use crate::serving::ServingModel;

pub mod outputs;
pub mod request;

pub use outputs::{Parameters, RequestedOutput};
pub use request::{FlatF32, InferRequest, InputTensor, read_input, split_body};

pub const HEADER_LENGTH: &str = "inference-header-content-length";

pub fn router() -> Router<RecognizeState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_version),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_version),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_version),
        )
        .route("/v2/repository/index", post(repository_index))
}

async fn server_metadata() -> Json {
    Json(json!({
        "name": "sightline",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["classification", "binary_tensor_data"],
    }))
}

/// A JSON response with the protocol's content type.
struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

async fn live() -> Json {
    Json(json!({ "live": true }))
}

/// The protocol says "200 is ready, 4xx is not"; Triton answers 400.
async fn ready(State(state): State<RecognizeState>) -> Response {
    match state.model() {
        Ok(_) => Json(json!({ "ready": true })).into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, Json(json!({ "ready": false }))).into_response(),
    }
}

fn find_model(
    state: &RecognizeState,
    name: &str,
) -> Result<std::sync::Arc<ServingModel>, AppError> {
    if name != state.model_name() {
        return Err(AppError::NotFound(format!(
            "unknown model {name:?}; this server serves {:?}",
            state.model_name()
        )));
    }
    state.model()
}

fn check_version(version: &str) -> Result<(), AppError> {
    if version == "1" {
        Ok(())
    } else {
        Err(AppError::NotFound(format!(
            "unknown model version {version:?}; the only version is \"1\""
        )))
    }
}

async fn model_metadata(
    State(state): State<RecognizeState>,
    Path(name): Path<String>,
) -> Result<Json, AppError> {
    let model = find_model(&state, &name)?;
    let input_shape = {
        let mut shape: Vec<i64> = model.info.input_shape.clone();
        if let Some(batch) = shape.first_mut() {
            *batch = -1;
        }
        shape
    };
    Ok(Json(json!({
        "name": model.name,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{ "name": model.info.input_name, "datatype": "FP32", "shape": input_shape }],
        "outputs": [{ "name": model.info.output_name, "datatype": "FP32", "shape": [-1, model.info.classes] }],
        "parameters": {
            "sha256": model.info.sha256,
            "device": model.info.device.as_str(),
            // Triton's meaning: the most images one request may carry.
            "max_batch_size": model.batch_config().max_request_rows,
        },
    })))
}

async fn model_metadata_version(
    state: State<RecognizeState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json, AppError> {
    check_version(&version)?;
    model_metadata(state, Path(name)).await
}

async fn model_ready(State(state): State<RecognizeState>, Path(name): Path<String>) -> Response {
    if name != state.model_name() {
        return AppError::NotFound(format!("unknown model {name:?}")).into_response();
    }
    match state.model() {
        Ok(_) => Json(json!({ "name": name, "ready": true })).into_response(),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "name": name, "ready": false })),
        )
            .into_response(),
    }
}

async fn model_ready_version(
    state: State<RecognizeState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    if let Err(e) = check_version(&version) {
        return e.into_response();
    }
    model_ready(state, Path(name)).await
}

/// The optional body of a repository index request.
#[derive(Debug, Default, Deserialize)]
struct IndexRequest {
    /// Only the models that are ready.
    #[serde(default)]
    ready: bool,
}

/// Triton's model repository index: `[{"name", "version", "state", "reason"}]` for the one
/// model this server serves, `READY` or `UNAVAILABLE` with the reason. The body is optional
/// (Triton's client sends none); `{"ready": true}` lists only ready models.
async fn repository_index(
    State(state): State<RecognizeState>,
    body: Bytes,
) -> Result<Json, AppError> {
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::bad_request(format!("invalid repository index request: {e}")))?
    };
    let (ready, reason) = match state.model.ready() {
        Ok(_) => (true, String::new()),
        Err(why) => (false, why),
    };
    if request.ready && !ready {
        return Ok(Json(json!([])));
    }
    Ok(Json(json!([{
        "name": state.model_name(),
        "version": "1",
        "state": if ready { "READY" } else { "UNAVAILABLE" },
        "reason": reason,
    }])))
}

#[derive(Debug, Serialize)]
struct OutputTensor {
    name: String,
    shape: Vec<usize>,
    datatype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

async fn infer_version(
    state: State<RecognizeState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    check_version(&version)?;
    infer(state, Path(name), headers, body).await
}

async fn infer(
    State(state): State<RecognizeState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let model = find_model(&state, &name)?;
    let (json_part, binary) = split_body(&headers, &body)?;
    let request: InferRequest = serde_json::from_slice(json_part)
        .map_err(|e| AppError::bad_request(format!("invalid inference request: {e}")))?;
    let (rows, values) = read_input(
        &request,
        binary,
        &model.info.input_name,
        &model.info.input_shape,
        model.batch_config().max_request_rows,
    )?;
    // Checked before the model runs: each output once, only the model's.
    let requested =
        outputs::requested(request.outputs, &model.info.output_name, model.info.classes)?;
    let scores = model.infer_rows(values, rows).await?;
    let classes = model.info.classes;
    let binary_default = request
        .parameters
        .as_ref()
        .and_then(|p| p.binary_data_output)
        .unwrap_or(false);
    let mut outputs = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    for (out_name, params) in requested {
        let binary_out = params.binary_data.unwrap_or(binary_default);
        match params.classification {
            Some(k) => {
                let k = k as usize;
                let mut labels = Vec::with_capacity(rows * k);
                for row in scores.chunks_exact(classes) {
                    let probs = if model.info.outputs_probabilities {
                        row.to_vec()
                    } else {
                        softmax(row)
                    };
                    for i in top_k_indices(&probs, k) {
                        labels.push(format!("{}:{}:{}", probs[i], i, model.labels[i]));
                    }
                }
                let shape = vec![rows, k];
                if binary_out {
                    let start = tail.len();
                    for s in &labels {
                        tail.extend_from_slice(&(s.len() as u32).to_le_bytes());
                        tail.extend_from_slice(s.as_bytes());
                    }
                    outputs.push(OutputTensor {
                        name: out_name,
                        shape,
                        datatype: "BYTES",
                        data: None,
                        parameters: Some(json!({"binary_data_size": tail.len() - start})),
                    });
                } else {
                    outputs.push(OutputTensor {
                        name: out_name,
                        shape,
                        datatype: "BYTES",
                        data: Some(json!(labels)),
                        parameters: None,
                    });
                }
            }
            None => {
                let shape = vec![rows, classes];
                if binary_out {
                    let start = tail.len();
                    for v in &scores {
                        tail.extend_from_slice(&v.to_le_bytes());
                    }
                    outputs.push(OutputTensor {
                        name: out_name,
                        shape,
                        datatype: "FP32",
                        data: None,
                        parameters: Some(json!({"binary_data_size": tail.len() - start})),
                    });
                } else {
                    outputs.push(OutputTensor {
                        name: out_name,
                        shape,
                        datatype: "FP32",
                        data: Some(json!(scores)),
                        parameters: None,
                    });
                }
            }
        }
    }
    let mut response =
        json!({ "model_name": model.name, "model_version": "1", "outputs": outputs });
    if let Some(id) = request.id {
        response["id"] = Value::String(id);
    }
    let header_bytes =
        serde_json::to_vec(&response).map_err(|e| AppError::Internal(e.to_string()))?;
    if tail.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], header_bytes).into_response());
    }
    let header_len = header_bytes.len();
    let mut body = header_bytes;
    body.extend_from_slice(&tail);
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
        .headers_mut()
        .insert(HEADER_LENGTH, HeaderValue::from(header_len));
    Ok(response)
}

#[cfg(test)]
mod tests;
