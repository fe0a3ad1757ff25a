//! A canary's traffic through the front door (`--traffic-file`), with the roles in this
//! process on loopback ports: a failing candidate (answering 503, or not listening) never
//! reaches the caller and is counted; mirrored requests are compared on their top-1 with
//! an identical candidate (agree), a candidate with other answers (disagree) and one that
//! never answers (timeout), and the caller's answer is stable's; the file is re-read while
//! serving (weights move, a malformed file keeps the last good one); the flag needs
//! `--recognize-url`. The process tests (`e2e/tests/canary_traffic.rs`) measure the split
//! and the agreement at scale.

mod pipeline_support;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use image::ImageFormat;
use pipeline_support::{role_app, role_args};
use serde_json::{Value, json};
use sightline_server::http::AppState;
use support::{solid, test_classifier_ready};
use tokio::task::JoinHandle;

const MODEL: &str = "test-classifier";

async fn serve(app: Router) -> (String, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), task)
}

async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("addr")
}

/// A candidate that answers every request with `status` and `body`, counting them.
async fn fake(status: StatusCode, body: Value) -> (String, Arc<AtomicUsize>, JoinHandle<()>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().fallback(move || {
        let counter = counter.clone();
        let body = body.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            (status, axum::Json(body))
        }
    });
    let (url, task) = serve(app).await;
    (url, hits, task)
}

/// A listener that accepts and never answers.
async fn trap() -> (String, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (format!("http://{addr}"), task)
}

/// Recognize (stable) and store, and a front door reading `traffic` (a path in `dir`).
struct Door {
    url: String,
    state: AppState,
    stable: AppState,
    stable_url: String,
    traffic: std::path::PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Door {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Door {
    async fn start(dir: &Path) -> Door {
        let (stable_app, stable) = role_app(&role_args("recognize", &dir.join("r"), &[])).await;
        let (store_app, _) = role_app(&role_args("store", &dir.join("s"), &[])).await;
        let (stable_url, stable_task) = serve(stable_app).await;
        let (store_url, store_task) = serve(store_app).await;
        let traffic = dir.join("traffic.json");
        let traffic_flag = traffic.display().to_string();
        let (door_app, state) = role_app(&role_args(
            "upload",
            &dir.join("u"),
            &[
                "--recognize-url",
                &stable_url,
                "--store-url",
                &store_url,
                "--traffic-file",
                &traffic_flag,
                "--downstream-timeout-secs",
                "4",
            ],
        ))
        .await;
        let (url, door_task) = serve(door_app).await;
        Door {
            url,
            state,
            stable,
            stable_url,
            traffic,
            tasks: vec![stable_task, store_task, door_task],
        }
    }

    /// Writes the traffic file and has the front door read it now (it also reads it by
    /// itself every second).
    async fn set(&self, candidate: &str, weight: u32, mirror: u32) {
        let text = json!({
            "model": MODEL,
            "stable": self.stable_url,
            "candidate": candidate,
            "candidateWeight": weight,
            "mirrorPercent": mirror,
            "revision": "r2",
        });
        std::fs::write(&self.traffic, text.to_string()).expect("write the traffic file");
        self.traffic().reload().await;
        let applied = self.traffic().config();
        assert_eq!(applied.candidate_weight.percent(), f64::from(weight));
    }

    fn traffic(&self) -> Arc<sightline_server::pipeline::traffic::Traffic> {
        self.state
            .downstream
            .recognize
            .clone()
            .expect("the front door forwards recognition")
    }

    fn metric(&self, series: &str) -> f64 {
        sample(&self.state.metrics.encode(), series)
    }
}

/// The value of `series` (name and labels, as printed) in a metrics text; 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn series(name: &str, labels: &str) -> String {
    format!("sightline_{name}{{model=\"{MODEL}\",{labels}}}")
}

fn png(rgb: [u8; 3]) -> Vec<u8> {
    solid(24, 16, rgb, ImageFormat::Png)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// One recognition of each kind the front door splits (and the one-call pipeline); each
/// must succeed. Returns the labels they answered.
async fn one_of_each(door: &Door, rgb: [u8; 3]) -> Vec<String> {
    let client = client();
    let mut labels = Vec::new();
    let response = client
        .post(format!("{}/api/v1/recognize", door.url))
        .header("content-type", "image/png")
        .body(png(rgb))
        .send()
        .await
        .expect("recognize");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    labels.push(
        body["predictions"][0]["label"]
            .as_str()
            .expect("label")
            .into(),
    );

    let response = client
        .post(format!("{}/api/v1/images", door.url))
        .header("content-type", "image/png")
        .body(png(rgb))
        .send()
        .await
        .expect("upload");
    assert!(response.status().is_success());
    let image: Value = response.json().await.expect("json");
    let response = client
        .post(format!("{}/api/images/recognition", door.url))
        .json(&json!({"url": image["url"]}))
        .send()
        .await
        .expect("seed recognition");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    labels.push(body[0]["label"].as_str().expect("label").into());

    let response = client
        .post(format!("{}/v2/models/{MODEL}/infer", door.url))
        .json(&json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
            "data": (0..3 * 32 * 32).map(|i| if i < 1024 { 0.9 } else { 0.1 }).collect::<Vec<f32>>()}]}))
        .send()
        .await
        .expect("infer");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["outputs"][0]["shape"], json!([1, 3]));

    let response = client
        .post(format!("{}/api/v1/pipeline", door.url))
        .header("content-type", "image/png")
        .body(png(rgb))
        .send()
        .await
        .expect("pipeline");
    assert!(response.status().is_success(), "{}", response.status());
    let body: Value = response.json().await.expect("json");
    labels.push(
        body["predictions"][0]["label"]
            .as_str()
            .expect("label")
            .into(),
    );
    labels
}

