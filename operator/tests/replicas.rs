//! Replicas do not fight: switching a model to autoscaling keeps its pods until the HPA
//! scales (server-side apply would otherwise drop the Deployment to one pod), and during a
//! canary neither revision is scaled down by the stable HPA as traffic moves, so a
//! rollback lands on a stable revision sized for all the traffic. Driven through the
//! simulated cluster (support/sim.rs; support/ssa.rs models server-side apply's release
//! of `spec.replicas` and the HPA's ownership of it).

mod support;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sightline_operator::apply::{FIELD_MANAGER, HANDOVER_MANAGER, owns_field};
use sightline_operator::controller::Context;
use sightline_operator::crd::ImageModel;
use support::sim::{Deadline, Pods, roll};
use support::{Cluster, NS, full_apis, sample_model};

const MODEL: &str = "efficientnet-lite0";
const STABLE: &str = "efficientnet-lite0-recognize";
const CANDIDATE: &str = "efficientnet-lite0-recognize-canary";

async fn reconcile(cluster: &Cluster, ctx: &Arc<Context>) {
    support::drive::reconcile_model(cluster, ctx, MODEL)
        .await
        .expect("reconcile");
}

async fn edit(cluster: &Cluster, patch: Value) {
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .patch(MODEL, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("edit");
}

async fn deployment(cluster: &Cluster, name: &str) -> Deployment {
    Api::<Deployment>::namespaced(cluster.admin.clone(), NS)
        .get(name)
        .await
        .expect("deployment")
}

async fn replicas(cluster: &Cluster, name: &str) -> Option<i32> {
    deployment(cluster, name)
        .await
        .spec
        .and_then(|s| s.replicas)
}

async fn hpa(cluster: &Cluster) -> HorizontalPodAutoscaler {
    Api::<HorizontalPodAutoscaler>::namespaced(cluster.admin.clone(), NS)
        .get(STABLE)
        .await
        .expect("hpa")
}

/// The stable HPA asks for `wanted` pods; it sets what its own spec allows
/// (`minReplicas`..`maxReplicas`, the HPA's clamp).
async fn autoscale(cluster: &Cluster, wanted: i32) {
    let spec = hpa(cluster).await.spec.expect("spec");
    let n = wanted.clamp(spec.min_replicas.unwrap_or(1), spec.max_replicas);
    support::ssa::hpa_scales(&cluster.admin, NS, STABLE, n).await;
}

#[tokio::test]
async fn switching_to_autoscaling_keeps_the_pods_until_the_hpa_scales() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let mut m = sample_model();
    m.spec.evaluation = None;
    m.spec.runtime.replicas = Some(3);
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), &m)
        .await
        .expect("model");
    reconcile(&cluster, &ctx).await;
    roll(&cluster, STABLE, Pods::Serving, Deadline::Within).await;
    reconcile(&cluster, &ctx).await;
    assert_eq!(replicas(&cluster, STABLE).await, Some(3));

    edit(
        &cluster,
        json!({"spec": {"runtime": {"replicas": null,
            "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}}}),
    )
    .await;
    reconcile(&cluster, &ctx).await;
    assert_eq!(
        replicas(&cluster, STABLE).await,
        Some(3),
        "the Deployment keeps its pods until the HPA (just created) scales"
    );
    let d = deployment(&cluster, STABLE).await;
    assert!(!owns_field(&d, FIELD_MANAGER, &["spec", "replicas"]));
    assert!(owns_field(&d, HANDOVER_MANAGER, &["spec", "replicas"]));
    // Nothing more to hand over: an unchanged model writes nothing.
    reconcile(&cluster, &ctx).await;
    cluster.take_calls();
    reconcile(&cluster, &ctx).await;
    let writes: Vec<_> = cluster
        .take_writes()
        .into_iter()
        .filter(|c| c.resource == "deployments")
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    // The HPA scales; the operator leaves it be.
    autoscale(&cluster, 4).await;
    reconcile(&cluster, &ctx).await;
    assert_eq!(replicas(&cluster, STABLE).await, Some(4));
}

#[tokio::test]
async fn a_canary_keeps_both_revisions_sized_and_a_rollback_lands_on_a_full_stable() {
    let cluster = Cluster::new().await;
    let ctx = cluster.context(full_apis());
    let mut m = sample_model();
    m.spec.evaluation = None;
    m.spec.runtime.replicas = None;
    m.spec.runtime.autoscaling =
        serde_json::from_value(json!({"minReplicas": 2, "maxReplicas": 8})).expect("auto");
    m.spec.rollout = serde_json::from_value(json!({"strategy": "Canary"})).expect("rollout");
    Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), &m)
        .await
        .expect("model");
    reconcile(&cluster, &ctx).await;
    // Busy: the HPA has scaled the stable revision to 6 pods.
    autoscale(&cluster, 6).await;
    roll(&cluster, STABLE, Pods::Serving, Deadline::Within).await;
    reconcile(&cluster, &ctx).await;

    // A new revision: the candidate starts with as many pods as the stable had, and the
    // stable HPA may not go below that while the rollout runs.
    edit(&cluster, json!({"spec": {"runtime": {"threads": 3}}})).await;
    reconcile(&cluster, &ctx).await;
    assert_eq!(replicas(&cluster, CANDIDATE).await, Some(6));
    assert_eq!(
        hpa(&cluster).await.spec.and_then(|s| s.min_replicas),
        Some(6),
        "the stable HPA's floor during the rollout"
    );
    // Traffic moves to the candidate: the stable pods are idle and the HPA asks for its
    // minimum.
    autoscale(&cluster, 1).await;
    reconcile(&cluster, &ctx).await;
    assert_eq!(
        replicas(&cluster, STABLE).await,
        Some(6),
        "stable not shrunk"
    );
    assert_eq!(
        replicas(&cluster, CANDIDATE).await,
        Some(6),
        "the candidate is not sized from the stable's count of this minute"
    );

    // The candidate fails: rolled back onto a stable revision that still has its pods.
    roll(
        &cluster,
        CANDIDATE,
        Pods::CrashLoopBackOff,
        Deadline::Within,
    )
    .await;
    reconcile(&cluster, &ctx).await;
    let status = Api::<ImageModel>::namespaced(cluster.admin.clone(), NS)
        .get(MODEL)
        .await
        .expect("model")
        .status
        .expect("status");
    assert_eq!(status.rollout.expect("rollout").phase, "RolledBack");
    assert_eq!(replicas(&cluster, STABLE).await, Some(6));
    assert_eq!(
        hpa(&cluster).await.spec.and_then(|s| s.min_replicas),
        Some(6)
    );

    // The spec goes back to the stable revision: the rollout is over, the floor goes.
    edit(&cluster, json!({"spec": {"runtime": {"threads": 2}}})).await;
    reconcile(&cluster, &ctx).await;
    assert_eq!(
        hpa(&cluster).await.spec.and_then(|s| s.min_replicas),
        Some(2)
    );
}
