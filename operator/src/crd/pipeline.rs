//! `RecognitionPipeline`: upload, result storage and the gateway in front of a model, and
//! its status.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::runtime::PodOverrides;

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
