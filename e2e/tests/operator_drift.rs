//! The operator's `Drifting` condition and `status.quality.drift` from a real recognize
//! process: the operator's own model reconciler runs against the in-memory Kubernetes API
//! of the operator's tests (operator/tests/support, its simulated deployment controller
//! and kubelet), and reads the process's real `/readyz` and `/metrics` where a cluster's
//! `pods/proxy` would lead ([`LoopbackPods`]). The process serves the test classifier
//! under the sample model's name, with a small drift baseline and a short window.
//!
//! Baseline filling: Unknown. Traffic like the baseline: False. Grey photos, which the model
//! was never meant for: True, with `Ready` still True.

mod loopback;
#[path = "../../operator/tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sightline_e2e::process::{ScratchDir, ServerProcess, require_server_binary};
use sightline_e2e::split::client;
use sightline_e2e::{models, ort_lib, require};
use sightline_operator::controller::{Context, model};
use sightline_operator::crd::ImageModel;

use loopback::LoopbackPods;
use support::sim::{Deadline, Pods, roll};
use support::{Cluster, NS, sample_model};

const MODEL: &str = "efficientnet-lite0";
const STABLE: &str = "efficientnet-lite0-recognize";
/// The process's live drift window.
const WINDOW_SECONDS: u64 = 8;

fn png(rgb: [u8; 3]) -> Vec<u8> {
    sightline_e2e::split::solid_png(rgb, 16)
}

/// `n` answers of the process to `photos`, round-robin.
async fn send(url: &str, photos: &[Vec<u8>], n: usize) {
    let http = client();
    for i in 0..n {
        let status = http
            .post(url)
            .header("content-type", "image/png")
            .body(photos[i % photos.len()].clone())
            .send()
            .await
            .expect("recognize")
            .status();
        assert!(status.is_success(), "{status}");
    }
}

struct Scene {
    cluster: Cluster,
    ctx: Arc<Context>,
}

impl Scene {
    async fn reconcile(&self) {
        let m = self.cluster.model(MODEL).await;
        model::reconcile(Arc::new(m), self.ctx.clone())
            .await
            .expect("reconcile");
    }

    async fn condition(&self, type_: &str) -> Value {
        self.cluster.model_condition(MODEL, type_).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifting_follows_a_real_recognize_process() {
    let Some(server) = require_server_binary() else {
        return;
    };
    let file = models().join("test-classifier.onnx");
    if !require(&[ort_lib(), file.clone()]) {
        return;
    }
    let dir = ScratchDir::new("operator-drift").expect("scratch dir");
    let process = ServerProcess::start(
        &server,
        "recognize",
        &[
            sightline_e2e::drift_test_flags(WINDOW_SECONDS),
            vec!["--model-name".into(), MODEL.into()],
        ]
        .concat(),
        dir.path(),
    )
    .expect("recognize starts");

    let cluster = Cluster::new().await;
    let pods = Arc::new(LoopbackPods::new(client()));
    let ctx = loopback::context(cluster.client.clone(), pods.clone());
    let mut m = sample_model();
    m.spec.runtime.replicas = Some(1);
    m.spec.evaluation = None;
    m.spec.source.model.sha256 = Some(hex::encode(Sha256::digest(
        std::fs::read(&file).expect("read the model"),
    )));
    m.spec.monitoring = Some(serde_json::from_value(json!({"maxDrift": 0.2})).expect("monitoring"));
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), &m)
        .await
        .expect("create the model");
    let scene = Scene { cluster, ctx };
    scene.reconcile().await;
    roll(&scene.cluster, STABLE, Pods::Serving, Deadline::Within).await;
    for pod in Api::<Pod>::namespaced(scene.cluster.admin.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
    {
        let name = pod.metadata.name.unwrap_or_default();
        if name.starts_with(&format!("{STABLE}-")) {
            pods.pods
                .lock()
                .expect("pods")
                .insert(name, process.url(""));
        }
    }
    scene.reconcile().await;
    assert_eq!(scene.condition("Ready").await["status"], "True");
    let drifting = scene.condition("Drifting").await;
    assert_eq!(drifting["status"], "Unknown", "{drifting:#}");

    // The baseline and more of the same, for longer than the window.
    let url = process.url("/api/v1/recognize");
    let mixed: Vec<Vec<u8>> = [[250, 10, 10], [10, 250, 10], [10, 10, 250]]
        .map(png)
        .to_vec();
    send(&url, &mixed, 60).await;
    let until = Instant::now() + Duration::from_secs(WINDOW_SECONDS + 1);
    while Instant::now() < until {
        send(&url, &mixed, 15).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    send(&url, &mixed, 30).await;
    // The process publishes its figures every slot of the window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    scene.reconcile().await;
    let drifting = scene.condition("Drifting").await;
    assert_eq!(drifting["status"], "False", "{drifting:#}");
    assert_eq!(drifting["reason"], "DriftWithinThreshold");
    let quality = scene.cluster.model_status(MODEL).await["quality"].clone();
    assert!(
        quality["drift"]["class"].as_f64().is_some_and(|d| d < 0.05),
        "{quality:#}"
    );
    assert!(quality["driftReadAt"].is_string(), "{quality:#}");

    // Grey photos only, for longer than the window.
    let grey = vec![png([128, 128, 128]), png([90, 90, 90])];
    let until = Instant::now() + Duration::from_secs(WINDOW_SECONDS + 1);
    while Instant::now() < until {
        send(&url, &grey, 15).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    scene.reconcile().await;
    let drifting = scene.condition("Drifting").await;
    assert_eq!(drifting["status"], "True", "{drifting:#}");
    assert_eq!(drifting["reason"], "DriftAboveThreshold");
    assert!(
        drifting["message"]
            .as_str()
            .is_some_and(|m| m.contains("confidence")),
        "{drifting:#}"
    );
    let quality = scene.cluster.model_status(MODEL).await["quality"].clone();
    assert!(
        quality["drift"]["confidence"]
            .as_f64()
            .is_some_and(|d| d > 0.2),
        "{quality:#}"
    );
    assert_eq!(
        scene.condition("Ready").await["status"],
        "True",
        "a drifting model still serves"
    );
}
