//! Feedback on the pipeline's answers and the live quality counted from it (issue 20), the
//! same contract on SQLite, PostgreSQL and MariaDB: one current answer per (result,
//! caller) with the history kept (also when racing), `{"correct": true}`, client results
//! refused, the figures equal to the seed's formulas on the same confusion matrix, the
//! caller named by its API key (never by a header a caller sends), and every bad input a
//! clear 4xx.

mod pipeline_support;
mod support;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use pipeline_support::*;
use serde_json::{Value, json};
use sightline_quality::Confusion;
use support::{body_json, get, get_json, post, post_json, send};

const MODEL: &str = "colours";

fn digest() -> String {
    "d".repeat(64)
}

/// A result the pipeline would save: image `n`, top-1 `label`.
fn answer(n: usize, label: &str) -> Value {
    let id = sightline_server::upload::sha256_hex(format!("image {n}").as_bytes());
    json!({
        "image_id": id,
        "image_url": format!("http://upload:8080/api/v1/images/{id}"),
        "model": {"name": MODEL, "sha256": digest()},
        "predictions": [{"label": label, "probability": 0.9}, {"label": "other", "probability": 0.1}],
    })
}

/// (predicted, true) per result: blue, green and red, seven of nine right.
const PLAN: [(&str, &str); 9] = [
    ("red", "red"),
    ("red", "red"),
    ("red", "red"),
    ("red", "green"),
    ("green", "green"),
    ("green", "green"),
    ("blue", "green"),
    ("blue", "blue"),
    ("blue", "blue"),
];

/// The figures the offline evaluation computes for `plan`: a confusion matrix over
/// `labels` by index, scored by the seed's formulas.
fn offline(plan: &[(&str, &str)]) -> (f64, Vec<sightline_quality::ClassMetrics>) {
    let labels: Vec<String> = ["blue", "green", "red"].map(String::from).to_vec();
    let at = |l: &str| labels.iter().position(|x| x == l).expect("a label");
    let mut m = Confusion::new(labels.len());
    for (predicted, truth) in plan {
        m.add(at(truth), at(predicted));
    }
    (m.accuracy(), m.per_class(&labels))
}

fn per_class(quality: &Value) -> Vec<sightline_quality::ClassMetrics> {
    serde_json::from_value(quality["per_class"].clone()).expect("per-class figures")
}

