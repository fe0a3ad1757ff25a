//! `RecognitionJob`: every image of an archive through an `ImageModel`, as an Indexed Job of
//! `sightline-server batch` shards (docs/batch.md, "On a cluster"), and what it did.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::pipeline::{ModelRef, SecretKeyRef};

/// A whole folder of images recognized once by an `ImageModel`'s model, in `shards`
/// pieces, `parallelism` at a time; resumable, with progress in `status`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sightline.io",
    version = "v1alpha1",
    kind = "RecognitionJob",
    namespaced,
    status = "RecognitionJobStatus",
    shortname = "rjob",
    category = "sightline",
    derive = "PartialEq",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.modelRef.name"),
    printcolumn(name = "Done", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "Total", type_ = "integer", json_path = ".status.total"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(
        name = "Complete",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Complete\")].status"
    ),
    printcolumn(name = "ETA", type_ = "string", json_path = ".status.eta"),
    printcolumn(
        name = "Accuracy",
        type_ = "number",
        json_path = ".status.evaluation.accuracy",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = kube::core::Rule::new("!has(self.parallelism) || self.parallelism <= self.shards").message("parallelism cannot exceed shards"),
    validation = kube::core::Rule::new("!has(self.labels) || has(self.input.pvc)").message("labels needs input.pvc: the CSV is read from the input claim")
)]
pub struct RecognitionJobSpec {
    /// The `ImageModel` (same namespace) whose model runs: its digest-pinned source,
    /// preprocessing, device and image. Fixed once the job exists.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("modelRef is fixed once the job exists: create another RecognitionJob"))]
    pub model_ref: ModelRef,
    /// The images: every file under a claim's folder or a bucket's prefix named `.jpg`,
    /// `.jpeg`, `.png`, `.webp`, `.gif`, `.bmp` or `.jfif`, in sorted order. Fixed once the
    /// job exists.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("input is fixed once the job exists"))]
    pub input: JobInput,
    /// Where the results go: shard `I` writes `shard-<I>.jsonl` (one JSON line per image)
    /// into a claim's folder, and/or every result goes into a pipeline's store. Fixed once
    /// the job exists.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("output is fixed once the job exists"))]
    pub output: JobOutput,
    /// Pieces the listing is cut into (the Job's `completions`): shard `I` takes every
    /// `shards`-th image from position `I`. Fixed once the job exists.
    #[schemars(range(min = 1, max = 10000))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("shards is fixed once the job exists: the output files are cut by it"))]
    pub shards: i32,
    /// Shards running at once (default 1; may change while the job runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub parallelism: Option<i32>,
    /// Attempts a shard may fail before it counts as failed (the Job's
    /// `backoffLimitPerIndex`; default 3). A bad image never fails a shard, an OOM kill
    /// counts, a node drain does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit_per_index: Option<i32>,
    /// The true labels, which turn the run into an evaluation: each shard evaluates its
    /// own images of the CSV (its report is in its log) and `status.evaluation` sums the
    /// shards' counts. Fixed once the job exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("labels is fixed once the job exists"))]
    pub labels: Option<JobLabels>,
    /// Requests and limits of each shard's container (default: the ImageModel's
    /// `runtime.resources`, else 500m CPU and 512Mi). Fixed once the job exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("resources are fixed once the job exists"))]
    pub resources: Option<ResourceRequirements>,
}

/// A folder on a PersistentVolumeClaim in the job's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClaimPath {
    /// The PersistentVolumeClaim.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// The folder inside the claim, relative to its root (default: the root).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("!self.startsWith('/') && !self.contains('..')").message("path is relative to the claim's root and has no '..'"))]
    pub path: String,
}

/// Where the images are: one of `pvc`, `s3` and `https`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = kube::core::Rule::new("(has(self.pvc) ? 1 : 0) + (has(self.s3) ? 1 : 0) + (has(self.https) ? 1 : 0) == 1").message("input is exactly one of pvc, s3 and https"))]
pub struct JobInput {
    /// A folder on a PersistentVolumeClaim, mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<ClaimPath>,
    /// The objects under a prefix of an S3-compatible bucket, read by each shard itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Input>,
    /// A listing file: one image URL per line (absolute, or relative to the listing's
    /// URL), each fetched by the shard that takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<HttpsInput>,
}

/// A listing file of image URLs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpsInput {
    /// `https://host/list.txt` (or `http://`).
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("url must start with https:// or http://"))]
    pub url: String,
}

