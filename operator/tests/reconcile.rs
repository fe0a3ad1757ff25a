//! The reconcilers against an in-memory API server (kube-fake-client has no watch, so the
//! tests call `reconcile` directly, as the controller would after each event).

mod support;

use std::sync::Arc;

use gateway_api::apis::standard::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use sightline_operator::apply::FIELD_MANAGER;
use sightline_operator::build::monitoring::ServiceMonitor;
use sightline_operator::controller::{ClusterApis, Context, Error, error_policy, model, pipeline};
use sightline_operator::crd::{ImageModel, RecognitionPipeline};
use support::sim::{Deadline, Pods, roll};
use support::{Cluster, NS, full_apis, sample_model, sample_pipeline};

async fn create<K>(cluster: &Cluster, object: &K) -> K
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    Api::<K>::namespaced(cluster.client.clone(), NS)
        .create(&PostParams::default(), object)
        .await
        .expect("create")
}

async fn get<K>(cluster: &Cluster, name: &str) -> Option<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    Api::<K>::namespaced(cluster.client.clone(), NS)
        .get_opt(name)
        .await
        .expect("get")
}

async fn reconcile_model(
    cluster: &Cluster,
    ctx: &Arc<Context>,
    name: &str,
) -> Result<Action, Error> {
    let m: ImageModel = get(cluster, name).await.expect("model exists");
    model::reconcile(Arc::new(m), ctx.clone()).await
}

async fn reconcile_pipeline(
    cluster: &Cluster,
    ctx: &Arc<Context>,
    name: &str,
) -> Result<Action, Error> {
    let p: RecognitionPipeline = get(cluster, name).await.expect("pipeline exists");
    pipeline::reconcile(Arc::new(p), ctx.clone()).await
}

fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:#?}"))
}

async fn model_conditions(
    cluster: &Cluster,
    name: &str,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let m: ImageModel = get(cluster, name).await.expect("model");
    m.status.expect("status written").conditions
}

async fn pipeline_conditions(
    cluster: &Cluster,
    name: &str,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let p: RecognitionPipeline = get(cluster, name).await.expect("pipeline");
    p.status.expect("status written").conditions
}

#[tokio::test]
async fn a_new_model_gets_its_children_and_an_honest_status() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let m = create(&cluster, &sample_model()).await;
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("reconcile");

    let name = "efficientnet-lite0-recognize";
    let deployment: Deployment = get(&cluster, name).await.expect("Deployment created");
    let service: Service = get(&cluster, name).await.expect("Service created");
    assert!(
        get::<NetworkPolicy>(&cluster, name).await.is_some(),
        "NetworkPolicy"
    );
    for owner in [deployment.owner_references(), service.owner_references()] {
        assert_eq!(owner[0].uid, m.uid().expect("uid"), "owned by the model");
        assert_eq!(owner[0].controller, Some(true));
    }
    let conditions = model_conditions(&cluster, &m.name_any()).await;
    let ready = condition(&conditions, "Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.observed_generation, m.metadata.generation);
    assert_eq!(condition(&conditions, "ModelFetched").reason, "Fetching");
    assert_eq!(condition(&conditions, "Available").reason, "NotReady");
    let progressing = condition(&conditions, "Progressing");
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("True", "RollingOut")
    );
}

#[tokio::test]
async fn the_model_becomes_ready_when_fetched_and_available_then_a_second_reconcile_writes_nothing()
{
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let m = create(&cluster, &sample_model()).await;
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("first");
    roll(
        &cluster,
        "efficientnet-lite0-recognize",
        Pods::Serving,
        Deadline::Within,
    )
    .await;
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("second");
    let conditions = model_conditions(&cluster, &m.name_any()).await;
    assert_eq!(
        condition(&conditions, "Ready").status,
        "True",
        "{conditions:#?}"
    );
    let status = get::<ImageModel>(&cluster, &m.name_any())
        .await
        .and_then(|m| m.status)
        .expect("status");
    assert_eq!(status.ready_replicas, Some(2));
    assert_eq!(
        status.digest.as_deref(),
        m.spec.source.model.sha256.as_deref()
    );

    cluster.take_calls();
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("third");
    let writes = cluster.take_writes();
    assert!(
        writes.is_empty(),
        "an unchanged model caused writes: {writes:?}"
    );
}

