//! Canary rollouts of a model through the SIMULATED cluster (support/sim.rs), with each
//! revision's pods and the front doors answering `/metrics` from the test: a good
//! candidate is promoted step by step; a disagreeing, a slow, an erroring and a
//! crash-looping candidate are each rolled back at the first failed check; the stable
//! revision is never disturbed.

mod support;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sightline_operator::controller::{Context, model, pipeline};
use sightline_operator::crd::{ImageModel, RecognitionPipeline};
use support::sim::{Deadline, Pods, roll};
use support::{Cluster, NS, TestClock, full_apis, sample_model, sample_pipeline};

const MODEL: &str = "efficientnet-lite0";
const STABLE: &str = "efficientnet-lite0-recognize";
const CANDIDATE: &str = "efficientnet-lite0-recognize-canary";

/// What a revision's pods report: `requests` recognitions, `errors` of them 5xx, `fast`
/// within 10 ms and the rest within 100 ms.
fn served(requests: u64, errors: u64, fast: u64) -> String {
    format!(
        "sightline_http_requests_total{{route=\"/api/v1/recognize\",method=\"POST\",status_class=\"2xx\"}} {ok}\n\
         sightline_http_requests_total{{route=\"/api/v1/recognize\",method=\"POST\",status_class=\"5xx\"}} {errors}\n\
         sightline_http_requests_total{{route=\"/readyz\",method=\"GET\",status_class=\"2xx\"}} 99999\n\
         sightline_http_request_duration_seconds_bucket{{route=\"/api/v1/recognize\",method=\"POST\",le=\"0.01\"}} {fast}\n\
         sightline_http_request_duration_seconds_bucket{{route=\"/api/v1/recognize\",method=\"POST\",le=\"0.1\"}} {requests}\n\
         sightline_http_request_duration_seconds_bucket{{route=\"/api/v1/recognize\",method=\"POST\",le=\"+Inf\"}} {requests}\n",
        ok = requests - errors
    )
}

fn evaluation(top1: f64) -> String {
    json!({"id": "startup", "status": "succeeded", "report": {
        "images": 500, "accuracy": top1, "top5_accuracy": 0.95,
        "macro": {"precision": 0.8, "recall": 0.8, "f1": 0.8}}})
    .to_string()
}

fn mirrored(agree: u64, disagree: u64) -> String {
    format!(
        "sightline_frontdoor_mirrored_total{{model=\"{MODEL}\",outcome=\"agree\"}} {agree}\n\
         sightline_frontdoor_mirrored_total{{model=\"{MODEL}\",outcome=\"disagree\"}} {disagree}\n"
    )
}

