//! Drift without labels, through the real tools: one `sightline-server recognize` process
//! (the test colour classifier, a small baseline and a short live window) scraped every
//! second by a real Prometheus that evaluates the real `SightlineModelDrift` rule from
//! manifests/monitoring/prometheusrule.yaml — its expression and threshold as written; only
//! its `for:` is shortened to 2 s so that it fires within the test.
//!
//! 1. Traffic like the baseline (the same mix of red, green and blue photos) keeps both
//!    drift signals under the threshold and no alert pending or firing.
//! 2. Blue photos only: the `class` signal crosses the threshold and the alert fires for it,
//!    while `confidence` stays low (the model is as sure as before).
//! 3. Grey photos, which the model was never meant for (it answers them at 33 %): the
//!    `confidence` signal fires.
//!
//! Needs `target/debug/sightline-server`, `make deps models` and `prometheus` on PATH; under
//! CI anything missing is a failure, elsewhere a loud skip.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sightline_e2e::process::{ScratchDir, ServerProcess, free_ports, require_server_binary};
use sightline_e2e::prometheus::{HINT, Prometheus, Target, tool};
use sightline_e2e::{models, ort_lib, repo_root, require, skip};

const ALERT: &str = "SightlineModelDrift";
/// The live window of the process under test: short, so that a shift fills it quickly.
const WINDOW_SECONDS: u64 = 10;

fn png(rgb: [u8; 3]) -> Vec<u8> {
    sightline_e2e::split::solid_png(rgb, 16)
}

/// The baseline's mix: pure and muted reds, greens and blues, all answered with > 99 %.
fn mixed() -> Vec<Vec<u8>> {
    [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [204, 51, 51],
        [51, 204, 51],
        [51, 51, 204],
    ]
    .into_iter()
    .map(png)
    .collect()
}

