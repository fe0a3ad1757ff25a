//! The Indexed Job of a `RecognitionJob`: one `sightline-server batch` shard per completion
//! index, the model's file and flags exactly as its recognize pods get them
//! ([`super::model::model_files`], [`super::model::model_flags`]), the input and output
//! claims, and the failure rules that keep a bad image, an eviction and an OOM kill apart.
//!
//! The Job rules relied on (kubernetes.io/docs/concepts/workloads/controllers/job):
//! - "Completion mode": with `completionMode: Indexed` each pod gets its index in the
//!   `batch.kubernetes.io/job-completion-index` annotation and the `JOB_COMPLETION_INDEX`
//!   environment variable; the Job succeeds when one pod per index succeeded.
//! - "Backoff limit per index": a failed index is retried up to `backoffLimitPerIndex`
//!   times, independently of the others; an index out of retries is marked failed and the
//!   others run on (the Job fails at the end, listing `status.failedIndexes`).
//! - "Pod failure policy": the first matching rule decides — `FailIndex` fails the index
//!   at once without using its retries, `Ignore` does not count the failure against the
//!   limit (the pod is replaced), `Count` counts it as usual.
//! - "Pod replacement policy": with a pod failure policy only `Failed` is allowed — a
//!   replacement starts only once the old pod has fully terminated, so two processes
//!   never append to one shard's output file.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, PersistentVolumeClaimVolumeSource, Volume, VolumeMount,
};
use kube::ResourceExt;

use super::meta::{object_meta, selector_labels};
use super::model::{model_files, model_flags, server_image, server_resources};
use super::pod::{PORT, Platform, pod_template, secret_env, server_container, with_overrides};
use crate::crd::{Device, ImageModel, RecognitionJob};
use crate::validate::Invalid;

pub use super::meta::{JOB_COMPONENT as COMPONENT, LABEL_RESULTS_FOR as RESULTS_FOR_LABEL};
/// The shard container's name (the pod failure policy's rules name it).
pub const CONTAINER: &str = "batch";
/// Where the Job controller puts a pod's index (and the kubelet expands `$(…)` of it in
/// the arguments).
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The pod annotation (and, since Kubernetes 1.28, label) with a pod's index.
pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// Where the shard writes its summary; the kubelet copies the file into
/// `state.terminated.message` (`terminationMessagePolicy: File`).
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// `sightline-server batch`'s exit code for an error retrying cannot fix (bad flags, a
/// model digest mismatch, missing input, an output of another model).
pub const EXIT_PERMANENT: i32 = 2;
/// The exit code of a container the kernel killed for memory (128 + SIGKILL).
pub const EXIT_OOM: i32 = 137;
/// Where the input and output claims are mounted, each at `/data/<claim>`.
pub const DATA_DIR: &str = "/data";
/// Where a shard writes its lines when the job has no output claim (its results go to a
/// pipeline's store only): an `emptyDir`, gone with the pod. A retried shard starts it
/// empty and learns from the store what is done.
pub const SCRATCH_DIR: &str = "/scratch";
/// The environment variable the shard reads the store's API key from.
pub const STORE_KEY_ENV: &str = "SIGHTLINE_BATCH_STORE_API_KEY";
/// Attempts per shard by default.
pub const DEFAULT_BACKOFF_PER_INDEX: i32 = 3;
/// The Job annotation holding a digest of its pod template: a Job's template cannot
/// change once created, so a different digest means the Job runs an older template.
pub const TEMPLATE_ANNOTATION: &str = "sightline.io/template-digest";

/// The Job's name: the RecognitionJob's own.
pub fn job_name(job: &RecognitionJob) -> String {
    job.name_any()
}

/// Whether the shards run on a GPU: what the model's pods were built for
/// (`status.device`), else its spec (`auto` with no decision yet is the CPU).
pub fn on_gpu(model: &ImageModel) -> bool {
    match model.status.as_ref().and_then(|s| s.device.as_ref()) {
        Some(device) => device.resolved == "gpu",
        None => model.spec.runtime.device == Device::Gpu,
    }
}

