//! `POST /v2/repository/index` (Triton's model repository extension, how Triton clients
//! discover models): the served model with its state, `READY` or `UNAVAILABLE` with the
//! reason; `{"ready": true}` lists only ready models; the body is optional.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use support::*;

async fn index(app: &axum::Router, body: &'static str) -> (StatusCode, Value) {
    let request = Request::post("/v2/repository/index")
        .body(Body::from(body))
        .expect("request");
    let (status, response) = send(app, request).await;
    (status, body_json(response).await)
}

#[tokio::test]
async fn the_index_lists_the_ready_model() {
    if !test_classifier_ready() {
        return;
    }
    let (app, _) = loaded_app(&args("test-classifier.onnx", &[])).await;
    let ready =
        json!([{"name": "test-classifier", "version": "1", "state": "READY", "reason": ""}]);
    for body in ["", "{}", r#"{"ready": true}"#, r#"{"ready": false}"#] {
        let (status, answer) = index(&app, body).await;
        assert_eq!(status, StatusCode::OK, "{body:?}: {answer}");
        assert_eq!(answer, ready, "{body:?}");
    }
    let (status, answer) = index(&app, "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"].is_string());
}

#[tokio::test]
async fn a_model_not_ready_is_listed_unavailable_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The model never loads here: the state says so.
    let app = unloaded_app("recognize", dir.path(), &[]).await;
    let (status, answer) = index(&app, "").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer[0]["name"], "m");
    assert_eq!(answer[0]["version"], "1");
    assert_eq!(answer[0]["state"], "UNAVAILABLE");
    assert!(
        answer[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("loading")),
        "{answer}"
    );
    let (status, answer) = index(&app, r#"{"ready": true}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, json!([]));
}
