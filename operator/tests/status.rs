//! "Status that never lies": the reconcilers driven through a SIMULATED cluster (see
//! `support/sim.rs`: the deployment controller, the scheduler, the kubelet and each pod's
//! `/readyz`, plus the API server's normalisation of every write in `support/mod.rs`), one
//! test per way a rollout goes, read the way `kubectl rollout status` reads it.

mod support;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sightline_operator::controller::{Context, pipeline};
use sightline_operator::crd::{Device, ImageModel, RecognitionPipeline};
use support::sim::{Deadline, Pods, roll};
use support::{Cluster, NS, full_apis, sample_model, sample_pipeline};

const DEPLOYMENT: &str = "efficientnet-lite0-recognize";
const MODEL: &str = "efficientnet-lite0";
const GOOD: &str = "8a2555a6d5b4dee51bdd253625b5ae2b6f991b71bf477c9404b533d6d7822b69";
const BAD: &str = "0000000000000000000000000000000000000000000000000000000000000000";

async fn create<K>(cluster: &Cluster, object: &K) -> K
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    Api::<K>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), object)
        .await
        .expect("create")
}

async fn reconcile_model(cluster: &Cluster, ctx: &Arc<Context>) -> Result<(), String> {
    support::drive::reconcile_model(cluster, ctx, MODEL).await
}

async fn reconcile_pipeline(cluster: &Cluster, ctx: &Arc<Context>) -> Result<(), String> {
    let p = Api::<RecognitionPipeline>::namespaced(cluster.admin.clone(), NS)
        .get("photos")
        .await
        .expect("pipeline");
    pipeline::reconcile(Arc::new(p), ctx.clone())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The model's status as JSON (so a field the code does not write reads as null).
async fn model_status(cluster: &Cluster) -> Value {
    let m = Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .get(MODEL)
        .await
        .expect("model");
    serde_json::to_value(m.status).expect("json")
}

async fn pipeline_status(cluster: &Cluster) -> Value {
    let p = Api::<RecognitionPipeline>::namespaced(cluster.admin.clone(), NS)
        .get("photos")
        .await
        .expect("pipeline");
    serde_json::to_value(p.status).expect("json")
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or_else(|| panic!("no {type_} condition in {status:#}"))
}

/// `(status, reason)` of a condition.
fn said(status: &Value, type_: &str) -> (String, String) {
    let c = condition(status, type_);
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
    )
}

