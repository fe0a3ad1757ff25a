//! `status.quality` and the `Drifting` condition through the SIMULATED cluster (see
//! `support/sim.rs`: the deployment controller, the kubelet, each pod's `/readyz`; and
//! `support/mod.rs`: `pods/proxy` and the front door's key check), with the real model
//! reconciler. What the pods say is simulated as `sightline-server` writes it: a recognize
//! pod's drift families (crates/model/src/metrics.rs, `InferenceMetrics::drift`: the
//! samples always, each divergence only while it is known), and the store's
//! `GET /api/v1/quality` answer as a front door forwards it (inference-server/src/store/
//! quality.rs, its figures from `sightline_quality::Quality::from_pairs`, as the store's).

mod support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sightline_operator::controller::Context;
use sightline_operator::crd::ImageModel;
use support::sim::{Deadline, Pods, roll};
use support::store_sim::{self, OPERATOR_KEY};
use support::{Cluster, NS, TestClock, full_apis, sample_model};

const MODEL: &str = "efficientnet-lite0";
const STABLE: &str = "efficientnet-lite0-recognize";
const FRONT_DOOR: &str = "photos-upload";
/// The sample's `sha256`, which its pods report on `/readyz`.
const DIGEST: &str = "8a2555a6d5b4dee51bdd253625b5ae2b6f991b71bf477c9404b533d6d7822b69";

/// SIMULATION of a recognize pod's drift families in `sightline-server`'s text format:
/// `baseline` and `live` answers counted, and the two divergences once known.
fn drift_metrics(baseline: u64, live: u64, divergence: Option<(f64, f64)>) -> String {
    let labels = format!("model=\"{MODEL}\",sha256=\"{DIGEST}\"");
    let mut out = String::from(
        "# HELP sightline_model_drift Jensen-Shannon divergence (bits, 0 to 1) of the answers \
         of the live window from the baseline's.\n# TYPE sightline_model_drift gauge\n",
    );
    if let Some((class, confidence)) = divergence {
        out.push_str(&format!(
            "sightline_model_drift{{{labels},signal=\"class\"}} {class}\n\
             sightline_model_drift{{{labels},signal=\"confidence\"}} {confidence}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP sightline_model_drift_samples Answers in the drift baseline and in the live \
         window.\n# TYPE sightline_model_drift_samples gauge\n\
         sightline_model_drift_samples{{{labels},window=\"baseline\"}} {baseline}\n\
         sightline_model_drift_samples{{{labels},window=\"live\"}} {live}\n\
         process_start_time_seconds 1800000000\n"
    ));
    out
}

fn quality_path() -> String {
    store_sim::quality_path(MODEL, DIGEST)
}

/// The store's answer: `right` of `answers` right on `DIGEST`, an older digest beside it.
fn quality_answer(answers: u64, right: u64) -> String {
    let older = "0".repeat(64);
    store_sim::quality_answer(MODEL, &[(&older, 3, 3), (DIGEST, answers, right)])
}

struct Scene {
    cluster: Cluster,
    ctx: Arc<Context>,
    clock: Arc<TestClock>,
}

impl Scene {
    async fn reconcile(&self) {
        support::drive::reconcile_model(&self.cluster, &self.ctx, MODEL)
            .await
            .expect("reconcile");
    }

    async fn status(&self) -> Value {
        self.cluster.model_status(MODEL).await
    }

    async fn condition(&self, type_: &str) -> Value {
        self.cluster.model_condition(MODEL, type_).await
    }

    /// The running pods whose names start with `prefix-`.
    async fn pods(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = Api::<Pod>::namespaced(self.cluster.admin.clone(), NS)
            .list(&ListParams::default())
            .await
            .expect("pods")
            .items
            .iter()
            .map(|p| p.name_any())
            .filter(|n| n.starts_with(&format!("{prefix}-")) && !n.contains("canary"))
            .collect();
        names.sort();
        names
    }

    /// Each stable pod's `/metrics`, in order.
    async fn metrics(&self, texts: &[String]) {
        let pods = self.pods(STABLE).await;
        assert_eq!(pods.len(), texts.len(), "{pods:?}");
        for (pod, text) in pods.iter().zip(texts) {
            self.cluster.answer_pod(pod, "/metrics", 200, text.clone());
        }
    }

    fn store_answers(&self, door: &str, body: String) {
        store_sim::store_answers(&self.cluster, door, &quality_path(), body);
    }

    async fn keys(&self, file: &str) {
        store_sim::keys_file(&self.cluster, file).await;
    }
}

/// A serving model with `spec.monitoring`, and its first revision's two pods ready.
async fn serving() -> Scene {
    let cluster = Cluster::new().await;
    let clock = TestClock::new();
    let ctx = cluster.context_with(full_apis(), clock.clone());
    let mut m = sample_model();
    m.spec.evaluation = None;
    m.spec.monitoring = Some(
        serde_json::from_value(
            json!({"maxDrift": 0.2, "qualityWindow": "24h", "minFeedbackSamples": 100}),
        )
        .expect("monitoring"),
    );
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), &m)
        .await
        .expect("model");
    let scene = Scene {
        cluster,
        ctx,
        clock,
    };
    scene.reconcile().await;
    roll(&scene.cluster, STABLE, Pods::Serving, Deadline::Within).await;
    scene.reconcile().await;
    assert_eq!(scene.condition("Ready").await["status"], "True");
    scene
}