/// Requests of one kind that `one_of_each` sends: the split counts 4 a round.
const PER_ROUND: f64 = 4.0;

#[tokio::test]
async fn a_failing_candidate_never_reaches_the_caller() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let door = &Door::start(dir.path()).await;
    let (not_ready, hits, _task) = fake(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": "the model is loading"}),
    )
    .await;
    door.set(&not_ready, 50, 0).await;
    for _ in 0..5 {
        assert_eq!(one_of_each(door, [230, 20, 20]).await, ["red"; 3]);
    }
    let tried = hits.load(Ordering::SeqCst) as f64;
    assert_eq!(
        tried,
        5.0 * PER_ROUND / 2.0,
        "half went to the candidate first"
    );
    assert_eq!(
        door.metric(&series(
            "frontdoor_requests_total",
            "revision=\"candidate\",outcome=\"error\""
        )),
        tried
    );
    assert_eq!(
        door.metric(&series(
            "frontdoor_requests_total",
            "revision=\"stable\",outcome=\"ok\""
        )),
        5.0 * PER_ROUND
    );

    // A candidate that is not there at all: the same, every time.
    let gone = format!("http://{}", closed_port().await);
    door.set(&gone, 100, 0).await;
    for _ in 0..3 {
        assert_eq!(one_of_each(door, [20, 20, 230]).await, ["blue"; 3]);
    }
    assert_eq!(
        door.metric(&series(
            "frontdoor_requests_total",
            "revision=\"candidate\",outcome=\"error\""
        )),
        tried + 3.0 * PER_ROUND
    );
    assert_eq!(
        door.metric(&series(
            "frontdoor_requests_total",
            "revision=\"candidate\",outcome=\"ok\""
        )),
        0.0
    );
}