async fn contract(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let args = role_args("store", dir.path(), &db.flags());
    let (app, state) = role_app(&args).await;
    let store = state.results.clone().expect("a store");

    let mut ids = Vec::new();
    for (n, (predicted, _)) in PLAN.iter().enumerate() {
        let (status, saved) = post_json(&app, "/internal/v1/results", &answer(n, predicted)).await;
        assert_eq!(status, StatusCode::CREATED, "{saved}");
        ids.push(saved["id"].as_str().expect("id").to_string());
    }
    for (n, (predicted, truth)) in PLAN.iter().enumerate() {
        // Right answers confirmed both ways: the label, or just `correct`.
        let body = if predicted == truth && n % 2 == 0 {
            json!({"correct": true})
        } else {
            json!({"label": truth})
        };
        let uri = format!("/api/v1/results/{}/feedback", ids[n]);
        let (status, recorded) = post_json(&app, &uri, &body).await;
        assert_eq!(status, StatusCode::CREATED, "{recorded}");
        assert_eq!(recorded["label"], *truth);
        assert_eq!(recorded["predicted"], *predicted);
        assert_eq!(recorded["correct"], predicted == truth);
        assert_eq!(recorded["caller"], "anonymous");
        assert_eq!(recorded["model"]["sha256"], digest());
        assert_eq!(recorded["replaced"], false);
        assert!(recorded["image_id"].as_str().is_some_and(|i| i.len() == 64));
    }

    let uri = format!("/api/v1/quality?model={MODEL}&window=1h");
    let (status, quality) = get_json(&app, &uri).await;
    assert_eq!(status, StatusCode::OK, "{quality}");
    assert_eq!(quality["window"], "1h");
    let digests = quality["digests"].as_array().expect("digests");
    assert_eq!(digests.len(), 1, "{quality}");
    let live = &digests[0];
    assert_eq!(live["model_sha256"], digest());
    assert_eq!(live["samples"], 9);
    assert_eq!(live["correct"], 7);
    let (accuracy, classes) = offline(&PLAN);
    assert_eq!(live["accuracy"].as_f64(), Some(accuracy));
    assert_eq!(
        per_class(live),
        classes,
        "the same formulas, the same figures"
    );
    let pairs = live["confusion"].as_array().expect("pairs");
    assert_eq!(
        pairs[0],
        json!({"predicted": "red", "truth": "red", "count": 3})
    );
    assert_eq!(pairs.len(), 5, "{pairs:?}");
    // The default window is 24 h; another digest has nothing.
    let (_, day) = get_json(&app, &format!("/api/v1/quality?model={MODEL}")).await;
    assert_eq!(
        (day["window"].clone(), day["digests"][0]["samples"].clone()),
        (json!("24h"), json!(9))
    );
    let uri = format!(
        "/api/v1/quality?model={MODEL}&window=7d&digest={}",
        "e".repeat(64)
    );
    let (status, other) = get_json(&app, &uri).await;
    assert_eq!(
        (status, other["digests"].clone()),
        (StatusCode::OK, json!([]))
    );
    let later = sightline_server::store::now_ms() + 60_000;
    assert!(
        store
            .quality(MODEL, None, later)
            .await
            .expect("query")
            .is_empty(),
        "the window is by feedback time"
    );

    // A later answer replaces the earlier one; the history keeps both.
    let uri = format!("/api/v1/results/{}/feedback", ids[3]);
    let (status, replaced) = post_json(&app, &uri, &json!({"label": "red", "correct": true})).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["replaced"], true);
    let mut plan = PLAN;
    plan[3] = ("red", "red");
    let (_, quality) = get_json(&app, &format!("/api/v1/quality?model={MODEL}&window=1h")).await;
    assert_eq!(
        quality["digests"][0]["samples"], 9,
        "one current answer per caller"
    );
    assert_eq!(per_class(&quality["digests"][0]), offline(&plan).1);
    let history = store.feedback_history(&ids[3]).await.expect("history");
    let labels: Vec<&str> = history.iter().map(|h| h.label.as_str()).collect();
    assert_eq!(labels.len(), 2);
    assert!(
        labels.contains(&"green") && labels.contains(&"red"),
        "{labels:?}"
    );

    // Racing answers of one caller: every one in the history, one current answer.
    let racers = [
        "red", "green", "blue", "red", "green", "blue", "red", "green",
    ]
    .map(|label| {
        let app = app.clone();
        let uri = format!("/api/v1/results/{}/feedback", ids[0]);
        tokio::spawn(async move { post_json(&app, &uri, &json!({ "label": label })).await })
    });
    for raced in futures::future::join_all(racers).await {
        let (status, body) = raced.expect("task");
        assert!(status.is_success(), "{status} {body}");
    }
    assert_eq!(
        store
            .feedback_history(&ids[0])
            .await
            .expect("history")
            .len(),
        9
    );
    let (_, quality) = get_json(&app, &format!("/api/v1/quality?model={MODEL}&window=1h")).await;
    assert_eq!(quality["digests"][0]["samples"], 9);

    // The front door's route: the caller it names. Another caller's answer is a sample of
    // its own.
    let forwarded = Request::post(format!("/internal/v1/results/{}/feedback", ids[8]))
        .header("content-type", "application/json")
        .header("x-sightline-caller", "Zo%C3%AB")
        .body(Body::from(json!({"label": "green"}).to_string()))
        .expect("request");
    let (status, response) = send(&app, forwarded).await;
    let recorded = body_json(response).await;
    assert_eq!(status, StatusCode::CREATED, "{recorded}");
    assert_eq!(recorded["caller"], "Zoë");
    let (_, quality) = get_json(&app, &format!("/api/v1/quality?model={MODEL}&window=1h")).await;
    assert_eq!(quality["digests"][0]["samples"], 10);

    // What a client submitted is not the model's answer: no feedback.
    let (status, submitted) = post_json(&app, "/api/v1/results", &answer(100, "red")).await;
    assert_eq!(status, StatusCode::CREATED);
    let uri = format!(
        "/api/v1/results/{}/feedback",
        submitted["id"].as_str().expect("id")
    );
    let (status, refused) = post_json(&app, &uri, &json!({"label": "red"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("client")),
        "{refused}"
    );

    hostile_inputs(&app, &ids[1]).await;

    store.close().await;
    db.cleanup().await;
}

