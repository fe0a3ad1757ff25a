//! Children of an `ImageModel`: the recognize Deployment (model fetched and verified by an
//! init container, or mounted from a PVC), its Service, an HPA when autoscaling is set and
//! a PodDisruptionBudget when more than one replica serves.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvFromSource, PersistentVolumeClaimVolumeSource,
    SecretEnvSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::meta::{labels, object_meta, selector_labels};
use super::pod::{
    Images, PORT, PORT_NAME, container_security, default_resources, pod_template,
    readiness_startup_probe, server_container,
};
use crate::crd::{Device, FileSource, ImageModel};

pub const COMPONENT: &str = "recognize";
const ORT_LIB: &str = "/opt/onnxruntime/lib/libonnxruntime.so";
const MODEL_DIR: &str = "/models";

/// The recognize Deployment and Service name of a model.
pub fn name(model: &ImageModel) -> String {
    format!("{}-recognize", model.name_any())
}

/// In-cluster URL of a model's recognize Service.
pub fn endpoint(model: &ImageModel) -> String {
    let ns = model.namespace().unwrap_or_else(|| "default".into());
    format!("http://{}.{ns}.svc:{PORT}", name(model))
}

/// Where a source file ends up in the pod, and how it gets there.
enum Placement {
    /// Fetched by an init container into the `models` emptyDir.
    Fetched { path: String },
    /// Read from a PVC mounted read-only.
    Mounted { claim: String, path: String },
}

fn placement(source: &FileSource, fetched_name: &str) -> Placement {
    match source
        .uri
        .strip_prefix("pvc://")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((claim, path)) => Placement::Mounted {
            claim: claim.to_string(),
            path: format!("/sources/{claim}/{path}"),
        },
        None => Placement::Fetched {
            path: format!("{MODEL_DIR}/{fetched_name}"),
        },
    }
}

fn fetch_container(
    images: &Images,
    name: &str,
    source: &FileSource,
    out: &str,
    credentials: Option<&str>,
) -> Container {
    let mut args = vec![
        "fetch".to_string(),
        "--uri".into(),
        source.uri.clone(),
        "--out".into(),
        out.to_string(),
    ];
    if let Some(sha) = &source.sha256 {
        args.extend(["--sha256".to_string(), sha.clone()]);
    }
    Container {
        name: name.into(),
        image: Some(images.server.clone()),
        image_pull_policy: images.pull_policy.clone(),
        args: Some(args),
        env_from: credentials.map(credentials_env),
        resources: Some(default_resources("50m", "64Mi")),
        security_context: Some(container_security()),
        // Its error (wrong digest, 404, …) becomes the termination message, which the
        // operator copies into the ModelFetched condition.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![VolumeMount {
            name: "models".into(),
            mount_path: MODEL_DIR.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

/// The server's arguments for this model.
fn server_args(
    model: &ImageModel,
    model_path: &str,
    labels_path: &str,
    image_prefixes: &[String],
) -> Vec<String> {
    let spec = &model.spec;
    let mut args: Vec<String> = vec![
        "recognize".into(),
        "--listen".into(),
        format!("0.0.0.0:{PORT}"),
        "--model".into(),
        model_path.into(),
        "--labels".into(),
        labels_path.into(),
        "--model-name".into(),
        model.name_any(),
        "--ort-lib".into(),
        ORT_LIB.into(),
        "--log-format".into(),
        "json".into(),
    ];
    let mut flag = |name: &str, value: String| args.extend([format!("--{name}"), value]);
    if let Some(sha) = &spec.source.model.sha256 {
        flag("model-sha256", sha.clone());
    }
    let p = &spec.preprocess;
    if let Some(v) = p.size {
        flag("input-size", v.to_string());
    }
    if let Some(v) = p.layout {
        flag(
            "layout",
            if v == crate::crd::Layout::Nhwc {
                "nhwc"
            } else {
                "nchw"
            }
            .into(),
        );
    }
    if let Some(v) = p.resize {
        flag(
            "resize",
            if v == crate::crd::ResizePolicy::Stretch {
                "stretch"
            } else {
                "shorter-side-crop"
            }
            .into(),
        );
    }
    if let Some(v) = p.crop_fraction {
        flag("crop-fraction", v.to_string());
    }
    if let Some(v) = p.channels {
        flag(
            "channels",
            if v == crate::crd::Channels::Bgr {
                "bgr"
            } else {
                "rgb"
            }
            .into(),
        );
    }
    if let Some(v) = p.scale {
        flag("scale", v.to_string());
    }
    let triple = |v: &[f64]| v.iter().map(f64::to_string).collect::<Vec<_>>().join(",");
    if let Some(v) = &p.mean {
        flag("mean", triple(v));
    }
    if let Some(v) = &p.std {
        flag("std", triple(v));
    }
    let r = &spec.runtime;
    if let Some(v) = r.threads {
        flag("intra-threads", v.to_string());
    }
    if let Some(v) = r.batching.max_batch_size {
        flag("max-batch-size", v.to_string());
    }
    if let Some(v) = r.batching.max_delay_ms {
        flag("max-delay-ms", v.to_string());
    }
    if let Some(v) = r.batching.queue_capacity {
        flag("queue-capacity", v.to_string());
    }
    if !image_prefixes.is_empty() {
        flag("fetch-allowlist", image_prefixes.join(","));
    }
    if r.device == Device::Gpu {
        flag("device", "gpu".into());
        if r.allow_cpu_fallback {
            args.push("--allow-cpu-fallback".into());
        }
    }
    args
}

/// The recognize Deployment. `image_prefixes` are the image URL prefixes of the pipelines
/// that use this model (recognition by URL may fetch only from them).
/// The pod-template annotation holding the digest of what the pods read besides their
/// spec (the rendered config and the referenced Secrets); a change rolls the pods.
pub const INPUTS_ANNOTATION: &str = "sightline.io/inputs-digest";

/// The names of the Secrets a model's pods read.
pub fn secret_names(model: &ImageModel) -> Vec<String> {
    model
        .spec
        .source
        .credentials_secret
        .iter()
        .cloned()
        .collect()
}

fn credentials_env(secret: &str) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: secret.into(),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }]
}

