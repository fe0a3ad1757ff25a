//! An evaluation whose request ends before its archive is unpacked (the request timeout, a
//! client that hangs up) leaves nothing behind: the unpacking stops and its folder is
//! removed (issue 18, finding 7). The server unpacks into a folder of this test's own.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use support::{body_json, send, test_classifier_ready};

/// A zip holding one `mib`-MiB file of zeros (a few hundred KiB compressed).
fn zeros_zip(mib: usize) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().large_file(true);
    w.start_file("red/zero.png", options).expect("start");
    let chunk = vec![0u8; 1024 * 1024];
    for _ in 0..mib {
        w.write_all(&chunk).expect("write");
    }
    w.finish().expect("finish").into_inner()
}

/// What is left in the folder evaluations unpack in.
fn left(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_times_out_while_unpacking_leaves_no_folder() {
    if !test_classifier_ready() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let args = support::args("test-classifier.onnx", &["--request-timeout-secs", "1"]);
    let setup = sightline_server::server::model_setup(&args).expect("model setup");
    let mut state = sightline_server::server::state(&args, &setup.name).expect("state");
    state.evaluations = sightline_server::eval::api::Jobs::in_dir(work.path().to_path_buf());
    sightline_server::serving::load_into(
        state.model.clone(),
        setup,
        state.metrics.inference.clone(),
    )
    .await;
    let app = sightline_server::http::app(state);
    let zip = zeros_zip(1500);
    let request = Request::post("/api/v1/evaluations")
        .header(header::CONTENT_TYPE, "application/zip")
        .body(Body::from(zip))
        .expect("request");
    let (status, response) = send(&app, request).await;
    let body = body_json(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = left(work.path());
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unpack folders left behind 15 s after the request ended: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