#[tokio::test]
async fn status_quality_and_drifting_follow_what_the_pods_and_the_store_say() {
    let scene = serving().await;

    // Nothing answers /metrics yet and no pipeline uses the model: nothing is known.
    let drifting = scene.condition("Drifting").await;
    assert_eq!(
        (&drifting["status"], &drifting["reason"]),
        (&json!("Unknown"), &json!("DriftUnknown")),
        "{drifting:#}"
    );
    let said = drifting["message"].as_str().unwrap_or_default();
    assert!(said.contains("no serving pod answered /metrics"), "{said}");
    let quality = scene.status().await["quality"].clone();
    assert_eq!(quality["window"], "24h");
    assert_eq!(quality["digest"], DIGEST);
    for unknown in [
        "accuracy",
        "samples",
        "accuracyReadAt",
        "drift",
        "driftSamples",
        "driftReadAt",
    ] {
        assert!(
            quality[unknown].is_null(),
            "{unknown} is unknown, absent: {quality:#}"
        );
    }
    let note = quality["accuracyNote"].as_str().unwrap_or_default();
    assert!(
        note.contains("no RecognitionPipeline uses the model"),
        "{note}"
    );

    // A pipeline whose front door checks keys, none of them the operator's; the pods
    // still filling their baselines.
    support::drive::sample_pipeline_serving(&scene.cluster, &scene.ctx).await;
    let filling = drift_metrics(420, 420, None);
    scene.metrics(&[filling.clone(), filling]).await;
    scene.reconcile().await;
    let drifting = scene.condition("Drifting").await;
    assert_eq!(drifting["status"], "Unknown");
    let said = drifting["message"].as_str().unwrap_or_default();
    assert!(
        said.contains("baseline 420, live window 420"),
        "the message says why: {said}"
    );
    let quality = scene.status().await["quality"].clone();
    assert!(quality["drift"].is_null() && quality["accuracy"].is_null());
    let note = quality["accuracyNote"].as_str().unwrap_or_default();
    assert!(
        note.contains("pipeline photos") && note.contains("holds none named sightline-operator"),
        "{note}"
    );

    // The operator's key is added; the store has feedback; the answers are like the
    // baseline's.
    store_sim::give_operator_key(&scene.cluster).await;
    let door = scene.pods(FRONT_DOOR).await.remove(0);
    scene.store_answers(&door, quality_answer(400, 360));
    scene
        .metrics(&[
            drift_metrics(1000, 640, Some((0.05, 0.03))),
            drift_metrics(1000, 800, Some((0.08, 0.02))),
        ])
        .await;
    scene.clock.advance(60);
    scene.reconcile().await;
    let read_at = "2027-01-15T08:01:00Z";
    let quality = scene.status().await["quality"].clone();
    assert_eq!(
        quality,
        json!({"window": "24h", "digest": DIGEST, "accuracy": 0.9, "samples": 400,
            "accuracyReadAt": read_at, "drift": {"class": 0.08, "confidence": 0.03},
            "driftSamples": 640, "driftReadAt": read_at}),
        "the largest drift of the two pods, the smallest sample"
    );
    let drifting = scene.condition("Drifting").await;
    assert_eq!(
        (&drifting["status"], &drifting["reason"]),
        (&json!("False"), &json!("DriftWithinThreshold")),
        "{drifting:#}"
    );
    assert!(
        scene.cluster.take_asked().contains(&quality_path()),
        "the quality was read through the front door"
    );

    // Nothing changed: a later reconcile writes nothing (the reading times stay).
    scene.cluster.take_calls();
    scene.clock.advance(60);
    scene.reconcile().await;
    let writes = scene.cluster.take_writes();
    assert!(writes.is_empty(), "{writes:?}");

    // A shifted stream: one pod's classes move far from its baseline.
    scene
        .metrics(&[
            drift_metrics(1000, 640, Some((0.05, 0.03))),
            drift_metrics(1000, 800, Some((0.45, 0.12))),
        ])
        .await;
    scene.clock.advance(60);
    scene.reconcile().await;
    let drifting = scene.condition("Drifting").await;
    assert_eq!(
        (&drifting["status"], &drifting["reason"]),
        (&json!("True"), &json!("DriftAboveThreshold")),
        "{drifting:#}"
    );
    let said = drifting["message"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("class 0.4500 above maxDrift 0.2000") && said.contains("640 live answers"),
        "{said}"
    );
    // A drifting model still serves: Ready, Stalled and Reconciling are untouched.
    let status = scene.status().await;
    let ready = scene.condition("Ready").await;
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("True"), &json!("Ready"))
    );
    assert_eq!(scene.condition("Stalled").await["status"], "False");
    assert_eq!(scene.condition("Reconciling").await["status"], "False");
    assert_eq!(status["quality"]["driftReadAt"], "2027-01-15T08:03:00Z");
    assert_eq!(
        status["quality"]["accuracyReadAt"], read_at,
        "the same accuracy"
    );
    assert_eq!(status["quality"]["drift"]["class"], 0.45);

    // A higher threshold in the spec: within it again.
    Api::<ImageModel>::namespaced(scene.cluster.admin.clone(), NS)
        .patch(
            MODEL,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"monitoring": {"maxDrift": 0.5}}})),
        )
        .await
        .expect("edit");
    scene.reconcile().await;
    let drifting = scene.condition("Drifting").await;
    assert_eq!(drifting["status"], "False", "{drifting:#}");

    // The pods stop answering /metrics: unknown again, never a stale figure.
    for pod in scene.pods(STABLE).await {
        let body = support::status_body(503, "ServiceUnavailable", "no endpoints available");
        scene.cluster.answer_pod(&pod, "/metrics", 503, body);
    }
    scene.reconcile().await;
    assert_eq!(scene.condition("Drifting").await["status"], "Unknown");
    let quality = scene.status().await["quality"].clone();
    assert!(
        quality["drift"].is_null() && quality["driftReadAt"].is_null(),
        "{quality:#}"
    );
    assert_eq!(quality["accuracy"], 0.9, "the store still answers");
}

