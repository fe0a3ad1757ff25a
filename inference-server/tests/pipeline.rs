//! The one-call pipeline, in `all` (every step in-process) and split (the upload role
//! calling recognize and store services over loopback HTTP): the stored record comes back,
//! repeats are idempotent, a missing downstream is a `503` naming it with the image kept,
//! the re-run endpoint finishes the job later, the circuit breaker fails fast; and API keys
//! and rate limits.

mod pipeline_support;
mod support;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use image::ImageFormat;
use pipeline_support::*;
use serde_json::Value;
use support::{body_json, get, multipart, post, send, solid, test_classifier_ready};

fn png(rgb: [u8; 3], w: u32) -> Vec<u8> {
    solid(w, 20, rgb, ImageFormat::Png)
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let (status, response) = send(app, request).await;
    (status, body_json(response).await)
}

/// Serves `app` on an ephemeral loopback port until the task is aborted.
async fn serve(app: Router, addr: Option<SocketAddr>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener =
        tokio::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_in_all_returns_the_stored_record_once() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _) = role_app(&role_args("all", dir.path(), &[])).await;
    let red = png([230, 20, 10], 30);
    let (status, first) = call(
        &app,
        post("/api/v1/pipeline?top_k=2", "image/png", red.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["top_label"], "red");
    assert_eq!(first["predictions"].as_array().expect("list").len(), 2);
    assert_eq!(first["model"]["name"], "test-classifier");
    assert_eq!(first["model"]["sha256"].as_str().expect("digest").len(), 64);
    let id = sightline_server::upload::sha256_hex(&red);
    assert_eq!(first["image_id"], id.as_str());
    assert_eq!(first["image"]["id"], id.as_str());
    assert!(first["latency_ms"].as_f64().is_some());

    let (content_type, body) = multipart("image", "again.png", &red);
    let (status, again) = call(&app, post("/api/v1/pipeline?top_k=2", &content_type, body)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the same image and model: the record that exists"
    );
    assert_eq!(again["id"], first["id"]);

    let (status, listed) = call(&app, get(&format!("/api/v1/images/{id}/results"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["items"].as_array().expect("items").len(), 1);
    let (status, rerun) = call(
        &app,
        post(
            &format!("/api/v1/images/{id}/recognize?top_k=2"),
            "application/json",
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rerun}");
    assert_eq!(rerun["id"], first["id"]);

    for (uri, content_type, body, expected) in [
        (
            "/api/v1/pipeline",
            "image/png",
            Vec::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/pipeline",
            "image/png",
            b"not an image".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "/api/v1/pipeline?top_k=0",
            "image/png",
            red.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/pipeline?top_k=-3",
            "image/png",
            red.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/pipeline?top_k=99",
            "image/png",
            red.clone(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, body) = call(&app, post(uri, content_type, body)).await;
        assert_eq!(status, expected, "{uri}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let missing = format!("/api/v1/images/{}/recognize", "0".repeat(64));
    let (status, body) = call(&app, post(&missing, "application/json", "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_pipeline_names_the_missing_component_keeps_the_image_and_reruns() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (recognize_app, _) = role_app(&role_args("recognize", dir.path(), &[])).await;
    let (store_app, _) = role_app(&role_args("store", &dir.path().join("store"), &[])).await;
    let (recognize_addr, recognize_task) = serve(recognize_app.clone(), None).await;
    let (store_addr, _store_task) = serve(store_app, None).await;
    let recognize_url = format!("http://{recognize_addr}");
    let store_url = format!("http://{store_addr}");
    let upload_args = role_args(
        "upload",
        &dir.path().join("upload"),
        &[
            "--recognize-url",
            &recognize_url,
            "--store-url",
            &store_url,
            "--downstream-retries",
            "0",
            "--downstream-timeout-secs",
            "2",
        ],
    );
    let (upload, _) = role_app(&upload_args).await;

    let green = png([10, 230, 10], 31);
    let (status, record) = call(&upload, post("/api/v1/pipeline", "image/png", green)).await;
    assert_eq!(status, StatusCode::CREATED, "{record}");
    assert_eq!(record["top_label"], "green");

    // Recognize goes away: 503 naming it, quickly, and the image is kept.
    recognize_task.abort();
    let _ = recognize_task.await;
    let blue = png([10, 10, 230], 32);
    let started = std::time::Instant::now();
    let (status, failed) = call(&upload, post("/api/v1/pipeline", "image/png", blue.clone())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{failed}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(failed["component"], "recognize");
    assert!(
        failed["error"]
            .as_str()
            .expect("error")
            .contains("recognize"),
        "{failed}"
    );
    let id = failed["image"]["id"]
        .as_str()
        .expect("image id")
        .to_string();
    let (status, _) = send(&upload, get(&format!("/api/v1/images/{id}"))).await;
    assert_eq!(status, StatusCode::OK, "the image was kept");

    // Back on the same port: the re-run stores the result.
    let (_, _task) = serve(recognize_app, Some(recognize_addr)).await;
    let (status, rerun) = call(
        &upload,
        post(
            &format!("/api/v1/images/{id}/recognize"),
            "application/json",
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{rerun}");
    assert_eq!(rerun["top_label"], "blue");
    assert_eq!(rerun["image_id"], id.as_str());
}

#[tokio::test]
async fn the_circuit_breaker_fails_fast_after_repeated_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let url = format!("http://{closed}");
    let args = role_args(
        "upload",
        dir.path(),
        &[
            "--recognize-url",
            &url,
            "--store-url",
            &url,
            "--downstream-retries",
            "0",
        ],
    );
    let (upload, state) = role_app(&args).await;
    let mut last = Value::Null;
    for i in 0..6 {
        let (status, body) = call(
            &upload,
            post("/api/v1/pipeline", "image/png", png([i * 40, 9, 9], 10)),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["component"], "recognize");
        last = body;
    }
    assert!(
        last["error"]
            .as_str()
            .expect("error")
            .contains("circuit open"),
        "{last}"
    );
    let metrics = state.metrics.encode();
    assert!(
        metrics.contains("sightline_circuit_breaker_open{downstream=\"recognize\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn api_keys_and_rate_limits_are_enforced_and_health_stays_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, "# team keys\nalice:alice-key-123456\n").expect("keys");
    let keys_arg = keys.display().to_string();
    let args = role_args(
        "store",
        dir.path(),
        &[
            "--api-keys-file",
            &keys_arg,
            "--api-keys",
            "bob:bob-key-abcdef",
            "--rate-limit-rps",
            "0.01",
            "--rate-limit-burst",
            "2",
        ],
    );
    let (app, _) = role_app(&args).await;
    let with = |header: &str, value: &str| {
        Request::get("/api/v1/results")
            .header(header, value)
            .body(Body::empty())
            .expect("request")
    };
    let (status, body) = call(&app, get("/api/v1/results")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["error"].is_string());
    let (status, _) = call(&app, with("authorization", "Bearer wrong-key-000000")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&app, with("authorization", "Bearer alice-key-123456")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&app, with("x-api-key", "alice-key-123456")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, response) = send(&app, with("authorization", "Bearer alice-key-123456")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    assert!(body_json(response).await["error"].is_string());
    let (status, _) = call(&app, with("x-api-key", "bob-key-abcdef")).await;
    assert_eq!(status, StatusCode::OK, "each key has its own bucket");
    for open in ["/healthz", "/readyz", "/metrics"] {
        let (status, _) = send(&app, get(open)).await;
        assert_eq!(status, StatusCode::OK, "{open} stays open");
    }
}