#[tokio::test]
async fn mirrors_are_compared_and_never_answered() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let door = &Door::start(dir.path()).await;
    let mirrored = |outcome: &str| {
        door.metric(&series(
            "frontdoor_mirrored_total",
            &format!("outcome=\"{outcome}\""),
        ))
    };
    let settle = |want: f64| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let done: f64 = ["agree", "disagree", "error", "timeout", "dropped"]
                .iter()
                .map(|o| mirrored(o))
                .sum();
            if done >= want || Instant::now() > deadline {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // An identical candidate (the same model file): every mirrored request agrees.
    let (candidate_app, candidate) =
        role_app(&role_args("recognize", &dir.path().join("c"), &[])).await;
    let (candidate_url, _task) = serve(candidate_app).await;
    door.set(&candidate_url, 0, 100).await;
    for rgb in [[230, 20, 20], [20, 220, 20], [20, 20, 230]] {
        one_of_each(door, rgb).await;
    }
    assert_eq!(settle(12.0).await, 12.0);
    assert_eq!(mirrored("agree"), 12.0, "{}", door.state.metrics.encode());
    let served = sample(
        &candidate.metrics.encode(),
        "sightline_http_requests_total{route=\"/api/v1/recognize\",method=\"POST\",status_class=\"2xx\"}",
    );
    assert_eq!(served, 9.0, "recognize, seed and pipeline shadows");
    assert_eq!(
        door.metric(&series(
            "frontdoor_requests_total",
            "revision=\"candidate\",outcome=\"ok\""
        )),
        0.0,
        "a mirror is no candidate request"
    );

    // A candidate with other answers: every mirrored request disagrees, and the callers
    // get stable's answers.
    let (purple, hits, _task) = fake(
        StatusCode::OK,
        json!({"model": {"name": MODEL, "sha256": "0"}, "latency_ms": 1.0,
               "predictions": [{"label": "purple", "probability": 1.0}],
               "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 3],
                            "data": [0.0, 0.0, 1.0]}]}),
    )
    .await;
    door.set(&purple, 0, 100).await;
    assert_eq!(one_of_each(door, [230, 20, 20]).await, ["red"; 3]);
    assert_eq!(settle(16.0).await, 16.0);
    assert_eq!(mirrored("disagree"), 4.0);
    assert_eq!(hits.load(Ordering::SeqCst), 4);

    // One that never answers: each mirror times out, the callers do not wait for it.
    let (silent, _task) = trap().await;
    door.set(&silent, 0, 100).await;
    let started = Instant::now();
    one_of_each(door, [20, 220, 20]).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the callers waited for the shadows: {:?}",
        started.elapsed()
    );
    assert_eq!(settle(20.0).await, 20.0);
    assert_eq!(mirrored("timeout"), 4.0);

    // Nothing a shadow answered was stored: the pipeline's records are stable's.
    let stable_served = sample(
        &door.stable.metrics.encode(),
        "sightline_http_requests_total{route=\"/api/v1/recognize\",method=\"POST\",status_class=\"2xx\"}",
    );
    assert_eq!(
        stable_served, 15.0,
        "every recognition was answered by stable"
    );
}