#[tokio::test]
async fn a_failed_fetch_is_reported_with_the_containers_own_words() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let m = create(&cluster, &sample_model()).await;
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("first");
    roll(
        &cluster,
        "efficientnet-lite0-recognize",
        Pods::FetchFailed("sha256 mismatch: expected 8a25…, got 0000…"),
        Deadline::Within,
    )
    .await;
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("reconcile");
    let conditions = model_conditions(&cluster, &m.name_any()).await;
    let fetched = condition(&conditions, "ModelFetched");
    assert_eq!(fetched.reason, "FetchFailed");
    assert!(fetched.message.contains("sha256 mismatch"), "{fetched:?}");
    assert_eq!(condition(&conditions, "Ready").reason, "FetchFailed");
}

#[tokio::test]
async fn a_spec_change_rolls_out_and_a_child_deleted_by_hand_comes_back() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let m = create(&cluster, &sample_model()).await;
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("first");
    let name = "efficientnet-lite0-recognize";
    let before: Deployment = get(&cluster, name).await.expect("deployment");

    let api = Api::<ImageModel>::namespaced(cluster.client.clone(), NS);
    api.patch(
        &m.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runtime": {"batching": {"maxBatchSize": 16}}}})),
    )
    .await
    .expect("edit the model");
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("after edit");
    let after: Deployment = get(&cluster, name).await.expect("deployment");
    assert_ne!(
        before.spec.as_ref().map(|s| &s.template),
        after.spec.as_ref().map(|s| &s.template),
        "the pod template follows the spec"
    );
    assert!(
        serde_json::to_string(&after.spec)
            .expect("json")
            .contains("16"),
        "new batch size in the pod"
    );

    Api::<Service>::namespaced(cluster.client.clone(), NS)
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete by hand");
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("repair");
    assert!(
        get::<Service>(&cluster, name).await.is_some(),
        "Service recreated"
    );
}

#[tokio::test]
async fn children_the_spec_no_longer_wants_are_deleted() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let mut sample = sample_model();
    sample.spec.runtime.replicas = None;
    sample.spec.runtime.autoscaling = serde_json::from_value(
        json!({"minReplicas": 2, "maxReplicas": 5, "targetCpuUtilization": 70}),
    )
    .expect("autoscaling");
    let m = create(&cluster, &sample).await;
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("first");
    let name = "efficientnet-lite0-recognize";
    assert!(
        get::<HorizontalPodAutoscaler>(&cluster, name)
            .await
            .is_some(),
        "HPA"
    );
    let d: Deployment = get(&cluster, name).await.expect("deployment");
    assert!(
        !sightline_operator::apply::owns_field(&d, FIELD_MANAGER, &["spec", "replicas"]),
        "the HPA owns replicas: {:?}",
        d.metadata.managed_fields
    );

    Api::<ImageModel>::namespaced(cluster.client.clone(), NS)
        .patch(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runtime": {"autoscaling": null, "replicas": 1}}})),
        )
        .await
        .expect("drop autoscaling");
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("second");
    assert!(
        get::<HorizontalPodAutoscaler>(&cluster, name)
            .await
            .is_none(),
        "HPA pruned"
    );
}