async fn hostile_inputs(app: &Router, id: &str) {
    let feedback = format!("/api/v1/results/{id}/feedback");
    let internal = feedback.replace("/api/", "/internal/");
    let unknown = format!("/api/v1/results/{}/feedback", "0".repeat(32));
    let (feedback, internal, unknown) = (feedback.as_str(), internal.as_str(), unknown.as_str());
    let huge = json!({"label": "x".repeat(64 * 1024)}).to_string();
    let cases: Vec<(&str, &str, String, StatusCode)> = vec![
        (
            feedback,
            "application/json",
            "{not json".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            feedback,
            "application/json",
            "[]".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            feedback,
            "application/json",
            huge,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            feedback,
            "application/json",
            "{}".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            feedback,
            "application/json",
            json!({"label": null}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            feedback,
            "application/json",
            json!({"correct": false}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            feedback,
            "application/json",
            json!({"label": ""}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            feedback,
            "application/json",
            json!({"label": "x".repeat(256)}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            feedback,
            "application/json",
            json!({"label": "a\u{0}b"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            feedback,
            "application/json",
            json!({"label": "a\nb"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            feedback,
            "application/json",
            json!({"label": 5}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            feedback,
            "application/json",
            json!({"lable": "red"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        // PLAN[1] is red, truly red: `correct: false` contradicts the label.
        (
            feedback,
            "application/json",
            json!({"label": "red", "correct": false}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            feedback,
            "text/plain",
            json!({"label": "red"}).to_string(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            unknown,
            "application/json",
            json!({"label": "red"}).to_string(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/results/not-an-id/feedback",
            "application/json",
            json!({"label": "red"}).to_string(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/results/..%2F..%2Fetc/feedback",
            "application/json",
            json!({"label": "red"}).to_string(),
            StatusCode::NOT_FOUND,
        ),
        // The front door's route without the caller it names.
        (
            internal,
            "application/json",
            json!({"label": "red"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (uri, content_type, body, expected) in cases {
        let (status, response) = send(app, post(uri, content_type, body.clone())).await;
        let json = body_json(response).await;
        assert_eq!(
            status,
            expected,
            "{uri} {}: {json}",
            &body[..body.len().min(80)]
        );
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{json}"
        );
    }
    for uri in [
        "/api/v1/quality".to_string(),
        "/api/v1/quality?model=".to_string(),
        format!("/api/v1/quality?model={MODEL}&window=1d"),
        format!("/api/v1/quality?model={MODEL}&window=24H"),
        format!("/api/v1/quality?model={MODEL}&window=%27%20OR%201=1--"),
        format!("/api/v1/quality?model={MODEL}&digest={}", "a".repeat(65)),
        format!("/api/v1/quality?model={}", "m".repeat(256)),
    ] {
        let (status, body) = get_json(app, &uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(body["error"].as_str().is_some(), "{uri}: {body}");
    }
}

#[tokio::test]
async fn feedback_and_quality_on_sqlite() {
    contract(Backend::Sqlite).await;
}

#[tokio::test]
async fn feedback_and_quality_on_postgres() {
    contract(Backend::Postgres).await;
}

#[tokio::test]
async fn feedback_and_quality_on_mariadb() {
    contract(Backend::MySql).await;
}

/// The caller is the API key's name; a header a caller sends names nobody.
#[tokio::test]
async fn the_caller_is_the_keys_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = role_args(
        "store",
        dir.path(),
        &["--api-keys", "alice:alice-secret-1,bob-secret-22"],
    );
    let (app, state) = role_app(&args).await;
    let keyed = |uri: &str, key: &str, body: Value| {
        Request::post(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .header("x-sightline-caller", "mallory")
            .body(Body::from(body.to_string()))
            .expect("request")
    };
    let (status, response) = send(
        &app,
        keyed("/internal/v1/results", "alice-secret-1", answer(1, "red")),
    )
    .await;
    let saved = body_json(response).await;
    assert_eq!(status, StatusCode::CREATED, "{saved}");
    let uri = format!(
        "/api/v1/results/{}/feedback",
        saved["id"].as_str().expect("id")
    );
    for (key, name) in [("alice-secret-1", "alice"), ("bob-secret-22", "env:2")] {
        let (status, response) = send(&app, keyed(&uri, key, json!({"correct": true}))).await;
        let recorded = body_json(response).await;
        assert_eq!(status, StatusCode::CREATED, "{recorded}");
        assert_eq!(recorded["caller"], name);
    }
    let (status, _) = send(
        &app,
        post(
            &uri,
            "application/json",
            json!({"correct": true}).to_string(),
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "feedback needs a key like every write"
    );
    let (status, _) = send(&app, get(&format!("/api/v1/quality?model={MODEL}"))).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "so does reading the quality"
    );
    state.results.expect("store").close().await;
}

/// `all` has no front door in front of its store: the route that trusts a named caller is
/// not served there.
#[tokio::test]
async fn all_in_one_serves_no_route_that_trusts_a_named_caller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = support::unloaded_app("all", dir.path(), &[]).await;
    let uri = format!("/internal/v1/results/{}/feedback", "0".repeat(32));
    let forged = Request::post(uri)
        .header("content-type", "application/json")
        .header("x-sightline-caller", "alice")
        .body(Body::from(json!({"label": "red"}).to_string()))
        .expect("request");
    let (status, _) = send(&app, forged).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let uri = format!("/api/v1/results/{}/feedback", "0".repeat(32));
    let (status, _) = send(
        &app,
        post(
            &uri,
            "application/json",
            json!({"label": "red"}).to_string(),
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "served, and the result is unknown"
    );
}
