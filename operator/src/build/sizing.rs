//! How many pods a model runs and how they are replaced: the rolling update, the
//! HorizontalPodAutoscaler, the PodDisruptionBudget, and a canary's sizing — rules that keep
//! a rollout from ever serving from fewer pods, and the HPA, the operator and a canary
//! from fighting over replicas (docs/status.md, "Replicas").

use k8s_openapi::api::apps::v1::{Deployment, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::meta::{object_meta, selector_labels};
use super::model::identity::{COMPONENT, ModelInputs, name};
use crate::crd::{ImageModel, ScaleOn};

/// How the recognize Deployment replaces pods: the spec's `rollingUpdate`, else one surge
/// pod and none unavailable (a rollout never serves from fewer pods, even with one
/// replica) — except a GPU model with two or more replicas, which replaces one pod at a
/// time within the GPUs it holds (a surge pod would need a GPU a full node lacks), its
/// PodDisruptionBudget keeping the others serving. A one-replica GPU model surges: its
/// second pod waits, named `Unschedulable`, until there is room (a free GPU, or a node a
/// cluster autoscaler adds) while the first keeps serving.
pub fn rolling_update(model: &ImageModel, gpu: bool) -> RollingUpdateDeployment {
    if let Some(chosen) = &model.spec.runtime.rolling_update {
        return chosen.clone();
    }
    let r = &model.spec.runtime;
    let fewest = match &r.autoscaling {
        Some(auto) => auto.min_replicas,
        None => r.replicas.unwrap_or(1),
    };
    let one_at_a_time = gpu && fewest > 1;
    RollingUpdateDeployment {
        max_surge: Some(IntOrString::Int(i32::from(!one_at_a_time))),
        max_unavailable: Some(IntOrString::Int(i32::from(one_at_a_time))),
    }
}

/// The HPA, when the spec asks for autoscaling: on CPU utilisation, or on the per-pod
/// queue depth (`sightline_inference_queue_depth`, the default for GPU models).
pub fn hpa(model: &ImageModel, inputs: &ModelInputs) -> Option<HorizontalPodAutoscaler> {
    let auto = model.spec.runtime.autoscaling.as_ref()?;
    let on = auto.metric.unwrap_or(if inputs.device.resolved == "gpu" {
        ScaleOn::QueueDepth
    } else {
        ScaleOn::Cpu
    });
    let metric = match on {
        ScaleOn::Cpu => MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "cpu".into(),
                target: MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(auto.target_cpu_utilization_percentage.unwrap_or(70)),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        },
        ScaleOn::QueueDepth => MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: QUEUE_METRIC.into(),
                    selector: None,
                },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity(auto.target_queue_depth.unwrap_or(4).to_string())),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        },
    };
    Some(HorizontalPodAutoscaler {
        metadata: object_meta(model, &name(model), COMPONENT),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: name(model),
            },
            min_replicas: Some(auto.min_replicas),
            max_replicas: auto.max_replicas,
            metrics: Some(vec![metric]),
            behavior: None,
        }),
        status: None,
    })
}

/// How many pods a canary's candidate runs: the stable Deployment's count when the
/// rollout began, recorded in `rollout.stable_replicas` the first time (never the stable
/// count of this minute, which the stable HPA lowers as traffic leaves it).
pub fn candidate_replicas(stable: &Deployment, rollout: &mut crate::crd::RolloutStatus) -> i32 {
    let now = stable.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    (*rollout.stable_replicas.get_or_insert(now)).max(1)
}

/// The stable HPA while a rollout holds the stable Deployment: `minReplicas` raised to
/// `floor` (the stable count when the rollout began), so the stable revision is not
/// scaled down as traffic moves to the candidate (Argo Rollouts keeps the stable fully
/// scaled the same way, `dynamicStableScale: false`) and serves everything again at once
/// after a rollback.
pub fn hpa_with_floor(
    mut hpa: HorizontalPodAutoscaler,
    floor: Option<i32>,
) -> HorizontalPodAutoscaler {
    if let (Some(floor), Some(spec)) = (floor, hpa.spec.as_mut()) {
        let min = spec
            .min_replicas
            .unwrap_or(1)
            .max(floor)
            .min(spec.max_replicas);
        spec.min_replicas = Some(min);
    }
    hpa
}

/// A PodDisruptionBudget letting one pod go at a time, when more than one replica can
/// run (with autoscaling: when the HPA may scale beyond one). With a single replica it
/// is left out: a budget there either allows the one eviction (protecting nothing) or
/// none (blocking every node drain — the Kubernetes docs' advice for single instances
/// is to tolerate the occasional restart); rollouts of a single replica surge instead.
pub fn pdb(model: &ImageModel) -> Option<PodDisruptionBudget> {
    let r = &model.spec.runtime;
    let most = match &r.autoscaling {
        Some(auto) => auto.max_replicas,
        None => r.replicas.unwrap_or(1),
    };
    (most > 1).then(|| PodDisruptionBudget {
        metadata: object_meta(model, &name(model), COMPONENT),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&model.name_any(), COMPONENT)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// The Pods metric the queue-depth autoscaler reads (Prometheus Adapter serves it from
/// the server's own gauge; rule in manifests/monitoring/prometheus-adapter.yaml).
pub const QUEUE_METRIC: &str = "sightline_inference_queue_depth";