/// `path` inside the claim's mount, without a trailing slash.
fn in_claim(claim: &str, path: &str) -> String {
    let path = path.trim_matches('/');
    if path.is_empty() {
        format!("{DATA_DIR}/{claim}")
    } else {
        format!("{DATA_DIR}/{claim}/{path}")
    }
}

/// Where the shards read the images: a folder in the container, `s3://…` or a listing
/// file's URL.
fn input_location(job: &RecognitionJob) -> String {
    let input = &job.spec.input;
    match (&input.pvc, &input.s3, &input.https) {
        (Some(pvc), _, _) => in_claim(&pvc.claim_name, &pvc.path),
        (None, Some(s3), _) => s3.uri.clone(),
        (None, None, Some(https)) => https.url.clone(),
        (None, None, None) => String::new(),
    }
}

/// The shard command's arguments (before the model's flags).
pub fn batch_args(job: &RecognitionJob) -> Vec<String> {
    let spec = &job.spec;
    let input = input_location(job);
    let folder = match &spec.output.pvc {
        Some(pvc) => in_claim(&pvc.claim_name, &pvc.path),
        None => SCRATCH_DIR.to_string(),
    };
    let out = format!("{folder}/shard-$({INDEX_ENV}).jsonl");
    let mut args: Vec<String> = vec![
        "batch".into(),
        "--shards".into(),
        spec.shards.to_string(),
        // Always: a retried or restarted shard goes on from its output (a missing one
        // just starts).
        "--resume".into(),
        "--summary".into(),
        TERMINATION_LOG.into(),
        "--metrics-listen".into(),
        format!("0.0.0.0:{PORT}"),
        "--job".into(),
        job.name_any(),
        "--input".into(),
        input.clone(),
        "--out".into(),
        out,
    ];
    if let Some(pipeline) = &spec.output.pipeline {
        let ns = job.namespace().unwrap_or_else(|| "default".into());
        args.extend([
            "--store-url".to_string(),
            super::pipeline::identity::store_url(&pipeline.name, &ns),
        ]);
    }
    if spec.output.csv && spec.output.pvc.is_some() {
        args.extend([
            "--csv".to_string(),
            format!("{folder}/shard-$({INDEX_ENV}).csv"),
        ]);
    }
    if let Some(s3) = &spec.input.s3 {
        if let Some(endpoint) = &s3.endpoint {
            args.extend(["--s3-endpoint".to_string(), endpoint.clone()]);
        }
        if let Some(region) = &s3.region {
            args.extend(["--s3-region".to_string(), region.clone()]);
        }
    }
    if let Some(labels) = &spec.labels {
        let truth = match &labels.csv {
            Some(csv) => format!("{input}/{}", csv.trim_start_matches('/')),
            // The input folder itself: its sub-folders are the classes.
            None => input.clone(),
        };
        args.extend(["--truth".to_string(), truth]);
    }
    args
}