fn message(status: &Value, type_: &str) -> String {
    condition(status, type_)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Warning events the operator published, as (reason, note).
async fn warnings(cluster: &Cluster) -> Vec<(String, String)> {
    Api::<Event>::namespaced(cluster.admin.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

async fn edit_model(cluster: &Cluster, patch: Value) {
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .patch(MODEL, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("edit the model");
}

/// A new model (the sample without its evaluation, as `edit` leaves it) whose first
/// revision's pods behave as `pods`; its status once the operator has looked.
async fn first_revision(
    cluster: &Cluster,
    ctx: &Arc<Context>,
    edit: impl FnOnce(&mut ImageModel),
    pods: Pods,
) -> Value {
    let mut m = sample_model();
    m.spec.evaluation = None;
    edit(&mut m);
    create(cluster, &m).await;
    reconcile_model(cluster, ctx).await.expect("first");
    roll(cluster, DEPLOYMENT, pods, Deadline::Within).await;
    reconcile_model(cluster, ctx).await.expect("observe");
    model_status(cluster).await
}

/// A model (the sample without its evaluation) whose first revision serves.
async fn serving_model(cluster: &Cluster, ctx: &Arc<Context>) {
    let mut m = sample_model();
    m.spec.evaluation = None;
    create(cluster, &m).await;
    reconcile_model(cluster, ctx).await.expect("first");
    roll(cluster, DEPLOYMENT, Pods::Serving, Deadline::Within).await;
    reconcile_model(cluster, ctx).await.expect("second");
    let status = model_status(cluster).await;
    assert_eq!(said(&status, "Ready").0, "True", "{status:#}");
}

#[tokio::test]
async fn a_good_rollout_is_ready_and_reports_what_the_pods_serve() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let mut m = sample_model();
    m.spec.evaluation = None;
    create(&cluster, &m).await;
    reconcile_model(&cluster, &ctx).await.expect("first");
    let status = model_status(&cluster).await;
    assert_eq!(said(&status, "Ready").0, "False", "no pod yet: {status:#}");
    assert_eq!(said(&status, "Progressing").0, "True", "{status:#}");
    assert!(status["served"].is_null(), "nothing serves yet: {status:#}");

    roll(&cluster, DEPLOYMENT, Pods::Serving, Deadline::Within).await;
    reconcile_model(&cluster, &ctx).await.expect("second");
    let status = model_status(&cluster).await;
    assert_eq!(said(&status, "Ready"), ("True".into(), "Ready".into()));
    assert_eq!(said(&status, "ModelValidated").0, "True", "{status:#}");
    assert_eq!(said(&status, "ModelFetched").0, "True", "{status:#}");
    assert_eq!(said(&status, "Progressing").0, "True", "{status:#}");
    assert_eq!(status["served"]["digest"], GOOD, "{status:#}");
    assert_eq!(status["served"]["device"], "cpu");
    assert_eq!(status["served"]["classes"], 1000);
    assert_eq!(status["served"]["inputShape"], json!([-1, 3, 224, 224]));
    assert_eq!(status["digest"], GOOD, "read from the pods");
    for c in status["conditions"].as_array().expect("conditions") {
        assert_eq!(c["observedGeneration"], 1, "{c}");
    }
}

#[tokio::test]
async fn a_bad_digest_on_revision_2_fails_the_rollout_while_revision_1_serves() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    serving_model(&cluster, &ctx).await;

    edit_model(&cluster, json!({"spec": {"source": {"sha256": BAD}}})).await;
    reconcile_model(&cluster, &ctx)
        .await
        .expect("apply revision 2");
    let status = model_status(&cluster).await;
    assert_eq!(
        said(&status, "Ready").0,
        "False",
        "the new spec does not serve yet: {status:#}"
    );
    roll(
        &cluster,
        DEPLOYMENT,
        Pods::FetchFailed("digest mismatch for https://models.example.com/efficientnet-lite0.onnx: expected sha256 0000…, got 8a25…"),
        Deadline::Within,
    )
    .await;
    reconcile_model(&cluster, &ctx).await.expect("observe");
    let status = model_status(&cluster).await;
    assert_eq!(
        said(&status, "Ready"),
        ("False".into(), "RolloutFailed".into()),
        "{status:#}"
    );
    let ready = message(&status, "Ready");
    assert!(
        ready.contains("digest mismatch"),
        "names the cause: {ready}"
    );
    assert!(
        ready.contains("revision 1") && ready.contains("still serves"),
        "says the previous revision serves: {ready}"
    );
    assert_eq!(
        said(&status, "ModelFetched"),
        ("False".into(), "FetchFailed".into()),
        "from the newest revision's pods, not the old ones: {status:#}"
    );
    assert_eq!(said(&status, "Progressing").0, "False", "{status:#}");
    assert_eq!(
        status["served"]["digest"], GOOD,
        "what serves is still revision 1"
    );
    assert!(
        warnings(&cluster)
            .await
            .iter()
            .any(|(reason, note)| reason == "RolloutFailed" && note.contains("digest mismatch")),
        "a Warning event: {:?}",
        warnings(&cluster).await
    );
}

#[tokio::test]
async fn an_invalid_model_is_named_by_the_servers_own_reason() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let invalid = Pods::NotReady {
        reason: "ModelInvalid",
        message: "model does not fit its configuration: input \"images\" is NHWC \
                  [1,224,224,3], configured NCHW",
    };
    let status = first_revision(&cluster, &ctx, |_| {}, invalid).await;
    assert_eq!(
        said(&status, "ModelValidated"),
        ("False".into(), "ModelInvalid".into()),
        "{status:#}"
    );
    assert!(message(&status, "ModelValidated").contains("NHWC"));
    assert_eq!(
        said(&status, "Ready"),
        ("False".into(), "ModelInvalid".into())
    );
    assert!(
        warnings(&cluster)
            .await
            .iter()
            .any(|(reason, _)| reason == "ModelInvalid"),
        "{:?}",
        warnings(&cluster).await
    );
}

/// The model's pods still behave as `pods` when the Deployment's progress deadline
/// passes; the status once the operator has looked (the rollout failed).
async fn past_the_deadline(cluster: &Cluster, ctx: &Arc<Context>, pods: Pods) -> Value {
    roll(cluster, DEPLOYMENT, pods, Deadline::Exceeded).await;
    reconcile_model(cluster, ctx).await.expect("observe");
    let status = model_status(cluster).await;
    assert_eq!(
        said(&status, "Progressing"),
        ("False".into(), "ProgressDeadlineExceeded".into()),
        "{status:#}"
    );
    status
}

#[tokio::test]
async fn an_image_pull_failure_is_named_at_once_and_fails_at_the_progress_deadline() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let status = first_revision(&cluster, &ctx, |_| {}, Pods::ImagePullBackOff).await;
    assert_eq!(
        said(&status, "Ready"),
        ("False".into(), "ImagePullBackOff".into()),
        "the cause is named at once: {status:#}"
    );
    assert!(
        message(&status, "Ready").contains("sightline-server"),
        "names the image: {}",
        message(&status, "Ready")
    );
    assert_eq!(
        said(&status, "Progressing"),
        ("True".into(), "RollingOut".into()),
        "the kubelet retries the pull: not a failure yet: {status:#}"
    );
    assert!(
        warnings(&cluster).await.is_empty(),
        "no Warning for what may pass: {:?}",
        warnings(&cluster).await
    );
    // Kubernetes gives up: the Deployment's progress deadline passed.
    let status = past_the_deadline(&cluster, &ctx, Pods::ImagePullBackOff).await;
    assert_eq!(said(&status, "Ready").0, "False");
    assert!(
        message(&status, "Ready").contains("ImagePullBackOff"),
        "the deadline's message keeps the cause: {}",
        message(&status, "Ready")
    );
    assert!(
        warnings(&cluster)
            .await
            .iter()
            .any(|(reason, _)| reason == "ProgressDeadlineExceeded")
    );
}