/// Makes every pod whose name starts with `prefix` answer `/metrics` with `text` (the
/// figures are per pod; the operator sums them).
async fn report(cluster: &Cluster, prefix: &str, text: String) {
    let pods = Api::<Pod>::namespaced(cluster.admin.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("pods");
    for pod in pods.items {
        let name = pod.name_any();
        // The stable Deployment's name is a prefix of the candidate's.
        let candidate = name.starts_with(CANDIDATE);
        let wanted = if prefix == CANDIDATE {
            candidate
        } else {
            name.starts_with(prefix) && !candidate
        };
        if wanted {
            cluster.answer_pod(&name, "/metrics", 200, text.clone());
        }
    }
}

struct Scene {
    cluster: Cluster,
    ctx: Arc<Context>,
    clock: Arc<TestClock>,
}

impl Scene {
    async fn reconcile(&self) -> Result<(), String> {
        let m = Api::<ImageModel>::namespaced(self.cluster.admin.clone(), NS)
            .get(MODEL)
            .await
            .expect("model");
        model::reconcile(Arc::new(m), self.ctx.clone())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn status(&self) -> Value {
        let m = Api::<ImageModel>::namespaced(self.cluster.admin.clone(), NS)
            .get(MODEL)
            .await
            .expect("model");
        serde_json::to_value(m.status).expect("json")
    }

    async fn template(&self, name: &str) -> Option<Value> {
        Api::<Deployment>::namespaced(self.cluster.admin.clone(), NS)
            .get_opt(name)
            .await
            .expect("get")
            .map(|d| serde_json::to_value(d.spec.expect("spec").template).expect("json"))
    }

    /// What the front doors read.
    async fn traffic(&self) -> Value {
        let cm = Api::<ConfigMap>::namespaced(self.cluster.admin.clone(), NS)
            .get("efficientnet-lite0-traffic")
            .await
            .expect("traffic ConfigMap");
        let text = cm.data.expect("data")["traffic.json"].clone();
        serde_json::from_str(&text).expect("traffic.json")
    }

    async fn warnings(&self) -> Vec<String> {
        Api::<Event>::namespaced(self.cluster.admin.clone(), NS)
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .map(|e| e.reason.unwrap_or_default())
            .collect()
    }

    /// A serving model with a canary rollout, a pipeline whose front door serves, and
    /// then a spec change: the candidate is created and starts.
    async fn new() -> (Scene, Value) {
        Scene::with(false).await
    }

    /// As [`Scene::new`]; with `evaluated`, the model has a labelled set and the stable
    /// revision's start-up evaluation scored 0.80 top-1.
    async fn with(evaluated: bool) -> (Scene, Value) {
        let cluster = Cluster::new().await;
        let clock = TestClock::new();
        let ctx = cluster.context_with(full_apis(), clock.clone());
        let mut m = sample_model();
        if !evaluated {
            m.spec.evaluation = None;
        }
        m.spec.rollout = serde_json::from_value(json!({
            "strategy": "Canary", "steps": [50, 100], "stepDuration": "60s",
            "minRequestsPerStep": 100, "mirrorPercent": 10}))
        .expect("rollout");
        Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
            .create(&PostParams::default(), &m)
            .await
            .expect("model");
        let scene = Scene {
            cluster,
            ctx,
            clock,
        };
        scene.reconcile().await.expect("first");
        roll(&scene.cluster, STABLE, Pods::Serving, Deadline::Within).await;
        if evaluated {
            support::sim::answer_every_pod(
                &scene.cluster,
                "/api/v1/evaluations/startup",
                200,
                evaluation(0.80),
            )
            .await;
        }
        scene.reconcile().await.expect("serving");
        if evaluated {
            scene.reconcile().await.expect("evaluated");
            assert_eq!(scene.status().await["evaluation"]["accuracy"], 0.8);
        }
        let status = scene.status().await;
        assert_eq!(status["conditions"][0]["status"], "True", "{status:#}");

        support::sample_secrets(&scene.cluster).await;
        let p = Api::<RecognitionPipeline>::namespaced(scene.cluster.admin.clone(), NS)
            .create(&PostParams::default(), &sample_pipeline())
            .await
            .expect("pipeline");
        pipeline::reconcile(Arc::new(p), scene.ctx.clone())
            .await
            .expect("pipeline");
        roll(
            &scene.cluster,
            "photos-upload",
            Pods::Serving,
            Deadline::Within,
        )
        .await;
        let stable = scene.template(STABLE).await.expect("stable");

        // A new revision: the stable Deployment stays, the candidate appears.
        Api::<ImageModel>::namespaced(scene.cluster.admin.clone(), NS)
            .patch(
                MODEL,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"runtime": {"batching": {"maxBatchSize": 16}}}})),
            )
            .await
            .expect("edit");
        scene.reconcile().await.expect("candidate");
        assert_eq!(
            scene.template(STABLE).await,
            Some(stable.clone()),
            "stable held"
        );
        assert!(
            scene.template(CANDIDATE).await.is_some(),
            "candidate created"
        );
        let status = scene.status().await;
        assert_eq!(
            status["rollout"]["candidateWeight"], 0,
            "not ready: no traffic"
        );
        assert_eq!(status["conditions"][0]["reason"], "Canary", "{status:#}");
        assert_eq!(scene.traffic().await["candidateWeight"], 0);
        (scene, stable)
    }

    /// The candidate's pods serve; every revision reports its counters; the first window
    /// opens.
    async fn open_window(&self) {
        roll(&self.cluster, CANDIDATE, Pods::Serving, Deadline::Within).await;
        report(&self.cluster, STABLE, served(1000, 0, 990)).await;
        report(&self.cluster, CANDIDATE, served(0, 0, 0)).await;
        report(&self.cluster, "photos-upload", mirrored(0, 0)).await;
        self.reconcile().await.expect("window");
        let status = self.status().await;
        assert_eq!(status["rollout"]["candidateWeight"], 50, "{status:#}");
        assert_eq!(status["rollout"]["mirrorPercent"], 10);
        let traffic = self.traffic().await;
        assert_eq!(traffic["candidateWeight"], 50);
        assert_eq!(
            traffic["candidate"],
            "http://efficientnet-lite0-recognize-canary.sightline-demo.svc:8080"
        );
    }
}

