//! `ImageModel`: its spec (where the model comes from, how images are prepared for it, the
//! start-up evaluation) and its status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rollout::{RolloutSpec, RolloutStatus};
use super::runtime::Runtime;

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
    printcolumn(
        name = "Drifting",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Drifting\")].status"
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
    /// How the serving model's answers are watched: the drift threshold of `Drifting`, the
    /// live accuracy's window, the feedback a canary's live checks need
    /// (docs/quality.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<super::monitoring::MonitoringSpec>,
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

/// What the operator observed of an `ImageModel`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageModelStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Available`, `ModelFetched`, `ModelValidated`, (with
    /// `spec.evaluation`) `Evaluated`, `Drifting`, and kstatus' `Reconciling` and
    /// `Stalled`, each with a reason; see docs/status.md.
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
    /// The serving model's live accuracy and drift, each with when it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<super::monitoring::QualityStatus>,
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