#[tokio::test]
async fn one_failed_pull_of_revision_2_is_progress_while_revision_1_serves() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    serving_model(&cluster, &ctx).await;
    edit_model(&cluster, json!({"spec": {"runtime": {"threads": 3}}})).await;
    reconcile_model(&cluster, &ctx).await.expect("apply");
    roll(
        &cluster,
        DEPLOYMENT,
        Pods::ImagePullFailedOnce,
        Deadline::Within,
    )
    .await;
    reconcile_model(&cluster, &ctx).await.expect("observe");
    let status = model_status(&cluster).await;
    assert_eq!(
        said(&status, "Ready"),
        ("False".into(), "RollingOut".into()),
        "{status:#}"
    );
    let ready = message(&status, "Ready");
    assert!(ready.contains("ErrImagePull"), "named: {ready}");
    assert!(ready.contains("revision 1 still serves"), "{ready}");
    assert_eq!(said(&status, "Progressing").0, "True", "{status:#}");
    assert_eq!(said(&status, "Available").0, "True", "{status:#}");
    assert!(warnings(&cluster).await.is_empty());
    // The next pull works.
    roll(&cluster, DEPLOYMENT, Pods::Serving, Deadline::Within).await;
    reconcile_model(&cluster, &ctx).await.expect("observe");
    let status = model_status(&cluster).await;
    assert_eq!(said(&status, "Ready").0, "True", "{status:#}");
}

