//! `sightline-server batch --input https://…/list.txt`: a listing file served over HTTP
//! (here a real HTTP server on loopback) naming images by absolute or relative URL; a URL
//! that answers 404 is a recorded error, a line that is no URL stops the run before any
//! image (status 2); `--csv` writes the results for a spreadsheet.

mod support;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use image::ImageFormat;
use support::{batch_args, serve_on_loopback, solid, test_classifier_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_file_on_a_web_server_is_recognized_and_written_as_csv() {
    if !test_classifier_ready() {
        return;
    }
    let red = solid(8, 8, [250, 10, 10], ImageFormat::Png);
    let blue = solid(8, 8, [10, 10, 250], ImageFormat::Png);
    let app = Router::new()
        .route("/photos/red.png", get(move || async move { red.clone() }))
        .route("/photos/blue.png", get(move || async move { blue.clone() }))
        .route(
            "/lists/good.txt",
            get(|| async {
                "# two photos and a missing one\n\n../photos/red.png\n/photos/blue.png\n\
                 ../photos/gone.png\n"
            }),
        )
        .route(
            "/lists/bad.txt",
            get(|| async { "../photos/red.png\nftp://x/y.png\n" }),
        )
        .fallback(|| async { StatusCode::NOT_FOUND });
    let base = serve_on_loopback(app).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("results.jsonl");
    let csv = dir.path().join("results.csv");

    let args = batch_args(&[
        "--input",
        &format!("{base}/lists/good.txt"),
        "--out",
        &out.display().to_string(),
        "--csv",
        &csv.display().to_string(),
    ]);
    let summary = sightline_server::batch::run_cli(args)
        .await
        .expect("the batch runs");
    assert_eq!(summary.shard.total, 3, "{summary:?}");
    assert_eq!(summary.shard.recognized, 2, "{summary:?}");
    assert_eq!(summary.shard.failed, 1, "{summary:?}");
    assert!(summary.shard.errors[0].error.contains("404"), "{summary:?}");
    let table = std::fs::read_to_string(&csv).expect("csv");
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows[0], "image,sha256,label,probability,known,error");
    assert_eq!(rows.len(), 4, "{table}");
    assert!(
        rows.iter()
            .any(|r| r.starts_with("/photos/blue.png,") && r.contains(",blue,"))
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("../photos/red.png,") && r.contains(",red,"))
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("../photos/gone.png,,,,false,"))
    );

    // A listing line that is no http(s) URL: nothing runs, and retrying will not help.
    let args = batch_args(&[
        "--input",
        &format!("{base}/lists/bad.txt"),
        "--out",
        &dir.path().join("bad.jsonl").display().to_string(),
    ]);
    let error = sightline_server::batch::run_cli(args)
        .await
        .expect_err("a bad line");
    assert!(error.to_string().contains("line 2"), "{error}");
    assert!(error.is_permanent());
    assert!(!dir.path().join("bad.jsonl").exists());

    // A listing that is not there: an error naming it, which may pass.
    let args = batch_args(&[
        "--input",
        &format!("{base}/lists/none.txt"),
        "--out",
        &dir.path().join("none.jsonl").display().to_string(),
    ]);
    let error = sightline_server::batch::run_cli(args)
        .await
        .expect_err("no listing");
    assert!(error.to_string().contains("none.txt"), "{error}");
    assert!(!error.is_permanent());
}
