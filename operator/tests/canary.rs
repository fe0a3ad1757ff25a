//! Canary rollouts of a model through the SIMULATED cluster (support/sim.rs) with the
//! pods' own answers simulated from traffic that can happen (support/scrape_sim.rs):
//! recognitions enter through the front door, which routes them by the traffic file it
//! applies — once the kubelet projected it — so at a step of 100 % stable serves nothing
//! and nothing is mirrored. A good candidate is promoted through `[10, 50, 100]`; bad ones
//! are rolled back at the first failed check (never on a sample too small to say), or at
//! the step's deadline; windows survive restarts, pods leaving and failed scrapes; a
//! window opens, and a candidate is deleted, only once every front door applies the
//! traffic generation that allows it. The stable revision is never disturbed.

mod support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sightline_operator::controller::{Context, model};
use sightline_operator::crd::ImageModel;
use support::scrape_sim::Fleet;
use support::sim::{Deadline, Pods, roll};
use support::{Cluster, NS, TestClock, full_apis, sample_model};

const MODEL: &str = "efficientnet-lite0";
const STABLE: &str = "efficientnet-lite0-recognize";
const CANDIDATE: &str = "efficientnet-lite0-recognize-canary";

fn evaluation(top1: f64) -> String {
    json!({"id": "startup", "status": "succeeded", "report": {
        "images": 500, "accuracy": top1, "top5_accuracy": 0.95,
        "macro": {"precision": 0.8, "recall": 0.8, "f1": 0.8}}})
    .to_string()
}

/// The rollout most tests use: three steps of a minute, 100 requests each, 10 % mirrored.
fn three_steps() -> Value {
    json!({"strategy": "Canary", "steps": [10, 50, 100], "stepDuration": "60s",
           "minRequestsPerStep": 100, "mirrorPercent": 10})
}

struct Scene {
    cluster: Cluster,
    ctx: Arc<Context>,
    clock: Arc<TestClock>,
    fleet: Fleet,
    /// The stable Deployment's pod template before the new revision.
    stable: Value,
}

impl Scene {
    async fn reconcile(&self) {
        let m = self.cluster.model(MODEL).await;
        model::reconcile(Arc::new(m), self.ctx.clone())
            .await
            .expect("reconcile");
    }

    async fn status(&self) -> Value {
        self.cluster.model_status(MODEL).await
    }

    async fn rollout(&self) -> Value {
        self.status().await["rollout"].clone()
    }

    /// The condition of `type_`.
    async fn condition(&self, type_: &str) -> Value {
        self.cluster.model_condition(MODEL, type_).await
    }

    async fn template(&self, name: &str) -> Option<Value> {
        self.cluster.template(name).await
    }

    /// What the operator wrote for the front doors.
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

    /// A serving model (with the stable revision's evaluation recorded when
    /// `evaluated`), a pipeline whose front door serves, then a spec change to `rollout`
    /// (plus `edit`): the candidate is created and starts, with no traffic.
    async fn new(rollout: Value) -> Scene {
        Scene::with(rollout, true, json!({})).await
    }

