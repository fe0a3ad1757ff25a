//! `sightline-server fetch` against a real HTTP server on loopback: the file appears only
//! when complete and its digest matches; mismatches and missing files are errors that
//! leave nothing behind; transient server errors are retried. The same [`fetch_to`] with a
//! size limit (as the server downloads an `--evaluate-on-start` set) refuses a larger body,
//! announced or streamed, and error messages never show a URI's query string.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use sightline_server::fetch::{FetchArgs, FetchError, Limits, fetch_to, redact, run};

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
            // No Content-Length: the limit can only be applied while streaming.
            "/streamed.onnx",
            axum::routing::get({
                let body = body.clone();
                move || {
                    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = body
                        .chunks(16 * 1024)
                        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                        .collect();
                    async move { axum::body::Body::from_stream(futures::stream::iter(chunks)) }
                }
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

#[tokio::test]
async fn a_body_over_the_limit_is_refused_and_leaves_nothing() {
    let (base, body) = server(0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("set.zip");
    let limits = |max_bytes| Limits {
        attempts: 3,
        timeout: std::time::Duration::from_secs(10),
        max_bytes: Some(max_bytes),
    };
    for path in ["model.onnx", "streamed.onnx"] {
        let uri = format!("{base}/{path}?token=secret");
        let err = fetch_to(&uri, None, &out, limits(1000))
            .await
            .expect_err("too large");
        assert!(
            matches!(
                err,
                FetchError::TooLarge {
                    max_bytes: 1000,
                    ..
                }
            ),
            "{path}: {err}"
        );
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(!out.exists(), "{path}: nothing written");
        assert!(
            !dir.path().join("set.zip.part").exists(),
            "{path}: no part file"
        );

        let digest = fetch_to(&uri, None, &out, limits(body.len() as u64))
            .await
            .expect("exactly at the limit");
        assert_eq!(digest, hex::encode(Sha256::digest(&body)));
        assert_eq!(std::fs::read(&out).expect("written"), body);
        std::fs::remove_file(&out).expect("remove");
    }
    let err = fetch_to(
        &format!("{base}/missing.onnx?token=secret"),
        None,
        &out,
        limits(1000),
    )
    .await
    .expect_err("404");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn uris_are_shown_without_credentials_or_query() {
    assert_eq!(
        redact("https://user:pw@host.example/sets/a.zip?X-Amz-Signature=abc#frag"),
        "https://host.example/sets/a.zip"
    );
    assert_eq!(redact("s3://bucket/key/a.zip"), "s3://bucket/key/a.zip");
    assert_eq!(redact("not a uri?secret"), "not a uri");
}