#[tokio::test]
async fn the_file_is_reread_while_serving() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let door = &Door::start(dir.path()).await;
    let (candidate_app, candidate) =
        role_app(&role_args("recognize", &dir.path().join("c"), &[])).await;
    let (candidate_url, _task) = serve(candidate_app).await;
    let weight = || door.metric(&series("frontdoor_candidate_weight", "").replace(",}", "}"));
    let wait_for = |want: f64| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while weight() != want {
            assert!(
                Instant::now() < deadline,
                "the front door did not pick up weight {want}: {}",
                door.state.metrics.encode()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let write = |text: String| std::fs::write(&door.traffic, text).expect("write");
    let file = |weight: u32| {
        json!({"model": MODEL, "stable": door.stable_url, "candidate": candidate_url,
               "candidateWeight": weight, "mirrorPercent": 0})
        .to_string()
    };
    let to_candidate = || {
        sample(
            &candidate.metrics.encode(),
            "sightline_http_requests_total{route=\"/api/v1/recognize\",method=\"POST\",status_class=\"2xx\"}",
        )
    };

    // Not written yet: everything to --recognize-url.
    one_of_each(door, [230, 20, 20]).await;
    assert_eq!(to_candidate(), 0.0);

    write(file(100));
    wait_for(100.0).await;
    one_of_each(door, [230, 20, 20]).await;
    assert_eq!(to_candidate(), 3.0);

    // Malformed: the last good file stays, and it is counted.
    write("{\"candidateWeight\": ".into());
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample(
        &door.state.metrics.encode(),
        "sightline_frontdoor_traffic_reloads_total{outcome=\"invalid\"}",
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "the malformed file was not seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    one_of_each(door, [230, 20, 20]).await;
    assert_eq!(to_candidate(), 6.0);
    assert_eq!(weight(), 100.0);

    write(file(0));
    wait_for(0.0).await;
    one_of_each(door, [230, 20, 20]).await;
    assert_eq!(to_candidate(), 6.0);

    // Gone: everything to --recognize-url again.
    write(file(100));
    wait_for(100.0).await;
    std::fs::remove_file(&door.traffic).expect("remove");
    let deadline = Instant::now() + Duration::from_secs(5);
    while door.traffic().config().candidate.is_some() {
        assert!(Instant::now() < deadline, "the removal was not seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    one_of_each(door, [230, 20, 20]).await;
    assert_eq!(to_candidate(), 6.0);
}

#[tokio::test]
async fn the_traffic_file_needs_a_recognize_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = role_args(
        "upload",
        dir.path(),
        &["--traffic-file", "/etc/sightline/traffic/traffic.json"],
    );
    let Err(e) = sightline_server::server::role_state(&args, "", None).await else {
        panic!("accepted --traffic-file without --recognize-url");
    };
    assert!(e.to_string().contains("--recognize-url"), "{e}");
}

#[tokio::test]
async fn the_front_door_reports_the_generation_it_applies() {
    if !test_classifier_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let door = &Door::start(dir.path()).await;
    let readyz = || async {
        let answer = client()
            .get(format!("{}/readyz", door.url))
            .send()
            .await
            .expect("readyz");
        assert_eq!(answer.status(), StatusCode::OK);
        answer.json::<Value>().await.expect("json")
    };
    let applied = || async { readyz().await["traffic"]["generation"].as_u64() };
    // No file yet: generation 0, everything to --recognize-url.
    assert_eq!(applied().await, Some(0), "{}", readyz().await);
    let write = |generation: u64, weight: u32| {
        let text = json!({"model": MODEL, "stable": door.stable_url,
            "candidate": door.stable_url, "candidateWeight": weight, "mirrorPercent": 0,
            "generation": generation});
        std::fs::write(&door.traffic, text.to_string()).expect("write");
    };
    let wait_for = |want: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while applied().await != Some(want) {
            assert!(
                Instant::now() < deadline,
                "the front door did not report generation {want}: {}",
                readyz().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Read by the front door's own poll, as after a kubelet's projection.
    write(3, 10);
    wait_for(3).await;
    let body = readyz().await;
    assert_eq!(body["status"], "ready");
    assert_eq!(body["traffic"]["model"], MODEL);
    assert_eq!(body["traffic"]["candidateWeight"], 10.0);
    assert_eq!(
        door.metric(&series("frontdoor_traffic_generation", "").replace(",}", "}")),
        3.0
    );
    // A malformed file is not applied: the generation stays the last good one's.
    std::fs::write(&door.traffic, "{\"generation\": 9, \"candidateWeight\": ").expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    while door.metric("sightline_frontdoor_traffic_reloads_total{outcome=\"invalid\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the malformed file was not seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(applied().await, Some(3));
    write(4, 0);
    wait_for(4).await;
    // Gone: nothing applies, generation 0 again.
    std::fs::remove_file(&door.traffic).expect("remove");
    wait_for(0).await;
    // The stable recognize role's /readyz says nothing about traffic.
    let stable = client()
        .get(format!("{}/readyz", door.stable_url))
        .send()
        .await
        .expect("readyz")
        .json::<Value>()
        .await
        .expect("json");
    assert!(stable.get("traffic").is_none(), "{stable}");
}
