//! `sightline-server fetch` against a real HTTP server on loopback: the file appears only
//! when complete and its digest matches; mismatches and missing files are errors that
//! leave nothing behind; transient server errors are retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use sightline_server::fetch::{FetchArgs, FetchError, run};

async fn server(flaky_failures: usize) -> (String, Vec<u8>) {
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let served = body.clone();
    let failures = Arc::new(AtomicUsize::new(flaky_failures));
    let app = axum::Router::new()
        .route(
            "/model.onnx",
            axum::routing::get(move || {
                let body = served.clone();
                async move { (StatusCode::OK, body) }
            }),
        )
        .route(
            "/flaky.onnx",
            axum::routing::get({
                let body = body.clone();
                move || {
                    let body = body.clone();
                    let failures = failures.clone();
                    async move {
                        if failures.load(Ordering::SeqCst) > 0 {
                            failures.fetch_sub(1, Ordering::SeqCst);
                            (StatusCode::SERVICE_UNAVAILABLE, Vec::new())
                        } else {
                            (StatusCode::OK, body)
                        }
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), body)
}

fn args(uri: String, sha256: Option<String>, out: std::path::PathBuf) -> FetchArgs {
    FetchArgs {
        uri,
        sha256,
        out,
        attempts: 3,
        timeout_secs: 10,
    }
}

#[tokio::test]
async fn a_verified_file_lands_and_a_wrong_one_leaves_nothing() {
    let (base, body) = server(0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("models/model.onnx");
    let digest = hex::encode(Sha256::digest(&body));
    run(args(
        format!("{base}/model.onnx"),
        Some(digest),
        out.clone(),
    ))
    .await
    .expect("fetch");
    assert_eq!(std::fs::read(&out).expect("written"), body);

    let other = dir.path().join("other.onnx");
    let err = run(args(
        format!("{base}/model.onnx"),
        Some("0".repeat(64)),
        other.clone(),
    ))
    .await
    .expect_err("mismatch");
    assert!(matches!(err, FetchError::Mismatch { .. }), "{err}");
    assert!(!other.exists(), "a mismatching file must not appear");
    assert!(
        !dir.path().join("other.onnx.part").exists(),
        "no partial file left behind"
    );

    let err = run(args(format!("{base}/missing.onnx"), None, other.clone()))
        .await
        .expect_err("404");
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err}"
    );
    let err = run(args("ftp://example.com/x".into(), None, other.clone()))
        .await
        .expect_err("scheme");
    assert!(matches!(err, FetchError::Scheme(_)), "{err}");
    let err = run(args(
        format!("{base}/model.onnx"),
        Some("xyz".into()),
        other.clone(),
    ))
    .await
    .expect_err("digest format");
    assert!(matches!(err, FetchError::BadDigest(_)), "{err}");
    assert!(!other.exists());
}

#[tokio::test]
async fn transient_server_errors_are_retried() {
    let (base, body) = server(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("flaky.onnx");
    run(args(
        format!("{base}/flaky.onnx"),
        Some(hex::encode(Sha256::digest(&body))),
        out.clone(),
    ))
    .await
    .expect("third attempt succeeds");
    assert_eq!(std::fs::read(&out).expect("written").len(), body.len());
}