#[tokio::test]
async fn a_pod_that_recovered_from_an_oom_kill_serves() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let status = first_revision(&cluster, &ctx, |_| {}, Pods::RecoveredFromOomKill).await;
    assert_eq!(
        said(&status, "Ready"),
        ("True".into(), "Ready".into()),
        "an OOM kill in lastState of a container running again is history: {status:#}"
    );
    assert_eq!(said(&status, "Progressing").0, "True");
}

#[tokio::test]
async fn a_crash_loop_is_named_with_the_containers_last_words() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let status = first_revision(&cluster, &ctx, |_| {}, Pods::CrashLoopBackOff).await;
    assert_eq!(
        said(&status, "Ready"),
        ("False".into(), "CrashLoopBackOff".into()),
        "{status:#}"
    );
    assert!(message(&status, "Ready").contains("permission denied"));
}

#[tokio::test]
async fn no_gpu_node_is_unschedulable_in_the_schedulers_words() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let status = first_revision(
        &cluster,
        &ctx,
        |m| m.spec.runtime.device = Device::Gpu,
        Pods::Unschedulable,
    )
    .await;
    assert_eq!(
        said(&status, "Ready"),
        ("False".into(), "Unschedulable".into()),
        "{status:#}"
    );
    assert!(message(&status, "Ready").contains("Insufficient nvidia.com/gpu"));
    assert_eq!(
        said(&status, "Progressing"),
        ("True".into(), "RollingOut".into()),
        "a cluster autoscaler may be adding the node: {status:#}"
    );
    // The autoscaler's node arrives; the pod is scheduled and serves.
    roll(&cluster, DEPLOYMENT, Pods::Serving, Deadline::Within).await;
    reconcile_model(&cluster, &ctx).await.expect("observe");
    let status = model_status(&cluster).await;
    assert_eq!(said(&status, "Ready").0, "True", "{status:#}");
    assert!(warnings(&cluster).await.is_empty(), "nothing failed");
}

#[tokio::test]
async fn unschedulable_past_the_progress_deadline_fails() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    first_revision(
        &cluster,
        &ctx,
        |m| m.spec.runtime.device = Device::Gpu,
        Pods::Unschedulable,
    )
    .await;
    let status = past_the_deadline(&cluster, &ctx, Pods::Unschedulable).await;
    assert!(message(&status, "Ready").contains("Insufficient nvidia.com/gpu"));
}

#[tokio::test]
async fn a_rollout_past_its_progress_deadline_fails() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    serving_model(&cluster, &ctx).await;
    edit_model(
        &cluster,
        json!({"spec": {"runtime": {"batching": {"maxBatchSize": 16}}}}),
    )
    .await;
    reconcile_model(&cluster, &ctx).await.expect("apply");
    let loading = Pods::NotReady {
        reason: "ModelLoading",
        message: "the model is loading",
    };
    roll(&cluster, DEPLOYMENT, loading.clone(), Deadline::Within).await;
    reconcile_model(&cluster, &ctx).await.expect("observe");
    let status = model_status(&cluster).await;
    assert_eq!(
        said(&status, "Progressing"),
        ("True".into(), "RollingOut".into()),
        "still loading is progress, not failure: {status:#}"
    );
    assert_eq!(
        said(&status, "Ready"),
        ("False".into(), "RollingOut".into())
    );
    roll(&cluster, DEPLOYMENT, loading, Deadline::Exceeded).await;
    reconcile_model(&cluster, &ctx).await.expect("observe");
    let status = model_status(&cluster).await;
    assert_eq!(
        said(&status, "Progressing"),
        ("False".into(), "ProgressDeadlineExceeded".into()),
        "{status:#}"
    );
    assert_eq!(
        said(&status, "Ready"),
        ("False".into(), "RolloutFailed".into())
    );
    assert!(message(&status, "Ready").contains("still serves"));
}