/// The `SightlineModelDrift` rule, as a plain rules file, with `for: 2s`.
fn drift_rule_file() -> String {
    let path = repo_root().join("manifests/monitoring/prometheusrule.yaml");
    let text = std::fs::read_to_string(&path).expect("read the PrometheusRule");
    let rule: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let mut found = rule["spec"]["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .find(|r| r["alert"].as_str() == Some(ALERT))
        .unwrap_or_else(|| panic!("{ALERT} is not in {}", path.display()));
    found["for"] = "2s".into();
    let file = serde_json::json!({"groups": [{"name": "drift", "rules": [found]}]});
    serde_yaml::to_string(&file).expect("YAML")
}

/// Sends the current set of photos round-robin, about 50 a second, until dropped.
struct Traffic {
    photos: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(url: String, photos: Vec<Vec<u8>>) -> Traffic {
        let photos = Arc::new(Mutex::new(photos));
        let shared = photos.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0usize;
            loop {
                for _ in 0..10 {
                    let body = {
                        let set = shared.lock().expect("photos");
                        set[i % set.len()].clone()
                    };
                    i += 1;
                    let status = client
                        .post(&url)
                        .header("content-type", "image/png")
                        .body(body)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    assert_eq!(status, 200, "recognize answered {status}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Traffic { photos, task }
    }

    fn switch(&self, photos: Vec<Vec<u8>>) {
        *self.photos.lock().expect("photos") = photos;
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The drift alerts Prometheus holds, as `(signal, state)`.
async fn drift_alerts(prometheus: &Prometheus) -> Vec<(String, String)> {
    prometheus
        .alerts()
        .await
        .expect("alerts")
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == ALERT)
        .map(|a: Value| {
            (
                a["labels"]["signal"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                a["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The drift figure of `signal` now, if Prometheus has one.
async fn drift(prometheus: &Prometheus, signal: &str) -> Option<f64> {
    let expr = format!("sightline_model_drift{{signal=\"{signal}\"}}");
    prometheus
        .values(&expr)
        .await
        .expect("query")
        .first()
        .map(|(_, v)| *v)
}

/// Waits (at most `within`) until the alert fires for `signal`.
async fn wait_firing(prometheus: &Prometheus, signal: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let alerts = drift_alerts(prometheus).await;
        if alerts
            .iter()
            .any(|(s, state)| s == signal && state == "firing")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ALERT} did not fire for {signal} within {within:?}: alerts {alerts:?}, class {:?}, \
             confidence {:?}",
            drift(prometheus, "class").await,
            drift(prometheus, "confidence").await,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shifted_stream_fires_the_drift_alert_and_a_stream_like_the_baseline_does_not() {
    let Some(server) = require_server_binary() else {
        return;
    };
    if !require(&[ort_lib(), models().join("test-classifier.onnx")]) {
        return;
    }
    let Some(prometheus_binary) = tool("prometheus") else {
        skip(&format!("`prometheus` is not installed: {HINT}"));
        return;
    };
    let dir = ScratchDir::new("drift").expect("scratch dir");
    let ports = free_ports(2).expect("ports");
    let recognize = ServerProcess::start_on(
        &server,
        "recognize",
        ports[0],
        &sightline_e2e::drift_test_flags(WINDOW_SECONDS),
        dir.path(),
    )
    .expect("recognize starts");
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, drift_rule_file()).expect("write rules");
    let prometheus = Prometheus::start(
        &prometheus_binary,
        dir.path(),
        ports[1],
        &[Target {
            job: "sightline-recognize",
            address: recognize.addr.to_string(),
        }],
        &rules,
    )
    .expect("prometheus starts");

    // 1. The baseline, then more of the same for longer than the window.
    let traffic = Traffic::start(recognize.url("/api/v1/recognize"), mixed());
    let deadline = Instant::now() + Duration::from_secs(20);
    while drift(&prometheus, "class").await.is_none() {
        assert!(
            Instant::now() < deadline,
            "no drift figure in Prometheus after the baseline:\n{}",
            recognize.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let baseline = prometheus
        .values("sightline_model_drift_samples{window=\"baseline\"}")
        .await
        .expect("query");
    assert_eq!(baseline.len(), 1, "{baseline:?}");
    assert_eq!(baseline[0].1, 60.0, "the baseline stops at 60 answers");
    tokio::time::sleep(Duration::from_secs(WINDOW_SECONDS + 4)).await;
    let range = format!("{}s", WINDOW_SECONDS + 4);
    let highest = prometheus
        .values(&format!(
            "max by (signal) (max_over_time(sightline_model_drift[{range}]))"
        ))
        .await
        .expect("query");
    assert_eq!(highest.len(), 2, "both signals have figures: {highest:?}");
    for (labels, value) in &highest {
        assert!(
            *value < 0.05,
            "traffic like the baseline: {labels} at {value}"
        );
    }
    let live = prometheus
        .values("sightline_model_drift_samples{window=\"live\"}")
        .await
        .expect("query");
    assert!(
        live[0].1 >= 30.0,
        "the live window holds the traffic: {live:?}"
    );
    assert_eq!(
        drift_alerts(&prometheus).await,
        vec![],
        "no drift alert for traffic like the baseline"
    );

    // 2. Only one class.
    traffic.switch(vec![png([0, 0, 255]), png([51, 51, 204])]);
    wait_firing(&prometheus, "class", Duration::from_secs(40)).await;
    let class = drift(&prometheus, "class").await.expect("class drift");
    assert!(class > 0.2, "class drift {class}");
    let confidence = drift(&prometheus, "confidence").await.expect("figure");
    assert!(confidence < 0.05, "as sure as before: {confidence}");

    // 3. Images the model was never meant for.
    traffic.switch(vec![png([128, 128, 128]), png([90, 90, 90])]);
    wait_firing(&prometheus, "confidence", Duration::from_secs(40)).await;
    let confidence = drift(&prometheus, "confidence").await.expect("figure");
    assert!(confidence > 0.2, "confidence drift {confidence}");
    drop(traffic);
    drop(prometheus);
}