#[tokio::test]
async fn a_key_the_front_door_refuses_is_said_not_hidden() {
    let scene = serving().await;
    support::drive::sample_pipeline_serving(&scene.cluster, &scene.ctx).await;
    scene.keys("sightline-operator:not-the-key-0000\n").await;
    let door = scene.pods(FRONT_DOOR).await.remove(0);
    scene.store_answers(&door, quality_answer(400, 360));
    scene.reconcile().await;
    let quality = scene.status().await["quality"].clone();
    assert!(quality["accuracy"].is_null() && quality["samples"].is_null());
    let note = quality["accuracyNote"].as_str().unwrap_or_default();
    assert!(
        note.contains("answered HTTP 401: the API key is not valid"),
        "{note}"
    );
    // No feedback on the digest yet (the right key, an empty window): samples 0, known.
    scene
        .keys(&format!("sightline-operator:{OPERATOR_KEY}\n"))
        .await;
    let empty = json!({"model": MODEL, "window": "24h", "since": "2027-01-14T08:00:00.000Z",
        "until": "2027-01-15T08:00:00.000Z", "digests": []});
    scene.store_answers(&door, empty.to_string());
    scene.reconcile().await;
    let quality = scene.status().await["quality"].clone();
    assert_eq!(quality["samples"], 0);
    assert!(
        quality["accuracy"].is_null(),
        "no accuracy of no answers: {quality:#}"
    );
    assert_eq!(
        quality["accuracyNote"],
        "no feedback on this model in the last 24h"
    );
}

#[tokio::test]
async fn a_metrics_answer_too_long_to_read_is_no_drift() {
    let scene = serving().await;
    // Within the limit the drift is read, however far down the text it comes.
    let padding = "# padding\n".repeat(300_000);
    let long = format!("{padding}{}", drift_metrics(1000, 640, Some((0.05, 0.03))));
    scene.metrics(&[long.clone(), long]).await;
    scene.reconcile().await;
    assert_eq!(scene.condition("Drifting").await["status"], "False");
    // Beyond it: not read at all, never cut short into a wrong figure.
    let huge = format!("{}{padding}", "# padding\n".repeat(200_000));
    let huge = format!("{huge}{}", drift_metrics(1000, 640, Some((0.5, 0.5))));
    scene.metrics(&[huge.clone(), huge]).await;
    scene.reconcile().await;
    let drifting = scene.condition("Drifting").await;
    assert_eq!(drifting["status"], "Unknown");
    let said = drifting["message"].as_str().unwrap_or_default();
    assert!(said.contains("with more than 4194304 bytes"), "{said}");
}
