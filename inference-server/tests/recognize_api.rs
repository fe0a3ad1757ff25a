//! The recognize role over HTTP with the tiny test classifier (mean colour → red, green,
//! blue): the API contracts, dynamic batching with concurrent mixed images, readiness, and
//! every bad input answered with a 4xx JSON error while the server stays up.

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use image::ImageFormat;
use serde_json::json;
use support::*;

const MODEL: &str = "test-classifier.onnx";

fn png(rgb: [u8; 3]) -> Vec<u8> {
    solid(40, 30, rgb, ImageFormat::Png)
}

#[tokio::test]
async fn recognizes_raw_bytes_and_multipart_with_top_k() {
    if !test_classifier_ready() {
        return;
    }
    let (app, state) = loaded_app(&args(MODEL, &[])).await;
    let model = state.model.ready().expect("model ready");
    assert!(
        model.info.outputs_probabilities,
        "the test classifier ends in Softmax: detected at warm-up"
    );
    assert_eq!(model.info.classes, 3);

    let (status, response) = send(
        &app,
        post("/api/v1/recognize?top_k=2", "image/png", png([230, 20, 10])),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body = body_json(response).await;
    assert_eq!(body["predictions"].as_array().expect("list").len(), 2);
    assert_eq!(body["predictions"][0]["label"], "red");
    assert!(
        body["predictions"][0]["probability"]
            .as_f64()
            .expect("number")
            > 0.9
    );
    assert_eq!(body["model"]["name"], "test-classifier");
    assert_eq!(body["model"]["sha256"].as_str().expect("digest").len(), 64);

    let (content_type, multipart) = multipart(
        "image",
        "../../etc/passwd",
        &solid(8, 8, [10, 10, 240], ImageFormat::Jpeg),
    );
    let (status, response) = send(&app, post("/api/v1/recognize", &content_type, multipart)).await;
    assert_eq!(status, StatusCode::OK);
    let body = body_json(response).await;
    assert_eq!(body["predictions"][0]["label"], "blue");
    assert_eq!(
        body["predictions"].as_array().expect("list").len(),
        3,
        "default top_k is min(5, classes)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_mixed_images_each_get_their_own_answer() {
    if !test_classifier_ready() {
        return;
    }
    let (app, state) = loaded_app(&args(
        MODEL,
        &["--max-batch-size", "8", "--max-delay-ms", "20"],
    ))
    .await;
    let colours = [
        ("red", [240, 10, 10]),
        ("green", [10, 240, 10]),
        ("blue", [10, 10, 240]),
    ];
    let mut tasks = Vec::new();
    for i in 0..48 {
        let app = app.clone();
        let (label, rgb) = colours[i % 3];
        let format = if i % 2 == 0 {
            ImageFormat::Png
        } else {
            ImageFormat::Jpeg
        };
        tasks.push(tokio::spawn(async move {
            let image = solid(64 + i as u32, 48, rgb, format);
            let (status, response) = send(
                &app,
                post(
                    "/api/v1/recognize?top_k=1",
                    "application/octet-stream",
                    image,
                ),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            (
                label,
                body_json(response).await["predictions"][0]["label"]
                    .as_str()
                    .map(String::from),
            )
        }));
    }
    for task in tasks {
        let (expected, got) = task.await.expect("task");
        assert_eq!(
            got.as_deref(),
            Some(expected),
            "a request got another request's result"
        );
    }
    let metrics = state.metrics.encode();
    let runs = metric_value(
        &metrics,
        "sightline_inference_batch_size_count{model=\"test-classifier\"}",
    );
    let images = metric_value(
        &metrics,
        "sightline_inference_batch_size_sum{model=\"test-classifier\"}",
    );
    // Warm-up runs directly on the session, so the histogram counts exactly our 48 images.
    assert_eq!(images, 48.0, "{metrics}");
    assert!(
        runs < 48.0,
        "48 concurrent requests never shared a model run ({runs} runs)"
    );
}

#[tokio::test]
async fn auto_batch_size_is_measured_at_warm_up_and_reported() {
    if !test_classifier_ready() {
        return;
    }
    // The default: `auto` times 1, 2, 4 and 8 rows with the real session.
    let (app, state) = loaded_app(&args(MODEL, &[])).await;
    let (status, response) = send(&app, get("/readyz")).await;
    assert_eq!(status, StatusCode::OK);
    let body = body_json(response).await;
    let batching = &body["model"]["batching"];
    assert_eq!(batching["mode"], "auto", "{body}");
    assert_eq!(batching["limit"], 8);
    let measured = batching["measured"].as_array().expect("measured sizes");
    let rows: Vec<u64> = measured.iter().filter_map(|m| m["rows"].as_u64()).collect();
    assert_eq!(rows, [1, 2, 4, 8], "{batching}");
    let speed = |rows: u64| {
        measured
            .iter()
            .find(|m| m["rows"] == rows)
            .and_then(|m| m["images_per_second"].as_f64())
            .expect("images per second")
    };
    let chosen = batching["max_batch_size"].as_u64().expect("chosen size");
    assert!(rows.contains(&chosen), "{batching}");
    assert!(
        speed(chosen) >= speed(1),
        "the choice is never slower than batch 1: {batching}"
    );
    // The batcher, the OIP metadata and the metrics all use the chosen size.
    let model = state.model.ready().expect("model ready");
    assert_eq!(model.batch_config().max_batch_size as u64, chosen);
    assert_eq!(model.batch_config().max_request_rows, 8);
    // OIP (Triton's meaning): the most images one request may carry, the limit.
    let (_, response) = send(&app, get("/v2/models/test-classifier")).await;
    let metadata = body_json(response).await;
    assert_eq!(
        metadata["parameters"]["max_batch_size"].as_u64(),
        Some(8),
        "{metadata}"
    );
    let metrics = state.metrics.encode();
    assert_eq!(
        metric_value(
            &metrics,
            "sightline_inference_max_batch_size{model=\"test-classifier\"}"
        ),
        chosen as f64
    );
    for r in rows {
        let series = format!(
            "sightline_inference_batch_throughput{{model=\"test-classifier\",rows=\"{r}\"}}"
        );
        assert!(
            metric_value(&metrics, &series) > 0.0,
            "{series} in {metrics}"
        );
    }

    assert_eq!(body["model"]["instances"], 1);

    // A number fixes the size: nothing measured. Two instances answer alike.
    let (app, _) = loaded_app(&args(MODEL, &["--max-batch-size", "4", "--instances", "2"])).await;
    let (_, response) = send(&app, get("/readyz")).await;
    let body = body_json(response).await;
    assert_eq!(body["model"]["instances"], 2, "{body}");
    for (rgb, label) in [([240, 10, 10], "red"), ([10, 10, 240], "blue")] {
        let (status, response) = send(&app, post("/api/v1/recognize", "image/png", png(rgb))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body_json(response).await["predictions"][0]["label"], label);
    }
    assert_eq!(
        body["model"]["batching"],
        json!({"mode": "fixed", "limit": 4, "max_batch_size": 4, "measured": []})
    );
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse().expect("number"))
        })
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

/// A PNG whose header claims `w × h` pixels (with a valid header checksum).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = solid(1, 1, [0, 0, 0], ImageFormat::Png);
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[tokio::test]
async fn bad_input_gets_a_4xx_json_error_and_the_server_stays_up() {
    bad_input_with(&[]).await;
}

/// The same bad images queued undecoded: the instance's worker decodes them, and each
/// still gets its own 4xx (batching.rs, decode_trial.rs).
#[tokio::test]
async fn bad_input_decoded_by_the_worker_gets_the_same_4xx() {
    bad_input_with(&["--decode-at", "worker", "--instances", "2"]).await;
}

async fn bad_input_with(extra: &[&str]) {
    if !test_classifier_ready() {
        return;
    }
    let mut flags = vec!["--max-upload-bytes", "1000000"];
    flags.extend_from_slice(extra);
    let (app, state) = loaded_app(&args(MODEL, &flags)).await;
    let decode = state.model.ready().expect("ready").layout.decode;
    assert_eq!(
        decode.as_str(),
        if extra.is_empty() { "pool" } else { "worker" }
    );
    let jpeg = solid(64, 64, [1, 2, 3], ImageFormat::Jpeg);
    let truncated = jpeg[..jpeg.len() / 2].to_vec();
    let (mp_type, mp_wrong_field) = multipart("file", "a.png", &png([1, 2, 3]));
    let (mp_type2, mp_empty) = multipart("image", "empty.jpg", b"");
    let cases: Vec<(&str, axum::http::Request<Body>, StatusCode)> = vec![
        ("not an image", post("/api/v1/recognize", "image/jpeg", "hello, I am text renamed .jpg"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("truncated JPEG", post("/api/v1/recognize", "image/jpeg", truncated), StatusCode::BAD_REQUEST),
        ("zero-byte body", post("/api/v1/recognize", "image/png", Vec::<u8>::new()), StatusCode::BAD_REQUEST),
        ("PNG claiming 100000×100000", post("/api/v1/recognize", "image/png", png_claiming(100_000, 100_000)), StatusCode::PAYLOAD_TOO_LARGE),
        ("body over the limit", post("/api/v1/recognize", "image/png", vec![0u8; 1_500_000]), StatusCode::PAYLOAD_TOO_LARGE),
        ("multipart without an image field", post("/api/v1/recognize", &mp_type, mp_wrong_field), StatusCode::BAD_REQUEST),
        ("multipart with an empty file", post("/api/v1/recognize", &mp_type2, mp_empty), StatusCode::BAD_REQUEST),
        ("top_k 0", post("/api/v1/recognize?top_k=0", "image/png", png([9, 9, 9])), StatusCode::BAD_REQUEST),
        ("top_k 10^9", post("/api/v1/recognize?top_k=1000000000", "image/png", png([9, 9, 9])), StatusCode::BAD_REQUEST),
        ("top_k not a number", post("/api/v1/recognize?top_k=lots", "image/png", png([9, 9, 9])), StatusCode::BAD_REQUEST),
        ("malformed JSON", post("/api/images/recognition", "application/json", "{\"url\": "), StatusCode::BAD_REQUEST),
        ("JSON of the wrong type", post("/api/images/recognition", "application/json", "{\"url\": 42}"), StatusCode::BAD_REQUEST),
        ("missing url", post("/api/images/recognition", "application/json", "{}"), StatusCode::BAD_REQUEST),
        ("not JSON content type", post("/api/images/recognition", "text/plain", "{\"url\":\"x\"}"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("URL outside the store", post("/api/images/recognition", "application/json", json!({"url": "http://169.254.169.254/latest/meta-data"}).to_string()), StatusCode::FORBIDDEN),
        ("file URL", post("/api/images/recognition", "application/json", json!({"url": "file:///etc/passwd"}).to_string()), StatusCode::FORBIDDEN),
        ("relative URL", post("/api/images/recognition", "application/json", json!({"url": "/uploads/x.jpg"}).to_string()), StatusCode::BAD_REQUEST),
        ("OIP wrong shape", post("/v2/models/test-classifier/infer", "application/json", json!({"inputs":[{"name":"input","shape":[1,3,16,16],"datatype":"FP32","data":vec![0.0; 768]}]}).to_string()), StatusCode::BAD_REQUEST),
        ("OIP wrong datatype", post("/v2/models/test-classifier/infer", "application/json", json!({"inputs":[{"name":"input","shape":[1,3,32,32],"datatype":"INT8","data":vec![0; 3072]}]}).to_string()), StatusCode::BAD_REQUEST),
        ("OIP data not numbers", post("/v2/models/test-classifier/infer", "application/json", json!({"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":["x"]}]}).to_string()), StatusCode::BAD_REQUEST),
        ("OIP unknown model", post("/v2/models/nope/infer", "application/json", "{}"), StatusCode::NOT_FOUND),
        ("unknown endpoint", get("/api/v1/nothing-here"), StatusCode::NOT_FOUND),
    ];
    for (what, request, expected) in cases {
        let (status, response) = send(&app, request).await;
        assert_eq!(status, expected, "{what}");
        let body = body_json(response).await;
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
    }
    // Still serving, and memory stayed far from what the bomb claimed (30 GB).
    let (status, response) = send(
        &app,
        post("/api/v1/recognize", "image/png", png([10, 240, 10])),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body_json(response).await["predictions"][0]["label"],
        "green"
    );
    if let Some(peak) = peak_rss_bytes() {
        assert!(peak < 1 << 30, "peak RSS {peak} bytes");
    }
}

#[tokio::test]
async fn the_seed_endpoint_fetches_only_from_the_image_store() {
    if !test_classifier_ready() {
        return;
    }
    // A stand-in image store on loopback (the upload role's image URLs look like this).
    let store = axum::Router::new()
        .route(
            "/api/v1/images/red",
            axum::routing::get(|| async { png([250, 5, 5]) }),
        )
        .route(
            "/api/v1/images/redirect",
            axum::routing::get(|| async {
                axum::response::Redirect::temporary("http://169.254.169.254/")
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, store).await });
    let upload_url = format!("http://{addr}/api/v1/images");
    let (app, _) = loaded_app(&args(MODEL, &["--upload-url", &upload_url])).await;

    let body = json!({ "url": format!("{upload_url}/red") }).to_string();
    let (status, response) = send(
        &app,
        post("/api/images/recognition", "application/json", body),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let list = body_json(response).await;
    let list = list.as_array().expect("the seed answers a bare list");
    assert_eq!(list.len(), 3, "top 3, like the seed");
    assert_eq!(list[0]["label"], "red");
    assert_eq!(
        list[0].as_object().expect("object").len(),
        2,
        "exactly label and probability"
    );

    let body = json!({ "url": format!("{upload_url}/missing") }).to_string();
    let (status, _) = send(
        &app,
        post("/api/images/recognition", "application/json", body),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body = json!({ "url": format!("{upload_url}/redirect") }).to_string();
    let (status, _) = send(
        &app,
        post("/api/images/recognition", "application/json", body),
    )
    .await;
    assert!(
        status.is_client_error() || status == StatusCode::BAD_GATEWAY,
        "redirects are not followed: {status}"
    );
    let body = json!({ "url": format!("http://{addr}/api/v1/imagesX/red") }).to_string();
    let (status, _) = send(
        &app,
        post("/api/images/recognition", "application/json", body),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn another_models_labels_file_is_a_labels_mismatch() {
    if !test_classifier_ready() {
        return;
    }
    // The 3-class test classifier with the 1000 ImageNet labels of the pretrained model.
    let imagenet = models().join("efficientnet-lite0.labels.txt");
    if !require(std::slice::from_ref(&imagenet)) {
        return;
    }
    let (app, state) =
        loaded_app(&args(MODEL, &["--labels", &imagenet.display().to_string()])).await;
    assert!(
        state.model.ready().is_err(),
        "a mismatching model never serves"
    );
    let (status, response) = send(&app, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body = body_json(response).await;
    assert_eq!(body["status"], "not ready");
    assert_eq!(body["reason"], "LabelsMismatch", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("3 output classes")
            && message.contains("1000 lines")
            && message.contains("use the labels file that belongs to this model"),
        "{message}"
    );
    let (status, _) = send(&app, post("/api/v1/recognize", "image/png", png([1, 1, 1]))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn readiness_says_why_a_model_is_not_serving() {
    if !test_classifier_ready() {
        return;
    }
    let ready = |app: axum::Router| async move {
        let (status, response) = send(&app, get("/readyz")).await;
        (status, body_json(response).await)
    };

    let (app, _) = loaded_app(&args(MODEL, &[])).await;
    let (status, body) = ready(app.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["model"]["name"], "test-classifier");
    assert_eq!(body["model"]["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(body["model"]["device"], "cpu");
    assert_eq!(body["model"]["classes"], 3);
    assert!(body["model"]["load_seconds"].is_number(), "{body}");
    // As the model declares it: a symbolic batch dimension is -1.
    assert_eq!(
        body["model"]["input_shape"],
        json!([-1, 3, 32, 32]),
        "{body}"
    );
    let (status, _) = send(&app, get("/healthz")).await;
    assert_eq!(status, StatusCode::OK);

    let wrong = "0".repeat(64);
    let (app, _) = loaded_app(&args(MODEL, &["--model-sha256", &wrong])).await;
    let (status, body) = ready(app.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "DigestMismatch");
    let (status, response) =
        send(&app, post("/api/v1/recognize", "image/png", png([1, 1, 1]))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let (status, _) = send(&app, get("/healthz")).await;
    assert_eq!(status, StatusCode::OK, "alive though not ready");

    let dir = tempfile::tempdir().expect("tempdir");
    let labels = dir.path().join("four.txt");
    std::fs::write(&labels, "a\nb\nc\nd\n").expect("write");
    let (app, _) = loaded_app(&args(MODEL, &["--labels", &labels.display().to_string()])).await;
    let (status, body) = ready(app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "LabelsMismatch", "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("labels file has 4"),
        "{body}"
    );

    let (app, _) = loaded_app(&args(MODEL, &["--input-size", "64"])).await;
    let (_, body) = ready(app).await;
    assert_eq!(
        body["reason"], "ModelInvalid",
        "input shape checked against preprocessing: {body}"
    );

    // A CPU-only ONNX Runtime cannot register CUDA: not ready, with the reason and the fix…
    let (app, _) = loaded_app(&args(MODEL, &["--device", "gpu"])).await;
    let (status, body) = ready(app).await;
    if status == StatusCode::SERVICE_UNAVAILABLE {
        assert_eq!(body["reason"], "ExecutionProviderUnavailable", "{body}");
        // …unless CPU fallback is explicitly allowed.
        let (app, _) = loaded_app(&args(MODEL, &["--device", "gpu", "--allow-cpu-fallback"])).await;
        let (status, body) = ready(app).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["model"]["device"], "cpu");
    } else {
        assert_eq!(
            body["model"]["device"], "gpu",
            "a GPU runtime is installed here"
        );
    }
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    if !test_classifier_ready() {
        return;
    }
    let (app, _) = loaded_app(&args(
        MODEL,
        &[
            "--queue-capacity",
            "1",
            "--max-batch-size",
            "1",
            "--max-in-flight",
            "4",
        ],
    ))
    .await;
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let (status, response) = send(
                &app,
                post(
                    "/api/v1/recognize",
                    "image/png",
                    solid(512, 512, [7, 7, 7], ImageFormat::Png),
                ),
            )
            .await;
            (status, response.headers().get("retry-after").is_some())
        }));
    }
    let mut ok = 0;
    for task in tasks {
        let (status, retry_after) = task.await.expect("task");
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => assert!(retry_after, "503 without Retry-After"),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(ok >= 1, "nothing was served");
    assert!(
        ok < 64,
        "64 concurrent requests against a limit of 4 were never shed"
    );
}