#[tokio::test]
async fn a_good_candidate_is_promoted_step_by_step() {
    let (scene, stable) = Scene::new().await;
    scene.open_window().await;

    // Step 1's window: long enough, enough requests, every check passes.
    report(&scene.cluster, STABLE, served(1500, 0, 1490)).await;
    // Two candidate pods: 30 each.
    report(&scene.cluster, CANDIDATE, served(30, 0, 30)).await;
    report(&scene.cluster, "photos-upload", mirrored(50, 0)).await;
    scene.clock.advance(30);
    scene.reconcile().await.expect("too early");
    assert_eq!(
        scene.status().await["rollout"]["step"],
        0,
        "the window is not over"
    );
    scene.clock.advance(31);
    scene.reconcile().await.expect("still too few");
    assert_eq!(
        scene.status().await["rollout"]["step"],
        0,
        "60 of 100 requests"
    );
    report(&scene.cluster, CANDIDATE, served(60, 0, 60)).await;
    scene.reconcile().await.expect("step 2");
    let status = scene.status().await;
    assert_eq!(
        (
            &status["rollout"]["step"],
            &status["rollout"]["candidateWeight"]
        ),
        (&json!(1), &json!(100)),
        "{status:#}"
    );
    let checks = status["rollout"]["checks"].as_array().expect("checks");
    assert!(
        checks.iter().all(|c| c["status"] == "Passed"),
        "{checks:#?}"
    );
    assert_eq!(scene.template(STABLE).await, Some(stable.clone()));

    // Step 2: the last; then the stable Deployment takes the new revision.
    report(&scene.cluster, STABLE, served(1600, 0, 1590)).await;
    report(&scene.cluster, CANDIDATE, served(400, 1, 398)).await;
    report(&scene.cluster, "photos-upload", mirrored(90, 1)).await;
    scene.clock.advance(61);
    scene.reconcile().await.expect("promote");
    let status = scene.status().await;
    assert_eq!(status["rollout"]["phase"], "Promoting", "{status:#}");
    let promoted = scene.template(STABLE).await.expect("stable");
    assert_ne!(
        promoted, stable,
        "the stable Deployment runs the new revision"
    );
    assert_eq!(
        scene.traffic().await["candidateWeight"],
        100,
        "the candidate serves until the stable pods do"
    );
    roll(&scene.cluster, STABLE, Pods::Serving, Deadline::Within).await;
    scene.reconcile().await.expect("promoted");
    let status = scene.status().await;
    assert_eq!(status["rollout"]["phase"], "Promoted", "{status:#}");
    assert_eq!(status["rollout"]["history"][0]["outcome"], "Promoted");
    assert_eq!(status["conditions"][0]["status"], "True", "{status:#}");
    assert_eq!(scene.traffic().await["candidateWeight"], 0);
    assert!(
        scene.template(CANDIDATE).await.is_none(),
        "candidate removed"
    );
}

