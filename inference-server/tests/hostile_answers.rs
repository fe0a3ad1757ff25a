//! Answers a caller or a downstream can inflate or forge (issue 18):
//!
//! - OIP `infer` refuses repeated and unknown requested outputs (finding 2), instead of
//!   repeating the score tensor once per request entry;
//! - results a client submits never answer the one-call pipeline, and `top_k` is honoured
//!   there (finding 5);
//! - a downstream's answer is read within a bound (finding 10);
//! - a traffic file can only name hosts the front door allows, and a candidate or a mirror
//!   never receives the caller's credentials (finding 9).

mod pipeline_support;
mod support;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use pipeline_support::{role_app, role_args};
use serde_json::{Value, json};
use support::{body_json, get, post, send, serve_on_loopback as serve, test_classifier_ready};

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let (status, response) = send(app, request).await;
    (status, body_json(response).await)
}

fn png(rgb: [u8; 3]) -> Vec<u8> {
    support::solid(12, 12, rgb, image::ImageFormat::Png)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_or_unknown_requested_outputs_are_a_400() {
    if !test_classifier_ready() {
        return;
    }
    let (app, _) = support::loaded_app(&support::args("test-classifier.onnx", &[])).await;
    let (status, meta) = call(&app, get("/v2/models/test-classifier")).await;
    assert_eq!(status, StatusCode::OK, "{meta}");
    let input = meta["inputs"][0]["name"]
        .as_str()
        .expect("input")
        .to_string();
    let output = meta["outputs"][0]["name"]
        .as_str()
        .expect("output")
        .to_string();
    let shape: Vec<u64> = meta["inputs"][0]["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_i64().map_or(1, |d| d.max(1) as u64))
        .collect();
    let count: u64 = shape.iter().product();
    let request = |outputs: Value| {
        let body = json!({
            "inputs": [{"name": input, "shape": shape, "datatype": "FP32",
                        "data": vec![0.5f32; count as usize]}],
            "outputs": outputs,
        });
        post(
            "/v2/models/test-classifier/infer",
            "application/json",
            body.to_string(),
        )
    };
    let (status, body) = call(&app, request(json!([{ "name": output }]))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["outputs"].as_array().map(Vec::len), Some(1));

    let repeated: Vec<Value> = (0..1000).map(|_| json!({ "name": output })).collect();
    let (status, body) = call(&app, request(Value::Array(repeated))).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        &body.to_string()[..300.min(body.to_string().len())]
    );
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("more than"))
    );
    let twice =
        json!([{ "name": output }, { "name": output, "parameters": {"classification": 2} }]);
    let (status, body) = call(&app, request(twice)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(&app, request(json!([{ "name": "nope" }]))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_result_never_answers_the_pipeline_and_top_k_is_honoured() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _) = role_app(&role_args("all", dir.path(), &[])).await;
    let (_, ready) = call(&app, get("/readyz")).await;
    let sha = ready["model"]["sha256"]
        .as_str()
        .expect("digest")
        .to_string();
    let red = png([230, 20, 20]);
    let id = sightline_server::upload::sha256_hex(&red);
    // Saved first, by anyone: the pipeline's idempotency key, a forged answer.
    let forged = json!({
        "image_id": id,
        "image_url": format!("http://localhost/api/v1/images/{id}"),
        "model": {"name": "test-classifier", "sha256": sha},
        "predictions": [{"label": "hot dog", "probability": 0.99}],
    });
    let (status, body) = call(
        &app,
        post("/api/v1/results", "application/json", forged.to_string()),
    )
    .await;
    assert!(status.is_success(), "{body}");
    let (status, record) = call(&app, post("/api/v1/pipeline", "image/png", red)).await;
    assert!(status.is_success(), "{record}");
    assert_eq!(record["predictions"][0]["label"], "red", "{record}");
    assert_eq!(record["top_label"], "red", "{record}");

    let green = png([20, 220, 20]);
    let (status, one) = call(
        &app,
        post("/api/v1/pipeline?top_k=1", "image/png", green.clone()),
    )
    .await;
    assert!(status.is_success(), "{one}");
    assert_eq!(one["predictions"].as_array().map(Vec::len), Some(1));
    let (status, three) = call(&app, post("/api/v1/pipeline?top_k=3", "image/png", green)).await;
    assert!(status.is_success(), "{three}");
    assert_eq!(
        three["predictions"].as_array().map(Vec::len),
        Some(3),
        "{three}"
    );
}

