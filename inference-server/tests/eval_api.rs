//! `POST /api/v1/evaluations`: a labelled set as a zip, evaluated in the background through
//! the served model, with progress and the same report as `sightline-server eval --json`;
//! bad zips are clear 4xx answers.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use support::{args, body_json, loaded_app, send, test_classifier_ready, zip_of};

fn png(rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(16, 16, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

fn post(zip: Vec<u8>) -> Request<Body> {
    Request::post("/api/v1/evaluations")
        .header(header::CONTENT_TYPE, "application/zip")
        .body(Body::from(zip))
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zipped_image_folder_is_evaluated_in_the_background() {
    if !test_classifier_ready() {
        return;
    }
    let (app, _) = loaded_app(&args("test-classifier.onnx", &[])).await;
    // Zipping a folder wraps the classes in it; a green image is filed under red.
    let zip = zip_of(&[
        ("set/red/1.png", png([230, 20, 20])),
        ("set/red/2.png", png([200, 40, 30])),
        ("set/red/odd.png", png([20, 220, 20])),
        ("set/green/1.png", png([20, 220, 20])),
        ("set/blue/1.png", png([20, 20, 230])),
        ("__MACOSX/set/._1.png", b"junk".to_vec()),
    ]);
    let (status, response) = send(&app, post(zip)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("Location")
        .to_string();
    let started = body_json(response).await;
    assert_eq!(started["progress"]["total"], 5);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let done = loop {
        let (status, response) = send(
            &app,
            Request::get(&location).body(Body::empty()).expect("get"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let view = body_json(response).await;
        if view["status"] != "running" {
            break view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"]["done"], 5);
    let report = &done["report"];
    assert_eq!(report["accuracy"], 0.8, "{report}");
    assert_eq!(report["top5_accuracy"], 1.0);
    assert_eq!(
        report["confusion"]["matrix"][0],
        serde_json::json!([2, 1, 0])
    );
    assert!(report["macro"]["f1"].is_f64() && report["weighted"]["recall"] == 0.8);
    let paths: Vec<&str> = report["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .filter_map(|p| p["path"].as_str())
        .collect();
    assert!(paths.contains(&"set/red/odd.png"), "{paths:?}");
}

#[tokio::test]
async fn a_zipped_csv_set_works_too() {
    if !test_classifier_ready() {
        return;
    }
    let (app, _) = loaded_app(&args("test-classifier.onnx", &[])).await;
    let zip = zip_of(&[
        (
            "labels.csv",
            b"path,label\nimg/a.png,red\nimg/b.png,2\n".to_vec(),
        ),
        ("img/a.png", png([230, 20, 20])),
        ("img/b.png", png([20, 20, 230])),
    ]);
    let (status, response) = send(&app, post(zip)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = body_json(response).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    for _ in 0..500 {
        let (_, response) = send(
            &app,
            Request::get(format!("/api/v1/evaluations/{id}"))
                .body(Body::empty())
                .expect("get"),
        )
        .await;
        let view = body_json(response).await;
        if view["status"] == "succeeded" {
            assert_eq!(view["report"]["accuracy"], 1.0, "{view}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the evaluation did not finish");
}

#[tokio::test]
async fn bad_uploads_are_clear_4xx() {
    if !test_classifier_ready() {
        return;
    }
    let (app, _) = loaded_app(&args("test-classifier.onnx", &[])).await;
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (
            b"not a zip".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "zip",
        ),
        (
            zip_of(&[("purple/1.png", png([1, 2, 3]))]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "purple",
        ),
        (
            zip_of(&[("../evil/1.png", png([1, 2, 3]))]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "outside",
        ),
        (
            zip_of(&[("readme.txt", b"hi".to_vec())]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no images",
        ),
        (
            b"PK\x03\x04truncated".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "zip",
        ),
    ];
    for (body, expected, needle) in cases {
        let (status, response) = send(&app, post(body)).await;
        let json = body_json(response).await;
        assert_eq!(status, expected, "{json}");
        let error = json["error"].as_str().expect("error message");
        assert!(error.contains(needle), "{error}");
    }
    let (status, _) = send(
        &app,
        Request::get("/api/v1/evaluations/nope")
            .body(Body::empty())
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