#[tokio::test]
async fn a_quota_refusal_on_apply_reaches_the_status() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    serving_model(&cluster, &ctx).await;
    edit_model(&cluster, json!({"spec": {"runtime": {"replicas": 3}}})).await;
    let quota = "deployments.apps \"efficientnet-lite0-recognize\" is forbidden: exceeded \
                 quota: compute, requested: requests.cpu=2, used: requests.cpu=4, \
                 limited: requests.cpu=4";
    cluster.refuse_writes("deployments", Some((403, quota)));
    let error = reconcile_model(&cluster, &ctx)
        .await
        .expect_err("the apply is refused");
    assert!(error.contains("exceeded quota"), "{error}");
    let status = model_status(&cluster).await;
    assert_eq!(
        said(&status, "Ready"),
        ("False".into(), "ApplyFailed".into()),
        "{status:#}"
    );
    assert!(message(&status, "Ready").contains("exceeded quota"));
    assert_eq!(status["observedGeneration"], 2, "{status:#}");
    assert!(
        warnings(&cluster)
            .await
            .iter()
            .any(|(reason, note)| reason == "ApplyFailed" && note.contains("exceeded quota"))
    );
}

async fn deployment_template(cluster: &Cluster, name: &str) -> Value {
    let d = Api::<Deployment>::namespaced(cluster.admin.clone(), NS)
        .get(name)
        .await
        .expect("deployment");
    serde_json::to_value(d.spec.expect("spec").template).expect("json")
}

/// A user rotates what Secret `name` holds.
async fn rotate(cluster: &Cluster, name: &str, data: Value) {
    Api::<Secret>::namespaced(cluster.admin.clone(), NS)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": data})),
        )
        .await
        .expect("rotate");
}

#[tokio::test]
async fn a_config_change_rolls_the_front_door_without_an_outage_and_a_key_rotation_not_at_all() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    support::sample_secrets(&cluster).await;
    create(&cluster, &sample_model()).await;
    create(&cluster, &sample_pipeline()).await;
    reconcile_pipeline(&cluster, &ctx).await.expect("first");
    roll(&cluster, "photos-upload", Pods::Serving, Deadline::Within).await;
    reconcile_pipeline(&cluster, &ctx)
        .await
        .expect("rolled out");
    let status = pipeline_status(&cluster).await;
    assert_eq!(said(&status, "UploadReady").0, "True", "{status:#}");
    let before = deployment_template(&cluster, "photos-upload").await;

    // The API keys are rotated: the mounted file changes under the running server, which
    // re-reads it; nothing restarts.
    rotate(&cluster, "photos-api-keys", json!({"keys": "azIK"})).await;
    reconcile_pipeline(&cluster, &ctx).await.expect("rotated");
    let rotated = deployment_template(&cluster, "photos-upload").await;
    assert_eq!(
        before, rotated,
        "a key rotation must not restart the front door"
    );

    // Only the rate limit changes: only the ConfigMap's data changes, which the pods read
    // through their environment, so they roll — beside the serving pod (one replica, on
    // the ReadWriteOnce image volume).
    Api::<RecognitionPipeline>::namespaced(cluster.admin.clone(), NS)
        .patch(
            "photos",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"gateway": {"rateLimit": {"requestsPerSecond": 5}}}})),
        )
        .await
        .expect("edit");
    reconcile_pipeline(&cluster, &ctx).await.expect("second");
    let after = deployment_template(&cluster, "photos-upload").await;
    assert_ne!(before, after, "a config change must roll the upload pods");
    let starting = Pods::NotReady {
        reason: "Starting",
        message: "the server is starting",
    };
    roll(&cluster, "photos-upload", starting, Deadline::Within).await;
    reconcile_pipeline(&cluster, &ctx).await.expect("rolling");
    let status = pipeline_status(&cluster).await;
    assert_eq!(
        said(&status, "UploadReady"),
        ("False".into(), "RollingOut".into()),
        "the new config is not served until the pods rolled: {status:#}"
    );
    assert!(
        message(&status, "UploadReady").contains("revision 1 still serves (1 pods ready)"),
        "the only front door keeps serving while its successor starts: {status:#}"
    );

    // The database URL is rotated: the store reads it from its environment, so it rolls.
    let store_before = deployment_template(&cluster, "photos-store").await;
    rotate(
        &cluster,
        "photos-db",
        json!({"url": "cG9zdGdyZXM6Ly9kYjIvcGhvdG9z"}),
    )
    .await;
    reconcile_pipeline(&cluster, &ctx).await.expect("third");
    let store_after = deployment_template(&cluster, "photos-store").await;
    assert_ne!(
        store_before, store_after,
        "a database URL change must roll the store"
    );
}