/// The input and output claims, each mounted once (read-only when only read), or the
/// scratch folder when there is no output claim.
fn data_volumes(job: &RecognitionJob) -> (Vec<Volume>, Vec<VolumeMount>) {
    let output = job.spec.output.pvc.as_ref().map(|p| &p.claim_name);
    let mut claims: Vec<(String, bool)> = output.map(|o| (o.clone(), false)).into_iter().collect();
    if let Some(input) = job.spec.input.pvc.as_ref().map(|p| &p.claim_name)
        && Some(input) != output
    {
        claims.push((input.clone(), true));
    }
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if output.is_none() {
        volumes.push(Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "scratch".into(),
            mount_path: SCRATCH_DIR.into(),
            ..VolumeMount::default()
        });
    }
    for (i, (claim, read_only)) in claims.into_iter().enumerate() {
        let name = format!("data-{i}");
        volumes.push(Volume {
            name: name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(read_only),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: format!("{DATA_DIR}/{claim}"),
            read_only: Some(read_only),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

/// Checks the CRD's rules make too (for objects the API server did not check: `render`,
/// a CRD installed without them).
pub fn validate(job: &RecognitionJob) -> Result<(), Invalid> {
    let spec = &job.spec;
    let invalid = |field, message: &str| {
        Err(Invalid {
            field,
            message: message.into(),
        })
    };
    if !(1..=10000).contains(&spec.shards) {
        return invalid("spec.shards", "must be 1 to 10000");
    }
    if spec.parallelism.is_some_and(|p| p < 1 || p > spec.shards) {
        return invalid("spec.parallelism", "must be 1 to spec.shards");
    }
    let input = &spec.input;
    let given = [
        input.pvc.is_some(),
        input.s3.is_some(),
        input.https.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return invalid("spec.input", "is exactly one of pvc, s3 and https");
    }
    if let Some(s3) = &input.s3
        && !(s3.uri.len() > 5 && s3.uri.starts_with("s3://"))
    {
        return invalid("spec.input.s3.uri", "must be s3://bucket[/prefix]");
    }
    if let Some(https) = &input.https
        && !(https.url.starts_with("https://") || https.url.starts_with("http://"))
    {
        return invalid(
            "spec.input.https.url",
            "must start with https:// or http://",
        );
    }
    if spec.labels.is_some() && spec.input.pvc.is_none() {
        return invalid(
            "spec.labels",
            "needs input.pvc: the CSV is read from the input claim",
        );
    }
    let output = &spec.output;
    if output.pvc.is_none() && output.pipeline.is_none() {
        return invalid("spec.output", "needs pvc, pipeline or both");
    }
    if output.csv && output.pvc.is_none() {
        return invalid(
            "spec.output.csv",
            "needs output.pvc: the CSV is written beside the JSON lines",
        );
    }
    let empty = String::new();
    let input_path = spec.input.pvc.as_ref().map(|p| &p.path).unwrap_or(&empty);
    let output_path = output.pvc.as_ref().map(|p| &p.path).unwrap_or(&empty);
    for (field, path) in [
        ("spec.input.pvc.path", input_path),
        ("spec.output.pvc.path", output_path),
    ] {
        if path.starts_with('/') || path.contains("..") {
            return invalid(field, "is relative to the claim's root and has no '..'");
        }
    }
    if let Some(labels) = &spec.labels
        && labels.csv.is_some() == labels.class_folders
    {
        return invalid(
            "spec.labels",
            "is exactly one of csv and classFolders: true",
        );
    }
    if let Some(csv) = spec.labels.as_ref().and_then(|l| l.csv.as_ref())
        && (csv.is_empty() || csv.starts_with('/') || csv.contains(".."))
    {
        return invalid(
            "spec.labels.csv",
            "is relative to input.pvc.path and has no '..'",
        );
    }
    Ok(())
}

/// The pod failure policy (rules in order; the first that matches decides).
pub fn failure_policy() -> PodFailurePolicy {
    let exit = |code: i32, action: &str| PodFailurePolicyRule {
        action: action.into(),
        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
            container_name: Some(CONTAINER.into()),
            operator: "In".into(),
            values: vec![code],
        }),
        on_pod_conditions: None,
    };
    PodFailurePolicy {
        rules: vec![
            // Exit 2: nothing a retry can fix (a wrong model digest, a missing input): the
            // index fails now, its retries unspent.
            exit(EXIT_PERMANENT, "FailIndex"),
            // Evicted, preempted, its node drained or gone (the `DisruptionTarget` pod
            // condition): not the shard's fault, so it does not count; the replacement
            // resumes from the output.
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_exit_codes: None,
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                }]),
            },
            // Killed for memory: counted against `backoffLimitPerIndex` (a shard that
            // always runs out of memory must end, not loop); the retry resumes.
            exit(EXIT_OOM, "Count"),
        ],
    }
}

