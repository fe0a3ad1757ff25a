//! `--evaluate-on-start PATH|URI`: a server evaluates the zipped labelled set once its model
//! is ready, as `POST /api/v1/evaluations` does, and shows the outcome at
//! `GET /api/v1/evaluations/startup`; an unreadable file or a bad zip is a `failed` job,
//! never a crash; without the flag there is no such job. A URI is downloaded by the server
//! only once the model serves (here from a plain-HTTP server on loopback): a 404, a wrong
//! `--evaluate-sha256`, an unreachable host or a too-large file is a `failed` evaluation
//! that says the set could not be fetched, while `/readyz` stays 200 and recognition works.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use sightline_server::server::Server;
use support::{args, solid, test_classifier_ready, zip_of};
use tokio::sync::{oneshot, watch};

fn png(rgb: [u8; 3]) -> Vec<u8> {
    solid(16, 16, rgb, image::ImageFormat::Png)
}

/// A recognize server for the test classifier on a free port, with `extra` flags; dropping
/// the sender stops it.
async fn serve(extra: &[&str]) -> (SocketAddr, oneshot::Sender<()>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut flags = vec!["--listen", "127.0.0.1:0"];
    flags.extend_from_slice(extra);
    let server = Server::bind(&args("test-classifier.onnx", &flags))
        .await
        .expect("bind");
    let addr = server.local_addr().expect("bound address");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = stopped.await;
        sightline_server::drain::Shutdown::Now
    }));
    (addr, stop)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// Polls `GET /api/v1/evaluations/startup` until the job is there and not running.