#[tokio::test]
async fn a_second_reconcile_writes_nothing_after_the_api_servers_normalisation() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let mut m = sample_model();
    m.spec.evaluation = None;
    // Quantities the API server rewrites: 0.5 → 500m, 1024Mi → 1Gi.
    m.spec.runtime.resources = serde_json::from_value(
        json!({"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"memory": "2048Mi"}}),
    )
    .expect("resources");
    create(&cluster, &m).await;
    create(&cluster, &sample_pipeline()).await;
    reconcile_model(&cluster, &ctx).await.expect("model");
    reconcile_pipeline(&cluster, &ctx).await.expect("pipeline");
    for name in [DEPLOYMENT, "photos-upload", "photos-store"] {
        roll(&cluster, name, Pods::Serving, Deadline::Within).await;
    }
    reconcile_model(&cluster, &ctx).await.expect("model");
    reconcile_pipeline(&cluster, &ctx).await.expect("pipeline");
    cluster.take_calls();
    reconcile_model(&cluster, &ctx).await.expect("model again");
    reconcile_pipeline(&cluster, &ctx)
        .await
        .expect("pipeline again");
    let writes = cluster.take_writes();
    assert!(
        writes.is_empty(),
        "an unchanged resource caused writes: {writes:?}"
    );
}

#[tokio::test]
async fn a_users_same_named_service_is_left_alone() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let theirs: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": DEPLOYMENT, "namespace": NS, "labels": {"team": "search"}},
        "spec": {"selector": {"app": "their-app"}, "ports": [{"port": 80}]}}))
    .expect("service");
    create(&cluster, &theirs).await;
    let mut m = sample_model();
    m.spec.evaluation = None;
    create(&cluster, &m).await;
    let _ = reconcile_model(&cluster, &ctx).await;
    let after = Api::<Service>::namespaced(cluster.admin.clone(), NS)
        .get(DEPLOYMENT)
        .await
        .expect("still there");
    assert!(
        after.owner_references().is_empty(),
        "not adopted: {after:#?}"
    );
    assert_eq!(
        after.spec.and_then(|s| s.selector),
        Some([("app".to_string(), "their-app".to_string())].into()),
        "their selector is untouched"
    );
    let status = model_status(&cluster).await;
    assert_eq!(
        said(&status, "Ready"),
        ("False".into(), "ConflictingObject".into()),
        "{status:#}"
    );
    assert!(message(&status, "Ready").contains(&format!("Service {DEPLOYMENT}")));
}

#[tokio::test]
async fn a_bad_evaluation_dataset_leaves_the_model_serving() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    create(&cluster, &sample_model()).await;
    reconcile_model(&cluster, &ctx).await.expect("first");
    let template = deployment_template(&cluster, DEPLOYMENT).await;
    let inits: Vec<String> = template["spec"]["initContainers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !inits.iter().any(|n| n.contains("evaluation")),
        "the dataset must not gate the pod: {inits:?}"
    );
    roll(&cluster, DEPLOYMENT, Pods::Serving, Deadline::Within).await;
    let failed = json!({"id": "startup", "status": "failed", "error": "cannot fetch the \
        evaluation set: https://models.example.com/imagenet-sample.zip answered HTTP 404"});
    support::sim::answer_every_pod(
        &cluster,
        "/api/v1/evaluations/startup",
        200,
        failed.to_string(),
    )
    .await;
    reconcile_model(&cluster, &ctx).await.expect("observe");
    let status = model_status(&cluster).await;
    assert_eq!(said(&status, "Ready").0, "True", "{status:#}");
    assert_eq!(
        said(&status, "Evaluated"),
        ("False".into(), "EvaluationFailed".into())
    );
    assert!(message(&status, "Evaluated").contains("HTTP 404"));
}