#[tokio::test]
async fn a_pipeline_waits_for_its_model_then_becomes_ready_by_itself() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    support::sample_secrets(&cluster).await;
    let p = create(&cluster, &sample_pipeline()).await;
    let action = reconcile_pipeline(&cluster, &ctx, &p.name_any())
        .await
        .expect("no model yet");
    assert_ne!(
        action,
        Action::await_change(),
        "still requeued as a safety net"
    );
    let conditions = pipeline_conditions(&cluster, &p.name_any()).await;
    let ready = condition(&conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ModelNotFound")
    );
    assert!(
        get::<Deployment>(&cluster, "photos-upload").await.is_none(),
        "nothing applied yet"
    );

    // The model appears (the controller's ImageModel watch maps it back to the pipeline).
    let m = create(&cluster, &sample_model()).await;
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("model");
    reconcile_pipeline(&cluster, &ctx, &p.name_any())
        .await
        .expect("pipeline");
    for name in ["photos-upload", "photos-store"] {
        assert!(get::<Deployment>(&cluster, name).await.is_some(), "{name}");
        assert!(get::<Service>(&cluster, name).await.is_some(), "{name}");
    }
    assert!(
        get::<ConfigMap>(&cluster, "photos-config").await.is_some(),
        "config"
    );
    assert!(
        get::<HttpRoute>(&cluster, "photos").await.is_some(),
        "route"
    );
    assert!(
        get::<ServiceMonitor>(&cluster, "photos-pipeline")
            .await
            .is_some(),
        "ServiceMonitor"
    );
    let conditions = pipeline_conditions(&cluster, &p.name_any()).await;
    assert_eq!(
        condition(&conditions, "ModelAvailable").reason,
        "ModelUnavailable"
    );

    // Everything comes up; the Gateway accepts the route.
    for name in [
        "efficientnet-lite0-recognize",
        "photos-upload",
        "photos-store",
    ] {
        roll(&cluster, name, Pods::Serving, Deadline::Within).await;
    }
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("model ready");
    Api::<HttpRoute>::namespaced(cluster.client.clone(), NS)
        .patch_status(
            "photos",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"parents": [{
                "parentRef": {"name": "public", "namespace": "gateways"},
                "controllerName": "example.com/gateway",
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                    "message": "", "lastTransitionTime": "2027-01-01T00:00:00Z"}]}]}})),
        )
        .await
        .expect("route status");
    reconcile_pipeline(&cluster, &ctx, &p.name_any())
        .await
        .expect("pipeline ready");
    let conditions = pipeline_conditions(&cluster, &p.name_any()).await;
    assert_eq!(
        condition(&conditions, "Ready").status,
        "True",
        "{conditions:#?}"
    );
    let status = get::<RecognitionPipeline>(&cluster, &p.name_any())
        .await
        .and_then(|p| p.status);
    assert_eq!(
        status.and_then(|s| s.url).as_deref(),
        Some("http://photos.example.com")
    );

    cluster.take_calls();
    reconcile_pipeline(&cluster, &ctx, &p.name_any())
        .await
        .expect("again");
    let writes = cluster.take_writes();
    assert!(
        writes.is_empty(),
        "an unchanged pipeline caused writes: {writes:?}"
    );
}

#[tokio::test]
async fn without_the_gateway_api_the_route_condition_says_so() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(ClusterApis::default());
    create(&cluster, &sample_model()).await;
    let p = create(&cluster, &sample_pipeline()).await;
    reconcile_pipeline(&cluster, &ctx, &p.name_any())
        .await
        .expect("reconcile");
    let conditions = pipeline_conditions(&cluster, &p.name_any()).await;
    assert_eq!(
        condition(&conditions, "RouteAccepted").reason,
        "GatewayAPIMissing"
    );
    assert!(
        get::<ServiceMonitor>(&cluster, "photos-pipeline")
            .await
            .is_none(),
        "no ServiceMonitor API"
    );
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_waits_for_a_change() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let mut sample = sample_pipeline();
    sample.spec.upload.replicas = Some(3); // three replicas on one ReadWriteOnce volume
    create(&cluster, &sample_model()).await;
    let p = create(&cluster, &sample).await;
    let error = reconcile_pipeline(&cluster, &ctx, &p.name_any())
        .await
        .expect_err("invalid");
    assert_eq!(error.reason(), "InvalidSpec");
    assert_eq!(
        error_policy(Arc::new(p.clone()), &error, ctx.clone()),
        Action::await_change(),
        "spec errors are not retried in a loop"
    );
    let conditions = pipeline_conditions(&cluster, &p.name_any()).await;
    assert_eq!(condition(&conditions, "Ready").reason, "InvalidSpec");
    assert!(
        get::<Deployment>(&cluster, "photos-upload").await.is_none(),
        "nothing applied"
    );
    // One bad resource does not stop another from being served.
    let m = sample_model();
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("the model still reconciles");
}