/// A store that answers every call with `bytes` of JSON whitespace before a record: what a
/// broken or hostile downstream can send.
async fn bloated_store(bytes: usize) -> String {
    let app = Router::new().fallback(move || async move {
        let chunk = bytes::Bytes::from(vec![b' '; 1024 * 1024]);
        let chunks = bytes / chunk.len();
        let stream =
            futures::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
        (StatusCode::CREATED, Body::from_stream(stream))
    });
    serve(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_answer_is_read_within_a_bound() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (recognize, _) = role_app(&role_args("recognize", &dir.path().join("r"), &[])).await;
    let recognize = serve(recognize).await;
    let store = bloated_store(64 * 1024 * 1024).await;
    let (door, _) = role_app(&role_args(
        "upload",
        &dir.path().join("u"),
        &["--recognize-url", &recognize, "--store-url", &store],
    ))
    .await;
    let (status, body) = call(
        &door,
        post("/api/v1/pipeline", "image/png", png([1, 2, 250])),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("larger than")),
        "{body}"
    );
}

/// What a hostile traffic file could point the front door at: a server that records every
/// request's headers and answers 503 (so the front door falls back to stable).
async fn collector() -> (String, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let record = seen.clone();
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let record = record.clone();
        async move {
            record.lock().expect("lock").push(headers);
            (StatusCode::SERVICE_UNAVAILABLE, "{\"error\":\"no\"}")
        }
    });
    (serve(app).await, seen)
}

async fn front_door_with(dir: &std::path::Path, traffic: &Value) -> (Router, String) {
    let (recognize, _) = role_app(&role_args("recognize", &dir.join("r"), &[])).await;
    let recognize = serve(recognize).await;
    let file = dir.join("traffic.json");
    std::fs::write(&file, traffic.to_string()).expect("traffic file");
    let (door, _) = role_app(&role_args(
        "upload",
        &dir.join("u"),
        &[
            "--recognize-url",
            &recognize,
            "--traffic-file",
            &file.display().to_string(),
            "--api-keys",
            "ci:caller-key-12345678",
        ],
    ))
    .await;
    (door, recognize)
}

async fn recognize_through(door: &Router) -> StatusCode {
    let request = Request::post("/api/v1/recognize")
        .header("content-type", "image/png")
        .header("authorization", "Bearer caller-key-12345678")
        .body(Body::from(png([200, 10, 10])))
        .expect("request");
    send(door, request).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traffic_file_cannot_send_recognitions_to_another_host() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (attacker, seen) = collector().await;
    // The same loopback server, named by another host than --recognize-url's.
    let elsewhere = attacker.replace("127.0.0.1", "localhost");
    let traffic = json!({"model": "test-classifier", "candidate": elsewhere,
                         "candidateWeight": 100, "mirrorPercent": 100});
    let (door, _) = front_door_with(dir.path(), &traffic).await;
    for _ in 0..5 {
        assert_eq!(recognize_through(&door).await, StatusCode::OK);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        seen.lock().expect("lock").is_empty(),
        "the traffic file sent recognitions to {elsewhere}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_and_a_mirror_never_receive_the_callers_key() {
    if !test_classifier_ready() {
        return;
    }
    for (weight, mirror) in [(100, 0), (0, 100)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (candidate, seen) = collector().await;
        let traffic = json!({"model": "test-classifier", "candidate": candidate,
                             "candidateWeight": weight, "mirrorPercent": mirror});
        let (door, _) = front_door_with(dir.path(), &traffic).await;
        for _ in 0..5 {
            assert_eq!(recognize_through(&door).await, StatusCode::OK);
        }
        // The one-call pipeline's recognition step too (no store here: it ends in a 503
        // after recognition, which is what is looked at).
        let request = Request::post("/api/v1/pipeline")
            .header("content-type", "image/png")
            .header("x-api-key", "caller-key-12345678")
            .body(Body::from(png([10, 200, 10])))
            .expect("request");
        let _ = send(&door, request).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while seen.lock().expect("lock").is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let seen = seen.lock().expect("lock");
        assert!(
            !seen.is_empty(),
            "weight {weight}, mirror {mirror}: nothing reached it"
        );
        for headers in seen.iter() {
            assert!(
                headers.get("authorization").is_none() && headers.get("x-api-key").is_none(),
                "weight {weight}, mirror {mirror}: the caller's key reached the candidate: {headers:?}"
            );
        }
    }
}