    async fn with(rollout: Value, evaluated: bool, edit: Value) -> Scene {
        let cluster = Cluster::new().await;
        let clock = TestClock::new();
        let ctx = cluster.context_with(full_apis(), clock.clone());
        let mut m = sample_model();
        if !evaluated {
            m.spec.evaluation = None;
        }
        m.spec.rollout = serde_json::from_value(rollout).expect("rollout");
        Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
            .create(&PostParams::default(), &m)
            .await
            .expect("model");
        let fleet = Fleet::new(clock.clone(), MODEL, "photos");
        let mut scene = Scene {
            cluster,
            ctx,
            clock,
            fleet,
            stable: Value::Null,
        };
        scene.reconcile().await;
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
        scene.reconcile().await;
        if evaluated {
            scene.reconcile().await;
            assert_eq!(scene.status().await["evaluation"]["accuracy"], 0.8);
        }
        let ready = scene.condition("Ready").await;
        assert_eq!(ready["status"], "True", "{ready:#}");

        support::drive::sample_pipeline_serving(&scene.cluster, &scene.ctx).await;
        scene.fleet.sync(&scene.cluster).await;
        scene.stable = scene.template(STABLE).await.expect("stable");

        // A new revision: the stable Deployment stays, the candidate appears.
        let mut patch = json!({"spec": {"runtime": {"batching": {"maxBatchSize": 16}}}});
        if let Some(extra) = edit.as_object() {
            for (k, v) in extra {
                patch["spec"][k] = v.clone();
            }
        }
        Api::<ImageModel>::namespaced(scene.cluster.admin.clone(), NS)
            .patch(MODEL, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("edit");
        scene.reconcile().await;
        assert_eq!(scene.template(STABLE).await, Some(scene.stable.clone()));
        assert!(scene.template(CANDIDATE).await.is_some());
        assert_eq!(scene.rollout().await["candidateWeight"], 0);
        assert_eq!(scene.condition("Ready").await["reason"], "Canary");
        assert_eq!(scene.traffic().await["candidateWeight"], 0);
        scene
    }

    /// The candidate's pods serve (and evaluated the labelled set as well as stable): the
    /// first step's traffic is written.
    async fn candidate_serves(&mut self) {
        roll(&self.cluster, CANDIDATE, Pods::Serving, Deadline::Within).await;
        for pod in self.fleet_pods(CANDIDATE).await {
            self.cluster
                .answer_pod(&pod, "/api/v1/evaluations/startup", 200, evaluation(0.80));
        }
        self.fleet.sync(&self.cluster).await;
        self.reconcile().await;
        let rollout = self.rollout().await;
        assert_eq!(rollout["candidateWeight"], 10, "{rollout:#}");
        let traffic = self.traffic().await;
        assert_eq!(traffic["candidateWeight"], 10);
        assert_eq!(
            traffic["candidate"],
            "http://efficientnet-lite0-recognize-canary.sightline-demo.svc:8080"
        );
    }

    async fn fleet_pods(&self, prefix: &str) -> Vec<String> {
        Api::<Pod>::namespaced(self.cluster.admin.clone(), NS)
            .list(&ListParams::default())
            .await
            .expect("pods")
            .items
            .iter()
            .map(|p| p.name_any())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    /// The kubelets project the traffic ConfigMap into the front doors; the window opens.
    async fn front_doors_apply(&mut self) {
        self.fleet.project_traffic(&self.cluster).await;
        self.reconcile().await;
        let rollout = self.rollout().await;
        assert!(rollout["stepStartedAt"].is_string(), "{rollout:#}");
    }

    /// `n` recognitions through the front door, then `seconds` later a reconcile.
    async fn serve(&mut self, n: u64, seconds: i64) {
        self.fleet.serve(&self.cluster, n);
        self.clock.advance(seconds);
        self.reconcile().await;
    }

    /// The canary is at step `index` with `weight`, every check of the previous window
    /// having passed (or been skipped).
    async fn at_step(&self, index: u64, weight: u64) {
        let rollout = self.rollout().await;
        assert_eq!(
            (&rollout["step"], &rollout["candidateWeight"]),
            (&json!(index), &json!(weight)),
            "{rollout:#}"
        );
        let checks = rollout["checks"].as_array().expect("checks");
        assert!(
            checks
                .iter()
                .all(|c| c["status"] == "Passed" || c["status"] == "Skipped"),
            "{checks:#?}"
        );
    }

    fn check(rollout: &Value, name: &str) -> Value {
        rollout["checks"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no {name} in {rollout:#}"))
    }

    /// Steps 1 and 2 of [`three_steps`] pass; the canary is at 100 %, its window open.
    async fn through_two_steps(&mut self) {
        self.candidate_serves().await;
        self.front_doors_apply().await;
        // 10 %: 100 to the candidate, 900 to stable, 90 of those mirrored.
        self.serve(1000, 61).await;
        self.at_step(1, 50).await;
        self.front_doors_apply().await;
        // 50 %: 100 each, 10 mirrored.
        self.serve(200, 61).await;
        self.at_step(2, 100).await;
        self.front_doors_apply().await;
    }

    /// Promoted: the stable Deployment takes the new revision; the candidate keeps its
    /// traffic until it does, and goes once the front doors apply the stable-only file.
    async fn promoted(&mut self) {
        assert_eq!(self.rollout().await["phase"], "Promoting");
        let promoted = self.template(STABLE).await.expect("stable");
        assert_ne!(
            promoted, self.stable,
            "the stable Deployment runs the new revision"
        );
        assert_eq!(self.traffic().await["candidateWeight"], 100);
        roll(&self.cluster, STABLE, Pods::Serving, Deadline::Within).await;
        self.fleet.sync(&self.cluster).await;
        self.reconcile().await;
        let status = self.status().await;
        assert_eq!(status["rollout"]["phase"], "Promoted", "{status:#}");
        assert_eq!(status["rollout"]["history"][0]["outcome"], "Promoted");
        assert_eq!(
            self.condition("Ready").await["status"],
            "True",
            "{status:#}"
        );
        assert_eq!(self.traffic().await["candidateWeight"], 0);
        self.candidate_goes_once_the_front_doors_apply().await;
    }

    /// The candidate stays while a front door may still send it requests; it goes in the
    /// first reconcile after every front door applies the stable-only generation.
    async fn candidate_goes_once_the_front_doors_apply(&mut self) {
        let written = self.traffic().await["generation"].clone();
        let pending = self.rollout().await["pendingGeneration"].clone();
        if written.as_u64() <= Some(self.fleet.applied.generation) {
            // The front doors never applied a file that sent the candidate anything.
            assert_eq!(pending, Value::Null);
            assert!(
                self.template(CANDIDATE).await.is_none(),
                "candidate removed"
            );
            return;
        }
        assert_eq!(pending, written, "waits for this file");
        self.reconcile().await;
        assert!(
            self.template(CANDIDATE).await.is_some(),
            "a front door still applies the previous traffic file"
        );
        self.fleet.project_traffic(&self.cluster).await;
        self.reconcile().await;
        assert!(
            self.template(CANDIDATE).await.is_none(),
            "candidate removed"
        );
        assert_eq!(self.rollout().await["pendingGeneration"], Value::Null);
    }

    /// Rolled back on `check`: traffic back at once, the candidate removed once the front
    /// doors apply that, the stable revision never disturbed, and it stays rolled back.
    async fn rolled_back(&mut self, reason: &str, check: &str) {
        let rollout = self.rollout().await;
        assert_eq!(rollout["phase"], "RolledBack", "{rollout:#}");
        assert_eq!(rollout["history"][0]["reason"], reason);
        let ready = self.condition("Ready").await;
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("False"), &json!("RolledBack"))
        );
        let message = ready["message"].as_str().unwrap_or_default();
        assert!(message.contains(check), "{message}");
        assert_eq!(self.condition("Progressing").await["reason"], reason);
        assert_eq!(
            self.traffic().await["candidateWeight"],
            0,
            "traffic back at once"
        );
        assert!(self.warnings().await.iter().any(|r| r == "RolledBack"));
        self.candidate_goes_once_the_front_doors_apply().await;
        assert_eq!(self.template(STABLE).await, Some(self.stable.clone()));
        self.reconcile().await;
        assert!(self.template(CANDIDATE).await.is_none());
        assert_eq!(self.rollout().await["phase"], "RolledBack");
    }
}

#[tokio::test]
async fn a_good_candidate_is_promoted_through_10_50_and_100_percent() {
    let mut scene = Scene::new(three_steps()).await;
    scene.through_two_steps().await;
    // 100 %: every recognition to the candidate; stable serves none, nothing mirrored.
    scene.serve(100, 61).await;
    let rollout = scene.rollout().await;
    let p99 = Scene::check(&rollout, "p99LatencyRatio");
    assert_eq!(
        p99["status"], "Passed",
        "judged against the stable figures of step 2"
    );
    assert_eq!(p99["measured"], 1.0);
    assert_eq!(Scene::check(&rollout, "agreement")["status"], "Skipped");
    assert_eq!(Scene::check(&rollout, "top1Drop")["status"], "Passed");
    scene.promoted().await;
}

#[tokio::test]
async fn a_window_opens_only_once_every_front_door_applies_its_generation() {
    let mut scene = Scene::new(three_steps()).await;
    scene.candidate_serves().await;
    let rollout = scene.rollout().await;
    let generation = rollout["pendingGeneration"].as_u64().expect("pending");
    assert_eq!(scene.traffic().await["generation"], generation);
    assert!(scene.fleet.applied.generation < generation);
    // The kubelets have not projected the ConfigMap: the front doors still send
    // everything to stable, and the window does not open however long that lasts.
    scene.serve(1000, 61).await;
    let rollout = scene.rollout().await;
    assert_eq!(rollout["stepStartedAt"], Value::Null, "{rollout:#}");
    let message = scene.condition("Progressing").await["message"].clone();
    let door = scene.fleet.pods("door")[0].clone();
    assert!(
        message.as_str().is_some_and(|m| m.contains(&format!(
            "front doors have not applied traffic generation {generation}: {door} (applies generation"
        ))),
        "{message}"
    );
    scene.front_doors_apply().await;
    // The window counts from here: what went before is not in it.
    scene.serve(1000, 61).await;
    scene.at_step(1, 50).await;
}

#[tokio::test]
async fn a_candidate_slow_under_all_the_traffic_is_rolled_back_at_the_last_step() {
    let mut scene = Scene::new(three_steps()).await;
    scene.through_two_steps().await;
    // Fine at 10 % and 50 %; at 100 % every request takes 50 ms (the stable p99 of
    // step 2 is under 16 ms).
    scene.fleet.candidate.latency = 0.05;
    scene.serve(20, 10).await;
    scene
        .rolled_back("CheckFailed", "check failed: p99LatencyRatio")
        .await;
}

#[tokio::test]
async fn without_a_stable_evaluation_the_labelled_set_check_is_skipped() {
    // The labelled set is added in the same change: the stable pods never evaluated it.
    let edit = json!({"evaluation": {"dataset": {"uri": "https://models.example.com/set.zip"}}});
    let mut scene = Scene::with(three_steps(), false, edit).await;
    roll(&scene.cluster, CANDIDATE, Pods::Serving, Deadline::Within).await;
    support::sim::answer_every_pod(
        &scene.cluster,
        "/api/v1/evaluations/startup",
        200,
        evaluation(0.79),
    )
    .await;
    scene.fleet.sync(&scene.cluster).await;
    scene.reconcile().await;
    scene.front_doors_apply().await;
    scene.serve(1000, 61).await;
    scene.at_step(1, 50).await;
    let top1 = Scene::check(&scene.rollout().await, "top1Drop");
    assert_eq!(top1["status"], "Skipped");
    assert!(
        top1["note"]
            .as_str()
            .is_some_and(|n| n.contains("status.evaluation")),
        "{top1}"
    );
}

#[tokio::test]
async fn a_step_that_does_not_conclude_rolls_back_at_its_deadline() {
    let mut rollout = three_steps();
    rollout["stepDeadline"] = json!("5m");
    let mut scene = Scene::new(rollout).await;
    scene.candidate_serves().await;
    scene.front_doors_apply().await;
    // Too little traffic: 30 of the 100 candidate requests the step needs.
    scene.serve(300, 240).await;
    assert_eq!(scene.rollout().await["phase"], "Progressing");
    scene.serve(0, 60).await;
    scene
        .rolled_back(
            "CanaryDeadlineExceeded",
            "step 1 of 3 (10%) did not conclude within 5m: 30 of 100 candidate requests",
        )
        .await;
}

#[tokio::test]
async fn front_doors_that_never_apply_a_step_end_in_its_deadline() {
    let mut rollout = three_steps();
    rollout["stepDeadline"] = json!("5m");
    let mut scene = Scene::new(rollout).await;
    scene.candidate_serves().await;
    scene.serve(1000, 300).await;
    let door = scene.fleet.pods("door")[0].clone();
    scene
        .rolled_back(
            "CanaryDeadlineExceeded",
            &format!("did not conclude within 5m: front doors have not applied traffic generation 2: {door}"),
        )
        .await;
}

#[tokio::test]
async fn one_error_among_the_first_requests_is_no_evidence() {
    let mut scene = Scene::new(three_steps()).await;
    // The candidate's first answer is a 5xx (a cold request), then none for a thousand.
    scene.fleet.candidate.error_every = Some(1000);
    scene.candidate_serves().await;
    scene.front_doors_apply().await;
    // 20 candidate requests, one 5xx: 5 %, far above 1 %, but a candidate at 1 % shows
    // that 18 % of the time.
    scene.serve(200, 10).await;
    let rollout = scene.rollout().await;
    assert_eq!(rollout["phase"], "Progressing", "{rollout:#}");
    let errors = Scene::check(&rollout, "errorRate");
    assert_eq!(
        (&errors["status"], &errors["measured"]),
        (&json!("Pending"), &json!(0.05))
    );
    // 120 requests, still one 5xx: below 1 %, and the step passes.
    scene.serve(1000, 51).await;
    scene.at_step(1, 50).await;
}

#[tokio::test]
async fn a_window_counts_across_a_restart() {
    let mut scene = Scene::new(three_steps()).await;
    // One 5xx in every hundred candidate requests: exactly at maxErrorRate.
    scene.fleet.candidate.error_every = Some(100);
    scene.candidate_serves().await;
    scene.front_doors_apply().await;
    scene.serve(1000, 61).await;
    scene.at_step(1, 50).await;
    scene.front_doors_apply().await;
    // Step 2: 100 candidate requests (one 5xx), then the candidate pod that answered it
    // restarts, losing its counters, and another 100 (one 5xx).
    scene.serve(200, 0).await;
    let restarted = scene.fleet.pods("candidate")[0].clone();
    scene.fleet.restart(&scene.cluster, &restarted);
    scene.serve(200, 61).await;
    scene.at_step(2, 100).await;
    let errors = Scene::check(&scene.rollout().await, "errorRate");
    assert_eq!(errors["measured"], 0.01, "2 in 200: {errors}");
}

#[tokio::test]
async fn a_pod_that_leaves_keeps_what_it_served() {
    let mut scene = Scene::new(three_steps()).await;
    scene.candidate_serves().await;
    scene.front_doors_apply().await;
    scene.serve(1000, 61).await;
    scene.at_step(1, 50).await;
    scene.front_doors_apply().await;
    // Step 2: 50 candidate requests on each pod; then one pod is scaled away, and the
    // other serves 50 more. 100 in the window.
    scene.serve(100, 0).await;
    let leaving = scene.fleet.pods("candidate")[1].clone();
    scene.fleet.remove_pod(&scene.cluster, &leaving).await;
    scene.serve(100, 61).await;
    scene.at_step(2, 100).await;
}

#[tokio::test]
async fn a_failed_scrape_holds_the_window_and_says_so() {
    let mut scene = Scene::new(three_steps()).await;
    scene.candidate_serves().await;
    scene.front_doors_apply().await;
    scene.fleet.serve(&scene.cluster, 1000);
    let silent = scene.fleet.pods("stable")[0].clone();
    scene.fleet.fail_scrapes(&scene.cluster, &silent, true);
    scene.serve(0, 61).await;
    let rollout = scene.rollout().await;
    assert_eq!(
        rollout["step"], 0,
        "an incomplete window does not advance: {rollout:#}"
    );
    let message = scene.condition("Progressing").await["message"].clone();
    assert!(
        message.as_str().is_some_and(|m| m.contains(&format!(
            "incomplete: /metrics unread from {silent} (HTTP 503)"
        ))),
        "{message}"
    );
    scene.fleet.fail_scrapes(&scene.cluster, &silent, false);
    scene.reconcile().await;
    scene.at_step(1, 50).await;
}

#[tokio::test]
async fn a_random_weights_candidate_is_rolled_back_on_agreement() {
    let mut scene = Scene::new(three_steps()).await;
    scene.fleet.candidate.agrees = false;
    scene.candidate_serves().await;
    scene.front_doors_apply().await;
    // 90 to stable, 9 of them mirrored: all disagree.
    scene.serve(100, 10).await;
    scene
        .rolled_back("CheckFailed", "agreement 0.0000 (at least 0.9500)")
        .await;
}

#[tokio::test]
async fn a_slow_candidate_is_rolled_back_on_p99() {
    let mut scene = Scene::new(three_steps()).await;
    scene.fleet.candidate.latency = 0.05;
    scene.candidate_serves().await;
    scene.front_doors_apply().await;
    scene.serve(1000, 10).await;
    scene.rolled_back("CheckFailed", "p99LatencyRatio").await;
}

#[tokio::test]
async fn an_erroring_candidate_is_rolled_back_on_its_error_rate() {
    let mut scene = Scene::new(three_steps()).await;
    scene.fleet.candidate.error_every = Some(5);
    scene.candidate_serves().await;
    scene.front_doors_apply().await;
    scene.serve(300, 10).await;
    scene
        .rolled_back("CheckFailed", "errorRate 0.2000 (at most 0.0100)")
        .await;
}

#[tokio::test]
async fn a_crash_looping_candidate_is_rolled_back_on_readiness() {
    let mut scene = Scene::new(three_steps()).await;
    roll(
        &scene.cluster,
        CANDIDATE,
        Pods::CrashLoopBackOff,
        Deadline::Within,
    )
    .await;
    scene.reconcile().await;
    scene
        .rolled_back("CandidateFailed", "CrashLoopBackOff")
        .await;
}

#[tokio::test]
async fn a_candidate_worse_on_the_labelled_set_is_rolled_back() {
    let mut scene = Scene::new(three_steps()).await;
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
    scene.fleet.sync(&scene.cluster).await;
    scene.reconcile().await;
    scene.front_doors_apply().await;
    assert_eq!(
        scene.status().await["evaluation"]["accuracy"],
        0.8,
        "the stable revision's figures stay during the canary"
    );
    scene.serve(100, 10).await;
    scene
        .rolled_back("CheckFailed", "top1Drop 0.1000 (at most 0.0100)")
        .await;
}

#[test]
fn the_first_step_must_leave_stable_some_traffic() {
    use sightline_operator::crd::RolloutSpec;
    let spec = |steps: Value| json!({"strategy": "Canary", "steps": steps});
    assert!(RolloutSpec::validate_cel(&spec(json!([10, 50, 100])), None).is_ok());
    assert!(RolloutSpec::validate_cel(&spec(json!([99])), None).is_ok());
    assert!(RolloutSpec::validate_cel(&json!({"strategy": "Canary"}), None).is_ok());
    let refused = RolloutSpec::validate_cel(&spec(json!([100])), None).expect_err("[100]");
    assert!(
        format!("{refused:?}").contains("the first step must leave the stable revision"),
        "{refused:?}"
    );
    assert!(RolloutSpec::validate_cel(&spec(json!([100, 100])), None).is_err());
}

/// The sample's model file, which the stable revision serves.
const STABLE_DIGEST: &str = "8a2555a6d5b4dee51bdd253625b5ae2b6f991b71bf477c9404b533d6d7822b69";
/// Another model file, which the candidate serves.
const NEW_DIGEST: &str = "1b2555a6d5b4dee51bdd253625b5ae2b6f991b71bf477c9404b533d6d7822b00";

/// A canary of another model file judged on live feedback too (`minFeedbackSamples` 100),
/// the operator's key in the pipeline's keys Secret; the candidate serves, the first
/// window open. The store answers `stable` and `candidate` as (answers, right).
async fn judged_on_feedback(analysis: Value, stable: (u64, u64), candidate: (u64, u64)) -> Scene {
    let mut rollout = three_steps();
    rollout["analysis"] = analysis;
    let edit = json!({"source": {"sha256": NEW_DIGEST},
        "monitoring": {"minFeedbackSamples": 100}});
    let mut scene = Scene::with(rollout, false, edit).await;
    support::store_sim::give_operator_key(&scene.cluster).await;
    feedback(&scene, stable, candidate);
    scene.candidate_serves().await;
    scene.front_doors_apply().await;
    scene
}

/// What the store answers now, through the front door, for each revision's model.
fn feedback(scene: &Scene, stable: (u64, u64), candidate: (u64, u64)) {
    use support::store_sim::{quality_answer, quality_path, store_answers};
    let door = scene.fleet.pods("door")[0].clone();
    for (digest, (answers, right)) in [(STABLE_DIGEST, stable), (NEW_DIGEST, candidate)] {
        let body = quality_answer(MODEL, &[(digest, answers, right)]);
        store_answers(&scene.cluster, &door, &quality_path(MODEL, digest), body);
    }
}

#[tokio::test]
async fn a_candidate_the_users_say_is_wrong_is_rolled_back_once_the_feedback_suffices() {
    let analysis = json!({"minLiveAccuracy": 0.9});
    // Three answers of four wrong, but only 40 of them: the check waits, the step holds.
    let mut scene = judged_on_feedback(analysis, (1000, 940), (40, 10)).await;
    scene.serve(1000, 61).await;
    let rollout = scene.rollout().await;
    assert_eq!(rollout["step"], 0, "held: {rollout:#}");
    let live = Scene::check(&rollout, "liveAccuracy");
    assert_eq!(
        (&live["status"], &live["note"]),
        (
            &json!("Pending"),
            &json!("40 of 100 feedback answers on the candidate's model")
        ),
        "{rollout:#}"
    );
    assert_eq!(Scene::check(&rollout, "errorRate")["status"], "Passed");
    // More feedback: half of 200 answers wrong is far beyond chance for a model at 0.9.
    feedback(&scene, (1000, 940), (200, 100));
    scene.serve(100, 10).await;
    scene
        .rolled_back("CheckFailed", "liveAccuracy 0.5000 (at least 0.9000)")
        .await;
}

#[tokio::test]
async fn a_candidate_as_right_as_stable_on_feedback_advances() {
    let analysis = json!({"minLiveAccuracy": 0.85, "maxLiveAccuracyDrop": 0.02});
    let mut scene = judged_on_feedback(analysis, (1000, 940), (300, 285)).await;
    scene.serve(1000, 61).await;
    scene.at_step(1, 50).await;
    let rollout = scene.rollout().await;
    let drop = Scene::check(&rollout, "liveAccuracyDrop");
    assert_eq!(drop["status"], "Passed", "{rollout:#}");
    let measured = drop["measured"].as_f64().expect("a drop");
    assert!((measured + 0.01).abs() < 1e-12, "0.94 - 0.95: {measured}");
    assert_eq!(Scene::check(&rollout, "liveAccuracy")["measured"], 0.95);
}