/// The recognize Deployment. `image_prefixes` are the image URL prefixes of the pipelines
/// that use this model (recognition by URL may fetch only from them); `inputs_digest` is
/// the digest of the referenced Secrets (empty when unknown, as in `render`).
pub fn deployment(
    model: &ImageModel,
    images: &Images,
    image_prefixes: &[String],
    inputs_digest: &str,
) -> Deployment {
    let spec = &model.spec;
    let instance = model.name_any();
    let model_place = placement(&spec.source.model, "model.onnx");
    let labels_place = placement(&spec.source.labels, "labels.txt");
    let credentials = spec.source.credentials_secret.as_deref();

    let mut init = Vec::new();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut claims: Vec<String> = Vec::new();
    let mut needs_emptydir = false;
    let mut path_of = |place: &Placement, source: &FileSource, init_name: &str| -> String {
        match place {
            Placement::Fetched { path } => {
                needs_emptydir = true;
                init.push(fetch_container(
                    images,
                    init_name,
                    source,
                    path,
                    credentials,
                ));
                path.clone()
            }
            Placement::Mounted { claim, path } => {
                if !claims.contains(claim) {
                    claims.push(claim.clone());
                }
                path.clone()
            }
        }
    };
    let model_path = path_of(&model_place, &spec.source.model, "fetch-model");
    let labels_path = path_of(&labels_place, &spec.source.labels, "fetch-labels");
    // The labelled set is fetched by the server itself once the model serves, so a bad
    // dataset URL fails only the evaluation, never the pod. A `pvc://` set is mounted.
    let evaluation_source =
        spec.evaluation
            .as_ref()
            .map(|e| match placement(&e.dataset, "evaluation.zip") {
                Placement::Mounted { claim, path } => {
                    if !claims.contains(&claim) {
                        claims.push(claim);
                    }
                    path
                }
                Placement::Fetched { .. } => e.dataset.uri.clone(),
            });
    if needs_emptydir {
        volumes.push(Volume {
            name: "models".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "models".into(),
            mount_path: MODEL_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    for (i, claim) in claims.iter().enumerate() {
        let volume = format!("source-{i}");
        volumes.push(Volume {
            name: volume.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: format!("/sources/{claim}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let mut resources = spec
        .runtime
        .resources
        .clone()
        .unwrap_or_else(|| default_resources("500m", "512Mi"));
    if spec.runtime.device == Device::Gpu {
        let gpu = spec
            .runtime
            .gpu_resource
            .clone()
            .unwrap_or_else(|| "nvidia.com/gpu".into());
        resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .entry(gpu)
            .or_insert_with(|| Quantity("1".into()));
    }
    let mut args = server_args(model, &model_path, &labels_path, image_prefixes);
    let mut env_from = None;
    if let (Some(source), Some(evaluation)) = (evaluation_source, &spec.evaluation) {
        args.extend(["--evaluate-on-start".to_string(), source]);
        if let Some(sha) = &evaluation.dataset.sha256 {
            args.extend(["--evaluate-sha256".to_string(), sha.clone()]);
        }
        if evaluation.dataset.uri.starts_with("s3://") {
            env_from = credentials.map(credentials_env);
        }
    }
    let mut container = server_container(images, "server", args, resources, env_from, mounts);
    // Loading and warming a large model (or a GPU session) takes a while: the startup
    // probe waits up to ten minutes for `/readyz` before liveness takes over.
    container.startup_probe = Some(readiness_startup_probe(120));
    let mut template = pod_template(
        selector_labels(&instance, COMPONENT),
        init,
        vec![container],
        volumes,
    );
    if let Some(pod) = template.spec.as_mut() {
        let r = &spec.runtime;
        pod.node_selector = (!r.node_selector.is_empty()).then(|| r.node_selector.clone());
        pod.tolerations = (!r.tolerations.is_empty()).then(|| r.tolerations.clone());
        pod.affinity = r.affinity.clone();
    }
    if let Some(meta) = template.metadata.as_mut() {
        let mut annotations = BTreeMap::new();
        // Identity of what the pods serve, so a new digest rolls the pods.
        if let Some(sha) = &spec.source.model.sha256 {
            annotations.insert("sightline.io/model-sha256".to_string(), sha.clone());
        }
        // What the referenced Secrets hold: rotating credentials rolls the pods.
        if !inputs_digest.is_empty() {
            annotations.insert(INPUTS_ANNOTATION.to_string(), inputs_digest.to_string());
        }
        meta.annotations = (!annotations.is_empty()).then_some(annotations);
    }
    Deployment {
        metadata: object_meta(model, &name(model), COMPONENT),
        spec: Some(DeploymentSpec {
            // Left to the HPA when autoscaling is on: no field, so no fight.
            replicas: if spec.runtime.autoscaling.is_some() {
                None
            } else {
                Some(spec.runtime.replicas.unwrap_or(1))
            },
            selector: LabelSelector {
                match_labels: Some(selector_labels(&instance, COMPONENT)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The recognize Service.
pub fn service(model: &ImageModel) -> Service {
    Service {
        metadata: object_meta(model, &name(model), COMPONENT),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&model.name_any(), COMPONENT)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: PORT,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The HPA, when the spec asks for autoscaling.
pub fn hpa(model: &ImageModel) -> Option<HorizontalPodAutoscaler> {
    let auto = model.spec.runtime.autoscaling.as_ref()?;
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
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(
                            auto.target_cpu_utilization_percentage.unwrap_or(70),
                        ),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: None,
        }),
        status: None,
    })
}

/// A PodDisruptionBudget keeping one pod up, when more than one replica can run.
pub fn pdb(model: &ImageModel) -> Option<PodDisruptionBudget> {
    let r = &model.spec.runtime;
    let most = match &r.autoscaling {
        Some(auto) => auto.min_replicas,
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

/// All labels a model's children carry (for pruning by label).
pub fn child_labels(model: &ImageModel) -> BTreeMap<String, String> {
    labels(&model.name_any(), COMPONENT)
}

/// Everything an `ImageModel` owns, in apply order.
#[derive(Debug, Clone)]
pub struct ModelChildren {
    pub service: Service,
    pub deployment: Deployment,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub pdb: Option<PodDisruptionBudget>,
    pub network_policy: k8s_openapi::api::networking::v1::NetworkPolicy,
}

/// The children of `model`; `image_prefixes` and `inputs_digest` as for [`deployment`].
pub fn children(
    model: &ImageModel,
    images: &Images,
    image_prefixes: &[String],
    inputs_digest: &str,
) -> ModelChildren {
    ModelChildren {
        service: service(model),
        deployment: deployment(model, images, image_prefixes, inputs_digest),
        hpa: hpa(model),
        pdb: pdb(model),
        network_policy: super::network::model_policy(model),
    }
}