async fn rolled_back(scene: &Scene, stable: &Value, check: &str) {
    let status = scene.status().await;
    assert_eq!(status["rollout"]["phase"], "RolledBack", "{status:#}");
    let ready = &status["conditions"][0];
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("RolledBack"))
    );
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(message.contains(check), "{message}");
    assert_eq!(
        scene.traffic().await["candidateWeight"],
        0,
        "traffic back at once"
    );
    assert!(
        scene.template(CANDIDATE).await.is_none(),
        "candidate removed"
    );
    assert_eq!(
        scene.template(STABLE).await.as_ref(),
        Some(stable),
        "the stable revision was never disturbed"
    );
    assert!(scene.warnings().await.iter().any(|r| r == "RolledBack"));
    // It stays rolled back until the spec changes again.
    scene.reconcile().await.expect("again");
    assert!(scene.template(CANDIDATE).await.is_none());
    assert_eq!(scene.status().await["rollout"]["phase"], "RolledBack");
}

#[tokio::test]
async fn a_random_weights_candidate_is_rolled_back_on_agreement() {
    let (scene, stable) = Scene::new().await;
    scene.open_window().await;
    report(&scene.cluster, CANDIDATE, served(150, 0, 150)).await;
    report(&scene.cluster, "photos-upload", mirrored(1, 99)).await;
    scene.reconcile().await.expect("analysis");
    rolled_back(&scene, &stable, "agreement 0.0100 (at least 0.9500)").await;
}

#[tokio::test]
async fn a_slow_candidate_is_rolled_back_on_p99() {
    let (scene, stable) = Scene::new().await;
    scene.open_window().await;
    report(&scene.cluster, STABLE, served(2000, 0, 1990)).await;
    report(&scene.cluster, CANDIDATE, served(150, 0, 20)).await;
    report(&scene.cluster, "photos-upload", mirrored(40, 0)).await;
    scene.reconcile().await.expect("analysis");
    rolled_back(&scene, &stable, "p99LatencyRatio").await;
}

#[tokio::test]
async fn an_erroring_candidate_is_rolled_back_on_its_error_rate() {
    let (scene, stable) = Scene::new().await;
    scene.open_window().await;
    report(&scene.cluster, CANDIDATE, served(150, 30, 150)).await;
    scene.reconcile().await.expect("analysis");
    rolled_back(&scene, &stable, "errorRate 0.2000 (at most 0.0100)").await;
}

#[tokio::test]
async fn a_crash_looping_candidate_is_rolled_back_on_readiness() {
    let (scene, stable) = Scene::new().await;
    roll(
        &scene.cluster,
        CANDIDATE,
        Pods::CrashLoopBackOff,
        Deadline::Within,
    )
    .await;
    scene.reconcile().await.expect("analysis");
    rolled_back(&scene, &stable, "CrashLoopBackOff").await;
}

#[tokio::test]
async fn a_candidate_worse_on_the_labelled_set_is_rolled_back() {
    let (scene, stable) = Scene::with(true).await;
    roll(&scene.cluster, CANDIDATE, Pods::Serving, Deadline::Within).await;
    let pods = Api::<Pod>::namespaced(scene.cluster.admin.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("pods");
    for pod in pods
        .items
        .iter()
        .filter(|p| p.name_any().starts_with(CANDIDATE))
    {
        scene.cluster.answer_pod(
            &pod.name_any(),
            "/api/v1/evaluations/startup",
            200,
            evaluation(0.70),
        );
    }
    scene.open_window().await;
    let status = scene.status().await;
    assert_eq!(
        status["evaluation"]["accuracy"], 0.8,
        "the stable revision's figures stay during the canary"
    );
    report(&scene.cluster, CANDIDATE, served(150, 0, 150)).await;
    report(&scene.cluster, "photos-upload", mirrored(40, 0)).await;
    scene.reconcile().await.expect("analysis");
    rolled_back(&scene, &stable, "top1Drop 0.1000 (at most 0.0100)").await;
}
