//! The store role over HTTP, the same contract on SQLite, PostgreSQL and MariaDB: the
//! seed's save, idempotent native saves (also when racing), cursor paging with filters, by
//! id and by image, and every bad input answered with a 4xx JSON error.

mod pipeline_support;
mod support;

use axum::Router;
use axum::http::StatusCode;
use pipeline_support::*;
use serde_json::{Value, json};
use support::{body_json, get_json, post, post_json, send};

fn record(image: usize, model: &str, label: &str) -> Value {
    let id = sightline_server::upload::sha256_hex(format!("image {image}").as_bytes());
    json!({
        "image_id": id,
        "image_url": format!("http://upload:8080/api/v1/images/{id}"),
        "model": {"name": model, "sha256": "d".repeat(64)},
        "predictions": [{"label": label, "probability": 0.9}, {"label": "other", "probability": 0.1}],
        "latency_ms": 1.5,
    })
}

async fn contract(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let args = role_args("store", dir.path(), &db.flags());
    let (app, state) = role_app(&args).await;
    let store = state.results.clone().expect("a store");

    // The seed's contract, byte for byte where its client looks.
    let seed = json!({"url": "http://upload:8080/uploads/cat.jpg", "result": [{"label": "cat", "probability": 0.8}]});
    let (status, body) = post_json(&app, "/api/results/save", &seed).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["message"], "Result saved successfully");
    let (status, again) = post_json(&app, "/api/results/save", &seed).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        again["id"], body["id"],
        "the same (image, model) is one record"
    );

    // Native saves: 201 new, 200 existing; another model digest is another record.
    let (status, first) = post_json(&app, "/api/v1/results", &record(1, "m", "red")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["top_label"], "red");
    assert_eq!(first["model"]["name"], "m");
    assert_eq!(first["predictions"][0]["probability"], 0.9);
    let (status, same) = post_json(&app, "/api/v1/results", &record(1, "m", "red")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(same["id"], first["id"]);
    let mut other_digest = record(1, "m", "red");
    other_digest["model"]["sha256"] = json!("e".repeat(64));
    let (status, other) = post_json(&app, "/api/v1/results", &other_digest).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(other["id"], first["id"]);

    // Racing saves of one key: one record, every caller gets its id.
    let racers = (0..16).map(|_| {
        let app = app.clone();
        tokio::spawn(
            async move { post_json(&app, "/api/v1/results", &record(2, "m", "blue")).await },
        )
    });
    let answers = futures::future::join_all(racers).await;
    let ids: std::collections::HashSet<String> = answers
        .into_iter()
        .map(|a| {
            let (status, body) = a.expect("task");
            assert!(status.is_success(), "{status} {body}");
            body["id"].as_str().expect("id").to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "racing saves made more than one record");

    // More records, then paging: stable newest-first order, no gaps, no repeats.
    for i in 3..10 {
        let label = if i % 2 == 0 { "green" } else { "red" };
        let (status, _) = post_json(&app, "/api/v1/results", &record(i, "m", label)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let total = 1 + 2 + 1 + 7;
    let mut seen = Vec::new();
    let mut uri = "/api/v1/results?limit=3".to_string();
    loop {
        let (status, page) = get_json(&app, &uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 3);
        seen.extend(
            items
                .iter()
                .map(|r| r["id"].as_str().expect("id").to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/api/v1/results?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), total, "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    sorted.dedup();
    assert_eq!(sorted, seen, "newest first, each once");

    // Filters.
    let (_, greens) = get_json(&app, "/api/v1/results?label=green&limit=100").await;
    let greens = greens["items"].as_array().expect("items").clone();
    assert_eq!(greens.len(), 3);
    assert!(greens.iter().all(|r| r["top_label"] == "green"));
    let (_, by_model) = get_json(&app, "/api/v1/results?model=m&limit=1000").await;
    assert_eq!(
        by_model["items"].as_array().expect("items").len(),
        total - 1
    );
    let (_, future) = get_json(&app, "/api/v1/results?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["items"].as_array().expect("items").len(), 0);
    let (_, past) = get_json(&app, "/api/v1/results?until=2999-01-01T00:00:00Z&since=0").await;
    assert_eq!(past["items"].as_array().expect("items").len(), total);

    // By id and by image.
    let id = first["id"].as_str().expect("id");
    let (status, got) = get_json(&app, &format!("/api/v1/results/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, first);
    let image = first["image_id"].as_str().expect("image id");
    let (status, of_image) = get_json(&app, &format!("/api/v1/images/{image}/results")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(of_image["items"].as_array().expect("items").len(), 2);

    bad_inputs(&app).await;

    store.close().await;
    db.cleanup().await;
}

async fn bad_inputs(app: &Router) {
    let cases: Vec<(&str, &str, String, StatusCode)> = vec![
        ("/api/results/save", "application/json", json!({"result": []}).to_string(), StatusCode::BAD_REQUEST),
        ("/api/results/save", "application/json", json!({"url": "x"}).to_string(), StatusCode::BAD_REQUEST),
        ("/api/results/save", "application/json", json!({"uri": "x", "result": []}).to_string(), StatusCode::BAD_REQUEST),
        ("/api/results/save", "application/json", json!({"url": 5, "result": []}).to_string(), StatusCode::BAD_REQUEST),
        ("/api/results/save", "application/json", json!({"url": "x", "result": "cat"}).to_string(), StatusCode::BAD_REQUEST),
        ("/api/results/save", "application/json", json!({"url": "x", "result": [{"label": 1, "probability": "high"}]}).to_string(), StatusCode::BAD_REQUEST),
        ("/api/results/save", "application/json", "{not json".to_string(), StatusCode::BAD_REQUEST),
        ("/api/results/save", "text/plain", json!({"url": "x", "result": []}).to_string(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("/api/v1/results", "application/json", json!({"image_url": "x"}).to_string(), StatusCode::BAD_REQUEST),
        ("/api/v1/results", "application/json", json!({"image_url": "", "model": {"name": "m"}, "predictions": []}).to_string(), StatusCode::BAD_REQUEST),
        ("/api/v1/results", "application/json", json!({"image_url": "x", "image_id": "../../etc", "model": {"name": "m"}, "predictions": []}).to_string(), StatusCode::BAD_REQUEST),
        ("/api/v1/results", "application/json", json!({"image_url": "x", "model": {"name": "m"}, "predictions": [], "latency_ms": "fast"}).to_string(), StatusCode::BAD_REQUEST),
        ("/api/v1/results", "application/json", json!({"image_url": "x", "model": {"name": "m", "preprocess_sha256": "a".repeat(65)}, "predictions": []}).to_string(), StatusCode::BAD_REQUEST),
        ("/api/v1/results", "application/json", json!({"image_url": "x", "model": {"name": "m", "preprocess_sha256": "../../etc/passwd"}, "predictions": []}).to_string(), StatusCode::BAD_REQUEST),
        ("/api/v1/results", "application/json", json!({"image_url": "x", "model": {"name": "m", "preprocess_sha256": 7}, "predictions": []}).to_string(), StatusCode::BAD_REQUEST),
    ];
    for (uri, content_type, body, expected) in cases {
        let (status, response) = send(app, post(uri, content_type, body.clone())).await;
        let json = body_json(response).await;
        assert_eq!(status, expected, "{uri} {body}: {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{json}"
        );
    }
    for (uri, expected) in [
        ("/api/v1/results?limit=-1", StatusCode::BAD_REQUEST),
        ("/api/v1/results?limit=0", StatusCode::BAD_REQUEST),
        ("/api/v1/results?limit=1000000", StatusCode::BAD_REQUEST),
        (
            "/api/v1/results?limit=99999999999999999999999",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/results?limit=ten", StatusCode::BAD_REQUEST),
        (
            "/api/v1/results?cursor=%27%20OR%201=1--",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/results?since=yesterday", StatusCode::BAD_REQUEST),
        (
            "/api/v1/results/00000000000000000000000000000000",
            StatusCode::NOT_FOUND,
        ),
        ("/api/v1/results/not-an-id", StatusCode::NOT_FOUND),
        (
            "/api/v1/results/..%2F..%2Fetc%2Fpasswd",
            StatusCode::NOT_FOUND,
        ),
        ("/api/v1/images/xyz/results", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = get_json(app, uri).await;
        assert_eq!(status, expected, "{uri}: {body}");
        assert!(body["error"].as_str().is_some(), "{uri}: {body}");
    }
}

#[tokio::test]
async fn store_contract_on_sqlite() {
    contract(Backend::Sqlite).await;
}

#[tokio::test]
async fn store_contract_on_postgres() {
    contract(Backend::Postgres).await;
}

#[tokio::test]
async fn store_contract_on_mariadb() {
    contract(Backend::MySql).await;
}

#[tokio::test]
async fn sqlite_is_the_default_in_the_data_dir_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = role_args("store", dir.path(), &[]);
    let (app, state) = role_app(&args).await;
    let (status, saved) = post_json(&app, "/api/v1/results", &record(1, "m", "red")).await;
    assert_eq!(status, StatusCode::CREATED);
    state.results.expect("store").close().await;
    assert!(dir.path().join("sightline.db").is_file());
    let (app, _) = role_app(&args).await;
    let id = saved["id"].as_str().expect("id");
    let (status, again) = get_json(&app, &format!("/api/v1/results/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, saved);
}

#[tokio::test]
async fn readiness_follows_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = role_args("store", dir.path(), &[]);
    let (app, state) = role_app(&args).await;
    let (status, body) = get_json(&app, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    state.results.as_ref().expect("store").close().await;
    // Readiness asks the database at most once a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (status, body) = loop {
        let (status, body) = get_json(&app, "/readyz").await;
        if status != StatusCode::OK || std::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "DatabaseUnreachable", "{body}");
    let (status, _) = get_json(&app, "/healthz").await;
    assert_eq!(status, StatusCode::OK, "alive, though not ready");
}