/// Images in an S3-compatible bucket.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct S3Input {
    /// `s3://bucket[/prefix]`.
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('s3://') && size(self) > 5").message("uri must be s3://bucket[/prefix]"))]
    pub uri: String,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally
    /// `AWS_REGION`), given to the shards as environment variables. Without it, the
    /// shards' own identity (`podOverrides.serviceAccountName` of the ImageModel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// The endpoint of an S3-compatible store (MinIO, Ceph, …; default AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The bucket's region (default `AWS_REGION`, else us-east-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// Where the results go: a claim's folder, a pipeline's store, or both.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = kube::core::Rule::new("has(self.pvc) || has(self.pipeline)").message("output needs pvc, pipeline or both"),
    validation = kube::core::Rule::new("!has(self.csv) || !self.csv || has(self.pvc)").message("csv needs pvc: the CSV is written beside the JSON lines")
)]
pub struct JobOutput {
    /// A folder on a PersistentVolumeClaim, mounted read-write (ReadWriteMany when shards
    /// run on several nodes): shard `I` writes `shard-<I>.jsonl` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<ClaimPath>,
    /// Also `shard-<I>.csv` beside each shard's JSON lines, written when the shard ends
    /// (`image, sha256, label, probability, known, error`; the top class only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub csv: bool,
    /// A `RecognitionPipeline` (same namespace) whose store keeps every result, named by
    /// this job (`GET /api/v1/results?job=<name>`); an image its store already has a
    /// result for, with the same model digest and preprocessing, is not recognized again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineOutput>,
}

/// The pipeline whose store receives a job's results.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PipelineOutput {
    /// Name of the `RecognitionPipeline`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// A Secret key holding one of the pipeline's API keys (the key itself, without its
    /// `name:`), which the shards present to its store. Needed when the pipeline has
    /// `gateway.apiKeysSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<SecretKeyRef>,
}

/// The true labels of the images: a CSV, or the class folders they are in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = kube::core::Rule::new("(has(self.csv) ? 1 : 0) + ((has(self.classFolders) && self.classFolders) ? 1 : 0) == 1").message("labels is exactly one of csv and classFolders: true"))]
pub struct JobLabels {
    /// A CSV of `path,label` rows on the input claim, relative to `input.pvc.path` (its
    /// paths relative to the CSV file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    #[x_kube(validation = kube::core::Rule::new("!self.startsWith('/') && !self.contains('..')").message("csv is relative to input.pvc.path and has no '..'"))]
    pub csv: Option<String>,
    /// Each image's class is the folder it is in, under `input.pvc.path`
    /// (`<class>/<image>`, the ImageFolder layout; `_` in a folder name reads as a space).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub class_folders: bool,
}

/// An image that could not be recognized, and why.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ImageError {
    /// Its path relative to the input folder.
    pub image: String,
    pub error: String,
}

/// The Job's shards (indexes) by state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ShardCounts {
    /// Finished: every image of the shard is in its output file.
    pub succeeded: i32,
    /// Out of attempts (`backoffLimitPerIndex`), or failed for good (exit code 2).
    pub failed: i32,
    /// With a pod running now.
    pub running: i32,
}

/// What the operator observed of a `RecognitionJob`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecognitionJobStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Complete`, `Failed`, `Progressing`, and kstatus' `Reconciling` and `Stalled`;
    /// see docs/status.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The Indexed Job that runs the shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Images in the listing (known once every shard has reported its size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Images recognized by this job's shards.
    pub recognized: u64,
    /// Images already in the output when a shard (re)started, or already in the output
    /// pipeline's store with this model: not done again.
    pub skipped: u64,
    /// Images that could not be recognized (not an image, too large, unreadable): a
    /// line with the error in the output, never a failed shard.
    pub failed: u64,
    /// Done of total, `42%` (done = recognized + skipped + failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The first images that failed, with why (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_errors: Vec<ImageError>,
    /// Images a second over the running shards (their own rate, summed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_second: Option<f64>,
    /// Time left at that rate, `1h2m3s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,
    /// The shards by state.
    #[serde(default)]
    pub shards: ShardCounts,
    /// SHA-256 of the model the shards ran (as they report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// With `labels`: the evaluation over the finished shards' images of the CSV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<JobEvaluation>,
}

/// A RecognitionJob's evaluation: the shards' counts summed, and the figures of the sum.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JobEvaluation {
    /// Images the labels CSV names, over the shards counted.
    pub images: u64,
    /// Of those, classified (the denominator of both accuracies).
    pub evaluated: u64,
    /// Top-1 accuracy: classified with the true class first, of `evaluated`.
    pub accuracy: f64,
    /// Top-5 accuracy.
    pub top5_accuracy: f64,
    /// Shards whose evaluation is counted (finished ones), of `spec.shards`: the figures
    /// are the whole set's once it equals them.
    pub shards: i32,
}
