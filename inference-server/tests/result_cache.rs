//! The result cache over HTTP with the test classifier: a repeated image is answered from
//! the cache with the same predictions and no model run (counted by
//! `sightline_inference_batch_size_count`, one per run), identical requests in flight cost
//! one run, `--cache-bytes` bounds what is kept (evictions counted), 0 turns it off, and the
//! one-call pipeline in `all` goes through it too.

mod pipeline_support;
mod support;

use axum::http::StatusCode;
use image::ImageFormat;
use serde_json::Value;
use support::*;

const MODEL: &str = "test-classifier.onnx";
const RUNS: &str = "sightline_inference_batch_size_count{model=\"test-classifier\"}";
const HITS: &str = "sightline_cache_hits_total{model=\"test-classifier\"}";
const MISSES: &str = "sightline_cache_misses_total{model=\"test-classifier\"}";
const EVICTIONS: &str = "sightline_cache_evictions_total{model=\"test-classifier\"}";
const BYTES: &str = "sightline_cache_bytes{model=\"test-classifier\"}";

/// One 3-class answer in the cache: 12 bytes of scores and the bookkeeping.
const ENTRY: usize = 12 + sightline_server::cache::ENTRY_OVERHEAD;

fn png(rgb: [u8; 3], width: u32) -> Vec<u8> {
    solid(width, 30, rgb, ImageFormat::Png)
}

/// The value of `series` in `text`, or `None` when it is not exported.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .filter(|rest| rest.starts_with(' '))
            .map(|v| v.trim().parse().expect("a number"))
    })
}

fn value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

async fn recognize(app: &axum::Router, image: Vec<u8>) -> Value {
    let (status, response) = send(
        app,
        post(
            "/api/v1/recognize?top_k=3",
            "application/octet-stream",
            image,
        ),
    )
    .await;
    let body = body_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_image_is_answered_from_the_cache() {
    if !test_classifier_ready() {
        return;
    }
    let (app, state) = loaded_app(&args(MODEL, &[])).await;
    let red = png([230, 20, 10], 40);
    let first = recognize(&app, red.clone()).await;
    let again = recognize(&app, red.clone()).await;
    assert_eq!(first["predictions"], again["predictions"]);
    assert_eq!(first["predictions"][0]["label"], "red");
    // The seed's endpoint by URL is another way in: not tested here (it needs an image
    // store); the one-call pipeline below is.
    let text = state.metrics.encode();
    assert_eq!(value(&text, RUNS), 1.0, "the model ran once\n{text}");
    assert_eq!(value(&text, HITS), 1.0);
    assert_eq!(value(&text, MISSES), 1.0);
    assert_eq!(value(&text, BYTES), ENTRY as f64);
    // Other bytes (the same colour, one pixel wider) are another image.
    recognize(&app, png([230, 20, 10], 41)).await;
    assert_eq!(value(&state.metrics.encode(), RUNS), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_requests_in_flight_cost_one_inference() {
    if !test_classifier_ready() {
        return;
    }
    let (app, state) = loaded_app(&args(MODEL, &["--max-delay-ms", "0"])).await;
    // Large enough that decoding takes a while: the others arrive while it runs.
    let image = solid(1500, 1500, [10, 10, 240], ImageFormat::Png);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (app, image) = (app.clone(), image.clone());
            tokio::spawn(async move { recognize(&app, image).await })
        })
        .collect();
    for task in tasks {
        let body = task.await.expect("task");
        assert_eq!(body["predictions"][0]["label"], "blue", "{body}");
    }
    let text = state.metrics.encode();
    assert_eq!(
        value(&text, RUNS),
        1.0,
        "16 identical requests, one run\n{text}"
    );
    assert_eq!(value(&text, MISSES), 1.0);
    assert_eq!(value(&text, HITS), 15.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_bound_holds_and_evictions_are_counted() {
    if !test_classifier_ready() {
        return;
    }
    let capacity = (2 * ENTRY + ENTRY / 2).to_string();
    let (app, state) = loaded_app(&args(MODEL, &["--cache-bytes", &capacity])).await;
    for width in [40, 41, 42, 43] {
        recognize(&app, png([20, 230, 10], width)).await;
    }
    let text = state.metrics.encode();
    assert_eq!(value(&text, EVICTIONS), 2.0, "{text}");
    assert_eq!(value(&text, BYTES), (2 * ENTRY) as f64);
    // The two most recent are kept, the first two are gone.
    recognize(&app, png([20, 230, 10], 43)).await;
    assert_eq!(value(&state.metrics.encode(), RUNS), 4.0);
    recognize(&app, png([20, 230, 10], 40)).await;
    let text = state.metrics.encode();
    assert_eq!(value(&text, RUNS), 5.0);
    assert!(value(&text, BYTES) <= (2 * ENTRY + ENTRY / 2) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_cache_bytes_turns_the_cache_off() {
    if !test_classifier_ready() {
        return;
    }
    let (app, state) = loaded_app(&args(MODEL, &["--cache-bytes", "0"])).await;
    let red = png([230, 20, 10], 40);
    let first = recognize(&app, red.clone()).await;
    let again = recognize(&app, red).await;
    assert_eq!(first["predictions"], again["predictions"]);
    let text = state.metrics.encode();
    assert_eq!(
        value(&text, RUNS),
        2.0,
        "every request runs the model\n{text}"
    );
    assert_eq!(metric(&text, HITS), None, "no cache series without a cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_call_pipeline_goes_through_the_cache() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, state) =
        pipeline_support::role_app(&pipeline_support::role_args("all", dir.path(), &[])).await;
    let blue = png([10, 20, 230], 30);
    let (status, response) = send(
        &app,
        post("/api/v1/pipeline?top_k=2", "image/png", blue.clone()),
    )
    .await;
    let record = body_json(response).await;
    assert_eq!(status, StatusCode::CREATED, "{record}");
    assert_eq!(record["top_label"], "blue");
    // The same image by bytes: the pipeline's answer, from the cache.
    let body = recognize(&app, blue).await;
    assert_eq!(body["predictions"][0]["label"], "blue");
    let text = state.metrics.encode();
    assert_eq!(value(&text, RUNS), 1.0, "{text}");
    assert_eq!(value(&text, HITS), 1.0);
}