#[tokio::test]
async fn a_pipeline_stays_ready_while_its_model_changes_canaries_and_rolls_back() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    support::sample_secrets(&cluster).await;
    let mut m = sample_model();
    m.spec.evaluation = None;
    m.spec.rollout = serde_json::from_value(json!({"strategy": "Canary"})).expect("rollout");
    create(&cluster, &m).await;
    reconcile_model(&cluster, &ctx).await.expect("first");
    roll(&cluster, DEPLOYMENT, Pods::Serving, Deadline::Within).await;
    reconcile_model(&cluster, &ctx).await.expect("serving");
    let mut p = sample_pipeline();
    p.spec.gateway.parent_refs.clear();
    create(&cluster, &p).await;
    reconcile_pipeline(&cluster, &ctx).await.expect("pipeline");
    for name in ["photos-upload", "photos-store"] {
        roll(&cluster, name, Pods::Serving, Deadline::Within).await;
    }
    reconcile_pipeline(&cluster, &ctx).await.expect("pipeline");
    let status = pipeline_status(&cluster).await;
    assert_eq!(said(&status, "ModelAvailable").0, "True", "{status:#}");
    let healthy = |status: &Value| {
        assert_eq!(said(status, "Reconciling").0, "False", "{status:#}");
        assert_eq!(said(status, "Stalled").0, "False", "{status:#}");
    };
    healthy(&status);

    // The model's spec changes: its status describes the old generation until the
    // operator looks, and the stable revision serves throughout.
    edit_model(&cluster, json!({"spec": {"runtime": {"threads": 3}}})).await;
    reconcile_pipeline(&cluster, &ctx).await.expect("pipeline");
    assert_eq!(said(&pipeline_status(&cluster).await, "Ready").0, "True");
    // The canary's candidate starts.
    reconcile_model(&cluster, &ctx).await.expect("candidate");
    let model = model_status(&cluster).await;
    assert_eq!(
        said(&model, "Ready"),
        ("False".into(), "Canary".into()),
        "the spec's revision does not serve all traffic yet: {model:#}"
    );
    assert_eq!(
        said(&model, "Available").0,
        "True",
        "stable serves: {model:#}"
    );
    assert_eq!(said(&model, "Reconciling").0, "True", "{model:#}");
    assert_eq!(said(&model, "Stalled").0, "False", "{model:#}");
    reconcile_pipeline(&cluster, &ctx).await.expect("pipeline");
    let status = pipeline_status(&cluster).await;
    assert_eq!(
        said(&status, "Ready").0,
        "True",
        "a canary of the model is no reason for the pipeline to be unready: {status:#}"
    );
    assert!(
        message(&status, "ModelAvailable").contains("Canary"),
        "says the model is mid-canary: {status:#}"
    );
    healthy(&status);

    // The candidate crash-loops: rolled back, the stable revision serves everything.
    roll(
        &cluster,
        &format!("{DEPLOYMENT}-canary"),
        Pods::CrashLoopBackOff,
        Deadline::Within,
    )
    .await;
    reconcile_model(&cluster, &ctx).await.expect("rollback");
    let model = model_status(&cluster).await;
    assert_eq!(said(&model, "Ready"), ("False".into(), "RolledBack".into()));
    assert_eq!(said(&model, "Available").0, "True", "{model:#}");
    assert_eq!(
        said(&model, "Stalled").0,
        "True",
        "a person must act: {model:#}"
    );
    assert_eq!(said(&model, "Reconciling").0, "False", "{model:#}");
    reconcile_pipeline(&cluster, &ctx).await.expect("pipeline");
    let status = pipeline_status(&cluster).await;
    assert_eq!(said(&status, "Ready").0, "True", "{status:#}");
    healthy(&status);
}

