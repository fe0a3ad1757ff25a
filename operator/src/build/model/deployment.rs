//! The recognize Deployment: the server's arguments for the model, its pod (fetch init
//! containers or mounts, probes, device) and its rollout deadline.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::fetch::{
    FETCH_ATTEMPTS, LABELS_ATTEMPT_SECONDS, MODEL_ATTEMPT_SECONDS, Placement, credentials_env,
    model_files, placement,
};
use super::identity::{COMPONENT, INPUTS_ANNOTATION, ModelInputs, name};
use crate::build::meta::{object_meta, selector_labels};
use crate::build::pod::{
    PORT, Platform, default_resources, pod_template, readiness_startup_probe, server_container,
    with_overrides,
};
use crate::build::sizing::rolling_update;
use crate::crd::{BatchTuning, ImageModel};

/// Seconds the startup probe waits for a loading model: 120 failures × 5 s.
const STARTUP_FAILURES: i32 = 120;
/// `progressDeadlineSeconds` of the recognize Deployment: after this long without
/// progress Kubernetes marks the rollout `ProgressDeadlineExceeded`, which is when a
/// transient pod problem (no node yet, an image pull being retried) becomes a failure
/// (docs/status.md). It covers scheduling with a node added by a cluster autoscaler and
/// the image pull ([`crate::build::pod::SCHEDULE_AND_PULL_SECONDS`]), every fetch attempt of
/// the model and the labels (one after the other), and the startup probe.
pub const PROGRESS_DEADLINE: i32 = crate::build::pod::SCHEDULE_AND_PULL_SECONDS
    + (FETCH_ATTEMPTS * (MODEL_ATTEMPT_SECONDS + LABELS_ATTEMPT_SECONDS)) as i32
    + STARTUP_FAILURES * crate::build::pod::PROBE_PERIOD;

const ORT_LIB: &str = "/opt/onnxruntime/lib/libonnxruntime.so";

/// The server's arguments for this model.
fn server_args(model: &ImageModel, gpu: bool, model_path: &str, labels_path: &str) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "recognize".into(),
        "--listen".into(),
        format!("0.0.0.0:{PORT}"),
    ];
    args.extend(model_flags(model, gpu, model_path, labels_path));
    args
}

/// The flags that load this model as the recognize role loads it (file, digest,
/// preprocessing, threads, batching, device): `recognize` and `batch` take the same.
pub fn model_flags(
    model: &ImageModel,
    gpu: bool,
    model_path: &str,
    labels_path: &str,
) -> Vec<String> {
    let spec = &model.spec;
    let mut args: Vec<String> = vec![
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
    if let Some(v) = r.instances {
        flag("instances", v.to_string());
    }
    match (
        r.batching.tuning.unwrap_or_default(),
        r.batching.max_batch_size,
    ) {
        (BatchTuning::Auto, None) => {}
        (BatchTuning::Auto, Some(v)) => flag("max-batch-size", format!("auto:{v}")),
        (BatchTuning::Fixed, v) => flag("max-batch-size", v.unwrap_or(8).to_string()),
    }
    if let Some(v) = r.batching.max_delay_ms {
        flag("max-delay-ms", v.to_string());
    }
    if let Some(v) = r.batching.queue_capacity {
        flag("queue-capacity", v.to_string());
    }
    if gpu {
        flag("device", "gpu".into());
        if r.allow_cpu_fallback {
            args.push("--allow-cpu-fallback".into());
        }
    }
    args
}

/// The server container's requests and limits: `given`, else defaults, with one unit of
/// the GPU resource on a GPU.
pub fn server_resources(
    model: &ImageModel,
    gpu: bool,
    given: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
) -> k8s_openapi::api::core::v1::ResourceRequirements {
    let mut resources = given.unwrap_or_else(|| default_resources("500m", "512Mi"));
    if gpu {
        let gpu = model
            .spec
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
    resources
}

/// The server image of `model`'s pods: its own, else the operator's (GPU or not).
pub fn server_image(model: &ImageModel, platform: &Platform, gpu: bool) -> String {
    model.spec.runtime.image.clone().unwrap_or_else(|| {
        if gpu {
            platform.gpu_server.clone()
        } else {
            platform.server.clone()
        }
    })
}

/// The recognize Deployment; `inputs_digest` is the digest of the referenced Secrets
/// (empty when unknown, as in `render`). The model fetches no images by URL: the
/// pipelines' front doors resolve their own images and send the bytes, so adding or
/// removing a pipeline never changes (or restarts) a model's pods.
pub fn deployment(model: &ImageModel, platform: &Platform, inputs: &ModelInputs) -> Deployment {
    let spec = &model.spec;
    let gpu = inputs.device.resolved == "gpu";
    let inputs_digest = inputs.digest.as_str();
    let instance = model.name_any();
    let credentials = spec.source.credentials_secret.as_deref();
    let mut files = model_files(model, platform);
    // The labelled set is fetched by the server itself once the model serves, so a bad
    // dataset URL fails only the evaluation, never the pod. A `pvc://` set is mounted.
    let evaluation_source =
        spec.evaluation
            .as_ref()
            .map(|e| match placement(&e.dataset, "evaluation.zip") {
                Placement::Mounted { claim, path } => {
                    if !files.claims.contains(&claim) {
                        files.claims.push(claim);
                    }
                    path
                }
                Placement::Fetched { .. } | Placement::Image { .. } => e.dataset.uri.clone(),
            });
    let (volumes, mounts) = files.volumes(model);
    let (init, model_path, labels_path) = (files.init, files.model_path, files.labels_path);

    let resources = server_resources(model, gpu, spec.runtime.resources.clone());
    let mut args = server_args(model, gpu, &model_path, &labels_path);
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
    let mut container = server_container(platform, "server", args, resources, env_from, mounts);
    container.image = Some(server_image(model, platform, gpu));
    // Loading and warming a large model (or a GPU session) takes a while: the startup
    // probe waits up to ten minutes for `/readyz` before liveness takes over.
    container.startup_probe = Some(readiness_startup_probe(STARTUP_FAILURES));
    let mut template = pod_template(
        platform,
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
    with_overrides(
        &mut template,
        spec.runtime.pod_overrides.as_ref(),
        &selector_labels(&instance, COMPONENT),
    );
    if let Some(meta) = template.metadata.as_mut() {
        let mut annotations = meta.annotations.take().unwrap_or_default();
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
                rolling_update: Some(rolling_update(model, gpu)),
            }),
            template,
            progress_deadline_seconds: Some(PROGRESS_DEADLINE),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}
