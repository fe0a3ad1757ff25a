//! How the model and labels files reach a recognize pod: fetched by init containers (with
//! the source's credentials), mounted read-only from a PVC, or from a model image.

use k8s_openapi::api::core::v1::{Container, EnvFromSource, SecretEnvSource, VolumeMount};

use crate::build::pod::{Platform, container_security, default_resources};
use crate::crd::FileSource;

/// Attempts each fetch init container makes, and the seconds one attempt may take: ten
/// minutes for the model (gigabytes at tens of MB/s), one for the labels file.
pub const FETCH_ATTEMPTS: u32 = 2;
pub const MODEL_ATTEMPT_SECONDS: u32 = 600;
pub const LABELS_ATTEMPT_SECONDS: u32 = 60;

pub(super) const MODEL_DIR: &str = "/models";

/// Where a source file ends up in the pod, and how it gets there.
pub(super) enum Placement {
    /// Fetched by an init container into the `models` emptyDir.
    Fetched { path: String },
    /// Read from a PVC mounted read-only.
    Mounted { claim: String, path: String },
    /// Read from a model image mounted as an image volume at [`IMAGE_DIR`].
    Image { reference: String, path: String },
}

/// Where a model image (`oci://`) is mounted.
pub(super) const IMAGE_DIR: &str = "/model-image";

pub(super) fn placement(source: &FileSource, fetched_name: &str) -> Placement {
    if let Some(reference) = source.uri.strip_prefix("oci://") {
        // The image's files (docs/install.md): /model.onnx, /model.labels.txt.
        let file = if fetched_name.starts_with("labels") {
            "model.labels.txt"
        } else {
            "model.onnx"
        };
        return Placement::Image {
            reference: reference.to_string(),
            path: format!("{IMAGE_DIR}/{file}"),
        };
    }
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

pub(super) fn fetch_container(
    platform: &Platform,
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
    // Bounded, so the Deployment's progress deadline covers it ([`PROGRESS_DEADLINE`]).
    args.extend([
        "--attempts".to_string(),
        FETCH_ATTEMPTS.to_string(),
        "--timeout-secs".into(),
        if name == "fetch-labels" {
            LABELS_ATTEMPT_SECONDS
        } else {
            MODEL_ATTEMPT_SECONDS
        }
        .to_string(),
    ]);
    Container {
        name: name.into(),
        image: Some(platform.server.clone()),
        image_pull_policy: platform.pull_policy.clone(),
        args: Some(args),
        env_from: credentials.map(credentials_env),
        resources: Some(default_resources("50m", "64Mi")),
        security_context: Some(container_security(platform)),
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

pub(super) fn credentials_env(secret: &str) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: secret.into(),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }]
}
