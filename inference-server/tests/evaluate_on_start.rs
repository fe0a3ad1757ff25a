//! `--evaluate-on-start PATH`: a server evaluates the zipped labelled set once its model is
//! ready, as `POST /api/v1/evaluations` does, and shows the outcome at
//! `GET /api/v1/evaluations/startup`; an unreadable file or a bad zip is a `failed` job,
//! never a crash; without the flag there is no such job.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sightline_server::server::Server;
use support::{args, solid, test_classifier_ready, zip_of};
use tokio::sync::oneshot;

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