/// The Indexed Job of `job`, running `model`'s model.
pub fn job(job: &RecognitionJob, model: &ImageModel, platform: &Platform) -> Job {
    let spec = &job.spec;
    let gpu = on_gpu(model);
    let instance = job.name_any();
    let files = model_files(model, platform);
    let (mut volumes, mut mounts) = files.volumes(model);
    let (data, data_mounts) = data_volumes(job);
    volumes.extend(data);
    mounts.extend(data_mounts);
    let mut args = batch_args(job);
    args.extend(model_flags(
        model,
        gpu,
        &files.model_path,
        &files.labels_path,
    ));
    let resources = server_resources(
        model,
        gpu,
        spec.resources
            .clone()
            .or_else(|| model.spec.runtime.resources.clone()),
    );
    // The bucket's credentials, as the environment the shard reads them from.
    let env_from = job
        .spec
        .input
        .s3
        .as_ref()
        .and_then(|s3| s3.credentials_secret.as_deref())
        .map(super::model::credentials_env);
    let mut container = server_container(platform, CONTAINER, args, resources, env_from, mounts);
    container.image = Some(server_image(model, platform, gpu));
    if let Some(secret) = spec
        .output
        .pipeline
        .as_ref()
        .and_then(|p| p.api_key_secret.as_ref())
    {
        container
            .env
            .get_or_insert_with(Vec::new)
            .push(secret_env(STORE_KEY_ENV, secret));
    }
    // A shard serves `/metrics` only, never `/readyz`: no probes (a Job's pod is done when
    // its process exits).
    container.readiness_probe = None;
    container.liveness_probe = None;
    container.startup_probe = None;
    container.ports.iter_mut().flatten().for_each(|p| {
        p.name = Some("metrics".into());
    });
    container.termination_message_path = Some(TERMINATION_LOG.into());
    container.termination_message_policy = Some("File".into());
    let mut labels = selector_labels(&instance, COMPONENT);
    if let Some(pipeline) = &spec.output.pipeline {
        labels.insert(RESULTS_FOR_LABEL.into(), pipeline.name.clone());
    }
    let mut template = pod_template(
        platform,
        labels.clone(),
        files.init,
        vec![container],
        volumes,
    );
    if let Some(pod) = template.spec.as_mut() {
        let r = &model.spec.runtime;
        // Required by a pod failure policy; a failed shard is a new pod, never a restart
        // in place, so each attempt's summary stays readable.
        pod.restart_policy = Some("Never".into());
        pod.node_selector = (!r.node_selector.is_empty()).then(|| r.node_selector.clone());
        pod.tolerations = (!r.tolerations.is_empty()).then(|| r.tolerations.clone());
        pod.affinity = r.affinity.clone();
    }
    with_overrides(
        &mut template,
        model.spec.runtime.pod_overrides.as_ref(),
        &labels,
    );
    if let Some(meta) = template.metadata.as_mut()
        && let Some(sha) = &model.spec.source.model.sha256
    {
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert("sightline.io/model-sha256".into(), sha.clone());
    }
    let mut metadata = object_meta(job, &job_name(job), COMPONENT);
    metadata.annotations = Some(BTreeMap::from([(
        TEMPLATE_ANNOTATION.to_string(),
        template_digest(&template),
    )]));
    Job {
        metadata,
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(spec.shards),
            parallelism: Some(spec.parallelism.unwrap_or(1).min(spec.shards)),
            backoff_limit_per_index: Some(
                spec.backoff_limit_per_index
                    .unwrap_or(DEFAULT_BACKOFF_PER_INDEX),
            ),
            pod_failure_policy: Some(failure_policy()),
            pod_replacement_policy: Some("Failed".into()),
            template,
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// A digest of a pod template (its JSON).
fn template_digest(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> String {
    use sha2::{Digest, Sha256};
    let text = serde_json::to_string(template).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))[..16].to_string()
}

#[cfg(test)]
#[path = "recognition_job_tests.rs"]
mod tests;