#[tokio::test]
async fn pods_serving_another_digest_than_the_spec_are_not_ready() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let mut m = sample_model();
    m.spec.evaluation = None;
    create(&cluster, &m).await;
    reconcile_model(&cluster, &ctx).await.expect("first");
    roll(&cluster, DEPLOYMENT, Pods::Serving, Deadline::Within).await;
    // A server that loaded another file and does not check the digest itself (an older
    // image given the spec's digest by nothing) answers ready with what it loaded.
    let other = json!({"status": "ready", "model": {"name": MODEL, "sha256": BAD,
        "device": "cpu", "classes": 1000, "input_shape": [-1, 3, 224, 224]}});
    support::sim::answer_every_pod(&cluster, "/readyz", 200, other.to_string()).await;
    reconcile_model(&cluster, &ctx).await.expect("observe");
    let status = model_status(&cluster).await;
    assert_eq!(
        said(&status, "ModelValidated"),
        ("False".into(), "DigestMismatch".into()),
        "{status:#}"
    );
    assert_eq!(
        said(&status, "Ready"),
        ("False".into(), "DigestMismatch".into()),
        "the spec's model is not what serves: {status:#}"
    );
}

#[tokio::test]
async fn a_one_replica_gpu_model_rolls_without_an_outage() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let status = first_revision(
        &cluster,
        &ctx,
        |m| {
            m.spec.runtime.device = Device::Gpu;
            m.spec.runtime.replicas = Some(1);
        },
        Pods::Serving,
    )
    .await;
    assert_eq!(said(&status, "Ready").0, "True", "{status:#}");
    edit_model(&cluster, json!({"spec": {"runtime": {"threads": 3}}})).await;
    reconcile_model(&cluster, &ctx).await.expect("apply");
    // The deployment controller applies the Deployment's own strategy while the new pod
    // loads its model.
    let loading = Pods::NotReady {
        reason: "ModelLoading",
        message: "the model is loading",
    };
    roll(&cluster, DEPLOYMENT, loading, Deadline::Within).await;
    reconcile_model(&cluster, &ctx).await.expect("observe");
    let status = model_status(&cluster).await;
    assert_eq!(
        said(&status, "Available"),
        ("True".into(), "Available".into()),
        "the only GPU pod keeps serving while its successor loads: {status:#}"
    );
    assert!(
        message(&status, "Ready").contains("revision 1 still serves (1 pods ready)"),
        "{status:#}"
    );
}

#[tokio::test]
async fn reverting_to_a_spec_seen_before_reuses_its_revision_as_the_newest() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    serving_model(&cluster, &ctx).await;
    edit_model(&cluster, json!({"spec": {"runtime": {"threads": 3}}})).await;
    reconcile_model(&cluster, &ctx)
        .await
        .expect("apply revision 2");
    roll(
        &cluster,
        DEPLOYMENT,
        Pods::CrashLoopBackOff,
        Deadline::Within,
    )
    .await;
    reconcile_model(&cluster, &ctx).await.expect("observe");
    let status = model_status(&cluster).await;
    assert_eq!(said(&status, "Ready").1, "RolloutFailed", "{status:#}");

    // Back to the spec of revision 1 (a revert in Git). Before the deployment controller
    // has looked, the newest ReplicaSet is the one whose template is the Deployment's —
    // revision 1's, though revision 2 is numbered higher.
    edit_model(&cluster, json!({"spec": {"runtime": {"threads": 2}}})).await;
    reconcile_model(&cluster, &ctx).await.expect("revert");
    let status = model_status(&cluster).await;
    assert!(
        message(&status, "Ready").starts_with("revision 1: "),
        "{status:#}"
    );
    // The controller reuses that ReplicaSet and numbers it 3, as `kubectl rollout
    // history` shows.
    roll(&cluster, DEPLOYMENT, Pods::Serving, Deadline::Within).await;
    reconcile_model(&cluster, &ctx).await.expect("observe");
    let status = model_status(&cluster).await;
    assert_eq!(said(&status, "Ready"), ("True".into(), "Ready".into()));
    assert!(
        message(&status, "Ready").starts_with("revision 3 serves all traffic"),
        "{status:#}"
    );
    assert_eq!(status["served"]["revision"], 3, "{status:#}");
}
