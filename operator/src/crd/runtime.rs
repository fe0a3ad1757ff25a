//! How and where a model's inference pods run: device, replicas or autoscaling, batching
//! and pod overrides.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where inference runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Gpu,
    /// `gpu` when some node has allocatable units of the GPU resource, else `cpu`; the
    /// choice and the reason are in `status.device`.
    Auto,
}

/// Pod settings merged over what the operator builds (Stackable's `podOverrides`, for
/// what real clusters need: pull secrets, cloud identities, spreading, priorities, the
/// NVIDIA runtime class, annotations for sidecars and policy engines).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Secrets for pulling the images from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// The pods' ServiceAccount (e.g. one bound to an IAM role for `s3://` sources with
    /// IRSA or Workload Identity). Default: the namespace's `default`, with no token
    /// mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Topology spread constraints. Default: replicas spread across nodes
    /// (`kubernetes.io/hostname`, `ScheduleAnyway`); an empty list spreads nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// RuntimeClass of the pods (e.g. `nvidia` for GPU nodes that need it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    /// Annotations added to the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Labels added to the pods (the operator's own selector labels always win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Dynamic batching.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Batching {
    /// Most images in one model run (default 8). With `tuning: Auto` the server measures
    /// the sizes up to this one at warm-up and keeps the largest within 2 % of the fastest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub max_batch_size: Option<u32>,
    /// `Auto` (default): measure batch sizes 1, 2, 4, … up to `maxBatchSize` on the pod's
    /// own CPU or GPU when the model loads, and batch up to the fastest (reported in the
    /// pod's `/readyz` and `sightline_inference_max_batch_size`). `Fixed`: always batch up
    /// to `maxBatchSize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<BatchTuning>,
    /// Most milliseconds a request waits for others to share its batch (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_delay_ms: Option<u32>,
    /// Requests that may wait for the model; more get 503 (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub queue_capacity: Option<u32>,
}

/// How the batch size is decided.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BatchTuning {
    /// Measured when the model loads; never slower than batch 1.
    #[default]
    Auto,
    /// `maxBatchSize` as given.
    Fixed,
}

/// What the autoscaler scales on.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleOn {
    /// Average CPU utilisation (the resource metric; needs metrics-server).
    #[serde(rename = "cpu")]
    Cpu,
    /// Average requests waiting for the model per pod (`sightline_inference_queue_depth`, a Pods
    /// metric served by Prometheus Adapter with the rule in manifests/monitoring).
    #[serde(rename = "queueDepth")]
    QueueDepth,
}

/// Horizontal autoscaling (replaces `replicas`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct Autoscaling {
    /// Fewest replicas.
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Most replicas.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Average CPU utilisation to aim for, in percent of the request (default 70).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "targetCPUUtilizationPercentage"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: Option<i32>,
    /// `cpu` or `queueDepth` (default: `queueDepth` for GPU models, where CPU says little
    /// about load; `cpu` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<ScaleOn>,
    /// Requests waiting per pod to aim for with `queueDepth` (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub target_queue_depth: Option<i32>,
}

/// How and where the inference pods run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = kube::core::Rule::new("!(has(self.replicas) && has(self.autoscaling))").message("set either replicas or autoscaling, not both"))]
pub struct Runtime {
    /// `cpu` (default), `gpu` or `auto`. With `gpu` the pods request the GPU resource,
    /// run the GPU server image and enable the ONNX Runtime CUDA execution provider;
    /// `auto` is `gpu` when some node has allocatable units of `gpuResource`, else `cpu`.
    #[serde(default)]
    pub device: Device,
    /// The extended resource a GPU pod requests (default `nvidia.com/gpu`, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_resource: Option<String>,
    /// With `gpu`: serve on the CPU when CUDA cannot be registered instead of staying not
    /// ready (default false).
    #[serde(default)]
    pub allow_cpu_fallback: bool,
    /// ONNX Runtime intra-op threads (default: the CPU limit, else one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub threads: Option<u32>,
    /// Copies of the model in each pod, each its own session and inference thread, taking
    /// batches side by side (default 1). On CPU, set `threads` to the pod's cores ÷ this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub instances: Option<u32>,
    /// Dynamic batching.
    #[serde(default)]
    pub batching: Batching,
    /// Fixed number of replicas (default 1). Not with `autoscaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Autoscaling; the operator then leaves `replicas` to the HorizontalPodAutoscaler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Requests and limits of the server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods (e.g. for tainted GPU nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// The server image of this model's pods (default: the operator's
    /// `--server-image`, or `--gpu-server-image` when the model runs on a GPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Pod settings merged over what the operator builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_overrides: Option<PodOverrides>,
    // --- rollouts without an outage (issue 23) ---
    /// How a new revision replaces the pods (`maxSurge`, `maxUnavailable`). Default: one
    /// surge pod and none unavailable, so a rollout never serves from fewer pods — except
    /// a GPU model with two or more replicas, which replaces one pod at a time within
    /// its GPUs (`maxSurge: 0`, `maxUnavailable: 1`). Set `maxSurge: 0, maxUnavailable: 1`
    /// on a one-replica GPU model whose cluster has no room for a second GPU pod to
    /// accept a brief outage on each rollout instead of a rollout that waits for room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<k8s_openapi::api::apps::v1::RollingUpdateDeployment>,
}
