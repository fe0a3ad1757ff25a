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

/// One input tensor of an inference request.
#[derive(Debug, Deserialize)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub data: Option<FlatF32>,
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

#[derive(Debug, Deserialize, Default)]
pub struct Parameters {
    pub binary_data_size: Option<u64>,
    pub binary_data: Option<bool>,
    pub classification: Option<u64>,
    pub binary_data_output: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Parameters>,
    pub inputs: Vec<InputTensor>,
    #[serde(default, deserialize_with = "super::oip_outputs::at_most_listed")]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// Tensor `data`, flat or nested, read straight into `f32`s (no intermediate `Value` tree,
/// so a large tensor costs 4 bytes per element).
#[derive(Debug, Default)]
pub struct FlatF32(pub Vec<f32>);

impl<'de> Deserialize<'de> for FlatF32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(&'a mut Vec<f32>);
        impl<'de> serde::de::Visitor<'de> for Visitor<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("numbers, or arrays of numbers nested to any depth")
            }
            fn visit_f64<E>(self, v: f64) -> Result<(), E> {
                self.0.push(v as f32);
                Ok(())
            }
            fn visit_i64<E>(self, v: i64) -> Result<(), E> {
                self.0.push(v as f32);
                Ok(())
            }
            fn visit_u64<E>(self, v: u64) -> Result<(), E> {
                self.0.push(v as f32);
                Ok(())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while seq.next_element_seed(Seed(&mut *self.0))?.is_some() {}
                Ok(())
            }
        }
        struct Seed<'a>(&'a mut Vec<f32>);
        impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_> {
            type Value = ();
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(Visitor(self.0))
            }
        }
        let mut out = Vec::new();
        d.deserialize_any(Visitor(&mut out))?;
        Ok(FlatF32(out))
    }
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

/// Splits a body into its JSON header and the binary tensor data that follows it.
pub fn split_body<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), AppError> {
    match headers.get(HEADER_LENGTH) {
        None => Ok((body, &[])),
        Some(value) => {
            let n: usize = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| {
                    AppError::bad_request(format!("{HEADER_LENGTH} must be a byte count"))
                })?;
            if n > body.len() {
                return Err(AppError::bad_request(format!(
                    "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                    body.len()
                )));
            }
            Ok(body.split_at(n))
        }
    }
}

