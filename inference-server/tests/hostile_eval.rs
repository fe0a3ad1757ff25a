//! Hostile evaluation sets (issue 18, findings 1 and 7): a CSV row that names a file outside
//! the uploaded archive is a 400 naming the row, never read; a symlink inside the zip is a
//! plain file, never followed; admission comes before unpacking; and an evaluation started
//! through one front door is answered by any other (its state lives in the store role's
//! database, not in one recognize replica's memory).

mod pipeline_support;
mod support;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use pipeline_support::{role_app, role_args};
use serde_json::Value;
use support::{body_json, send, serve_on_loopback as serve, test_classifier_ready, zip_of};

fn png(rgb: [u8; 3]) -> Vec<u8> {
    support::solid(16, 16, rgb, image::ImageFormat::Png)
}

fn post(zip: Vec<u8>) -> Request<Body> {
    Request::post("/api/v1/evaluations")
        .header(header::CONTENT_TYPE, "application/zip")
        .body(Body::from(zip))
        .expect("request")
}

async fn recognize_app() -> Router {
    let (app, _) = support::loaded_app(&support::args("test-classifier.onnx", &[])).await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_rows_outside_the_archive_are_a_400_naming_the_row() {
    if !test_classifier_ready() {
        return;
    }
    let app = recognize_app().await;
    // `/dev/zero` last: before the fix it was read without end.
    for (row, line) in [
        ("/etc/passwd", 3),
        ("../../../../etc/hostname", 3),
        ("img/../../outside.png", 3),
        ("img/./../../x.png", 3),
        ("/dev/zero", 3),
    ] {
        let csv = format!("path,label\nimg/a.png,red\n{row},blue\n");
        let zip = zip_of(&[
            ("labels.csv", csv.into_bytes()),
            ("img/a.png", png([230, 20, 20])),
        ]);
        let (status, response) = send(&app, post(zip)).await;
        let body = body_json(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{row}: {body}");
        let error = body["error"].as_str().expect("an error");
        assert!(
            error.contains("labels.csv") && error.contains(&format!("line {line}")),
            "{row}: {error}"
        );
        assert!(error.contains("outside"), "{row}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_in_the_zip_is_a_plain_file_and_never_followed() {
    if !test_classifier_ready() {
        return;
    }
    let app = recognize_app().await;
    let zip = {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        w.add_symlink("red/secret.png", "/etc/passwd", options)
            .expect("a symlink entry");
        w.start_file("red/1.png", options).expect("start");
        w.write_all(&png([230, 20, 20])).expect("write");
        w.finish().expect("finish").into_inner()
    };
    let (status, response) = send(&app, post(zip)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = body_json(response).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let view = finished(&app, &id).await;
    let failed = view["report"]["failed"].to_string();
    assert!(failed.contains("red/secret.png"), "{view}");
    assert!(!failed.contains("root:"), "/etc/passwd was read: {view}");
    assert_eq!(view["report"]["evaluated"], 1, "{view}");
}

async fn finished(app: &Router, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, response) = send(
            app,
            Request::get(format!("/api/v1/evaluations/{id}"))
                .body(Body::empty())
                .expect("get"),
        )
        .await;
        let view = body_json(response).await;
        if view["status"] != "running" {
            return view;
        }
        assert!(Instant::now() < deadline, "still running: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A set that keeps the model busy for a while: `n` 4-megapixel images.
fn slow_set(n: usize) -> Vec<u8> {
    let big = {
        let mut out = std::io::Cursor::new(Vec::new());
        image::GrayImage::new(2000, 2000)
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("encode");
        out.into_inner()
    };
    let files: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (format!("red/{i}.png"), big.clone()))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    zip_of(&refs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_comes_before_unpacking() {
    if !test_classifier_ready() {
        return;
    }
    let app = recognize_app().await;
    let mut running = Vec::new();
    for _ in 0..2 {
        let (status, response) = send(&app, post(slow_set(150))).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        running.push(body_json(response).await["id"].as_str().map(str::to_string));
    }
    // Not a labelled set: unpacked first, this would be a 422.
    let not_a_set = zip_of(&[("readme.txt", b"no images here".to_vec())]);
    let (status, response) = send(&app, post(not_a_set)).await;
    let body = body_json(response).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "refused before anything is unpacked: {body}"
    );
    assert!(response_is_busy(&body), "{body}");
}

fn response_is_busy(body: &Value) -> bool {
    body["error"]
        .as_str()
        .is_some_and(|e| e.contains("already running"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_front_door_answers_for_an_evaluation_another_one_started() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = role_app(&role_args("store", &dir.path().join("store"), &[])).await;
    let store = serve(store).await;
    // Two recognize replicas, as behind one Service; each front door reaches a different
    // one (a Service picks a replica per connection).
    let mut doors = Vec::new();
    for i in 0..2 {
        let (recognize, _) = role_app(&role_args(
            "recognize",
            &dir.path().join(format!("r{i}")),
            &[],
        ))
        .await;
        let recognize = serve(recognize).await;
        let (door, _) = role_app(&role_args(
            "upload",
            &dir.path().join(format!("door{i}")),
            &["--recognize-url", &recognize, "--store-url", &store],
        ))
        .await;
        doors.push(door);
    }
    let zip = zip_of(&[
        ("red/1.png", png([230, 20, 20])),
        ("green/1.png", png([20, 220, 20])),
        ("blue/1.png", png([20, 20, 230])),
    ]);
    let (status, response) = send(&doors[0], post(zip)).await;
    let started = body_json(response).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["id"].as_str().expect("id").to_string();
    let view = finished(&doors[1], &id).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view["report"]["accuracy"], 1.0, "{view}");
    assert_eq!(finished(&doors[0], &id).await["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_evaluation_stops_when_its_caller_goes_away() {
    use http_body_util::BodyExt;
    if !test_classifier_ready() {
        return;
    }
    let app = recognize_app().await;
    let request = Request::post("/api/v1/evaluations")
        .header(header::CONTENT_TYPE, "application/zip")
        .header(header::ACCEPT, "application/x-ndjson")
        .body(Body::from(slow_set(150)))
        .expect("request");
    let (status, response) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK);
    let mut body = response.into_body();
    let first = body
        .frame()
        .await
        .expect("a first line")
        .expect("a frame")
        .into_data()
        .expect("data");
    let view: Value = serde_json::from_slice(&first).expect("a job view");
    assert_eq!(view["status"], "running", "{view}");
    let id = view["id"].as_str().expect("id").to_string();
    drop(body);
    let view = finished(&app, &id).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert!(
        view["progress"]["done"].as_u64() < Some(150),
        "it stopped before the end: {view}"
    );
}
