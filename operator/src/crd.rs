//! The two custom resources, `ImageModel` and `RecognitionPipeline` (group `sightline.io`,
//! version `v1alpha1`). Every field's doc comment becomes its `kubectl explain` text; CEL
//! rules reject specs the operator could not honour.

// kube's `printcolumn(name = …, type_ = …)` repeats keys by design; clippy reads them as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "sightline.io";
pub const VERSION: &str = "v1alpha1";

// ---------------------------------------------------------------------------------------
// ImageModel
// ---------------------------------------------------------------------------------------

/// One servable ONNX image classifier: where it comes from, how images are prepared for
/// it, and how it runs. The operator turns it into the recognize Deployment and Service.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sightline.io",
    version = "v1alpha1",
    kind = "ImageModel",
    namespaced,
    status = "ImageModelStatus",
    shortname = "imodel",
    category = "sightline",
    derive = "PartialEq",
    printcolumn(name = "Device", type_ = "string", json_path = ".spec.runtime.device"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Rollout",
        type_ = "string",
        json_path = ".status.rollout.phase"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ImageModelSpec {
    /// Where the ONNX model file and its labels come from.
    pub source: ModelSource,
    /// How an image becomes the model's input tensor. Defaults suit ImageNet models.
    #[serde(default)]
    pub preprocess: Preprocess,
    /// Device, threads, batching, replicas and scheduling of the inference pods.
    #[serde(default)]
    pub runtime: Runtime,
    /// A labelled set to evaluate the model on once it serves; the figures appear in
    /// `status.evaluation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationSpec>,
    /// How a change of the serving pods rolls out: `Rolling` (default) or `Canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
}

/// How a new revision of the model replaces the serving one.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The Deployment's rolling update (the new revision takes all traffic as its pods
    /// become ready).
    #[default]
    Rolling,
    /// The new revision runs beside the stable one and takes traffic step by step while
    /// every check passes; the first failed check rolls it back.
    Canary,
}

/// A canary rollout (docs/rollouts.md).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = kube::core::Rule::new("!has(self.steps) || self.steps.all(s, s >= 1 && s <= 100)").message("steps are percentages from 1 to 100"))]
pub struct RolloutSpec {
    /// `Rolling` (default) or `Canary`.
    #[serde(default)]
    pub strategy: Strategy,
    /// Percent of traffic to the candidate at each step (default `[10, 50, 100]`);
    /// after the last step the candidate is promoted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(validation = kube::core::Rule::new("size(self) == 0 || self[0] < 100").message("the first step must leave the stable revision some traffic (below 100): the checks compare the candidate with it"))]
    pub steps: Vec<u32>,
    /// How long each step's window lasts at least (`30s`, `5m`, `1h`; default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_duration: Option<String>,
    /// How long a step may take to conclude, counted from when its traffic was written
    /// (`30s`, `5m`, `1h`; default three `stepDuration`s, at least `10m`). A step that has
    /// not concluded by then — front doors not applying its traffic, too few requests, a
    /// check still pending — rolls back (`CanaryDeadlineExceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_deadline: Option<String>,
    /// Candidate requests a step's window needs before it may advance (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000000))]
    pub min_requests_per_step: Option<u64>,
    /// Percent of the stable revision's traffic also sent to the candidate, whose answer
    /// is compared (top-1 agreement) and never returned (default 0: no mirroring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub mirror_percent: Option<u32>,
    /// Hold the current step (checks still run; a failed one still rolls back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// The checks and their thresholds.
    #[serde(default)]
    pub analysis: Analysis,
}

/// The checks of a canary step; each figure is measured over the step's window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// Most the candidate's top-1 accuracy on `spec.evaluation` may fall below the stable
    /// revision's (default 0.01; only with `spec.evaluation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_top1_drop: Option<f64>,
    /// Least share of mirrored requests whose top-1 label equals the stable answer's
    /// (default 0.95; only with `mirrorPercent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_agreement: Option<f64>,
    /// Most share of the candidate's recognitions answered 5xx (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Most the candidate's p99 latency may be, as a multiple of the stable's (default 1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_latency_ratio: Option<f64>,
}

