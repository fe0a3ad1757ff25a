//! A result's feedback read back (`GET /api/v1/results/{id}/feedback`), a label declared
//! with the seed's save, the store role's live quality gauges read from the database on a
//! timer, and the feedback's retention (issue 20), on SQLite, PostgreSQL and MariaDB: the
//! real store role, its real background tasks, a real database.

mod pipeline_support;
mod support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use pipeline_support::*;
use serde_json::json;
use support::{body_bytes, get, get_json, post_json, send};

const MODEL: &str = "colours";

fn digest() -> String {
    "d".repeat(64)
}

/// Saves the model's answer `label` about image `n` (as the pipeline does); its id.
async fn answered(app: &Router, n: usize, label: &str) -> String {
    let id = sightline_server::upload::sha256_hex(format!("image {n}").as_bytes());
    let body = json!({
        "image_id": id,
        "image_url": format!("http://upload:8080/api/v1/images/{id}"),
        "model": {"name": MODEL, "sha256": digest()},
        "predictions": [{"label": label, "probability": 0.9}],
    });
    let (status, saved) = post_json(app, "/internal/v1/results", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{saved}");
    saved["id"].as_str().expect("id").to_string()
}

async fn metrics(app: &Router) -> String {
    let (status, response) = send(app, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8(body_bytes(response).await.to_vec()).expect("text")
}

/// Waits (up to 15 s) until `/metrics` satisfies `ok`; the last exposition.
async fn metrics_until(app: &Router, what: &str, ok: impl Fn(&str) -> bool) -> String {
    for _ in 0..150 {
        let text = metrics(app).await;
        if ok(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/metrics never showed {what}:\n{}", metrics(app).await);
}

fn series(name: &str, window: &str, class: Option<&str>) -> String {
    let class = class.map(|c| format!(",class=\"{c}\"")).unwrap_or_default();
    format!(
        "sightline_quality_{name}{{model=\"{MODEL}\",sha256=\"{}\",window=\"{window}\"{class}}} ",
        digest()
    )
}

async fn history_labels_and_gauges(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut flags = db.flags();
    flags.extend(["--quality-refresh-secs", "1", "--quality-top-classes", "1"]);
    let args = role_args("store", dir.path(), &flags);
    let (app, state) = role_app(&args).await;
    let store = state.results.clone().expect("a store");

    // red (right), red (truly blue), blue (right), blue (truly green): 2 of 4.
    let plan = [
        ("red", "red"),
        ("red", "blue"),
        ("blue", "blue"),
        ("blue", "green"),
    ];
    let mut ids = Vec::new();
    for (n, (predicted, truth)) in plan.iter().enumerate() {
        let id = answered(&app, n, predicted).await;
        let uri = format!("/api/v1/results/{id}/feedback");
        let (status, body) = post_json(&app, &uri, &json!({"label": truth})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(id);
    }
    // The first caller changes its mind about result 1; another caller (through the front
    // door's route) answers too.
    let feedback = format!("/api/v1/results/{}/feedback", ids[1]);
    let (status, _) = post_json(&app, &feedback, &json!({"label": "green"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post_json(&app, &feedback, &json!({"label": "blue"})).await;
    assert_eq!(status, StatusCode::OK);
    let forwarded = Request::post(format!("/internal/v1/results/{}/feedback", ids[1]))
        .header("content-type", "application/json")
        .header("x-sightline-caller", "Zo%C3%AB")
        .body(Body::from(json!({"correct": true}).to_string()))
        .expect("request");
    let (status, _) = send(&app, forwarded).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, read) = get_json(&app, &feedback).await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["result_id"], ids[1].as_str());
    assert_eq!(
        (read["predicted"].clone(), read["counted"].clone()),
        (json!("red"), json!(true))
    );
    assert_eq!(read["provenance"], "server");
    let current: Vec<(String, String)> = read["current"]
        .as_array()
        .expect("current")
        .iter()
        .map(|a| {
            (
                a["caller"].as_str().unwrap_or("").to_string(),
                a["label"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        current,
        [
            ("Zoë".to_string(), "red".to_string()),
            ("anonymous".to_string(), "blue".to_string())
        ]
    );
    let history: Vec<&str> = read["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|a| a["caller"] == "anonymous")
        .map(|a| a["label"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        history,
        ["blue", "green", "blue"],
        "replaced answers stay, oldest first"
    );
    assert_eq!(read["history"].as_array().map(Vec::len), Some(4));
    assert_eq!(read["history_truncated"], false);
    assert!(
        read["history"][0]["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let (_, untouched) = get_json(&app, &format!("/api/v1/results/{}/feedback", ids[0])).await;
    assert_eq!(untouched["current"].as_array().map(Vec::len), Some(1));
    for (uri, expected) in [
        (
            format!("/api/v1/results/{}/feedback", "0".repeat(32)),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/results/not-an-id/feedback".into(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/results/..%2F..%2Fetc/feedback".into(),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, body) = get_json(&app, &uri).await;
        assert_eq!(status, expected, "{uri}: {body}");
        assert!(body["error"].as_str().is_some(), "{body}");
    }

    // The seed's save with the image's declared label: kept with the result, never counted.
    let image = sightline_server::upload::sha256_hex(b"a client's photo");
    let save = json!({
        "url": format!("http://upload:8080/uploads/{image}.jpg"),
        "result": [{"label": "red", "probability": 0.8}],
        "label": "green",
    });
    let (status, saved) = post_json(&app, "/api/results/save", &save).await;
    assert_eq!(status, StatusCode::CREATED, "{saved}");
    assert_eq!(saved["label"], "green");
    let client_id = saved["id"].as_str().expect("id").to_string();
    let (_, declared) = get_json(&app, &format!("/api/v1/results/{client_id}/feedback")).await;
    assert_eq!(declared["counted"], false, "{declared}");
    assert_eq!(declared["provenance"], "client");
    assert_eq!(declared["current"][0]["label"], "green");
    assert_eq!(declared["current"][0]["correct"], false);
    let (status, _) = post_json(
        &app,
        &format!("/api/v1/results/{client_id}/feedback"),
        &json!({"label": "red"}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the feedback route still takes only the model's answers"
    );
    // The seed's save without a label answers as the seed's did.
    let plain = json!({"url": save["url"], "result": save["result"]});
    let (status, body) = post_json(&app, "/api/results/save", &plain).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(body.get("label").is_none(), "{body}");
    for (bad, why) in [
        (
            json!({"url": save["url"], "result": save["result"], "label": 5}),
            "a number",
        ),
        (
            json!({"url": save["url"], "result": save["result"], "label": ["x"]}),
            "a list",
        ),
        (
            json!({"url": save["url"], "result": save["result"], "label": ""}),
            "empty",
        ),
        (
            json!({"url": save["url"], "result": save["result"], "label": "x".repeat(256)}),
            "too long",
        ),
        (
            json!({"url": save["url"], "result": save["result"], "label": "x".repeat(1 << 20)}),
            "huge",
        ),
        (
            json!({"url": save["url"], "result": save["result"], "label": "a\nb"}),
            "a control",
        ),
        (
            json!({"url": save["url"], "result": [], "label": "red"}),
            "nothing to label",
        ),
    ] {
        let (status, body) = post_json(&app, "/api/results/save", &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {body}");
        assert!(body["error"].as_str().is_some(), "{body}");
    }

    // The gauges, read by the store role's own timer: 4 results scored (two callers on
    // one: 5 answers), 3 of 5 right; the top class by answers, then `other`.
    let (_, quality) = get_json(&app, &format!("/api/v1/quality?model={MODEL}&window=1h")).await;
    let live = &quality["digests"][0];
    assert_eq!(live["samples"], 5, "{quality}");
    let accuracy = live["accuracy"].as_f64().expect("accuracy");
    // One refresh reads the hour, then the day: wait for both, or a scrape between the
    // two reads sees the new hour beside the old day.
    let samples = series("samples", "1h", None);
    let hour = format!("{samples}5\n");
    let day = format!("{}5\n", series("samples", "24h", None));
    let text = metrics_until(&app, "the samples of both windows", |t| {
        t.contains(&hour) && t.contains(&day)
    })
    .await;
    assert!(
        text.contains(&format!("{}{accuracy}\n", series("accuracy", "1h", None))),
        "{text}"
    );
    // blue (tp 1, fp 1, fn 1) and red (tp 2, fp 1) have 3 answers each, green 1: the tie
    // goes to the label first in order, blue; red and green are pooled.
    let blue = live["per_class"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["label"] == "blue"))
        .expect("blue");
    for figure in ["precision", "recall", "f1"] {
        let line = format!(
            "{}{}\n",
            series(&format!("class_{figure}"), "1h", Some("blue")),
            blue[figure]
        );
        assert!(text.contains(&line), "no {line:?} in\n{text}");
    }
    // Pooled: red (tp 2, fp 1) and green (fn 1): P = 2/3, R = 2/3, support 3.
    let other = format!("{}3\n", series("class_support", "1h", Some("other")));
    assert!(text.contains(&other), "{text}");
    let precision = format!(
        "{}{}\n",
        series("class_precision", "1h", Some("other")),
        2.0f64 / 3.0
    );
    assert!(text.contains(&precision), "{text}");
    let classes = text
        .lines()
        .filter(|l| l.starts_with("sightline_quality_class_f1{") && l.contains("window=\"1h\""))
        .count();
    assert_eq!(classes, 2, "the top class and other:\n{text}");
    assert!(
        text.contains("sightline_quality_read_timestamp_seconds{window=\"1h\"} "),
        "{text}"
    );
    assert!(
        text.contains("sightline_quality_refresh_failures_total{window=\"1h\"} 0"),
        "{text}"
    );

    // Retention, in batches of 2: everything given before now goes, the results stay.
    let purged = store
        .purge_feedback(sightline_server::store::now_ms() + 1, 2)
        .await
        .expect("purge");
    assert_eq!((purged.current, purged.history), (6, 8), "{purged:?}");
    let again = store
        .purge_feedback(sightline_server::store::now_ms(), 2)
        .await
        .expect("purge");
    assert_eq!((again.current, again.history), (0, 0));
    let (_, read) = get_json(&app, &feedback).await;
    assert_eq!(
        (read["current"].clone(), read["history"].clone()),
        (json!([]), json!([]))
    );
    let (status, _) = get_json(&app, &format!("/api/v1/results/{}", ids[1])).await;
    assert_eq!(status, StatusCode::OK, "the result itself is kept");
    metrics_until(&app, "the digest gone", |t| !t.contains(&samples)).await;

    store.close().await;
    db.cleanup().await;
}

/// The store role deletes what is older than `--feedback-retention` by itself.
async fn retention_on_its_own(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut flags = db.flags();
    flags.extend([
        "--feedback-retention",
        "2s",
        "--feedback-purge-interval-secs",
        "1",
    ]);
    let args = role_args("store", dir.path(), &flags);
    let (app, state) = role_app(&args).await;
    let id = answered(&app, 1, "red").await;
    let uri = format!("/api/v1/results/{id}/feedback");
    let (status, _) = post_json(&app, &uri, &json!({"correct": true})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, kept) = get_json(&app, &uri).await;
    assert_eq!(kept["history"].as_array().map(Vec::len), Some(1), "{kept}");
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, read) = get_json(&app, &uri).await;
        if read["current"] == json!([]) && read["history"] == json!([]) {
            gone = true;
            break;
        }
    }
    assert!(gone, "feedback older than 2 s was not deleted within 10 s");
    let (status, _) = get_json(&app, &format!("/api/v1/results/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    state.results.expect("store").close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn history_labels_and_gauges_on_sqlite() {
    history_labels_and_gauges(Backend::Sqlite).await;
}

#[tokio::test]
async fn history_labels_and_gauges_on_postgres() {
    history_labels_and_gauges(Backend::Postgres).await;
}

#[tokio::test]
async fn history_labels_and_gauges_on_mariadb() {
    history_labels_and_gauges(Backend::MySql).await;
}

#[tokio::test]
async fn retention_on_sqlite() {
    retention_on_its_own(Backend::Sqlite).await;
}

#[tokio::test]
async fn retention_on_postgres() {
    retention_on_its_own(Backend::Postgres).await;
}

#[tokio::test]
async fn retention_on_mariadb() {
    retention_on_its_own(Backend::MySql).await;
}

#[test]
fn bad_feedback_flags_are_refused_with_the_reason() {
    for bad in [
        ["--feedback-retention", "9w"],
        ["--feedback-retention", "-1d"],
        ["--quality-top-classes", "0"],
        ["--quality-top-classes", "1000"],
        ["--feedback-purge-interval-secs", "0"],
        ["--quality-refresh-secs", "soon"],
    ] {
        let flag = format!("{}={}", bad[0], bad[1]);
        let argv = ["sightline-server", "store", flag.as_str()]
            .map(std::ffi::OsString::from)
            .to_vec();
        let error = sightline_server::cli::parse(argv).expect_err("refused");
        assert!(error.to_string().contains(bad[0]), "{bad:?}: {error}");
    }
}

/// A read that fails is counted and keeps the last good figures with their read time;
/// figures older than the staleness limit are removed, never shown as fresh.
#[tokio::test]
async fn a_failed_read_is_counted_and_stale_figures_go() {
    use sightline_quality::Window;
    use sightline_server::store::background::refresh_once;
    let dir = tempfile::tempdir().expect("tempdir");
    let args = role_args("store", dir.path(), &["--quality-refresh-secs", "0"]);
    let (app, state) = role_app(&args).await;
    let store = state.results.clone().expect("a store");
    let gauges = state.metrics.quality.clone();
    let id = answered(&app, 1, "red").await;
    let uri = format!("/api/v1/results/{id}/feedback");
    let (status, _) = post_json(&app, &uri, &json!({"correct": true})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        !metrics(&app).await.contains("sightline_quality_samples{"),
        "--quality-refresh-secs 0: no reads, no series"
    );
    // One read of the hour into the gauges, figures older than `stale_ms` removed.
    let read = async |stale_ms: i64, mut last_good: Option<i64>| {
        let limit = Duration::from_secs(5);
        refresh_once(
            &store,
            &gauges,
            Window::Hour,
            10,
            limit,
            stale_ms,
            &mut last_good,
        )
        .await;
        last_good
    };
    let read_at = read(60_000, None).await.expect("a good read");
    let samples = format!("{}1\n", series("samples", "1h", None));
    let stamp = format!(
        "sightline_quality_read_timestamp_seconds{{window=\"1h\"}} {}\n",
        read_at as f64 / 1000.0
    );
    let text = metrics(&app).await;
    assert!(text.contains(&samples) && text.contains(&stamp), "{text}");

    // The database goes away: counted, the last figures stay with their (old) read time.
    store.close().await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let last_good = read(60_000, Some(read_at)).await;
    let text = metrics(&app).await;
    assert!(
        text.contains("sightline_quality_refresh_failures_total{window=\"1h\"} 1"),
        "{text}"
    );
    assert!(text.contains(&samples) && text.contains(&stamp), "{text}");
    assert_eq!(last_good, Some(read_at));
    // Too old now: removed, read time included.
    let last_good = read(1, last_good).await;
    let text = metrics(&app).await;
    assert!(!text.contains("sightline_quality_samples{"), "{text}");
    assert!(
        !text.contains("sightline_quality_read_timestamp_seconds{"),
        "{text}"
    );
    assert!(
        text.contains("sightline_quality_refresh_failures_total{window=\"1h\"} 2"),
        "{text}"
    );
    assert_eq!(last_good, None);
}