#[tokio::test]
async fn the_start_up_evaluation_lands_in_the_status_once() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let m = create(&cluster, &sample_model()).await;
    assert!(
        m.spec.evaluation.is_some(),
        "the sample names a labelled set"
    );
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("first");
    let d: Deployment = get(&cluster, "efficientnet-lite0-recognize")
        .await
        .expect("deployment");
    let pod = serde_json::to_string(&d.spec).expect("json");
    assert!(
        !pod.contains("fetch-evaluation")
            && pod.contains("--evaluate-on-start")
            && pod.contains("https://models.example.com/imagenet-sample.zip"),
        "the server fetches the set itself once the model serves: {pod}"
    );
    roll(
        &cluster,
        "efficientnet-lite0-recognize",
        Pods::Serving,
        Deadline::Within,
    )
    .await;

    let evaluation = "/api/v1/evaluations/startup";
    let running =
        json!({"id": "startup", "status": "running", "progress": {"done": 3, "total": 10}});
    support::sim::answer_every_pod(&cluster, evaluation, 200, running.to_string()).await;
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("running");
    let conditions = model_conditions(&cluster, &m.name_any()).await;
    assert_eq!(
        condition(&conditions, "Ready").status,
        "True",
        "evaluation does not gate Ready"
    );
    assert_eq!(
        condition(&conditions, "Evaluated").reason,
        "EvaluationPending"
    );

    let done = json!({"id": "startup", "status": "succeeded", "report": {
        "images": 1000, "accuracy": 0.8, "top5_accuracy": 0.95,
        "macro": {"precision": 0.9, "recall": 0.9, "f1": 0.9}}});
    support::sim::answer_every_pod(&cluster, evaluation, 200, done.to_string()).await;
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("done");
    let model: ImageModel = get(&cluster, &m.name_any()).await.expect("model");
    let figures = model
        .status
        .and_then(|s| s.evaluation)
        .expect("status.evaluation");
    assert_eq!(
        (figures.images, figures.accuracy, figures.macro_f1),
        (1000, 0.8, 0.9)
    );
    assert_eq!(Some(figures.observed_generation), m.metadata.generation);
    let conditions = model_conditions(&cluster, &m.name_any()).await;
    let evaluated = condition(&conditions, "Evaluated");
    assert_eq!(evaluated.status, "True");
    assert!(evaluated.message.contains("0.8000"), "{evaluated:?}");

    // Known for this generation: not asked again, nothing written.
    cluster.take_calls();
    cluster.take_asked();
    reconcile_model(&cluster, &ctx, &m.name_any())
        .await
        .expect("again");
    let calls = cluster.take_calls();
    assert!(calls.iter().all(|c| !c.writes()), "{calls:?}");
    let asked = cluster.take_asked();
    assert!(
        asked.iter().all(|path| !path.contains("evaluations")),
        "{asked:?}"
    );
}

#[test]
fn evaluation_answers_are_read_strictly() {
    use sightline_operator::controller::model::parse_evaluation;
    assert_eq!(parse_evaluation(r#"{"status":"running"}"#, 1), Ok(None));
    let failed = parse_evaluation(r#"{"status":"failed","error":"not a zip file"}"#, 1);
    assert!(failed.expect_err("failed").contains("not a zip file"));
    assert!(parse_evaluation("<html>", 1).is_err());
    assert!(parse_evaluation(r#"{"status":"succeeded","report":{"images":3}}"#, 1).is_err());
}