/// Where a canary rollout stands (`status.rollout`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// `Progressing`, `Paused`, `Promoting`, `Promoted`, `RolledBack` or `Superseded`.
    pub phase: String,
    /// The candidate's revision (a digest of the pod template it runs).
    pub revision: String,
    /// The current step (index into `spec.rollout.steps`).
    pub step: u32,
    /// Percent of traffic the candidate takes now.
    pub candidate_weight: u32,
    /// Percent of the stable traffic mirrored to the candidate now.
    pub mirror_percent: u32,
    /// When the current step's traffic was written (RFC 3339; its deadline counts from
    /// here), or, after a promotion or rollback, the stable-only traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_entered_at: Option<String>,
    /// When the current step's window opened (RFC 3339): every front door applied its
    /// traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<String>,
    /// The traffic generation the operator waits for every front door to apply, before it
    /// opens the step's window or deletes the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_generation: Option<u64>,
    /// Each pod's counters in the current window (the checks use what each served since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// The stable revision's recognitions in the last window where it served at least
    /// 100: the stable p99 a step of 100 % is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::canary::Counters>,
    /// Each check over the current window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::canary::Check>,
    /// The last rollouts, newest first (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RolloutRecord>,
    // --- sizing (issue 23) ---
    /// The stable Deployment's replicas when this rollout began. The candidate runs that
    /// many, and with autoscaling the stable HorizontalPodAutoscaler keeps at least that
    /// many until the rollout ends: neither revision is scaled down as traffic moves, and
    /// a rollback lands on a stable revision sized for all the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_replicas: Option<i32>,
}

/// A window's counters, per pod (docs/rollouts.md, "Windows").
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    pub stable: crate::canary::Tally<crate::canary::Counters>,
    pub candidate: crate::canary::Tally<crate::canary::Counters>,
    /// The front doors' mirrored comparisons.
    pub mirrored: crate::canary::Tally<crate::canary::Mirrored>,
}

/// One finished rollout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    pub revision: String,
    /// `Promoted` or `RolledBack`.
    pub outcome: String,
    /// Why it rolled back: `CheckFailed`, `CanaryDeadlineExceeded` or `CandidateFailed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339.
    pub at: String,
    pub message: String,
}

/// The labelled set of a start-up evaluation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationSpec {
    /// A zip file: one folder per class (named by a label or a class index), or a CSV of
    /// `path,label` rows beside the images. Fetched (and verified) like the model.
    pub dataset: FileSource,
}

/// The figures of the last evaluation (accuracy = correct / total; F1 = 2PR / (P + R)).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationStatus {
    /// The generation of the spec these figures are for.
    pub observed_generation: i64,
    /// Platform in the set.
    pub images: u64,
    /// Top-1 accuracy, 0 to 1.
    pub accuracy: f64,
    /// Top-5 accuracy, 0 to 1.
    pub top5_accuracy: f64,
    /// Macro-averaged precision, recall and F1.
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
}

/// A file the pods fetch before serving.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FileSource {
    /// `https://host/path`, `s3://bucket/key`, `pvc://claim/path/in/claim`, or (model and
    /// labels only) `oci://registry/repository@sha256:…`: a model image (`make
    /// model-image`, docs/install.md) mounted as an image volume — no download, the digest
    /// pinned by the reference (needs Kubernetes' ImageVolume feature).
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://') || self.startsWith('s3://') || self.startsWith('pvc://') || self.startsWith('oci://')").message("uri must start with https://, s3://, pvc:// or oci://"))]
    pub uri: String,
    /// Lower-case hex SHA-256 of the file. When set, the file is verified before serving
    /// and a mismatch keeps the model not ready (reason `DigestMismatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: Option<String>,
}

/// The model file, its labels, and credentials to fetch them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// The ONNX model file.
    #[serde(flatten)]
    pub model: FileSource,
    /// The labels file: one class name per line, in output order.
    pub labels: FileSource,
    /// Secret with `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and optionally
    /// `AWS_REGION`, `AWS_ENDPOINT_URL`) for `s3://` sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Room for the fetched model and labels in each pod (the emptyDir's `sizeLimit`;
    /// default `4Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<String>,
}