async fn startup_outcome(addr: SocketAddr) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, view) = get(addr, "/api/v1/evaluations/startup").await;
        if status == 200 && view["status"] != "running" {
            return view;
        }
        assert!(
            status == 200 || status == 404,
            "unexpected {status}: {view}"
        );
        assert!(Instant::now() < deadline, "not finished: {status} {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_evaluation_reports_its_figures() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("labelled.zip");
    // A green image filed under red: 4 of 5 right.
    let zip = zip_of(&[
        ("set/red/1.png", png([230, 20, 20])),
        ("set/red/2.png", png([200, 40, 30])),
        ("set/red/odd.png", png([20, 220, 20])),
        ("set/green/1.png", png([20, 220, 20])),
        ("set/blue/1.png", png([20, 20, 230])),
    ]);
    std::fs::write(&path, zip).expect("write zip");
    let shown = path.display().to_string();
    let (addr, _stop) = serve(&["--evaluate-on-start", &shown]).await;
    let done = startup_outcome(addr).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["id"], "startup");
    assert_eq!(done["dataset"], "labelled.zip");
    assert_eq!(done["progress"]["done"], 5);
    assert_eq!(done["report"]["accuracy"], 0.8, "{done}");
    assert_eq!(done["report"]["top5_accuracy"], 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_or_bad_file_is_a_failed_job_not_a_crash() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let not_zip = dir.path().join("notes.txt");
    std::fs::write(&not_zip, "not a zip at all").expect("write");
    let truncated = dir.path().join("truncated.zip");
    std::fs::write(&truncated, b"PK\x03\x04truncated").expect("write");
    let missing = dir.path().join("missing.zip");
    for (path, needle) in [
        (&not_zip, "zip file"),
        (&truncated, "not a readable zip"),
        (&missing, "cannot read"),
    ] {
        let shown = path.display().to_string();
        let (addr, _stop) = serve(&["--evaluate-on-start", &shown]).await;
        let done = startup_outcome(addr).await;
        assert_eq!(done["status"], "failed", "{done}");
        let error = done["error"].as_str().expect("error message");
        assert!(error.contains(needle), "{error}");
        assert!(done.get("report").is_none(), "{done}");
        // The server goes on serving.
        let (status, _) = get(addr, "/readyz").await;
        assert_eq!(status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_there_is_no_startup_evaluation() {
    if !test_classifier_ready() {
        return;
    }
    let (addr, _stop) = serve(&[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(addr, "/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "the model did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get(addr, "/api/v1/evaluations/startup").await;
    assert_eq!(status, 404, "{body}");
}

/// The labelled set the URI tests serve: 4 of 5 right (a green image filed under red).
fn labelled_zip() -> Vec<u8> {
    zip_of(&[
        ("set/red/1.png", png([230, 20, 20])),
        ("set/red/2.png", png([200, 40, 30])),
        ("set/red/odd.png", png([20, 220, 20])),
        ("set/green/1.png", png([20, 220, 20])),
        ("set/blue/1.png", png([20, 20, 230])),
    ])
}

/// A plain-HTTP server on loopback: `GET /sets/labelled.zip` answers `zip` once `gate`
/// holds `true`, any other path 404. Returns its base URL.
async fn dataset_server(zip: Vec<u8>, gate: watch::Receiver<bool>) -> String {
    let app = axum::Router::new().route(
        "/sets/labelled.zip",
        axum::routing::get(move || {
            let zip = zip.clone();
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                (StatusCode::OK, zip)
            }
        }),
    );
    support::serve_on_loopback(app).await
}

/// An open gate (the dataset answers at once); the sender must be kept alive.
fn open_gate() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(true)
}

/// Polls `/readyz` until 200, then returns its body.
async fn ready(addr: SocketAddr) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(addr, "/readyz").await;
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < deadline, "not ready: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The model serves: `/readyz` 200 and a red image recognized as red.
async fn assert_serving(addr: SocketAddr) {
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/recognize"))
        .header("content-type", "image/png")
        .body(png([230, 20, 20]))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["predictions"][0]["label"], "red", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_uri_is_fetched_once_the_model_serves_and_evaluated() {
    if !test_classifier_ready() {
        return;
    }
    let zip = labelled_zip();
    let digest = hex::encode(Sha256::digest(&zip));
    let (open, gate) = watch::channel(false);
    let base = dataset_server(zip, gate).await;
    // A presigned-looking query: used for the download, never shown.
    let uri = format!("{base}/sets/labelled.zip?signature=secret-token");
    let (addr, _stop) = serve(&["--evaluate-on-start", &uri, "--evaluate-sha256", &digest]).await;

    // The dataset is held back: the model serves meanwhile, the evaluation is running.
    ready(addr).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let fetching = loop {
        let (status, view) = get(addr, "/api/v1/evaluations/startup").await;
        if status == 200 {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "no start-up job: {status} {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(fetching["status"], "running", "{fetching}");
    assert_eq!(fetching["dataset"], "labelled.zip", "{fetching}");
    assert_eq!(fetching["progress"]["fraction"], 0.0, "{fetching}");
    assert_serving(addr).await;

    open.send(true).expect("the dataset server listens");
    let done = startup_outcome(addr).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["id"], "startup");
    assert_eq!(done["dataset"], "labelled.zip");
    assert_eq!(done["progress"]["done"], 5);
    assert_eq!(done["report"]["accuracy"], 0.8, "{done}");
    assert!(!done.to_string().contains("secret-token"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dataset_fails_the_evaluation_while_the_model_serves() {
    if !test_classifier_ready() {
        return;
    }
    let (_open, gate) = open_gate();
    let base = dataset_server(labelled_zip(), gate).await;
    let uri = format!("{base}/sets/missing.zip?signature=secret-token");
    let started = Instant::now();
    let (addr, _stop) = serve(&["--evaluate-on-start", &uri]).await;
    let done = startup_outcome(addr).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["dataset"], "missing.zip");
    let error = done["error"].as_str().expect("error message");
    assert!(
        error.contains("could not be fetched") && error.contains("404"),
        "{error}"
    );
    assert!(!error.contains("secret-token"), "{error}");
    assert!(done.get("report").is_none(), "{done}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a 404 is not retried"
    );
    assert_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_with_the_wrong_digest_is_not_evaluated() {
    if !test_classifier_ready() {
        return;
    }
    let (_open, gate) = open_gate();
    let base = dataset_server(labelled_zip(), gate).await;
    let uri = format!("{base}/sets/labelled.zip");
    let wrong = "0".repeat(64);
    let (addr, _stop) = serve(&["--evaluate-on-start", &uri, "--evaluate-sha256", &wrong]).await;
    let done = startup_outcome(addr).await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().expect("error message");
    assert!(
        error.contains("could not be fetched") && error.contains("digest mismatch"),
        "{error}"
    );
    assert!(error.contains(&wrong), "names the expected digest: {error}");
    assert_serving(addr).await;

    // A local file is checked against the digest too.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("labelled.zip");
    std::fs::write(&path, labelled_zip()).expect("write zip");
    let shown = path.display().to_string();
    let (addr, _stop) = serve(&["--evaluate-on-start", &shown, "--evaluate-sha256", &wrong]).await;
    let done = startup_outcome(addr).await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().expect("error message");
    assert!(error.contains("digest mismatch"), "{error}");
    assert_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_too_large_or_unsupported_dataset_is_a_failed_evaluation() {
    if !test_classifier_ready() {
        return;
    }
    // A port nothing listens on any more: refused at once, retried a few times.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let (_open, gate) = open_gate();
    let base = dataset_server(labelled_zip(), gate).await;
    let too_large = format!("{base}/sets/labelled.zip");
    for (uri, extra, needle) in [
        (
            format!("http://{closed}/labelled.zip"),
            None,
            "fetching http://",
        ),
        (too_large, Some("100"), "larger than the limit of 100 bytes"),
        (
            "ftp://example.com/labelled.zip".to_string(),
            None,
            "not an https://",
        ),
    ] {
        let mut flags = vec!["--evaluate-on-start", uri.as_str()];
        if let Some(max) = extra {
            flags.extend(["--max-upload-bytes", max]);
        }
        let started = Instant::now();
        let (addr, _stop) = serve(&flags).await;
        let done = startup_outcome(addr).await;
        assert_eq!(done["status"], "failed", "{uri}: {done}");
        let error = done["error"].as_str().expect("error message");
        assert!(
            error.contains("could not be fetched") && error.contains(needle),
            "{uri}: {error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "{uri}: reported within seconds, took {:?}",
            started.elapsed()
        );
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 200, "{uri}: {body}");
    }
}