/// Validates the request's one input against the model and returns `(rows, values)`.
pub fn read_input(
    request: &InferRequest,
    binary: &[u8],
    input_name: &str,
    expected: &[i64],
    max_rows: usize,
) -> Result<(usize, Vec<f32>), AppError> {
    let [input] = request.inputs.as_slice() else {
        return Err(AppError::bad_request(format!(
            "expected exactly one input tensor ({input_name:?}), got {}",
            request.inputs.len()
        )));
    };
    if input.name != input_name {
        return Err(AppError::bad_request(format!(
            "unknown input {:?}; the model's input is {input_name:?}",
            input.name
        )));
    }
    if input.datatype != "FP32" {
        return Err(AppError::bad_request(format!(
            "input datatype must be FP32, got {:?}",
            input.datatype
        )));
    }
    // Every dimension at least 1 (a dynamic one included: no empty or negative tensors).
    let shape_ok = input.shape.len() == expected.len()
        && input.shape.iter().all(|d| *d >= 1)
        && input.shape[1..]
            .iter()
            .zip(&expected[1..])
            .all(|(got, want)| *want < 0 || got == want);
    if !shape_ok {
        let mut want = expected.to_vec();
        want[0] = -1;
        return Err(AppError::bad_request(format!(
            "input shape must be {want:?} (batch first), got {:?}",
            input.shape
        )));
    }
    let rows = input.shape[0] as usize;
    if rows > max_rows {
        return Err(AppError::bad_request(format!(
            "batch of {rows} exceeds the maximum batch size {max_rows}"
        )));
    }
    let count = input
        .shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d as usize));
    let count = count.ok_or_else(|| AppError::bad_request("input shape is too large"))?;
    let binary_size = input.parameters.as_ref().and_then(|p| p.binary_data_size);
    let values = match (&input.data, binary_size) {
        (Some(data), None) => data.0.clone(),
        (None, Some(size)) => {
            // `count * 4` may overflow for shapes with huge dynamic dimensions.
            if size as usize != binary.len() || count.checked_mul(4) != Some(binary.len()) {
                return Err(AppError::bad_request(format!(
                    "binary_data_size is {size} and {} bytes follow the header; shape {:?} of FP32 needs {}",
                    binary.len(),
                    input.shape,
                    count.saturating_mul(4)
                )));
            }
            binary
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        (Some(_), Some(_)) => {
            return Err(AppError::bad_request(
                "input has both data and binary_data_size",
            ));
        }
        (None, None) => return Err(AppError::bad_request("input has no data")),
    };
    if values.len() != count {
        return Err(AppError::bad_request(format!(
            "input shape {:?} needs {count} values, data has {}",
            input.shape,
            values.len()
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(AppError::bad_request(
            "input data contains NaN or infinite values",
        ));
    }
    Ok((rows, values))
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
    let requested = super::oip_outputs::requested(
        request.outputs,
        &model.info.output_name,
        model.info.classes,
    )?;
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
mod tests {
    use super::*;

    fn request(json: &str) -> InferRequest {
        serde_json::from_str(json).expect("valid request JSON")
    }

    const SHAPE: [i64; 4] = [-1, 3, 2, 2];

    #[test]
    fn nested_and_flat_data_are_the_same_tensor() {
        let flat = request(
            r#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","data":[0,1,2,3,4,5,6,7,8,9,10,11]}]}"#,
        );
        let nested = request(
            r#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","data":[[[[0,1],[2,3]],[[4,5],[6,7]],[[8,9],[10,11]]]]}]}"#,
        );
        let a = read_input(&flat, &[], "input", &SHAPE, 8).expect("flat");
        let b = read_input(&nested, &[], "input", &SHAPE, 8).expect("nested");
        assert_eq!(a, b);
        assert_eq!(a.0, 1);
    }

    #[test]
    fn wrong_shape_datatype_name_or_count_is_a_400() {
        for (body, why) in [
            (
                r#"{"inputs":[{"name":"input","shape":[1,3,2],"datatype":"FP32","data":[0,0,0,0,0,0]}]}"#,
                "rank",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"INT64","data":[0,0,0,0,0,0,0,0,0,0,0,0]}]}"#,
                "dtype",
            ),
            (
                r#"{"inputs":[{"name":"pixels","shape":[1,3,2,2],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,0,0,0]}]}"#,
                "name",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","data":[0,0,0]}]}"#,
                "count",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[0,3,2,2],"datatype":"FP32","data":[]}]}"#,
                "empty batch",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[9,3,2,2],"datatype":"FP32","data":[]}]}"#,
                "batch too big",
            ),
            (r#"{"inputs":[]}"#, "no inputs"),
            (
                r#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32"}]}"#,
                "no data",
            ),
        ] {
            let err = read_input(&request(body), &[], "input", &SHAPE, 8).expect_err(why);
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{why}");
        }
        assert!(
            serde_json::from_str::<InferRequest>(
                r#"{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":["a"]}]}"#
            )
            .is_err()
        );
    }

    /// Regression: with dynamic dimensions, a shape whose element count fits in `usize`
    /// but whose byte count does not overflowed `count * 4` (a panic in debug builds).
    #[test]
    fn huge_dynamic_dimensions_are_a_400_not_an_overflow() {
        let dynamic = [-1, 3, -1, -1];
        for shape in ["[1,3,2305843009213693952,1]", "[1,3,-1,4]", "[1,3,0,4]"] {
            let body = format!(
                r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"FP32","parameters":{{"binary_data_size":8}}}}]}}"#
            );
            let err = read_input(&request(&body), &[0; 8], "input", &dynamic, 8).expect_err(shape);
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{shape}");
        }
    }

    #[test]
    fn binary_tensors_are_read_after_the_header() {
        let json = br#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","parameters":{"binary_data_size":48}}]}"#;
        let mut body = json.to_vec();
        for i in 0..12 {
            body.extend_from_slice(&(i as f32).to_le_bytes());
        }
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, HeaderValue::from(json.len()));
        let (head, tail) = split_body(&headers, &body).expect("split");
        let req: InferRequest = serde_json::from_slice(head).expect("json");
        let (rows, values) = read_input(&req, tail, "input", &SHAPE, 8).expect("binary");
        assert_eq!(rows, 1);
        assert_eq!(values[11], 11.0);
        headers.insert(HEADER_LENGTH, HeaderValue::from(body.len() + 1));
        assert!(split_body(&headers, &body).is_err());
    }
}