/// Input tensor layout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Layout {
    #[default]
    #[serde(rename = "NCHW")]
    Nchw,
    #[serde(rename = "NHWC")]
    Nhwc,
}

/// How an image of any shape becomes the square input.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResizePolicy {
    /// Shorter side to `size / cropFraction`, then the centred square.
    #[default]
    ShorterSideCrop,
    /// Both sides to `size`, ignoring the aspect ratio.
    Stretch,
}

/// Channel order.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Channels {
    #[default]
    #[serde(rename = "RGB")]
    Rgb,
    #[serde(rename = "BGR")]
    Bgr,
}

/// Preprocessing. Unset fields take the ImageNet defaults shown.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Preprocess {
    /// Side of the square input in pixels (default 224).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub size: Option<u32>,
    /// `NCHW` (default) or `NHWC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// `shorter-side-crop` (default) or `stretch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizePolicy>,
    /// Share of the shorter side the centre crop keeps (default 0.875).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self > 0.0 && self <= 1.0").message("cropFraction must be in (0, 1]"))]
    pub crop_fraction: Option<f64>,
    /// `RGB` (default) or `BGR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Channels>,
    /// Factor applied to 8-bit samples before normalisation (default 1/255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// Per-channel mean, three numbers (default ImageNet's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 3))]
    pub mean: Option<Vec<f64>>,
    /// Per-channel standard deviation, three positive numbers (default ImageNet's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 3))]
    #[x_kube(validation = kube::core::Rule::new("self.all(s, s > 0.0)").message("std values must be positive"))]
    pub std: Option<Vec<f64>>,
}

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

/// What the operator observed of an `ImageModel`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageModelStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Available`, `ModelFetched`, `ModelValidated`, (with
    /// `spec.evaluation`) `Evaluated`, and kstatus' `Reconciling` and `Stalled`, each with
    /// a reason; see docs/status.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// SHA-256 of the model the serving pods loaded (as they report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The model as the serving pods report it on `/readyz`: digest, device, input shape,
    /// class count, revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<crate::served::Served>,
    /// In-cluster URL of the recognize Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The last start-up evaluation (`spec.evaluation`), once it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationStatus>,
    /// Pods ready to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The device asked for, the one the pods are built for, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceStatus>,
    /// The canary rollout, with `spec.rollout.strategy: Canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// Where the model runs, and why.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// `spec.runtime.device`.
    pub requested: String,
    /// `cpu` or `gpu`: what the pods are built for.
    pub resolved: String,
    /// Why (for `auto`: which nodes offer the GPU resource, or that none does).
    pub reason: String,
    /// Whether a GPU pod may serve on the CPU when CUDA is unusable
    /// (`spec.runtime.allowCpuFallback`); `status.served.device` says what it does.
    pub allow_cpu_fallback: bool,
    // --- device decided once (issue 23) ---
    /// The spec generation `auto` was decided for: it is decided once per generation and
    /// kept (GPU nodes coming and going, a GPU pool scaled to zero, do not change it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

// ---------------------------------------------------------------------------------------
// RecognitionPipeline
// ---------------------------------------------------------------------------------------

/// The user-facing application: upload → recognition (by an `ImageModel`) → result
/// storage, exposed through a Gateway API route (or an Ingress).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sightline.io",
    version = "v1alpha1",
    kind = "RecognitionPipeline",
    namespaced,
    status = "RecognitionPipelineStatus",
    shortname = "rpipe",
    category = "sightline",
    derive = "PartialEq",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.modelRef.name"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RecognitionPipelineSpec {
    /// The `ImageModel` (same namespace) that recognises the images. Several pipelines may
    /// share one model.
    pub model_ref: ModelRef,
    /// The upload service: limits, image store, replicas.
    #[serde(default)]
    pub upload: Upload,
    /// The result storage service and its database.
    #[serde(default)]
    pub storage: Storage,
    /// How the pipeline is exposed, and who may call it.
    #[serde(default)]
    pub gateway: Gateway,
    /// Pod settings merged over what the operator builds for the upload and store pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_overrides: Option<PodOverrides>,
}

/// A reference to an `ImageModel` in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ModelRef {
    /// Name of the `ImageModel`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
}

/// A key of a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A PersistentVolumeClaim the operator creates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// Requested size, e.g. `10Gi` (default `10Gi` for images, `1Gi` for SQLite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Storage class (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// An S3-compatible bucket for the images.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct S3Store {
    /// Bucket name.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Endpoint of an S3-compatible service (default AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub credentials_secret: String,
}

/// The upload service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = kube::core::Rule::new("!has(self.s3) || !has(self.volume)").message("images go either to a volume or to s3, not both"))]
pub struct Upload {
    /// Largest upload in bytes (default 20 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1073741824))]
    pub max_bytes: Option<i64>,
    /// Local image store on a PersistentVolumeClaim (the default when `s3` is unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Volume>,
    /// S3-compatible object store instead of a volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Store>,
    /// Replicas of the upload service (default 1; more than 1 needs `s3` or a
    /// ReadWriteMany volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    /// Requests and limits of the upload container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn keep() -> bool {
    true
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            database: DatabaseKind::default(),
            url_secret: None,
            volume: None,
            replicas: None,
            retain_on_delete: true,
            resources: None,
        }
    }
}

fn is_true(value: &bool) -> bool {
    *value
}

/// Which database holds the results.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    /// SQLite on a PersistentVolumeClaim (one replica).
    #[default]
    Sqlite,
    Postgres,
    Mysql,
}

/// The result storage service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = kube::core::Rule::new("self.database == 'sqlite' ? (!has(self.replicas) || self.replicas <= 1) : has(self.urlSecret)").message("sqlite runs one replica; postgres and mysql need urlSecret"))]
pub struct Storage {
    /// `sqlite` (default), `postgres` or `mysql`.
    #[serde(default)]
    pub database: DatabaseKind,
    /// Secret key holding the database URL (`postgres://…`, `mysql://…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret: Option<SecretKeyRef>,
    /// The SQLite volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Volume>,
    /// Replicas of the store service (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    /// Keep the PersistentVolumeClaims holding the uploaded images and the SQLite results
    /// when the pipeline is deleted (default true: the data outlives the resource, and a
    /// pipeline of the same name created later uses them again). `false` lets them go
    /// with the pipeline.
    #[serde(default = "keep", skip_serializing_if = "is_true")]
    pub retain_on_delete: bool,
    /// Requests and limits of the store container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// A Gateway API parent (a Gateway, or a listener of one).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Gateway name.
    pub name: String,
    /// Gateway namespace (default: the pipeline's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Listener name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// An Ingress instead of an HTTPRoute, for clusters without the Gateway API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// IngressClass name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Secret with the TLS certificate for the hostnames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
}

/// Rate limit per API key (or for all anonymous callers).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second.
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_second: u32,
    /// Burst size (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<u32>,
}

/// Exposure, auth and rate limits (enforced by the services themselves).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = kube::core::Rule::new("!(has(self.ingress) && size(self.parentRefs) > 0)").message("use either parentRefs (HTTPRoute) or ingress, not both"))]
pub struct Gateway {
    /// Gateways the HTTPRoute attaches to. Empty and no `ingress`: no route is created.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Hostnames the route (or Ingress) answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Path prefix the API is served under (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/')").message("pathPrefix must start with /"))]
    pub path_prefix: Option<String>,
    /// Create an Ingress instead of an HTTPRoute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// Secret key holding API keys, one per line. When set, every API route needs a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys_secret: Option<SecretKeyRef>,
    /// Per-key rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// What the operator observed of a `RecognitionPipeline`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecognitionPipelineStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and `Progressing`, plus `ModelAvailable`, `UploadReady`, `StoreReady` and
    /// `RouteAccepted`, and kstatus' `Reconciling` and `Stalled`; see docs/status.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where users reach the pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The PersistentVolumeClaims that outlive the pipeline when it is deleted
    /// (`spec.storage.retainOnDelete`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retained_volumes: Vec<String>,
}
